use std::{
    net::IpAddr,
    time::{Duration, Instant, SystemTime},
};

use super::*;
use crate::event::{AttackCategory, IdentityKind, Severity};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn attack(source: IpAddr, severity: Severity) -> SecurityEvent {
    SecurityEvent {
        at: SystemTime::now(),
        source,
        identity: None,
        route: Some("/orders".into()),
        request_id: Some("r1".into()),
        kind: EventKind::Attack(AttackCategory::Sqli),
        severity,
        evidence: vec![Evidence::new("sqli.tautology", "query:id", "1' or '1'='1")],
    }
}

fn ctx(source: IpAddr) -> Context<'static> {
    Context {
        source,
        identity: None,
        route: Some("orders"),
        sensitivity: 1.0,
        request_id: Some("r1"),
    }
}

fn engine(cfg: RiskConfig) -> RiskEngine {
    cfg.check().unwrap();
    RiskEngine::new(
        cfg,
        &["orders".to_owned()],
        vec!["192.0.2.250/32".parse().unwrap()],
    )
}

#[test]
fn four_critical_findings_ban_with_the_chain_that_led_there() {
    let e = engine(RiskConfig::default());
    let src = ip("198.51.100.7");
    let now = Instant::now();
    for i in 0..3 {
        let out = e.record(&ctx(src), Signal::Event(&attack(src, Severity::Critical)), now);
        assert!(out.ban.is_none(), "no ban after {} findings", i + 1);
    }
    let out = e.record(&ctx(src), Signal::Event(&attack(src, Severity::Critical)), now);
    let ban = out.ban.expect("the fourth critical finding bans");
    assert_eq!(ban.addr, src);
    assert_eq!(ban.strike, 1);
    assert_eq!(ban.ttl, Duration::from_mins(1));
    assert_eq!(ban.reason, BanReason::Injection);
    assert_eq!(ban.chain.len(), 4);
    assert_eq!(ban.chain[0].evidence[0].rule_id, "sqli.tautology");
    assert_eq!(ban.chain[3].kind, "attack:sqli");
}

#[test]
fn a_repeat_offender_gets_a_longer_ban() {
    let e = engine(RiskConfig::default());
    let src = ip("198.51.100.8");
    let t0 = Instant::now();
    let mut bans = Vec::new();
    for round in 0..3u64 {
        let now = t0 + Duration::from_hours(2) * u32::try_from(round).unwrap();
        for _ in 0..4 {
            if let Some(b) = e
                .record(&ctx(src), Signal::Event(&attack(src, Severity::Critical)), now)
                .ban
            {
                bans.push(b);
            }
        }
    }
    let ttls: Vec<Duration> = bans.iter().map(|b| b.ttl).collect();
    assert_eq!(
        ttls,
        [
            Duration::from_mins(1),
            Duration::from_mins(10),
            Duration::from_hours(1)
        ]
    );
    assert_eq!(bans[2].strike, 3);
}

#[test]
fn scores_decay_so_occasional_findings_never_ban() {
    let e = engine(RiskConfig::default());
    let src = ip("198.51.100.9");
    let t0 = Instant::now();
    for i in 0..50u32 {
        let out = e.record(
            &ctx(src),
            Signal::Event(&attack(src, Severity::Critical)),
            t0 + Duration::from_mins(10) * i,
        );
        assert!(out.ban.is_none(), "one finding every 10 minutes must not ban");
    }
}

#[test]
fn loopback_and_protected_sources_are_never_banned() {
    let e = engine(RiskConfig::default());
    for src in [
        ip("127.0.0.1"),
        ip("::1"),
        ip("192.0.2.250"),
        ip("::ffff:127.0.0.1"),
    ] {
        for _ in 0..20 {
            let out = e.record(
                &ctx(src),
                Signal::Event(&attack(src, Severity::Critical)),
                Instant::now(),
            );
            assert!(out.ban.is_none(), "{src} must never be banned");
        }
    }
}

#[test]
fn ipv6_sources_score_per_prefix_and_neighbours_are_banned_on_sight() {
    let e = engine(RiskConfig::default());
    let now = Instant::now();
    // Four different addresses of one /64 each send one critical finding.
    let mut ban = None;
    for i in 1..=4u16 {
        let src = IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, i));
        ban = e
            .record(&ctx(src), Signal::Event(&attack(src, Severity::Critical)), now)
            .ban
            .or(ban);
    }
    assert!(ban.is_some(), "the /64 crossed the threshold");
    let neighbour = ip("2001:db8:0:1::99");
    let out = e.record(&ctx(neighbour), Signal::Request, now);
    assert_eq!(
        out.ban.map(|b| b.addr),
        Some(neighbour),
        "a neighbour in the banned /64 is banned at once"
    );
    let elsewhere = ip("2001:db8:0:2::1");
    assert!(e.record(&ctx(elsewhere), Signal::Request, now).ban.is_none());
}

#[test]
fn a_4xx_burst_is_scanning_but_a_few_404s_are_not() {
    let e = engine(RiskConfig::default());
    let now = Instant::now();
    let normal = ip("198.51.100.20");
    for _ in 0..8 {
        assert!(e.record(&ctx(normal), Signal::Status(404), now).ban.is_none());
    }
    let scanner = ip("198.51.100.21");
    let bans: Vec<_> = (0..30)
        .filter_map(|_| e.record(&ctx(scanner), Signal::Status(404), now).ban)
        .collect();
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0].reason, BanReason::Scanning);
    assert!(e.record(&ctx(normal), Signal::Status(200), now).source_score < 1.0);
}

#[test]
fn a_source_far_above_the_learned_route_rate_is_refused_and_banned_a_steady_one_is_not() {
    let cfg = RiskConfig {
        rate_min_samples: 20,
        rate_min_rps: 5.0,
        ..RiskConfig::default()
    };
    let e = engine(cfg);
    let t0 = Instant::now();
    // Learn: ten clients at 2 requests per second for 10 seconds.
    for second in 0..10u32 {
        for client in 1..=10u8 {
            let src = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, client));
            for half in 0..2u32 {
                let now =
                    t0 + Duration::from_secs(second.into()) + Duration::from_millis(400 * u64::from(half));
                let out = e.record(&ctx(src), Signal::Request, now);
                assert!(
                    !out.over_rate && out.ban.is_none(),
                    "a steady client is never over the rate"
                );
            }
        }
    }
    let base = e.baseline("orders").unwrap();
    assert!(base.samples >= 20 && (base.mean - 2.0).abs() < 0.5, "{base:?}");
    // An abuser sends 200 requests within one second.
    let abuser = ip("198.51.100.66");
    let now = t0 + Duration::from_secs(11);
    let outs: Vec<Outcome> = (0..200)
        .map(|_| e.record(&ctx(abuser), Signal::Request, now))
        .collect();
    assert!(
        outs.iter().any(|o| o.over_rate),
        "the abuser goes over the learned rate"
    );
    let ban = outs
        .iter()
        .find_map(|o| o.ban.as_ref())
        .expect("the abuser is banned");
    assert_eq!(ban.reason, BanReason::RateAbuse);
    // The abuser's samples never teach the route its rate.
    assert!(e.baseline("orders").unwrap().mean < 3.0);
}

#[test]
fn an_identity_abusing_from_two_addresses_is_blocked_wherever_it_comes_from() {
    let e = engine(RiskConfig {
        ban_threshold: 1000.0,
        ..RiskConfig::default()
    });
    let id = Identity::new(
        IdentityKind::Jwt,
        "alice",
        Some("https://auth.example.test".into()),
    );
    let now = Instant::now();
    let mut block = None;
    for i in 0..20u8 {
        let src = if i % 2 == 0 {
            ip("198.51.100.1")
        } else {
            ip("198.51.100.2")
        };
        let c = Context {
            source: src,
            identity: Some(&id),
            route: Some("orders"),
            sensitivity: 1.0,
            request_id: None,
        };
        block = e
            .record(&c, Signal::Event(&attack(src, Severity::Critical)), now)
            .identity_block
            .or(block);
    }
    let block = block.expect("the identity is blocked");
    assert_eq!(block.identity, "jwt:https://auth.example.test:alice");
    assert!(e.identity_blocked(&id, now).is_some());
    assert!(
        e.identity_blocked(&id, now + Duration::from_mins(2)).is_none(),
        "the block expires"
    );
    assert!(
        e.unblock_identity(&block.identity),
        "an active block can be lifted"
    );
    assert!(
        e.identity_blocked(&id, now).is_none(),
        "lifted means no longer refused"
    );
    assert!(
        !e.unblock_identity(&block.identity),
        "lifting twice reports nothing to lift"
    );
}

#[test]
fn token_tampering_weighs_more_than_an_expired_token() {
    let e = engine(RiskConfig::default());
    let now = Instant::now();
    let mut ev = attack(ip("198.51.100.30"), Severity::Warning);
    ev.kind = EventKind::Auth(AuthFailure::BadSignature);
    let tampering = e
        .record(&ctx(ip("198.51.100.30")), Signal::Event(&ev), now)
        .source_score;
    ev.kind = EventKind::Auth(AuthFailure::Expired);
    let expired = e
        .record(&ctx(ip("198.51.100.31")), Signal::Event(&ev), now)
        .source_score;
    assert!(tampering > expired, "{tampering} vs {expired}");
}

#[test]
fn admin_routes_weigh_more() {
    let e = engine(RiskConfig::default());
    let now = Instant::now();
    let a = ip("198.51.100.40");
    let b = ip("198.51.100.41");
    let normal = e
        .record(&ctx(a), Signal::Event(&attack(a, Severity::Error)), now)
        .source_score;
    let admin = Context {
        sensitivity: 2.0,
        ..ctx(b)
    };
    let strict = e
        .record(&admin, Signal::Event(&attack(b, Severity::Error)), now)
        .source_score;
    assert!((strict - 2.0 * normal).abs() < 1e-9);
}

#[test]
fn memory_is_bounded_under_a_spoofed_source_storm() {
    let e = engine(RiskConfig {
        max_sources: 1000,
        ..RiskConfig::default()
    });
    let now = Instant::now();
    for i in 0..50_000u32 {
        let src = IpAddr::V4(i.into());
        let _ = e.record(&ctx(src), Signal::Status(404), now);
    }
    let inner = e.inner.lock().unwrap();
    assert_eq!(inner.sources.len(), 1000);
}

#[test]
fn bad_config_values_name_their_key() {
    let bad = RiskConfig {
        ban_threshold: 0.0,
        ..RiskConfig::default()
    };
    assert!(bad.check().unwrap_err().contains("risk.ban_threshold"));
    let bad = RiskConfig {
        ban_ttls: vec![],
        ..RiskConfig::default()
    };
    assert!(bad.check().unwrap_err().contains("risk.ban_ttls"));
    let cfg: RiskConfig =
        toml::from_str("mode = \"detect\"\nban_ttls = [\"30s\", \"5m\"]\nipv6_prefix = 56").unwrap();
    assert_eq!(cfg.mode, Mode::Detect);
    assert_eq!(cfg.ttl_for(1), Duration::from_secs(30));
    assert_eq!(cfg.ttl_for(9), Duration::from_mins(5));
    assert!(
        toml::from_str::<RiskConfig>("ban_treshold = 3").is_err(),
        "unknown keys are refused"
    );
}

#[test]
fn a_kernel_flood_raises_risk_only_when_flood_detection_is_on() {
    let off = engine(RiskConfig::default());
    let src = ip("198.51.100.50");
    let now = Instant::now();
    assert!(
        off.record(&ctx(src), Signal::KernelPps(1e6), now).ban.is_none(),
        "off by default"
    );
    let on = engine(RiskConfig {
        flood_pps: 10_000.0,
        ..RiskConfig::default()
    });
    assert!(
        on.record(&ctx(src), Signal::KernelPps(9_000.0), now)
            .ban
            .is_none(),
        "under the threshold"
    );
    let _ = on.record(&ctx(src), Signal::KernelPps(50_000.0), now);
    let ban = on
        .record(&ctx(src), Signal::KernelPps(50_000.0), now)
        .ban
        .expect("two flood readings ban");
    assert_eq!(ban.reason, BanReason::Flood);
    assert_eq!(ban.chain[0].evidence[0].rule_id, "flood.kernel_pps");
}
