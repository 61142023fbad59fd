//! `deploy/systemd/rasp-proxy.service`: `systemd-analyze verify` accepts it without a warning, and the command
//! lines it runs are ones `rasp-proxy` accepts.

#![expect(clippy::unwrap_used, reason = "test helpers: a failure here is a failed test")]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

const BIN: &str = env!("CARGO_BIN_EXE_rasp-proxy");
/// Where the unit expects the binary; the test points it at the one cargo just built.
const INSTALLED_BIN: &str = "/usr/local/bin/rasp-proxy";

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/rasp-proxy.service")
}

fn unit() -> String {
    std::fs::read_to_string(unit_path()).unwrap()
}

/// The value of the one line `key=value` in the unit.
fn value<'a>(unit: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    let mut lines = unit.lines().filter_map(|l| l.strip_prefix(prefix.as_str()));
    let v = lines.next().unwrap_or_else(|| panic!("the unit has no {key}="));
    assert!(lines.next().is_none(), "the unit sets {key}= twice");
    v
}

#[test]
fn systemd_analyze_verify_accepts_the_unit_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    // systemd-analyze checks that every Exec*= binary exists: point them at the built one.
    let path = dir.path().join("rasp-proxy.service");
    std::fs::write(&path, unit().replace(INSTALLED_BIN, BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--recursive-errors=no"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze is needed (apt-get install -y systemd): {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed:\n{stderr}");
    // Unknown keys and unparsable values are only warnings to systemd, and are still mistakes here.
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warned:\n{stderr}"
    );
}

#[test]
fn unit_restarts_on_failure_reloads_on_sighup_and_outlasts_the_drain() {
    let unit = unit();
    assert_eq!(value(&unit, "Restart"), "on-failure");
    assert_eq!(value(&unit, "ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(
        value(&unit, "Type"),
        "exec",
        "so that $MAINPID is rasp-proxy itself"
    );
    let stop = humantime::parse_duration(value(&unit, "TimeoutStopSec")).unwrap();
    let config = proxy_user::config::Config::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config.toml"),
    )
    .unwrap();
    assert!(
        stop > config.timeouts.shutdown_grace,
        "TimeoutStopSec ({stop:?}) must exceed the drain ({:?})",
        config.timeouts.shutdown_grace
    );
}

#[test]
fn unit_command_lines_are_accepted_by_rasp_proxy() {
    let unit = unit();
    let attach = value(&unit, "ExecStartPre")
        .replace("${RASP_XDP_IFACE}", "eth0")
        .replace("${RASP_XDP_MODE}", "native");
    let start = value(&unit, "ExecStart");
    for line in [attach.as_str(), start] {
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some(INSTALLED_BIN), "{line}");
        let args: Vec<&str> = words.collect();
        // `--help` after the arguments makes clap parse them all and exit 0, without running anything.
        let out = Command::new(BIN).args(&args).arg("--help").output().unwrap();
        assert!(
            out.status.success(),
            "`rasp-proxy {}` does not parse: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        start.ends_with("run --config /etc/rasp-proxy/config.toml"),
        "{start}"
    );
}
