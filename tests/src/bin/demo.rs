//! `cargo xtask demo`: the self-protection loop end to end, in namespaces it creates and removes.
//!
//! A legitimate client and an attacker reach a sample upstream through `rasp-proxy run` (the shipped
//! `examples/demo.toml`), with the XDP program on the host's veths. The attacker's injection attempts are refused
//! at L7 until its risk crosses the ban threshold; the ban goes into the kernel map and the attacker's packets are
//! then dropped by XDP, while the client keeps being served.
#![expect(clippy::print_stdout, reason = "the demo's output is its point")]
#![expect(
    clippy::expect_used,
    reason = "a demo binary: panicking with a message is its error handling"
)]

use std::{path::PathBuf, time::Duration};

use rasp_tests::{Daemon, Lab, PinDirGuard, eventually, http_status, send_udp};

const PROXY: u16 = 8080;
const UPSTREAM: u16 = 9001;
const TIMEOUT: Duration = Duration::from_millis(800);
const ATTACK: &str = "/orders?id=1%27%20OR%20%271%27%3D%271";
const LEGIT: &str = "/orders?id=42";

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the demo needs root (network namespaces, XDP)");
        std::process::exit(2);
    }
    let config_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/demo.toml");
    let config = std::fs::read_to_string(&config_path).expect("examples/demo.toml");
    let lab = Lab::with_pins(
        2,
        PinDirGuard {
            path: PathBuf::from("/run/rasp-proxy-demo"),
        },
    );
    let upstream = lab.http_server(UPSTREAM);
    let (client, attacker) = (&lab.clients[0], &lab.clients[1]);

    step(&format!(
        "Starting rasp-proxy run --config {} in the host namespace",
        config_path.display()
    ));
    let daemon = Daemon::start(&lab.host, &config);
    let up = eventually(Duration::from_secs(15), || {
        http_status(&client.ns, client.host_v4(), PROXY, "/", TIMEOUT) == Ok(200)
    });
    assert!(up, "the proxy did not come up:\n{}", daemon.output());
    print!("{}", lab.cli_ok(&["xdp", "status"]));

    step(&format!("The client {} sends legitimate requests", client.v4()));
    for _ in 0..3 {
        report(
            "client",
            "GET /orders?id=42",
            &http_status(&client.ns, client.host_v4(), PROXY, LEGIT, TIMEOUT),
        );
    }

    step(&format!(
        "The attacker {} sends SQL injection: GET /orders?id=1' OR '1'='1",
        attacker.v4()
    ));
    for _ in 0..8 {
        let r = http_status(&attacker.ns, attacker.host_v4(), PROXY, ATTACK, TIMEOUT);
        let dropped = r.is_err();
        report("attacker", "SQLi", &r);
        if dropped {
            break;
        }
    }
    step("The attacker's packets are now dropped by XDP; the client is still served");
    report(
        "attacker",
        "GET /orders?id=42",
        &http_status(&attacker.ns, attacker.host_v4(), PROXY, LEGIT, TIMEOUT),
    );
    send_udp(&attacker.ns, attacker.host_v4(), 9, 200, 64);
    println!("  attacker also sent 200 UDP packets");
    for _ in 0..2 {
        report(
            "client",
            "GET /orders?id=42",
            &http_status(&client.ns, client.host_v4(), PROXY, LEGIT, TIMEOUT),
        );
    }

    step("rasp-proxy maps dump bans");
    print!("{}", lab.cli_ok(&["maps", "dump", "bans"]));
    step("rasp-proxy maps dump stats (XDP drop counters)");
    print!("{}", lab.cli_ok(&["maps", "dump", "stats"]));
    step(&format!(
        "rasp-proxy bans explain {} (from the daemon's admin API)",
        attacker.v4()
    ));
    let explain = lab.cli_ok(&["bans", "explain", &attacker.v4().to_string()]);
    let short: String = explain.lines().take(24).collect::<Vec<_>>().join("\n");
    println!("{short}\n  ...");
    println!(
        "\nrequests that reached the upstream: {}",
        upstream.served.load(std::sync::atomic::Ordering::Relaxed)
    );
    step("Stopping the daemon and cleaning up (namespaces, XDP links, pinned maps)");
    drop(daemon);
}

fn step(what: &str) {
    println!("\n== {what}");
}

fn report(who: &str, what: &str, result: &Result<u16, String>) {
    match result {
        Ok(status) => println!("  {who:<9} {what:<18} -> HTTP {status}"),
        Err(_) => println!("  {who:<9} {what:<18} -> no answer: dropped by XDP"),
    }
}
