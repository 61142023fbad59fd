//! The XDP data plane on real veth interfaces in network namespaces, driven through the `rasp-proxy` CLI, with
//! real TCP/HTTP and UDP traffic.

use std::time::Duration;

use rasp_tests::{Lab, eventually, reachable, send_udp};
use serde_json::Value;

const PORT: u16 = 8080;
/// Long enough for a working connection on a veth, short enough that a dropped SYN fails the check quickly.
const CONNECT: Duration = Duration::from_millis(700);

#[test]
fn a_banned_client_is_dropped_while_the_other_is_served_and_unban_restores_it() {
    let lab = Lab::new(2);
    let _server = lab.http_server(PORT);
    lab.attach_all();
    let (a, b) = (&lab.clients[0], &lab.clients[1]);
    assert!(
        reachable(&a.ns, a.host_v4(), PORT, CONNECT),
        "client A should be served before any ban"
    );
    assert!(
        reachable(&b.ns, b.host_v4(), PORT, CONNECT),
        "client B should be served before any ban"
    );

    let out = lab.cli_ok(&[
        "ban",
        &a.v4().to_string(),
        "--ttl",
        "10m",
        "--reason",
        "test: banned client",
    ]);
    assert!(out.contains("banned"), "{out}");
    assert!(
        !reachable(&a.ns, a.host_v4(), PORT, CONNECT),
        "banned client A must not connect"
    );
    assert!(
        reachable(&b.ns, b.host_v4(), PORT, CONNECT),
        "client B must still be served"
    );
    assert!(
        lab.stat("dropped_ban") > 0,
        "drops must be counted as dropped_ban"
    );

    let bans = lab.cli_json(&["maps", "dump", "bans", "--json"]);
    let ban = &bans[0];
    assert_eq!(ban["addr"], a.v4().to_string());
    assert_eq!(ban["note"], "test: banned client");
    assert!(
        ban["hits"].as_u64().unwrap_or(0) > 0,
        "the ban's hit counter must rise: {ban}"
    );
    assert!(ban["remaining"].as_f64().unwrap_or(0.0) > 590.0, "{ban}");

    let _ = lab.cli_ok(&["unban", &a.v4().to_string()]);
    assert!(
        reachable(&a.ns, a.host_v4(), PORT, CONNECT),
        "unban must restore client A"
    );
}

#[test]
fn a_short_ban_expires_in_the_kernel_without_userspace() {
    let lab = Lab::new(1);
    let _server = lab.http_server(PORT);
    lab.attach_all();
    let a = &lab.clients[0];
    let _ = lab.cli_ok(&["ban", &a.v4().to_string(), "--ttl", "2s"]);
    assert!(
        !reachable(&a.ns, a.host_v4(), PORT, CONNECT),
        "banned client must not connect"
    );
    std::thread::sleep(Duration::from_millis(2200));
    // No rasp-proxy process runs now: the kernel compares the expiry itself.
    assert!(
        reachable(&a.ns, a.host_v4(), PORT, CONNECT),
        "an expired ban must let the client through"
    );
    let bans = lab.cli_json(&["maps", "dump", "bans", "--json"]);
    assert_eq!(
        bans[0]["expired"], true,
        "the entry stays until reaped, marked expired: {bans}"
    );
}

#[test]
fn a_cidr_block_drops_and_an_allowlist_exception_wins() {
    let lab = Lab::new(2);
    let _server = lab.http_server(PORT);
    lab.attach_all();
    let (a, b) = (&lab.clients[0], &lab.clients[1]);
    let _ = lab.cli_ok(&["blocklist", "add", "198.18.0.0/15"]);
    assert!(
        !reachable(&a.ns, a.host_v4(), PORT, CONNECT),
        "A is inside the blocked CIDR"
    );
    assert!(
        !reachable(&b.ns, b.host_v4(), PORT, CONNECT),
        "B is inside the blocked CIDR"
    );
    assert!(lab.stat("dropped_blocklist") > 0);

    let _ = lab.cli_ok(&["allowlist", "add", &format!("{}/32", a.v4())]);
    assert!(
        reachable(&a.ns, a.host_v4(), PORT, CONNECT),
        "the allowlist must win over the blocklist"
    );
    assert!(
        !reachable(&b.ns, b.host_v4(), PORT, CONNECT),
        "B is still blocked"
    );
    // An allowlisted source is never dropped, not even when banned.
    let _ = lab.cli_ok(&["ban", &a.v4().to_string(), "--ttl", "1m"]);
    assert!(
        reachable(&a.ns, a.host_v4(), PORT, CONNECT),
        "an allowlisted source must pass despite a ban"
    );
    assert!(lab.stat("allowlisted") > 0);

    let list = lab.cli_json(&["maps", "dump", "blocklist", "--json"]);
    assert_eq!(list[0]["cidr"], "198.18.0.0/15");
    let _ = lab.cli_ok(&["blocklist", "remove", "198.18.0.0/15"]);
    assert!(
        reachable(&b.ns, b.host_v4(), PORT, CONNECT),
        "removing the block restores B"
    );
}

#[test]
fn rate_counters_match_the_packets_sent() {
    const COUNT: usize = 1000;
    const PAYLOAD: usize = 100;
    let lab = Lab::new(1);
    lab.attach_all();
    let a = &lab.clients[0];
    send_udp(&a.ns, a.host_v4(), 9, COUNT, PAYLOAD);
    // Ethernet 14 + IPv4 20 + UDP 8 + payload.
    let frame = 14 + 20 + 8 + PAYLOAD;
    let ok = eventually(Duration::from_secs(2), || {
        let rates = lab.cli_json(&["maps", "dump", "rates", "--json"]);
        rates.as_array().is_some_and(|r| {
            r.iter()
                .any(|s| s["addr"] == a.v4().to_string() && s["total_packets"].as_u64() == Some(COUNT as u64))
        })
    });
    let rates = lab.cli_json(&["maps", "dump", "rates", "--json"]);
    assert!(ok, "expected exactly {COUNT} packets from {}: {rates}", a.v4());
    let src = rates
        .as_array()
        .and_then(|r| r.iter().find(|s| s["addr"] == a.v4().to_string()))
        .cloned();
    let src = src.unwrap_or_else(|| panic!("{} not tracked: {rates}", a.v4()));
    assert_eq!(src["total_bytes"].as_u64(), Some((COUNT * frame) as u64), "{src}");
    assert!(src["packets_per_sec"].as_f64().unwrap_or(0.0) > 0.0, "{src}");
    // The table form prints addresses as addresses.
    assert!(
        lab.cli_ok(&["maps", "dump", "rates"])
            .contains(&a.v4().to_string())
    );
}

#[test]
fn the_kernel_rate_limit_drops_a_flood_for_the_rest_of_the_window() {
    let lab = Lab::new(2);
    let _server = lab.http_server(PORT);
    lab.attach_all();
    let (a, b) = (&lab.clients[0], &lab.clients[1]);
    let _ = lab.cli_ok(&["xdp", "set", "--rate-limit-pps", "200", "--rate-window", "1s"]);
    send_udp(&a.ns, a.host_v4(), 9, 2000, 64);
    let dropped = lab.stat("dropped_rate_limit");
    assert!(
        dropped >= 1500,
        "a 2000-packet burst over a 200 pps ceiling should mostly drop, dropped {dropped}"
    );
    assert!(
        !reachable(&a.ns, a.host_v4(), PORT, Duration::from_millis(300)),
        "the flooder is over its ceiling"
    );
    assert!(
        reachable(&b.ns, b.host_v4(), PORT, CONNECT),
        "the other client is unaffected"
    );
    let _ = lab.cli_ok(&["xdp", "set", "--rate-limit-pps", "0"]);
}

#[test]
fn ipv6_sources_are_banned_and_counted() {
    let lab = Lab::new(2);
    let _server = lab.http_server(PORT);
    lab.attach_all();
    let (a, b) = (&lab.clients[0], &lab.clients[1]);
    assert!(
        reachable(&a.ns, a.host_v6(), PORT, CONNECT),
        "A over IPv6 before the ban"
    );
    let _ = lab.cli_ok(&["ban", &a.v6().to_string(), "--ttl", "5m"]);
    assert!(
        !reachable(&a.ns, a.host_v6(), PORT, CONNECT),
        "A's IPv6 address is banned"
    );
    assert!(
        reachable(&a.ns, a.host_v4(), PORT, CONNECT),
        "A's IPv4 address is not"
    );
    assert!(
        reachable(&b.ns, b.host_v6(), PORT, CONNECT),
        "B over IPv6 is served"
    );
    let _ = lab.cli_ok(&["blocklist", "add", "2001:db8:2::/48"]);
    assert!(
        !reachable(&b.ns, b.host_v6(), PORT, CONNECT),
        "B's IPv6 prefix is blocked"
    );
    let rates = lab.cli_json(&["maps", "dump", "rates", "--json"]);
    assert!(
        rates
            .as_array()
            .is_some_and(|r| r.iter().any(|s| s["addr"] == a.v6().to_string())),
        "IPv6 sources are tracked: {rates}"
    );
}

#[test]
fn reattaching_keeps_the_bans_and_the_attachment() {
    let lab = Lab::new(2);
    let _server = lab.http_server(PORT);
    lab.attach_all();
    let (a, b) = (&lab.clients[0], &lab.clients[1]);
    let _ = lab.cli_ok(&["ban", &a.v4().to_string(), "--ttl", "10m"]);
    let before = lab.cli_json(&["xdp", "status", "--json"]);
    // What a daemon restart or upgrade does: load again against the pinned maps and link.
    let out = lab.cli_ok(&["xdp", "attach", "--iface", &a.host_iface]);
    assert!(out.contains("re-attached"), "{out}");
    let after = lab.cli_json(&["xdp", "status", "--json"]);
    let link = |s: &Value, field: &str| {
        s["links"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["iface"] == a.host_iface.as_str()))
            .map(|l| l[field].clone())
    };
    assert_eq!(
        link(&before, "link_id"),
        link(&after, "link_id"),
        "the same kernel link is kept"
    );
    assert_ne!(
        link(&before, "prog_id"),
        link(&after, "prog_id"),
        "the program in it was replaced"
    );
    assert_eq!(link(&after, "attached"), Some(Value::Bool(true)));
    assert!(
        !reachable(&a.ns, a.host_v4(), PORT, CONNECT),
        "the ban survives re-attachment"
    );
    assert!(reachable(&b.ns, b.host_v4(), PORT, CONNECT));
    let bans = lab.cli_json(&["maps", "dump", "bans", "--json"]);
    assert!(
        bans[0]["remaining"].as_f64().unwrap_or(0.0) > 500.0,
        "remaining TTL kept: {bans}"
    );

    // Detaching removes the filter (the ban stays in the map for the next attach).
    let _ = lab.cli_ok(&["xdp", "detach", "--iface", &a.host_iface]);
    assert!(
        reachable(&a.ns, a.host_v4(), PORT, CONNECT),
        "no filter once detached"
    );
    let out = lab.cli(&["xdp", "detach", "--iface", &a.host_iface]);
    assert!(!out.status.success(), "detaching twice is an error");
    assert_eq!(
        lab.cli_json(&["maps", "dump", "bans", "--json"])
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

#[test]
fn drop_events_are_sampled_into_the_ring_buffer() {
    let lab = Lab::new(1);
    lab.attach_all();
    let a = &lab.clients[0];
    let _ = lab.cli_ok(&["ban", &a.v4().to_string(), "--ttl", "1m"]);
    send_udp(&a.ns, a.host_v4(), 9, 500, 32);
    let out = lab.cli_ok(&["xdp", "events", "--count", "10", "--timeout", "1s"]);
    let events: Vec<Value> = out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    // One event per source per second, not one per dropped packet.
    assert_eq!(events.len(), 1, "expected one sampled event for 500 drops: {out}");
    assert_eq!(events[0]["source"], a.v4().to_string());
    assert_eq!(events[0]["reason"], "ban");
}
