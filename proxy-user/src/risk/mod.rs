//! The risk engine: a decaying risk score per source and per identity, fed by security events, 4xx bursts,
//! request rates above a route's learned baseline and the kernel's packet rates; it decides bans and identity
//! blocks. Policy only: it returns [`Outcome`]s; the proxy applies them to the kernel maps, the connection
//! registry and the logs.
//!
//! Bounded: sources and identities live in LRU caches of configured size, routes are those in the config, and
//! each keeps a fixed-length chain of the events that raised it (the forensic record of a ban).

pub mod commands;
pub mod config;
pub mod enforce;

use std::{
    borrow::Cow,
    collections::VecDeque,
    net::IpAddr,
    num::NonZeroUsize,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use lru::LruCache;
use proxy_common::BanReason;
use rustc_hash::FxHashMap;
use serde::Serialize;

pub use self::config::{Mode, RiskConfig};
use crate::{
    addr::{Cidr, canonical},
    event::{AuthFailure, EventKind, Evidence, Identity, SecurityEvent},
};

/// Events kept per source or identity for the forensic record.
const CHAIN_LEN: usize = 32;
/// Addresses banned under one IPv6 prefix's ban, at most.
const MAX_BANNED_PER_PREFIX: usize = 64;

/// The key a source is scored under: an IPv4 address, or an IPv6 address masked to the configured prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct SourceKey(IpAddr);

impl SourceKey {
    #[must_use]
    pub fn new(ip: IpAddr, ipv6_prefix: u8) -> Self {
        match canonical(ip) {
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let mask = if ipv6_prefix >= 128 {
                    u128::MAX
                } else {
                    !(u128::MAX >> ipv6_prefix)
                };
                Self(IpAddr::V6((bits & mask).into()))
            }
            v4 @ IpAddr::V4(_) => Self(v4),
        }
    }

    #[must_use]
    pub fn ip(self) -> IpAddr {
        self.0
    }
}

/// One link of the chain of events that led to an action. Excerpts were redacted when the evidence was built.
#[derive(Clone, Debug, Serialize)]
pub struct ChainLink {
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    pub source: IpAddr,
    pub route: Option<String>,
    pub request_id: Option<String>,
    /// What raised the score: `attack:sqli`, `auth:bad_signature`, `scanning`, `rate_abuse`, `flood`.
    pub kind: String,
    pub evidence: Vec<Evidence>,
    pub points: f64,
    pub score_after: f64,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

/// A score that halves every `half_life`.
#[derive(Clone, Copy, Debug)]
struct Decaying {
    value: f64,
    at: Instant,
}

impl Decaying {
    fn new(now: Instant) -> Self {
        Self { value: 0.0, at: now }
    }

    fn get(&self, now: Instant, half_life: Duration) -> f64 {
        // Most sources never score: no clock arithmetic and no `powf` for them.
        if self.value == 0.0 {
            return 0.0;
        }
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.value * 0.5_f64.powf(dt / half_life.as_secs_f64())
    }

    fn add(&mut self, now: Instant, half_life: Duration, amount: f64) -> f64 {
        self.value = self.get(now, half_life) + amount;
        self.at = now;
        self.value
    }
}

/// Requests in the current rate bucket, for one route.
#[derive(Clone, Debug)]
struct Bucket {
    route: String,
    start: Instant,
    count: u32,
}

/// What the engine remembers of one source or identity.
#[derive(Debug)]
struct Tracked {
    score: Decaying,
    /// 4xx answers, decaying over the scan window.
    errors: Decaying,
    bucket: Option<Bucket>,
    strikes: u32,
    /// Until when the source is banned or the identity blocked.
    until: Option<Instant>,
    /// Addresses banned under the current ban (one for IPv4; several for an IPv6 prefix).
    banned: Vec<IpAddr>,
    chain: VecDeque<ChainLink>,
}

impl Tracked {
    fn new(now: Instant) -> Self {
        Self {
            score: Decaying::new(now),
            errors: Decaying::new(now),
            bucket: None,
            strikes: 0,
            until: None,
            banned: Vec::new(),
            chain: VecDeque::new(),
        }
    }

    fn push(&mut self, link: ChainLink) {
        if self.chain.len() == CHAIN_LEN {
            self.chain.pop_front();
        }
        self.chain.push_back(link);
    }

    fn active(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| u > now)
    }
}

/// A route's learned per-source request rate (requests per bucket): an exponentially weighted mean and
/// variance, fed only with samples under the current threshold so abusers cannot teach it their rate.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Baseline {
    pub mean: f64,
    pub variance: f64,
    pub samples: u64,
}

impl Baseline {
    const ALPHA: f64 = 0.05;

    fn learn(&mut self, x: f64) {
        if self.samples == 0 {
            self.mean = x;
            self.variance = 0.0;
        } else {
            let d = x - self.mean;
            self.mean += Self::ALPHA * d;
            self.variance = (1.0 - Self::ALPHA) * (self.variance + Self::ALPHA * d * d);
        }
        self.samples += 1;
    }

    /// Requests per bucket above which a caller is "far above" the route's normal.
    fn threshold(&self, cfg: &RiskConfig) -> f64 {
        let min = cfg.rate_min_rps * cfg.rate_bucket.as_secs_f64();
        (self.mean.max(1.0) * cfg.rate_factor)
            .max(self.mean + 6.0 * self.variance.sqrt())
            .max(min)
    }
}

/// Who and where, for one signal.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    pub source: IpAddr,
    pub identity: Option<&'a Identity>,
    /// The route's label, if the request matched one.
    pub route: Option<&'a str>,
    /// The route's weight multiplier (admin routes stricter).
    pub sensitivity: f64,
    pub request_id: Option<&'a str>,
}

/// What happened.
#[derive(Clone, Copy, Debug)]
pub enum Signal<'a> {
    /// A security event from the identity checks or the inspector.
    Event(&'a SecurityEvent),
    /// A request arrived (rate accounting).
    Request,
    /// The proxy answered with this status.
    Status(u16),
    /// The kernel measured this packet rate for the source.
    KernelPps(f64),
}

/// A kernel ban to place.
#[derive(Clone, Debug, Serialize)]
pub struct BanAction {
    /// The address that crossed the threshold (IPv6 sources are scored per prefix, banned per address).
    pub addr: IpAddr,
    pub key: SourceKey,
    #[serde(serialize_with = "secs")]
    pub ttl: Duration,
    pub strike: u32,
    #[serde(serialize_with = "reason_name")]
    pub reason: BanReason,
    pub score: f64,
    pub chain: Vec<ChainLink>,
}

/// An identity to refuse at L7.
#[derive(Clone, Debug, Serialize)]
pub struct IdentityBlockAction {
    pub identity: String,
    #[serde(serialize_with = "secs")]
    pub ttl: Duration,
    pub strike: u32,
    pub score: f64,
    pub chain: Vec<ChainLink>,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's serialize_with signature"
)]
fn reason_name<S: serde::Serializer>(r: &BanReason, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.as_str())
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

/// The engine's answer to one signal.
#[derive(Debug, Default)]
pub struct Outcome {
    pub source_score: f64,
    pub identity_score: Option<f64>,
    /// The request is far above the route's learned rate (answer 429 in block mode).
    pub over_rate: bool,
    pub ban: Option<BanAction>,
    pub identity_block: Option<IdentityBlockAction>,
}

struct Inner {
    sources: LruCache<SourceKey, Tracked>,
    identities: LruCache<String, Tracked>,
    /// Keyed by route label; bounded by the routes a config has (unknown labels are not learned).
    /// Keyed by the configuration's route labels (never by request data), so a fast unkeyed hash is safe.
    baselines: FxHashMap<String, Baseline>,
}

pub struct RiskEngine {
    cfg: RiskConfig,
    protected: Vec<Cidr>,
    inner: Mutex<Inner>,
    /// Set by the first identity block and never cleared; see [`RiskEngine::identity_blocked`].
    identity_blocks_placed: AtomicBool,
}

impl RiskEngine {
    /// `routes`: the labels of the config's routes, the only ones whose rates are learned. `protected`: CIDRs
    /// never banned, on top of `cfg.never_ban` and loopback.
    #[must_use]
    pub fn new(cfg: RiskConfig, routes: &[String], protected: Vec<Cidr>) -> Self {
        let cap = |n: usize| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
        let mut all = protected;
        all.extend(cfg.never_ban.iter().copied());
        Self {
            inner: Mutex::new(Inner {
                sources: LruCache::new(cap(cfg.max_sources)),
                identities: LruCache::new(cap(cfg.max_identities)),
                baselines: routes.iter().map(|r| (r.clone(), Baseline::default())).collect(),
            }),
            protected: all,
            identity_blocks_placed: AtomicBool::new(false),
            cfg,
        }
    }

    /// The engine's state. A panic elsewhere while holding it leaves plain data behind, so poisoning is ignored.
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[must_use]
    pub fn config(&self) -> &RiskConfig {
        &self.cfg
    }

    /// Whether an address may never be banned.
    #[must_use]
    pub fn is_protected(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_loopback() || ip.is_unspecified() || self.protected.iter().any(|c| c.contains(ip))
    }

    /// Feeds one signal; returns the scores and any action it triggers.
    pub fn record(&self, ctx: &Context<'_>, signal: Signal<'_>, now: Instant) -> Outcome {
        let id_key = ctx.identity.map(Identity::key);
        let mut inner = self.lock();
        let mut out = Outcome::default();
        let scored = self.points(&mut inner, ctx, id_key, signal, now, &mut out);
        self.score_source(&mut inner, ctx, &scored, now, &mut out);
        if let Some(id_key) = id_key {
            self.score_identity(&mut inner, ctx, id_key, &scored, now, &mut out);
        }
        out
    }

    /// What one signal is worth, before it is added to anyone's score.
    fn points(
        &self,
        inner: &mut Inner,
        ctx: &Context<'_>,
        id_key: Option<&str>,
        signal: Signal<'_>,
        now: Instant,
        out: &mut Outcome,
    ) -> Scored {
        let cfg = &self.cfg;
        let key = SourceKey::new(ctx.source, cfg.ipv6_prefix);
        match signal {
            Signal::Event(ev) => {
                let (factor, reason) = kind_weight(ev.kind);
                let auth = if ctx.identity.is_some() {
                    cfg.authenticated_factor
                } else {
                    1.0
                };
                Scored {
                    points: f64::from(ev.severity.weight()) * factor * ctx.sensitivity * auth,
                    kind: kind_name(ev.kind).into(),
                    reason,
                    evidence: ev.evidence.clone(),
                }
            }
            Signal::Status(status) if (400..500).contains(&status) => {
                let source = inner.sources.get_or_insert_mut(key, || Tracked::new(now));
                let errors = source.errors.add(now, cfg.scan_window, 1.0);
                let points = if errors > cfg.scan_allowance {
                    cfg.scan_weight * ctx.sensitivity
                } else {
                    0.0
                };
                Scored::new(points, "scanning", BanReason::Scanning)
            }
            Signal::Request => {
                let Some(route) = ctx.route else {
                    return Scored::none();
                };
                let source = inner.sources.get_or_insert_mut(key, || Tracked::new(now));
                let source_over = count_request(&mut inner.baselines, source, route, cfg, now);
                let identity_over = id_key.is_some_and(|key| {
                    let t = inner.identities.get_or_insert_mut_ref(key, || Tracked::new(now));
                    count_request(&mut inner.baselines, t, route, cfg, now)
                });
                out.over_rate = source_over || identity_over;
                let points = if out.over_rate {
                    cfg.rate_weight * ctx.sensitivity
                } else {
                    0.0
                };
                Scored::new(points, "rate_abuse", BanReason::RateAbuse)
            }
            Signal::KernelPps(pps) if cfg.flood_pps > 0.0 && pps > cfg.flood_pps => Scored {
                points: cfg.flood_weight,
                kind: "flood".into(),
                reason: BanReason::Flood,
                evidence: vec![Evidence::new(
                    "flood.kernel_pps",
                    "xdp:rates",
                    &format!("{pps:.0} packets/s"),
                )],
            },
            Signal::Status(_) | Signal::KernelPps(_) => Scored::none(),
        }
    }

    /// Adds the points to the source's score and decides a ban.
    fn score_source(
        &self,
        inner: &mut Inner,
        ctx: &Context<'_>,
        scored: &Scored,
        now: Instant,
        out: &mut Outcome,
    ) {
        let cfg = &self.cfg;
        let key = SourceKey::new(ctx.source, cfg.ipv6_prefix);
        let protected = self.is_protected(ctx.source);
        let addr = canonical(ctx.source);
        let source = inner.sources.get_or_insert_mut(key, || Tracked::new(now));
        out.source_score = source.score.get(now, cfg.half_life);
        if scored.points > 0.0 {
            out.source_score = source.score.add(now, cfg.half_life, scored.points);
            source.push(link(ctx, scored, scored.points, out.source_score));
        }
        if protected {
            // Scored and logged like anyone, never banned.
        } else if !source.active(now) && out.source_score >= cfg.ban_threshold {
            source.strikes += 1;
            let ttl = cfg.ttl_for(source.strikes);
            source.until = Some(now + ttl);
            source.banned.clear();
            source.banned.push(addr);
            out.ban = Some(BanAction {
                addr,
                key,
                ttl,
                strike: source.strikes,
                reason: scored.reason,
                score: out.source_score,
                chain: source.chain.iter().cloned().collect(),
            });
            // The ban answers this score: a source comes back from it with a clean slate, and its strikes.
            source.score = Decaying::new(now);
        } else if let Some(until) = source.until.filter(|u| *u > now)
            && source.banned.len() < MAX_BANNED_PER_PREFIX
            && !source.banned.contains(&addr)
        {
            // Another address of a banned IPv6 prefix: banned for the rest of the prefix's ban on its first
            // request, since one attacker rarely holds a single address.
            source.banned.push(addr);
            out.ban = Some(BanAction {
                addr,
                key,
                ttl: until.duration_since(now),
                strike: source.strikes,
                reason: scored.reason,
                score: out.source_score,
                chain: source.chain.iter().cloned().collect(),
            });
        }
    }

    /// Adds the points to the identity's score (weighted by its history) and decides a block.
    fn score_identity(
        &self,
        inner: &mut Inner,
        ctx: &Context<'_>,
        id_key: &str,
        scored: &Scored,
        now: Instant,
        out: &mut Outcome,
    ) {
        let cfg = &self.cfg;
        let t = inner
            .identities
            .get_or_insert_mut_ref(id_key, || Tracked::new(now));
        let mut score = t.score.get(now, cfg.half_life);
        if scored.points > 0.0 {
            // An identity with a history weighs more.
            let weighted = scored.points * (1.0 + 0.5 * f64::from(t.strikes));
            score = t.score.add(now, cfg.half_life, weighted);
            t.push(link(ctx, scored, weighted, score));
            if score >= cfg.identity_block_threshold && !t.active(now) {
                t.strikes += 1;
                let ttl = cfg.ttl_for(t.strikes);
                t.until = Some(now + ttl);
                self.identity_blocks_placed.store(true, Ordering::Release);
                out.identity_block = Some(IdentityBlockAction {
                    identity: id_key.to_owned(),
                    ttl,
                    strike: t.strikes,
                    score,
                    chain: t.chain.iter().cloned().collect(),
                });
                t.score = Decaying::new(now);
            }
        }
        out.identity_score = Some(score);
    }

    /// How much longer an identity is refused, if it is.
    pub fn identity_blocked(&self, identity: &Identity, now: Instant) -> Option<Duration> {
        // Until the first block, no identity can be blocked: skip the key and the lock every request would pay.
        if !self.identity_blocks_placed.load(Ordering::Acquire) {
            return None;
        }
        let mut inner = self.lock();
        let t = inner.identities.get(identity.key())?;
        t.until.filter(|u| *u > now).map(|u| u.duration_since(now))
    }

    /// Identities currently blocked, with the time left and the chain that led there.
    pub fn blocked_identities(&self, now: Instant) -> Vec<(String, Duration, Vec<ChainLink>)> {
        let inner = self.lock();
        inner
            .identities
            .iter()
            .filter_map(|(k, t)| {
                t.until.filter(|u| *u > now).map(|u| {
                    (
                        k.clone(),
                        u.duration_since(now),
                        t.chain.iter().cloned().collect(),
                    )
                })
            })
            .collect()
    }

    /// Lifts an identity block. Returns whether there was one.
    pub fn unblock_identity(&self, identity: &str) -> bool {
        let mut inner = self.lock();
        inner
            .identities
            .get_mut(identity)
            .is_some_and(|t| t.until.take().is_some())
    }

    /// The chain of events recorded for a source, newest last.
    pub fn source_chain(&self, ip: IpAddr) -> Vec<ChainLink> {
        let mut inner = self.lock();
        inner
            .sources
            .get(&SourceKey::new(ip, self.cfg.ipv6_prefix))
            .map(|t| t.chain.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Strikes a source has had, as the engine remembers them.
    pub fn source_strikes(&self, ip: IpAddr) -> u32 {
        let mut inner = self.lock();
        inner
            .sources
            .get(&SourceKey::new(ip, self.cfg.ipv6_prefix))
            .map_or(0, |t| t.strikes)
    }

    /// Raises the engine's memory of a source's strikes (e.g. from the kernel's ban after a restart).
    pub fn note_strikes(&self, ip: IpAddr, strikes: u32, now: Instant) {
        let mut inner = self.lock();
        let t = inner
            .sources
            .get_or_insert_mut(SourceKey::new(ip, self.cfg.ipv6_prefix), || Tracked::new(now));
        t.strikes = t.strikes.max(strikes);
    }

    /// A route's learned baseline.
    pub fn baseline(&self, route: &str) -> Option<Baseline> {
        let inner = self.lock();
        inner.baselines.get(route).copied()
    }
}

/// Counts a request in the caller's bucket for `route`; closes the previous bucket into the route's baseline.
/// Returns whether the caller is now far above the route's normal rate.
fn count_request(
    baselines: &mut FxHashMap<String, Baseline>,
    t: &mut Tracked,
    route: &str,
    cfg: &RiskConfig,
    now: Instant,
) -> bool {
    let stale = t
        .bucket
        .as_ref()
        .is_none_or(|b| b.route != route || now.saturating_duration_since(b.start) >= cfg.rate_bucket);
    if stale {
        if let Some(old) = t.bucket.take()
            && let Some(base) = baselines.get_mut(&old.route)
        {
            let sample = f64::from(old.count);
            if base.samples < cfg.rate_min_samples || sample <= base.threshold(cfg) {
                base.learn(sample);
            }
        }
        t.bucket = Some(Bucket {
            route: route.to_owned(),
            start: now,
            count: 0,
        });
    }
    let Some(bucket) = t.bucket.as_mut() else {
        return false;
    };
    bucket.count = bucket.count.saturating_add(1);
    baselines.get(route).is_some_and(|base| {
        base.samples >= cfg.rate_min_samples && f64::from(bucket.count) > base.threshold(cfg)
    })
}

/// How much an event kind weighs (times its severity), and the ban reason it stands for.
fn kind_weight(kind: EventKind) -> (f64, BanReason) {
    match kind {
        EventKind::Attack(_) => (1.0, BanReason::Injection),
        // Token tampering: forged signatures, `alg` games, garbage tokens.
        EventKind::Auth(
            AuthFailure::BadSignature
            | AuthFailure::AlgorithmNotAllowed
            | AuthFailure::Malformed
            | AuthFailure::UnknownKeyId,
        ) => (2.0, BanReason::AuthAbuse),
        EventKind::Auth(AuthFailure::MissingScope | AuthFailure::RouteNotAllowed) => {
            (0.5, BanReason::AuthAbuse)
        }
        EventKind::Auth(_) => (1.0, BanReason::AuthAbuse),
        EventKind::Scanning => (1.0, BanReason::Scanning),
        EventKind::RateAbuse => (1.0, BanReason::RateAbuse),
        EventKind::Flood => (1.0, BanReason::Flood),
    }
}

fn kind_name(kind: EventKind) -> String {
    match serde_json::to_value(kind) {
        Ok(v) => match (v["type"].as_str(), v["detail"].as_str()) {
            (Some(t), Some(d)) => format!("{t}:{d}"),
            (Some(t), None) => t.to_owned(),
            _ => "event".to_owned(),
        },
        Err(_) => "event".to_owned(),
    }
}

/// A signal's worth: points, what kind of thing it was, the ban reason it stands for, and its evidence.
struct Scored {
    points: f64,
    /// Borrowed for the per-request signals, so that counting a request allocates nothing.
    kind: Cow<'static, str>,
    reason: BanReason,
    evidence: Vec<Evidence>,
}

impl Scored {
    fn new(points: f64, kind: &'static str, reason: BanReason) -> Self {
        Self {
            points,
            kind: Cow::Borrowed(kind),
            reason,
            evidence: Vec::new(),
        }
    }

    fn none() -> Self {
        Self::new(0.0, "", BanReason::Manual)
    }
}

fn link(ctx: &Context<'_>, scored: &Scored, points: f64, score_after: f64) -> ChainLink {
    ChainLink {
        at: SystemTime::now(),
        source: canonical(ctx.source),
        route: ctx.route.map(str::to_owned),
        request_id: ctx.request_id.map(str::to_owned),
        kind: scored.kind.clone().into_owned(),
        evidence: scored.evidence.clone(),
        points,
        score_after,
    }
}

#[cfg(test)]
mod tests;
