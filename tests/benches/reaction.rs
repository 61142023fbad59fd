//! `cargo xtask bench reaction`: how long an attacker keeps reaching the host after the request that gets it
//! banned — from the first byte of that request to the first packet of the same source that XDP drops.
//!
//! Method. A lab (`rasp_tests::Lab`) with a real `rasp-proxy run` daemon in the host namespace, XDP attached to
//! the host's veths, an upstream, `[risk] ban_threshold` low enough that ONE SQL injection bans, and a short ban
//! TTL. The attacker's veth gets one extra address per trial (in `198.19.0.0/16`, routed to its link by the
//! host), so every trial is a source the kernel and the risk engine have never seen (no strikes, no cached
//! verdict, and a first drop always emits an event). Per trial, on one thread inside the attacker's namespace:
//! 1. open a TCP connection to the proxy from the trial's address (the handshake is not timed);
//! 2. t0 = `CLOCK_MONOTONIC` just before writing the first byte of the SQL injection request;
//! 3. at once send small UDP probes from the same address to the host, one every ~50 µs (a sleep, so the daemon
//!    keeps a core on this 2-core machine), and drain the pinned `DROP_EVENTS` ring buffer after each, until an
//!    event for the trial's address appears or a timeout passes;
//! 4. reaction = event `ts_ns` (`bpf_ktime_get_ns`, the same `CLOCK_MONOTONIC`: namespaces share the clock) − t0;
//! 5. reset the connection and unban the source.
//!
//! Step 5 is there because a banned source's late TCP retransmissions keep producing drop events (the bench sets
//! `xdp set --event-interval 1ms`); hundreds of them exhaust the per-CPU event budget (1024 per rate window) and
//! a later trial's first-drop event is then lost, so that trial would be timed by a drop up to a window later. A
//! trial during which `events_lost` moves is refused and listed as failed, never counted.
//!
//! The first dropped packet may be a probe or the client's own TCP ACK of the 403: either is the attacker's next
//! packet, which is what the figure is about. A probe gap (~0.06 ms) is the measurement's resolution; it can
//! only add to the figure. The ban's `created_ns` (the daemon's clock reading when it wrote the ban) splits each
//! trial into the L7 part (request → ban written: parse, inspect, score, map write) and the kernel part (ban
//! written → first drop). Warm-up trials are run first and not counted. The daemon is the bench-profile
//! (optimised) build that `cargo xtask bench reaction` makes and passes in `RASP_PROXY_BIN`. Needs root.
#![expect(
    clippy::expect_used,
    reason = "a bench binary: panicking with a message is its error handling"
)]
#![expect(
    clippy::cast_precision_loss,
    reason = "ns figures are printed as ms, not computed with"
)]

use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData, RingBuf};
use proxy_common::{Addr, Ban, map_names};
use proxy_user::{
    addr::to_key,
    xdp::{KernelMaps, PinDir, commands::decode_event, sys::monotonic_ns},
};
use rasp_tests::{Daemon, Lab, eventually, http_status};
use socket2::{Domain, Socket, Type};

const TRIALS: usize = 1000;
const WARM_UP: usize = 5;
/// Where the per-trial attacker addresses come from (part of the benchmarking range `198.18.0.0/15`).
const SOURCES: &str = "198.19.0.0/16";
const PROXY: u16 = 8080;
const UPSTREAM: u16 = 9001;
const PROBE_PORT: u16 = 9;
const PROBE_GAP: Duration = Duration::from_micros(50);
/// A trial without a drop event by then counts as a timeout.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(1);
/// Ring-buffer records read at most per drain, so a flood of events cannot hold a trial forever.
const MAX_DRAIN: usize = 100_000;
/// The whole measurement stops after this, whatever the count.
const BENCH_BUDGET: Duration = Duration::from_mins(2);
const SQLI: &str = "/search?q=1%27%20OR%20%271%27%3D%271";
/// The `CrowdSec` firewall bouncer fetches new decisions on this period by default.
const POLL_PERIOD: Duration = Duration::from_secs(10);
const TARGET_P99: Duration = Duration::from_millis(5);

/// One trial's timings, ns.
#[derive(Clone, Copy)]
struct Trial {
    /// t0 → first drop.
    reaction: u64,
    /// t0 → ban written by the daemon.
    to_ban: u64,
    /// Ban written → first drop.
    to_drop: u64,
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("bench reaction needs root (XDP, network namespaces)");
        std::process::exit(2);
    }
    // `cargo bench` passes `--bench`; nothing to parse.
    let lab = Lab::new(2);
    let _upstream = lab.http_server(UPSTREAM);
    let daemon = Daemon::start(&lab.host, &config(&lab));
    let (client, attacker) = (&lab.clients[0], &lab.clients[1]);
    let up = eventually(Duration::from_secs(15), || {
        http_status(
            &client.ns,
            client.host_v4(),
            PROXY,
            "/",
            Duration::from_millis(700),
        ) == Ok(200)
    });
    assert!(up, "the proxy did not come up:\n{}", daemon.output());
    // One event per source per millisecond at most: the first drop of each trial's source always emits.
    let _ = lab.cli_ok(&["xdp", "set", "--event-interval", "1ms"]);

    let total = WARM_UP + TRIALS;
    let sources: Vec<Ipv4Addr> = (0..total)
        .map(|i| {
            let i = u32::try_from(i).expect("trial count fits in u32");
            // 198.19.0.1 onwards, skipping .0 and .255 host bytes.
            Ipv4Addr::new(
                198,
                19,
                u8::try_from(i / 254).expect("at most 64k trials"),
                u8::try_from(i % 254 + 1).expect("under 255"),
            )
        })
        .collect();
    lab.host
        .ip(&["route", "add", SOURCES, "dev", &attacker.host_iface]);
    for s in &sources {
        attacker.ns.ip(&["addr", "add", &format!("{s}/32"), "dev", "c0"]);
    }
    let pins = PinDir::new(&lab.pins.path);
    let proxy = SocketAddr::new(attacker.host_v4(), PROXY);
    let probe_to = SocketAddr::new(attacker.host_v4(), PROBE_PORT);
    eprintln!("running {WARM_UP} warm-up and {TRIALS} measured trials ...");
    let (trials, failures) = attacker.ns.run(move || measure(&pins, &sources, proxy, probe_to));
    let (trials, failures) = (trials, failures);
    if trials.is_empty() {
        eprintln!("no trial measured; daemon output:\n{}", daemon.output());
        for f in &failures {
            eprintln!("  {f}");
        }
        std::process::exit(1);
    }
    print_table(&trials, &failures);
}

fn config(lab: &Lab) -> String {
    lab.daemon_config_base(PROXY, UPSTREAM, "")
        + r#"
[[route]]
path_prefix = "/"
upstream = "app"

[inspection]
mode = "block"

[risk]
mode = "block"
ban_threshold = 1.0
ban_ttls = ["5s"]
"#
}

/// Runs every trial on this thread (inside the attacker's namespace); measured trials and failure messages.
fn measure(
    pins: &PinDir,
    sources: &[Ipv4Addr],
    proxy: SocketAddr,
    probe_to: SocketAddr,
) -> (Vec<Trial>, Vec<String>) {
    // Sleeps of ~50 µs need a small timer slack (the default 50 µs would double them).
    // SAFETY: prctl with an integer argument; affects this thread only.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000_u64) };
    let mut ring = open_ring(pins);
    let bans: HashMap<MapData, Addr, Ban> = open_map(pins, map_names::BANS)
        .try_into()
        .expect("BANS is a hash map");
    let mut maps = KernelMaps::open(pins).expect("open the pinned maps");
    let started = Instant::now();
    let (mut trials, mut failures) = (Vec::new(), Vec::new());
    for (i, src) in sources.iter().enumerate() {
        if started.elapsed() > BENCH_BUDGET {
            failures.push(format!("time budget of {BENCH_BUDGET:?} spent after {i} trials"));
            break;
        }
        let lost_before = events_lost(&maps);
        let outcome = trial(*src, proxy, probe_to, &mut ring, &bans);
        // A first drop whose event the per-CPU budget swallowed would be timed by a later drop: not a figure.
        let outcome = outcome.and_then(|t| {
            if events_lost(&maps) == lost_before {
                Ok(t)
            } else {
                Err("a drop event was lost to the per-CPU event budget during the trial".to_owned())
            }
        });
        // Lifted at once, so the source's late TCP retransmissions are answered (and end) instead of feeding
        // drop events into the shared per-CPU budget.
        if let Err(e) = maps.unban(IpAddr::V4(*src)) {
            failures.push(format!("{src}: unban: {e}"));
        }
        match outcome {
            Ok(t) if i >= WARM_UP => trials.push(t),
            Ok(_) => {}
            Err(e) => failures.push(format!("{src}: {e}")),
        }
    }
    (trials, failures)
}

fn events_lost(maps: &KernelMaps) -> u64 {
    maps.stats()
        .expect("read the stats map")
        .iter()
        .find(|s| s.name == "events_lost")
        .map_or(0, |s| s.packets)
}

fn open_map(pins: &PinDir, name: &str) -> Map {
    let path = pins.map(name);
    let data = MapData::from_pin(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    Map::from_map_data(data).unwrap_or_else(|e| panic!("map {name}: {e}"))
}

fn open_ring(pins: &PinDir) -> RingBuf<MapData> {
    RingBuf::try_from(open_map(pins, map_names::DROP_EVENTS)).expect("DROP_EVENTS is a ring buffer")
}

fn trial(
    src: Ipv4Addr,
    proxy: SocketAddr,
    probe_to: SocketAddr,
    ring: &mut RingBuf<MapData>,
    bans: &HashMap<MapData, Addr, Ban>,
) -> Result<Trial, String> {
    let source = IpAddr::V4(src);
    // Events of earlier trials' sources (their late retransmissions) are not this trial's.
    for _ in 0..MAX_DRAIN {
        if ring.next().is_none() {
            break;
        }
    }
    let stream = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| format!("socket: {e}"))?;
    stream
        .bind(&SocketAddr::new(source, 0).into())
        .map_err(|e| format!("bind: {e}"))?;
    // Closed with a reset at the end of the trial: nothing of it lingers.
    stream
        .set_linger(Some(Duration::ZERO))
        .map_err(|e| format!("SO_LINGER: {e}"))?;
    stream
        .connect_timeout(&proxy.into(), Duration::from_secs(2))
        .map_err(|e| format!("connect {proxy}: {e}"))?;
    let probe = UdpSocket::bind(SocketAddr::new(source, 0)).map_err(|e| format!("bind UDP: {e}"))?;
    probe
        .set_nonblocking(true)
        .map_err(|e| format!("UDP nonblocking: {e}"))?;
    let request = format!("GET {SQLI} HTTP/1.1\r\nHost: api.example.test\r\nConnection: close\r\n\r\n");

    let t0 = monotonic_ns();
    (&stream)
        .write_all(request.as_bytes())
        .map_err(|e| format!("send the request: {e}"))?;
    let deadline = Instant::now() + TRIAL_TIMEOUT;
    let dropped_at = loop {
        // Errors (an ICMP answer to an earlier probe) do not stop the probe from being sent next time.
        let _ = probe.send_to(&[0x5a; 16], probe_to);
        let mut found = None;
        for _ in 0..MAX_DRAIN {
            let Some(item) = ring.next() else { break };
            if let Some(e) = decode_event(&item)
                && e.source == source
                && found.is_none()
            {
                if e.reason != "ban" {
                    return Err(format!("dropped for {} rather than a ban", e.reason));
                }
                found = Some(e.monotonic_ns);
            }
        }
        if let Some(ts) = found {
            break ts;
        }
        if Instant::now() >= deadline {
            return Err(format!("no drop event within {TRIAL_TIMEOUT:?}"));
        }
        std::thread::sleep(PROBE_GAP);
    };
    let ban = bans
        .get(&to_key(source), 0)
        .map_err(|e| format!("no ban in the map after the drop: {e}"))?;
    if dropped_at < t0 || ban.created_ns < t0 || dropped_at < ban.created_ns {
        return Err(format!(
            "clock readings out of order: t0 {t0}, ban {}, drop {dropped_at}",
            ban.created_ns
        ));
    }
    Ok(Trial {
        reaction: dropped_at - t0,
        to_ban: ban.created_ns - t0,
        to_drop: dropped_at - ban.created_ns,
    })
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: usize) -> u64 {
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

fn ms(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e6)
}

fn print_table(trials: &[Trial], failures: &[String]) {
    let column = |f: fn(&Trial) -> u64| {
        let mut v: Vec<u64> = trials.iter().map(f).collect();
        v.sort_unstable();
        v
    };
    let rows = [
        ("request first byte → first XDP drop", column(|t| t.reaction)),
        ("  of which: request → ban written", column(|t| t.to_ban)),
        ("  of which: ban written → first drop", column(|t| t.to_drop)),
    ];
    println!();
    println!(
        "Reaction time, ms: {} trials (after {WARM_UP} warm-up), one fresh source each; {} failed",
        trials.len(),
        failures.len()
    );
    println!();
    println!("| interval | p50 | p90 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");
    for (name, v) in &rows {
        println!(
            "| {name} | {} | {} | {} | {} |",
            ms(percentile(v, 50)),
            ms(percentile(v, 90)),
            ms(percentile(v, 99)),
            ms(percentile(v, 100)),
        );
    }
    let reaction = &rows[0].1;
    let (p50, p99) = (percentile(reaction, 50), percentile(reaction, 99));
    let poll = u64::try_from(POLL_PERIOD.as_nanos()).unwrap_or(u64::MAX);
    println!();
    println!(
        "For scale: a {}-second poll (CrowdSec firewall bouncer default) applies a decision after {} ms on average \
         and {} ms at worst, on top of making the decision; p50 here is {:.0}x shorter than that average, p99 {:.0}x.",
        POLL_PERIOD.as_secs(),
        ms(poll / 2),
        ms(poll),
        (poll / 2) as f64 / p50.max(1) as f64,
        (poll / 2) as f64 / p99.max(1) as f64,
    );
    let target = u64::try_from(TARGET_P99.as_nanos()).unwrap_or(u64::MAX);
    println!(
        "Target p99 < {} ms: {}",
        TARGET_P99.as_millis(),
        if p99 < target { "met" } else { "MISSED" }
    );
    for f in failures {
        println!("failed trial: {f}");
    }
}
