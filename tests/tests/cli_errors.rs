//! Every bad input to the data-plane CLI gets a clear one-line error and a failing exit status.

use std::{os::unix::process::CommandExt as _, process::Command};

use rasp_tests::{Lab, PinDirGuard, rasp_proxy_bin};

/// Runs `rasp-proxy` with `args`, expects failure, and returns its stderr.
fn fails(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run rasp-proxy: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "expected failure, got success: {stderr}");
    stderr
}

fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected a one-line error, got:\n{stderr}");
    lines[0]
}

#[test]
fn malformed_addresses_cidrs_and_durations_are_refused() {
    let lab = Lab::new(1);
    lab.attach_all();
    for (args, expect) in [
        (
            vec!["ban", "192.0.2", "--ttl", "1m"],
            "invalid address \"192.0.2\"",
        ),
        (vec!["ban", "2001:db8::zz", "--ttl", "1m"], "invalid address"),
        (vec!["unban", "not-an-ip"], "invalid address"),
        (
            vec!["blocklist", "add", "192.0.2.0/33"],
            "invalid CIDR \"192.0.2.0/33\"",
        ),
        (vec!["blocklist", "add", "2001:db8::/129"], "invalid CIDR"),
        (vec!["allowlist", "remove", "10.0.0.0/"], "invalid CIDR"),
        (
            vec!["ban", "192.0.2.1", "--ttl", "soon"],
            "invalid duration \"soon\"",
        ),
        (vec!["ban", "192.0.2.1", "--ttl", "0s"], "must be more than zero"),
        (
            vec!["xdp", "attach", "--iface", "nosuchif0"],
            "no such network interface \"nosuchif0\"",
        ),
    ] {
        let out = lab.cli(&args);
        assert!(!out.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = one_line(&stderr);
        assert!(line.contains(expect), "{args:?}: expected {expect:?} in {line:?}");
    }
    // Nothing was written by the refused commands.
    assert_eq!(lab.cli_ok(&["maps", "dump", "bans", "--json"]).trim(), "[]");
}

#[test]
fn a_missing_pin_directory_is_named() {
    let pins = PinDirGuard::new();
    for args in [
        vec!["ban", "192.0.2.1", "--ttl", "1m"],
        vec!["maps", "dump", "stats"],
        vec!["xdp", "status"],
    ] {
        let stderr = fails(
            Command::new(rasp_proxy_bin())
                .arg("--pin-dir")
                .arg(&pins.path)
                .args(&args),
        );
        let line = one_line(&stderr);
        assert!(
            line.contains("pin directory") && line.contains("not found"),
            "{args:?}: {line}"
        );
    }
}

#[test]
fn a_missing_privilege_is_named() {
    let lab = Lab::new(1);
    lab.attach_all();
    for args in [
        vec!["ban", "192.0.2.1", "--ttl", "1m"],
        vec!["maps", "dump", "bans"],
    ] {
        let stderr = fails(
            Command::new(rasp_proxy_bin())
                .arg("--pin-dir")
                .arg(&lab.pins.path)
                .args(&args)
                .uid(65534)
                .gid(65534),
        );
        let line = one_line(&stderr);
        assert!(line.contains("permission denied"), "{args:?}: {line}");
    }
    // Enter the namespace as root, then drop to nobody for rasp-proxy itself.
    let stderr = fails(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", lab.host.name))
            .args(["--setuid", "65534", "--setgid", "65534", "--"])
            .arg(rasp_proxy_bin())
            .arg("--pin-dir")
            .arg("/run/rasp-tests/unprivileged")
            .args(["xdp", "attach", "--iface", "h1"]),
    );
    assert!(one_line(&stderr).contains("permission denied"), "{stderr}");
}

#[test]
fn a_full_map_is_named() {
    let lab = Lab::new(1);
    let _ = lab.cli_ok(&["xdp", "attach", "--iface", "h1", "--max-allowlist", "2"]);
    let _ = lab.cli_ok(&["allowlist", "add", "192.0.2.0/24"]);
    let _ = lab.cli_ok(&["allowlist", "add", "198.51.100.0/24"]);
    let out = lab.cli(&["allowlist", "add", "203.0.113.0/24"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = one_line(&stderr);
    assert!(line.contains("map ALLOWLIST is full (2 entries)"), "{line}");
    // Replacing an existing entry still works on a full map.
    let _ = lab.cli_ok(&["allowlist", "add", "192.0.2.0/24"]);
}
