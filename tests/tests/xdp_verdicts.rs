//! The XDP program's verdicts on hand-built frames, through `BPF_PROG_TEST_RUN`: table style, each case with its
//! frame, the expected verdict, and the counter it must land in.

#![expect(clippy::expect_used, reason = "tests panic with a message")]
#![expect(clippy::too_many_lines, reason = "the case table reads best as one list")]

use std::{net::IpAddr, time::Duration};

use aya::programs::{TestRun as _, TestRunOptions};
use proxy_common::{BanReason, list_origin};
use proxy_user::xdp::{KernelMaps, ListKind, MapSizes, PinDir, loader};
use rasp_tests::PinDirGuard;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// Frame builders.
mod frame {
    use std::net::{Ipv4Addr, Ipv6Addr};

    const MAC: [u8; 12] = [0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];

    fn eth(vlans: &[u16], ethertype: u16) -> Vec<u8> {
        let mut f = MAC.to_vec();
        for (i, vid) in vlans.iter().enumerate() {
            // Outer tag 802.1ad when there are two, as QinQ does.
            let tpid: u16 = if i == 0 && vlans.len() == 2 {
                0x88a8
            } else {
                0x8100
            };
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    /// Ethernet + IPv4 (with `options` 32-bit words of options) + 8-byte UDP header + 16 bytes payload.
    pub fn v4(src: Ipv4Addr, vlans: &[u16], options: u8) -> Vec<u8> {
        let mut f = eth(vlans, 0x0800);
        let ihl = 5 + options;
        let total = u16::from(ihl) * 4 + 8 + 16;
        f.extend_from_slice(&[0x40 | ihl, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&[198, 18, 0, 1]);
        f.extend(std::iter::repeat_n(1u8, usize::from(options) * 4));
        f.extend_from_slice(&[0x30, 0x39, 0, 9, 0, 24, 0, 0]);
        f.extend_from_slice(&[0xab; 16]);
        f
    }

    /// Ethernet + IPv6 + UDP + 16 bytes payload.
    pub fn v6(src: Ipv6Addr, vlans: &[u16]) -> Vec<u8> {
        let mut f = eth(vlans, 0x86dd);
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, 24, 17, 64]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).octets());
        f.extend_from_slice(&[0x30, 0x39, 0, 9, 0, 24, 0, 0]);
        f.extend_from_slice(&[0xab; 16]);
        f
    }

    /// An ARP request.
    pub fn arp() -> Vec<u8> {
        let mut f = eth(&[], 0x0806);
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&[0u8; 20]);
        f
    }

    /// An IPv4 header whose IHL is below the minimum.
    pub fn v4_bad_ihl(src: Ipv4Addr) -> Vec<u8> {
        let mut f = v4(src, &[], 0);
        f[14] = 0x44;
        f
    }

    /// An IPv4 header claiming 15 words of header in a frame that has fewer.
    pub fn v4_ihl_past_end(src: Ipv4Addr) -> Vec<u8> {
        let mut f = v4(src, &[], 0);
        f[14] = 0x4f;
        f.truncate(14 + 40);
        f
    }
}

struct Harness {
    _pins: PinDirGuard,
    ebpf: aya::Ebpf,
    maps: KernelMaps,
}

impl Harness {
    fn new() -> Self {
        let pins = PinDirGuard::new();
        let dir = PinDir::new(&pins.path);
        let ebpf =
            loader::load(&dir, MapSizes::default()).unwrap_or_else(|e| panic!("loading the XDP object: {e}"));
        let maps = KernelMaps::open(&dir).unwrap_or_else(|e| panic!("opening the maps: {e}"));
        Self {
            _pins: pins,
            ebpf,
            maps,
        }
    }

    fn run(&mut self, frame: &[u8]) -> u32 {
        let program = loader::program(&mut self.ebpf).expect("program");
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        };
        program
            .test_run(opts)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"))
            .return_value
    }

    fn stat(&self, name: &str) -> u64 {
        self.maps
            .stats()
            .expect("stats")
            .iter()
            .find(|s| s.name == name)
            .map_or(0, |s| s.packets)
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address literal")
}

struct Case {
    what: &'static str,
    frame: Vec<u8>,
    verdict: u32,
    counter: &'static str,
}

#[test]
fn verdicts_on_crafted_frames() {
    let mut h = Harness::new();
    let banned4 = ip("192.0.2.66");
    let banned6 = ip("2001:db8:bad::1");
    h.maps
        .ban(banned4, Duration::from_mins(10), BanReason::Manual, "test")
        .expect("ban v4");
    h.maps
        .ban(banned6, Duration::from_mins(10), BanReason::Injection, "")
        .expect("ban v6");
    h.maps
        .list_add(
            ListKind::Blocklist,
            "203.0.113.0/24".parse().expect("cidr"),
            list_origin::OPERATOR,
        )
        .expect("block");
    h.maps
        .list_add(
            ListKind::Blocklist,
            "2001:db8:b10c::/48".parse().expect("cidr"),
            list_origin::OPERATOR,
        )
        .expect("block6");
    // Blocked and allowed: the allowlist wins.
    h.maps
        .list_add(
            ListKind::Allowlist,
            "203.0.113.7/32".parse().expect("cidr"),
            list_origin::OPERATOR,
        )
        .expect("allow");
    // Banned and allowed: the allowlist wins again.
    h.maps
        .ban(ip("198.51.100.9"), Duration::from_mins(10), BanReason::Manual, "")
        .expect("ban");
    h.maps
        .list_add(
            ListKind::Allowlist,
            "198.51.100.0/24".parse().expect("cidr"),
            list_origin::CONFIG,
        )
        .expect("allow");

    let v4 = |s: &str| match ip(s) {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => unreachable!(),
    };
    let v6 = |s: &str| match ip(s) {
        IpAddr::V6(a) => a,
        IpAddr::V4(_) => unreachable!(),
    };
    let cases = vec![
        Case {
            what: "unknown IPv4 source",
            frame: frame::v4(v4("192.0.2.1"), &[], 0),
            verdict: XDP_PASS,
            counter: "passed",
        },
        Case {
            what: "unknown IPv6 source",
            frame: frame::v6(v6("2001:db8::1"), &[]),
            verdict: XDP_PASS,
            counter: "passed",
        },
        Case {
            what: "IPv4 with options (IHL 8)",
            frame: frame::v4(v4("192.0.2.2"), &[], 3),
            verdict: XDP_PASS,
            counter: "passed",
        },
        Case {
            what: "one VLAN tag",
            frame: frame::v4(v4("192.0.2.3"), &[10], 0),
            verdict: XDP_PASS,
            counter: "passed",
        },
        Case {
            what: "two VLAN tags, IPv6",
            frame: frame::v6(v6("2001:db8::3"), &[10, 20]),
            verdict: XDP_PASS,
            counter: "passed",
        },
        Case {
            what: "banned IPv4",
            frame: frame::v4(v4("192.0.2.66"), &[], 0),
            verdict: XDP_DROP,
            counter: "dropped_ban",
        },
        Case {
            what: "banned IPv4 behind two VLAN tags",
            frame: frame::v4(v4("192.0.2.66"), &[7, 8], 0),
            verdict: XDP_DROP,
            counter: "dropped_ban",
        },
        Case {
            what: "banned IPv4 with options",
            frame: frame::v4(v4("192.0.2.66"), &[], 10),
            verdict: XDP_DROP,
            counter: "dropped_ban",
        },
        Case {
            what: "banned IPv6",
            frame: frame::v6(v6("2001:db8:bad::1"), &[]),
            verdict: XDP_DROP,
            counter: "dropped_ban",
        },
        Case {
            what: "blocklisted IPv4",
            frame: frame::v4(v4("203.0.113.200"), &[], 0),
            verdict: XDP_DROP,
            counter: "dropped_blocklist",
        },
        Case {
            what: "blocklisted IPv6",
            frame: frame::v6(v6("2001:db8:b10c:1::5"), &[5]),
            verdict: XDP_DROP,
            counter: "dropped_blocklist",
        },
        Case {
            what: "allowlisted and blocklisted",
            frame: frame::v4(v4("203.0.113.7"), &[], 0),
            verdict: XDP_PASS,
            counter: "allowlisted",
        },
        Case {
            what: "allowlisted and banned",
            frame: frame::v4(v4("198.51.100.9"), &[], 0),
            verdict: XDP_PASS,
            counter: "allowlisted",
        },
        Case {
            what: "ARP (non-IP)",
            frame: frame::arp(),
            verdict: XDP_PASS,
            counter: "non_ip",
        },
        Case {
            what: "three VLAN tags (not parsed)",
            frame: frame::v4(v4("192.0.2.66"), &[1, 2, 3], 0),
            verdict: XDP_PASS,
            counter: "non_ip",
        },
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header, so the shortest case is a bare header.
        Case {
            what: "Ethernet header only",
            frame: frame::v4(v4("192.0.2.66"), &[], 0)[..14].to_vec(),
            verdict: XDP_PASS,
            counter: "malformed",
        },
        Case {
            what: "truncated IPv4 header",
            frame: frame::v4(v4("192.0.2.66"), &[], 0)[..24].to_vec(),
            verdict: XDP_PASS,
            counter: "malformed",
        },
        Case {
            what: "truncated IPv6 header",
            frame: frame::v6(v6("2001:db8:bad::1"), &[])[..40].to_vec(),
            verdict: XDP_PASS,
            counter: "malformed",
        },
        Case {
            what: "truncated VLAN tag",
            frame: frame::v4(v4("192.0.2.66"), &[9], 0)[..16].to_vec(),
            verdict: XDP_PASS,
            counter: "malformed",
        },
        Case {
            what: "IPv4 IHL below 5",
            frame: frame::v4_bad_ihl(v4("192.0.2.66")),
            verdict: XDP_PASS,
            counter: "malformed",
        },
        Case {
            what: "IPv4 IHL past the frame",
            frame: frame::v4_ihl_past_end(v4("192.0.2.66")),
            verdict: XDP_PASS,
            counter: "malformed",
        },
    ];
    let mut failures = Vec::new();
    for case in &cases {
        let before = h.stat(case.counter);
        let verdict = h.run(&case.frame);
        let after = h.stat(case.counter);
        if verdict != case.verdict || after != before + 1 {
            failures.push(format!(
                "{}: verdict {verdict} (want {}), {} {before} -> {after} (want +1)",
                case.what, case.verdict, case.counter
            ));
        }
    }
    assert!(failures.is_empty(), "failing cases:\n{}", failures.join("\n"));

    let ban = h.maps.ban_of(banned4).expect("read").expect("ban present");
    assert_eq!(ban.hits, 3, "three frames of the banned IPv4 source were dropped");
    let rate = h.maps.rate_of(banned4).expect("read").expect("tracked");
    assert_eq!(rate.dropped_packets, 3);
    // The malformed/non-IP frames carrying that source were not attributed to it.
    assert_eq!(rate.total_packets, 3);
}

#[test]
fn an_expired_ban_passes_and_a_new_ban_applies_at_once() {
    let mut h = Harness::new();
    let src = ip("192.0.2.77");
    let IpAddr::V4(src4) = src else { unreachable!() };
    h.maps
        .ban(src, Duration::from_millis(30), BanReason::Manual, "")
        .expect("ban");
    assert_eq!(h.run(&frame::v4(src4, &[], 0)), XDP_DROP, "banned");
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(
        h.run(&frame::v4(src4, &[], 0)),
        XDP_PASS,
        "expired: the kernel lets it pass"
    );
    // The verdict is cached per source; a new ban must invalidate it immediately.
    h.maps
        .ban(src, Duration::from_mins(1), BanReason::Manual, "")
        .expect("ban again");
    assert_eq!(
        h.run(&frame::v4(src4, &[], 0)),
        XDP_DROP,
        "the new ban applies to the next packet"
    );
    assert_eq!(
        h.maps.ban_of(src).expect("read").expect("ban").strikes,
        2,
        "a repeat ban counts a strike"
    );
    h.maps.unban(src).expect("unban");
    assert_eq!(
        h.run(&frame::v4(src4, &[], 0)),
        XDP_PASS,
        "unban applies to the next packet"
    );
}

#[test]
fn the_rate_limit_drops_for_the_rest_of_the_window() {
    let mut h = Harness::new();
    let IpAddr::V4(src) = ip("192.0.2.88") else {
        unreachable!()
    };
    h.maps
        .update_config(|c| {
            c.rate_window_ns = 60_000_000_000;
            c.rate_limit_packets = 10;
        })
        .expect("config");
    let verdicts: Vec<u32> = (0..25).map(|_| h.run(&frame::v4(src, &[], 0))).collect();
    assert!(
        verdicts[..10].iter().all(|&v| v == XDP_PASS),
        "the first 10 pass: {verdicts:?}"
    );
    assert!(
        verdicts[10..].iter().all(|&v| v == XDP_DROP),
        "the rest of the window drops: {verdicts:?}"
    );
    assert_eq!(h.stat("dropped_rate_limit"), 15);
    let other = frame::v4(std::net::Ipv4Addr::new(192, 0, 2, 89), &[], 0);
    assert_eq!(h.run(&other), XDP_PASS, "the ceiling is per source");
    let rate = h.maps.rate_of(IpAddr::V4(src)).expect("read").expect("tracked");
    assert_eq!(rate.total_packets, 25);
    assert_eq!(rate.total_bytes, 25 * frame::v4(src, &[], 0).len() as u64);
}

#[test]
fn the_kernel_rate_limit_is_derived_from_observed_traffic() {
    let mut h = Harness::new();
    // Twelve sources, five packets each in the current window: 5 packets/s each.
    for i in 1..=12u8 {
        for _ in 0..5 {
            assert_eq!(
                h.run(&frame::v4(std::net::Ipv4Addr::new(192, 0, 2, i), &[], 0)),
                XDP_PASS
            );
        }
    }
    let cfg = proxy_user::risk::RiskConfig {
        auto_rate_limit: true,
        auto_rate_limit_factor: 10.0,
        auto_rate_limit_min_pps: 1.0,
        ..proxy_user::risk::RiskConfig::default()
    };
    proxy_user::risk::enforce::derive_kernel_rate_limit(&mut h.maps, &cfg);
    let limit = h.maps.config().expect("config").rate_limit_packets;
    assert_eq!(limit, 50, "10 x the 99th percentile (5 packets/s) per 1 s window");
    // The floor holds when traffic is light.
    let floor = proxy_user::risk::RiskConfig {
        auto_rate_limit_min_pps: 500.0,
        ..cfg
    };
    proxy_user::risk::enforce::derive_kernel_rate_limit(&mut h.maps, &floor);
    assert_eq!(h.maps.config().expect("config").rate_limit_packets, 500);
}
