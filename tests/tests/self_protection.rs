//! The self-protection loop end to end: `rasp-proxy run` with XDP on the host's veths, a real upstream, an
//! attacker sending injection payloads and a legitimate client, in network namespaces.

use std::time::Duration;

use rasp_tests::{Daemon, Lab, eventually, http_get_path, http_status, reachable};
use serde_json::Value;

const PROXY: u16 = 8080;
const UPSTREAM: u16 = 9001;
const TIMEOUT: Duration = Duration::from_millis(700);
const SQLI: &str = "/search?q=1%27%20OR%20%271%27%3D%271";

fn config(lab: &Lab, risk_mode: &str, inspection_mode: &str) -> String {
    lab.daemon_config_base(PROXY, UPSTREAM, "")
        + &format!(
            r#"
[[route]]
path_prefix = "/"
upstream = "app"

[inspection]
mode = "{inspection_mode}"

[risk]
mode = "{risk_mode}"
ban_ttls = ["3s", "8s"]
"#
        )
}

fn start(lab: &Lab, risk_mode: &str, inspection_mode: &str) -> Daemon {
    let daemon = Daemon::start(&lab.host, &config(lab, risk_mode, inspection_mode));
    let client = &lab.clients[0];
    let up = eventually(Duration::from_secs(10), || {
        http_status(&client.ns, client.host_v4(), PROXY, "/", TIMEOUT) == Ok(200)
    });
    assert!(up, "the proxy did not come up:\n{}", daemon.output());
    daemon
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one story, from the first attack to the second ban"
)]
fn an_attacker_is_refused_then_dropped_in_the_kernel_while_a_client_is_served() {
    let lab = Lab::new(2);
    let _upstream = lab.http_server(UPSTREAM);
    let daemon = start(&lab, "block", "block");
    let (client, attacker) = (&lab.clients[0], &lab.clients[1]);
    let attacker_addr = attacker.v4().to_string();

    // An idle keep-alive connection the attacker opened before attacking: the ban must close it.
    let idle = attacker.ns.run({
        let target = std::net::SocketAddr::new(attacker.host_v4(), PROXY);
        move || std::net::TcpStream::connect_timeout(&target, TIMEOUT)
    });
    let mut idle = idle.expect("idle connection");

    // Injection payloads are refused at L7 until the source crosses the ban threshold.
    let mut statuses = Vec::new();
    for _ in 0..10 {
        match http_status(&attacker.ns, attacker.host_v4(), PROXY, SQLI, TIMEOUT) {
            Ok(s) => statuses.push(s),
            Err(_) => break,
        }
    }
    assert!(
        !statuses.is_empty() && statuses.iter().all(|&s| s == 403),
        "attacks get 403: {statuses:?}"
    );
    assert!(
        statuses.len() < 10,
        "the attacker must be cut off after a few attacks: {statuses:?}"
    );
    let ban = lab
        .ban_of(&attacker_addr)
        .unwrap_or_else(|| panic!("no kernel ban:\n{}", daemon.output()));
    assert_eq!(ban["reason"], "injection");
    assert_eq!(ban["strikes"], 1);
    assert!(
        ban["note"].as_str().is_some_and(|n| n.contains("sqli")),
        "the note names the rules: {ban}"
    );

    // The ban closed the attacker's open connection (the proxy's FIN/RST still reaches it: XDP filters ingress).
    idle.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut buf = [0u8; 1];
    let closed = matches!(std::io::Read::read(&mut idle, &mut buf), Ok(0))
        || matches!(std::io::Read::read(&mut idle, &mut buf), Err(e) if e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut);
    assert!(closed, "the banned source's open connection must be closed");

    // The kernel now drops the attacker's packets: connections time out, even on a fresh port.
    assert!(
        http_status(&attacker.ns, attacker.host_v4(), PROXY, "/", TIMEOUT).is_err(),
        "attacker's SYNs are dropped"
    );
    assert!(
        !reachable(&attacker.ns, attacker.host_v4(), UPSTREAM, TIMEOUT),
        "dropped for every port"
    );
    assert_eq!(
        http_status(&client.ns, client.host_v4(), PROXY, "/", TIMEOUT),
        Ok(200),
        "the client is still served"
    );
    let stats = lab.cli_json(&["maps", "dump", "stats", "--json"]);
    let dropped = stats
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "dropped_ban"))
        .map(|s| s["packets"].clone());
    assert!(
        dropped.and_then(|d| d.as_u64()).unwrap_or(0) > 0,
        "XDP counted the drops: {stats}"
    );
    assert!(
        daemon.output().contains("\"action\":\"ban\""),
        "a forensic record was logged:\n{}",
        daemon.output()
    );

    // The kernel's counters and the loop's actions are Prometheus metrics on the admin listener.
    let metrics = http_get_path(&lab.host, "127.0.0.1".parse().unwrap(), 9901, "/metrics", TIMEOUT).unwrap();
    let value = |prefix: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(
        value("rasp_proxy_xdp_packets_total{outcome=\"dropped_ban\"}") > 0.0,
        "{metrics}"
    );
    assert!(
        value("rasp_proxy_risk_actions_total{action=\"ban\",reason=\"injection\",mode=\"block\"}") >= 1.0,
        "{metrics}"
    );
    assert!(value("rasp_proxy_bans_active") >= 1.0, "{metrics}");
    // The dashboard's kernel-only metrics (the non-privileged dashboard test cannot see them) are exported here.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/rasp-proxy.json"
    ))
    .expect("dashboard");
    for name in [
        "rasp_proxy_xdp_packets_total",
        "rasp_proxy_xdp_bytes_total",
        "rasp_proxy_top_source_packets_per_second",
    ] {
        if dashboard.contains(name) {
            assert!(
                metrics.lines().any(|l| l.starts_with(name) && l.contains('{')),
                "{name} has no sample:\n{metrics}"
            );
        }
    }
    assert!(
        metrics.contains("rasp_proxy_top_source_packets_per_second{source=\"198.18."),
        "{metrics}"
    );

    // `bans explain` asks the daemon's admin API for the chain of events behind the ban.
    let explain = lab.cli_ok(&["bans", "explain", &attacker_addr]);
    let explain: Value =
        serde_json::from_str(&explain).unwrap_or_else(|e| panic!("bad JSON ({e}): {explain}"));
    assert_eq!(explain["ban"]["reason"], "injection", "{explain}");
    let chain = explain["chain"].as_array().cloned().unwrap_or_default();
    assert!(chain.len() >= 2, "the chain holds the attacks: {explain}");
    assert_eq!(chain[0]["evidence"][0]["location"], "query:q", "{explain}");

    // The ban expires on its own; a repeat offender's second ban is longer.
    let back = eventually(Duration::from_secs(6), || {
        reachable(&attacker.ns, attacker.host_v4(), UPSTREAM, TIMEOUT)
    });
    assert!(back, "the 3 s ban expires without userspace action");
    for _ in 0..10 {
        if http_status(&attacker.ns, attacker.host_v4(), PROXY, SQLI, TIMEOUT).is_err() {
            break;
        }
    }
    let ban = lab.ban_of(&attacker_addr).expect("second ban");
    assert_eq!(ban["strikes"], 2, "{ban}");
    assert!(
        ban["remaining"].as_f64().unwrap_or(0.0) > 4.0,
        "the second ban uses the longer TTL: {ban}"
    );
}

#[test]
fn detect_mode_bans_nothing_and_logs_every_would_be_ban() {
    let lab = Lab::new(2);
    let _upstream = lab.http_server(UPSTREAM);
    let daemon = start(&lab, "detect", "detect");
    let attacker = &lab.clients[1];
    for _ in 0..8 {
        assert_eq!(
            http_status(&attacker.ns, attacker.host_v4(), PROXY, SQLI, TIMEOUT),
            Ok(200),
            "detect mode refuses nothing"
        );
    }
    assert!(
        lab.ban_of(&attacker.v4().to_string()).is_none(),
        "detect mode writes no ban"
    );
    let seen = eventually(Duration::from_secs(2), || {
        daemon.output().contains("\"action\":\"would_ban\"")
    });
    assert!(seen, "the would-be ban is logged:\n{}", daemon.output());
    assert!(
        daemon.output().contains("\"mode\":\"detect\""),
        "{}",
        daemon.output()
    );
}
