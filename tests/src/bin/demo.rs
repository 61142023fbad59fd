//! `cargo xtask demo`: the data plane end to end, in namespaces it creates and removes.
//!
//! A legitimate client and an attacker reach a real HTTP server through veths that carry the XDP program. The
//! attacker is banned through the CLI; its packets are then dropped in the kernel (its connections time out)
//! while the client keeps being served, and the pinned maps show the ban, the rates and the drop counters.
#![expect(clippy::print_stdout, reason = "the demo's output is its point")]

use std::time::Duration;

use rasp_tests::{Lab, reachable, send_udp};

const PORT: u16 = 8080;
const TIMEOUT: Duration = Duration::from_millis(800);

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the demo needs root (network namespaces, XDP)");
        std::process::exit(2);
    }
    let lab = Lab::new(2);
    let server = lab.http_server(PORT);
    let (client, attacker) = (&lab.clients[0], &lab.clients[1]);
    step("Attaching the XDP program to the host's veths");
    lab.attach_all();
    print!("{}", lab.cli_ok(&["xdp", "status"]));

    step("Both sources send requests");
    report("client", reachable(&client.ns, client.host_v4(), PORT, TIMEOUT));
    report(
        "attacker",
        reachable(&attacker.ns, attacker.host_v4(), PORT, TIMEOUT),
    );

    step(&format!("Banning the attacker {} for 10 minutes", attacker.v4()));
    print!(
        "{}",
        lab.cli_ok(&[
            "ban",
            &attacker.v4().to_string(),
            "--ttl",
            "10m",
            "--reason",
            "demo: attack"
        ])
    );

    step("The attacker's packets are dropped in the kernel; the client is still served");
    for _ in 0..3 {
        report(
            "attacker",
            reachable(&attacker.ns, attacker.host_v4(), PORT, TIMEOUT),
        );
        report("client", reachable(&client.ns, client.host_v4(), PORT, TIMEOUT));
    }
    send_udp(&attacker.ns, attacker.host_v4(), 9, 500, 64);
    println!("  attacker also sent a 500-packet UDP burst");

    step("rasp-proxy maps dump bans");
    print!("{}", lab.cli_ok(&["maps", "dump", "bans"]));
    step("rasp-proxy maps dump rates");
    print!("{}", lab.cli_ok(&["maps", "dump", "rates"]));
    step("rasp-proxy maps dump stats");
    print!("{}", lab.cli_ok(&["maps", "dump", "stats"]));
    println!(
        "\nHTTP requests served by the upstream: {}",
        server.served.load(std::sync::atomic::Ordering::Relaxed)
    );
    step("Cleaning up (namespaces, XDP links, pinned maps)");
}

fn step(what: &str) {
    println!("\n== {what}");
}

fn report(who: &str, served: bool) {
    println!(
        "  {who:<9} {}",
        if served {
            "served (HTTP 200)"
        } else {
            "no answer: dropped by XDP"
        }
    );
}
