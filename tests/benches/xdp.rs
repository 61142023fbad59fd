//! `cargo xtask bench xdp`: ns per packet of the XDP program through `BPF_PROG_TEST_RUN`, for the pass path
//! and each drop path, with 100k blocklist CIDRs and 1M bans loaded; beside Debian's `xdp-filter` (xdp-tools)
//! on the same frames in the same run, driven by `bpftool prog run`.
//!
//! Each row is the median of several rounds of 1M repeats. Needs root.
#![expect(
    clippy::cast_possible_truncation,
    reason = "random addresses and prefixes are cut to size on purpose"
)]
#![expect(
    clippy::expect_used,
    reason = "a bench binary: panicking with a message is its error handling"
)]
#![expect(
    clippy::cast_precision_loss,
    reason = "ns figures are printed, not computed with"
)]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    process::Command,
    time::Duration,
};

use aya::{
    maps::{HashMap, LpmTrie, MapData, lpm_trie::Key},
    programs::{TestRun as _, TestRunOptions},
};
use proxy_common::{Addr, Ban, BanReason, list_origin, map_names};
use proxy_user::{
    addr::to_key,
    xdp::{KernelMaps, ListKind, MapSizes, PinDir, loader, sys::monotonic_ns},
};
use rasp_tests::{Netns, PinDirGuard};

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 7;
const BLOCKLIST: usize = 100_000;
const BANS: usize = 1_000_000;
const COLD_SOURCES: usize = 20_000;

const PASS_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const BANNED_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 66);
const BLOCKED_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const ALLOWED_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const FLOOD_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);
const PASS_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("bench xdp needs root (BPF_PROG_TEST_RUN, network namespaces)");
        std::process::exit(2);
    }
    // `cargo bench` passes `--bench`; nothing to parse.
    let pins = PinDirGuard::new();
    let dir = PinDir::new(&pins.path);
    let sizes = MapSizes {
        bans: 1 << 21,
        rates: 1 << 18,
        blocklist: 1 << 17,
        allowlist: 1 << 14,
    };
    let mut ebpf = loader::load(&dir, sizes).expect("load the XDP object");
    let mut maps = KernelMaps::open(&dir).expect("open maps");
    eprintln!("loading {BLOCKLIST} blocklist CIDRs and {BANS} bans ...");
    fill(&dir, &mut maps);

    let frames = [
        ("pass: unknown IPv4 source", v4_frame(PASS_V4), Ref::Pass, false),
        ("pass: unknown IPv6 source", v6_frame(PASS_V6), Ref::Pass, false),
        ("pass: allowlisted", v4_frame(ALLOWED_V4), Ref::Pass, false),
        ("drop: banned", v4_frame(BANNED_V4), Ref::Drop, false),
        ("drop: blocklisted CIDR", v4_frame(BLOCKED_V4), Ref::Drop, false),
        // A ceiling of 1000 packets per minute: all but the first 1000 repeats drop.
        ("drop: over the rate limit", v4_frame(FLOOD_V4), Ref::Drop, true),
    ];
    // Rounds go across the rows (after one warm-up round), so a slow moment of the machine hits every row alike.
    let mut samples = vec![Vec::new(); frames.len()];
    let xdp_filter = XdpFilter::start();
    let (mut reference_pass, mut reference_drop) = (Vec::new(), Vec::new());
    for round in 0..=ROUNDS {
        // The reference runs in the same rounds, so a slow moment of the machine hits both sides.
        if let Some(x) = &xdp_filter
            && let (Some(pass), Some(drop)) = (x.run(Ref::Pass), x.run(Ref::Drop))
            && round > 0
        {
            reference_pass.push(pass);
            reference_drop.push(drop);
        }
        for (i, (_, frame, _, rate_limited)) in frames.iter().enumerate() {
            if *rate_limited {
                maps.update_config(|c| {
                    c.rate_window_ns = 60_000_000_000;
                    c.rate_limit_packets = 1000;
                })
                .expect("set the rate limit");
            }
            let ns = run_ns(&mut ebpf, frame, REPEAT);
            if *rate_limited {
                maps.update_config(|c| c.rate_limit_packets = 0)
                    .expect("clear the rate limit");
            }
            if round > 0 {
                samples[i].push(ns);
            }
        }
    }
    let mut rows: Vec<(String, f64, Ref)> = frames
        .iter()
        .zip(samples)
        .map(|((name, _, reference, _), s)| ((*name).to_owned(), median(s), *reference))
        .collect();
    let (cold, warm) = cold_ns(&mut ebpf);
    rows.push((
        "first packet of a new source (repeat=1)".to_owned(),
        cold,
        Ref::None,
    ));
    rows.push((
        "known source, same harness (repeat=1)".to_owned(),
        warm,
        Ref::None,
    ));

    let reference = (!reference_pass.is_empty() && !reference_drop.is_empty()).then(|| Reference {
        pass_ns: median(reference_pass),
        drop_ns: median(reference_drop),
    });
    print_table(&rows, reference.as_ref());
}

/// 100k random blocklist CIDRs (IPv4 /8–/32 and IPv6 /16–/64) and 1M random IPv4 bans, none covering the
/// bench's own pass addresses; plus the rows' own ban, block and allow entries.
fn fill(dir: &PinDir, maps: &mut KernelMaps) {
    let mut rng = SplitMix(0x5eed);
    let mut trie: LpmTrie<MapData, Addr, u32> = open(dir, map_names::BLOCKLIST);
    let mut added = 0;
    while added < BLOCKLIST {
        let (len, key) = if rng.next().is_multiple_of(10) {
            let prefix = 16 + (rng.next() % 49) as u32;
            let mut a = [0u8; 16];
            a[..8].copy_from_slice(&rng.next().to_be_bytes());
            a[8..].copy_from_slice(&rng.next().to_be_bytes());
            a[0] = 0x20;
            (prefix, mask(a, prefix))
        } else {
            let prefix = 8 + (rng.next() % 25) as u32;
            let ip = Ipv4Addr::from(rng.next() as u32);
            (96 + prefix, mask(to_key(IpAddr::V4(ip)), 96 + prefix))
        };
        if [PASS_V4, BANNED_V4, ALLOWED_V4, FLOOD_V4]
            .iter()
            .any(|a| covers(len, &key, &to_key(IpAddr::V4(*a))))
            || covers(len, &key, &to_key(IpAddr::V6(PASS_V6)))
        {
            continue;
        }
        trie.insert(&Key::new(len, key), list_origin::CONFIG, 0)
            .expect("blocklist insert");
        added += 1;
    }
    let mut bans: HashMap<MapData, Addr, Ban> = open(dir, map_names::BANS);
    let now = monotonic_ns();
    let ban = Ban {
        expires_ns: now + 3_600_000_000_000,
        created_ns: now,
        hits: 0,
        reason: BanReason::Manual as u32,
        strikes: 1,
    };
    let mut added = 0;
    while added < BANS {
        let ip = Ipv4Addr::from(rng.next() as u32);
        if [PASS_V4, ALLOWED_V4, FLOOD_V4, BLOCKED_V4].contains(&ip) {
            continue;
        }
        bans.insert(to_key(IpAddr::V4(ip)), ban, 0).expect("ban insert");
        added += 1;
    }
    maps.ban(
        IpAddr::V4(BANNED_V4),
        Duration::from_hours(1),
        BanReason::Manual,
        "bench",
    )
    .expect("ban");
    maps.list_add(
        ListKind::Blocklist,
        "203.0.113.0/24".parse().expect("cidr"),
        list_origin::OPERATOR,
    )
    .expect("block");
    maps.list_add(
        ListKind::Allowlist,
        "198.51.100.0/24".parse().expect("cidr"),
        list_origin::OPERATOR,
    )
    .expect("allow");
}

fn open<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(dir: &PinDir, name: &str) -> T {
    let data = MapData::from_pin(dir.map(name)).expect("pinned map");
    T::try_from(aya::maps::Map::from_map_data(data).expect("map")).expect("map type")
}

fn mask(mut a: Addr, prefix: u32) -> Addr {
    for (i, byte) in a.iter_mut().enumerate() {
        let bits = prefix.saturating_sub(i as u32 * 8).min(8);
        *byte &= if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
    }
    a
}

fn covers(len: u32, net: &Addr, addr: &Addr) -> bool {
    mask(*addr, len) == *net
}

fn run_ns(ebpf: &mut aya::Ebpf, frame: &[u8], repeat: u32) -> f64 {
    let program = loader::program(ebpf).expect("program");
    let opts = TestRunOptions {
        data_in: Some(frame),
        repeat,
        ..TestRunOptions::default()
    };
    program
        .test_run(opts)
        .expect("BPF_PROG_TEST_RUN")
        .duration
        .as_nanos() as f64
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Average over many sources seen once each (LRU insert plus the allowlist, ban and blocklist lookups), and,
/// for scale, the same single-run harness on a source already known: with `repeat=1` the kernel's timing
/// includes a fixed per-run overhead that the 1M-repeat rows amortise away.
fn cold_ns(ebpf: &mut aya::Ebpf) -> (f64, f64) {
    let (mut cold, mut warm) = (0.0, 0.0);
    let known = v4_frame(PASS_V4);
    for i in 0..COLD_SOURCES {
        let ip = Ipv4Addr::new(100, 64 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
        cold += run_ns(ebpf, &v4_frame(ip), 1);
        warm += run_ns(ebpf, &known, 1);
    }
    (cold / COLD_SOURCES as f64, warm / COLD_SOURCES as f64)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ref {
    Pass,
    Drop,
    /// No like-for-like reference row (single-run rows).
    None,
}

struct Reference {
    pass_ns: f64,
    drop_ns: f64,
}

/// xdp-filter (all features, allow policy) with one source-IP drop rule, on a veth in a namespace of its own;
/// its program run through `bpftool prog run` on the same frames, in the same rounds as ours. Unloaded on drop.
struct XdpFilter {
    ns: Netns,
    bpffs: PinDirGuard,
    id: u64,
    frames: std::path::PathBuf,
}

impl XdpFilter {
    fn start() -> Option<Self> {
        let ns = Netns::new("xb");
        ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
        ns.ip(&["link", "set", "v0", "up"]);
        ns.ip(&["link", "set", "v1", "up"]);
        let bpffs = PinDirGuard::new();
        std::fs::create_dir_all(&bpffs.path).ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&bpffs.path)
            .status()
            .ok()?
            .success();
        if !mounted {
            eprintln!("xdp-filter reference skipped: cannot mount bpffs");
            return None;
        }
        let frames = bpffs.path.with_extension("frames");
        std::fs::create_dir_all(&frames).ok()?;
        std::fs::write(frames.join("pass"), v4_frame(PASS_V4)).ok()?;
        std::fs::write(frames.join("drop"), v4_frame(BANNED_V4)).ok()?;
        let mut me = Self {
            ns,
            bpffs,
            id: 0,
            frames,
        };
        if me.xdp_filter(&["load", "v0"]).is_none() {
            eprintln!("xdp-filter reference skipped: `xdp-filter load` failed (is xdp-tools installed?)");
            return None;
        }
        let _ = me.xdp_filter(&["ip", &BANNED_V4.to_string(), "-m", "src"]);
        me.id = xdp_filter_prog_id()?;
        Some(me)
    }

    fn xdp_filter(&self, args: &[&str]) -> Option<std::process::Output> {
        self.ns
            .command("xdp-filter")
            .args(args)
            .env("LIBXDP_BPFFS", &self.bpffs.path)
            .output()
            .ok()
            .filter(|o| o.status.success())
    }

    fn run(&self, which: Ref) -> Option<f64> {
        bpftool_run(
            self.id,
            &self.frames.join(if which == Ref::Drop { "drop" } else { "pass" }),
        )
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        let _ = self.xdp_filter(&["unload", "--all", "v0"]);
        let _ = Command::new("umount").arg(&self.bpffs.path).status();
        let _ = std::fs::remove_dir_all(&self.frames);
    }
}

fn xdp_filter_prog_id() -> Option<u64> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .ok()?;
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    progs.as_array()?.iter().rev().find_map(|p| {
        p["name"].as_str().filter(|n| n.starts_with("xdpfilt_"))?;
        p["id"].as_u64()
    })
}

fn bpftool_run(id: u64, data: &Path) -> Option<f64> {
    let out = Command::new("bpftool")
        .args(["prog", "run", "id", &id.to_string(), "data_in"])
        .arg(data)
        .args(["repeat", &REPEAT.to_string()])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let after = text.split("duration (average):").nth(1)?;
    after
        .trim()
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .split("ns")
        .next()?
        .trim()
        .parse()
        .ok()
}

fn print_table(rows: &[(String, f64, Ref)], reference: Option<&Reference>) {
    println!();
    println!("XDP program, ns per packet (BPF_PROG_TEST_RUN, median of {ROUNDS} x {REPEAT} repeats)");
    println!(
        "with {BLOCKLIST} blocklist CIDRs and {BANS} bans loaded; reference: xdp-filter (xdp-tools), same frames"
    );
    println!();
    println!("| path | rasp-proxy ns | xdp-filter ns | ratio |");
    println!("|---|---:|---:|---:|");
    for (name, ns, which) in rows {
        let reference_ns = match (reference, which) {
            (Some(r), Ref::Pass) => Some(r.pass_ns),
            (Some(r), Ref::Drop) => Some(r.drop_ns),
            _ => None,
        };
        match reference_ns {
            Some(r) => println!("| {name} | {ns:.0} | {r:.0} | {:.2}x |", ns / r),
            None => println!("| {name} | {ns:.0} | — | — |"),
        }
    }
    if reference.is_none() {
        println!("\nxdp-filter reference unavailable (see the message above)");
    }
}

fn v4_frame(src: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    f.extend_from_slice(&[0x45, 0, 0, 44, 0, 0, 0, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&[198, 18, 0, 1]);
    f.extend_from_slice(&[0x30, 0x39, 0, 9, 0, 24, 0, 0]);
    f.extend_from_slice(&[0xab; 16]);
    f
}

fn v6_frame(src: Ipv6Addr) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x86, 0xdd];
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 24, 17, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2).octets());
    f.extend_from_slice(&[0x30, 0x39, 0, 9, 0, 24, 0, 0]);
    f.extend_from_slice(&[0xab; 16]);
    f
}

/// A small deterministic PRNG, so every run loads the same maps.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}
