//! Applying the risk engine's outcomes: a kernel ban (written before the response that triggered it is sent),
//! closing the source's open connections, identity blocks, the forensic record, and the metrics. In detect
//! mode every action is logged and counted as it would have happened, and nothing is enforced.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use super::{BanAction, ChainLink, Context, IdentityBlockAction, Mode, Outcome, RiskEngine, Signal};
use crate::{
    event::Identity,
    metrics::{Metrics, RiskActionLabels},
    proxy::{SourceGate, connections::ConnectionRegistry},
    xdp::KernelMaps,
};

/// Log target of the forensic stream: one JSON record per ban or block, with the chain that led to it.
pub const FORENSIC: &str = "forensic";

/// What the request that triggered an outcome gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 403: the source was just banned, or the identity is blocked.
    Forbidden,
    /// 429: far above the route's learned rate.
    TooManyRequests,
}

pub struct Enforcer {
    engine: RiskEngine,
    /// The pinned kernel maps, when the daemon runs with XDP.
    kernel: Option<Mutex<KernelMaps>>,
    /// The XDP program's own log records (its rare error paths), forwarded to the daemon's log each tick.
    kernel_log: Option<Mutex<aya_log::EbpfLogger<&'static dyn log::Log>>>,
    connections: Arc<ConnectionRegistry>,
}

impl Enforcer {
    #[must_use]
    pub fn new(engine: RiskEngine, kernel: Option<KernelMaps>, connections: Arc<ConnectionRegistry>) -> Self {
        Self {
            engine,
            kernel: kernel.map(Mutex::new),
            kernel_log: None,
            connections,
        }
    }

    /// Forwards the log records of the XDP program with this id (see `xdp::loader::links`).
    #[must_use]
    pub fn with_kernel_log(mut self, program_id: u32) -> Self {
        match aya_log::EbpfLogger::init_from_id(program_id) {
            Ok(logger) => self.kernel_log = Some(Mutex::new(logger)),
            Err(e) => {
                tracing::warn!(program_id, error = %e, "the XDP program's log records will not be forwarded");
            }
        }
        self
    }
    #[must_use]
    pub fn engine(&self) -> &RiskEngine {
        &self.engine
    }

    #[must_use]
    pub fn mode(&self) -> Mode {
        self.engine.config().mode
    }

    /// Whether the daemon writes bans into the kernel.
    #[must_use]
    pub fn has_kernel(&self) -> bool {
        self.kernel.is_some()
    }

    /// Feeds one signal, which happened at `now`, and applies what it triggers; returns what the current request
    /// gets.
    pub fn observe(
        &self,
        ctx: &Context<'_>,
        signal: Signal<'_>,
        now: Instant,
        metrics: &Metrics,
    ) -> Option<Refusal> {
        let outcome = self.engine.record(ctx, signal, now);
        self.apply(&outcome, metrics)
    }

    /// Whether an identity is refused at `now` (block mode only).
    #[must_use]
    pub fn identity_refused(&self, identity: &Identity, now: Instant) -> bool {
        self.mode() == Mode::Block && self.engine.identity_blocked(identity, now).is_some()
    }

    fn apply(&self, outcome: &Outcome, metrics: &Metrics) -> Option<Refusal> {
        let block = self.mode() == Mode::Block;
        let mut refusal = None;
        if let Some(ban) = &outcome.ban {
            self.ban(ban, metrics);
            if block {
                refusal = Some(Refusal::Forbidden);
            }
        }
        if let Some(b) = &outcome.identity_block {
            self.block_identity(b, metrics);
            if block {
                refusal = Some(Refusal::Forbidden);
            }
        }
        if outcome.over_rate {
            metrics
                .risk_actions
                .get_or_create(&RiskActionLabels {
                    action: "rate_refusal",
                    reason: "rate_abuse".into(),
                    mode: self.mode_name(),
                })
                .inc();
            if block && refusal.is_none() {
                refusal = Some(Refusal::TooManyRequests);
            }
        }
        refusal
    }

    fn ban(&self, ban: &BanAction, metrics: &Metrics) {
        let block = self.mode() == Mode::Block;
        let reason = ban.reason.as_str();
        if block {
            if let Some(kernel) = &self.kernel {
                let note = note(reason, ban.score, &ban.chain);
                let mut maps = kernel.lock().unwrap_or_else(PoisonError::into_inner);
                // In the map before the response that triggered it is sent: the source's next packet drops.
                if let Err(e) = maps.ban_with_strikes(ban.addr, ban.ttl, ban.reason, &note, Some(ban.strike))
                {
                    tracing::error!(addr = %ban.addr, error = %e, "could not write the ban into the kernel map");
                }
            }
            self.close_connections_soon(ban.addr);
        }
        metrics
            .risk_actions
            .get_or_create(&RiskActionLabels {
                action: "ban",
                reason: reason.into(),
                mode: self.mode_name(),
            })
            .inc();
        self.forensic(
            if block { "ban" } else { "would_ban" },
            &ban.addr.to_string(),
            reason,
            ban.ttl,
            ban.strike,
            ban.score,
            &ban.chain,
        );
    }

    fn block_identity(&self, b: &IdentityBlockAction, metrics: &Metrics) {
        let block = self.mode() == Mode::Block;
        metrics
            .risk_actions
            .get_or_create(&RiskActionLabels {
                action: "identity_block",
                reason: "risk".into(),
                mode: self.mode_name(),
            })
            .inc();
        self.forensic(
            if block {
                "identity_block"
            } else {
                "would_block_identity"
            },
            &b.identity,
            "risk",
            b.ttl,
            b.strike,
            b.score,
            &b.chain,
        );
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one flat record; a struct for the arguments would be the record"
    )]
    fn forensic(
        &self,
        action: &'static str,
        subject: &str,
        reason: &str,
        ttl: Duration,
        strike: u32,
        score: f64,
        chain: &[ChainLink],
    ) {
        // Top-level fields stay queryable in the JSON log; the chain rides along as one JSON document.
        let chain = serde_json::to_string(chain).unwrap_or_else(|e| format!("[\"unserialisable: {e}\"]"));
        tracing::warn!(
            target: FORENSIC,
            action,
            mode = self.mode_name(),
            subject = %subject,
            reason,
            ttl_secs = ttl.as_secs(),
            strike,
            score,
            chain = %chain,
            "{action}"
        );
    }

    /// Closes the source's open connections just after the current response has gone out, so the request that
    /// triggered the ban still gets its 403.
    fn close_connections_soon(&self, addr: IpAddr) {
        let connections = self.connections.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let closed = connections.close_source(addr);
                    tracing::info!(%addr, closed, "closed the banned source's connections");
                });
            }
            Err(_) => {
                connections.close_source(addr);
            }
        }
    }

    const fn mode_name(&self) -> &'static str {
        match self.engine.cfg.mode {
            Mode::Block => "block",
            Mode::Detect => "detect",
        }
    }
}

/// Sets the kernel's per-source packet ceiling from the observed traffic: a multiple of the 99th percentile of
/// the tracked sources' rates, so a volumetric source is held back in the kernel without a hand-tuned number.
pub fn derive_kernel_rate_limit(maps: &mut KernelMaps, cfg: &super::RiskConfig) {
    let Ok(rates) = maps.rates() else { return };
    let mut pps: Vec<f64> = rates
        .iter()
        .map(|r| r.packets_per_sec)
        .filter(|p| *p > 0.0)
        .collect();
    if pps.len() < 10 {
        return;
    }
    pps.sort_by(f64::total_cmp);
    let p99 = pps[(pps.len() * 99 / 100).min(pps.len() - 1)];
    let ceiling = (p99 * cfg.auto_rate_limit_factor).max(cfg.auto_rate_limit_min_pps);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a positive, finite rate"
    )]
    let ceiling = ceiling.ceil() as u64;
    match maps
        .update_config(|c| c.rate_limit_packets = crate::xdp::commands::per_window(ceiling, c.rate_window_ns))
    {
        Ok(_) => tracing::info!(
            p99_pps = p99,
            ceiling_pps = ceiling,
            "kernel rate limit derived from traffic"
        ),
        Err(e) => tracing::warn!(error = %e, "could not set the derived kernel rate limit"),
    }
}

/// The words stored with a kernel ban: reason, score and the rules that led there (the full chain is in the
/// forensic log and the admin API).
fn note(reason: &str, score: f64, chain: &[ChainLink]) -> String {
    let mut rules: Vec<&str> = Vec::new();
    for link in chain {
        for e in &link.evidence {
            if !rules.contains(&e.rule_id.as_str()) {
                rules.push(&e.rule_id);
            }
        }
        if rules.is_empty() && !link.kind.is_empty() && !rules.contains(&link.kind.as_str()) {
            rules.push(&link.kind);
        }
    }
    format!("risk: {reason}, score {score:.0}; {}", rules.join(" "))
}

/// The kernel's verdict at accept time: a source banned in the map is refused before TLS even if XDP did not
/// see its packets (loopback, an interface without XDP, or a ban written a moment ago).
impl SourceGate for Enforcer {
    fn is_banned(&self, source: IpAddr) -> bool {
        if self.mode() != Mode::Block {
            return false;
        }
        let Some(kernel) = &self.kernel else { return false };
        let maps = kernel.lock().unwrap_or_else(PoisonError::into_inner);
        maps.ban_of(source).ok().flatten().is_some_and(|b| !b.expired)
    }
}

/// One ban as the admin API explains it: the kernel's entry (time left, hits, note) and the chain of events the
/// engine recorded for the source.
#[derive(Debug, serde::Serialize)]
pub struct Explanation {
    pub addr: IpAddr,
    /// The kernel's ban, if one is in the map (expired ones stay until reaped).
    pub ban: Option<crate::xdp::maps::BanRecord>,
    pub strikes: u32,
    pub chain: Vec<ChainLink>,
}

/// An identity refused at L7.
#[derive(Debug, serde::Serialize)]
pub struct BlockedIdentity {
    pub identity: String,
    pub remaining_secs: u64,
    pub chain: Vec<ChainLink>,
}

impl Enforcer {
    /// Why `addr` is banned (or what the engine holds against it).
    pub fn explain(&self, addr: IpAddr) -> Result<Explanation, crate::Error> {
        let ban = match &self.kernel {
            Some(k) => k.lock().unwrap_or_else(PoisonError::into_inner).ban_of(addr)?,
            None => None,
        };
        Ok(Explanation {
            addr,
            strikes: ban
                .as_ref()
                .map_or(0, |b| b.strikes)
                .max(self.engine.source_strikes(addr)),
            ban,
            chain: self.engine.source_chain(addr),
        })
    }

    /// Every kernel ban, explained.
    pub fn bans(&self) -> Result<Vec<Explanation>, crate::Error> {
        let Some(k) = &self.kernel else {
            return Ok(Vec::new());
        };
        let bans = k.lock().unwrap_or_else(PoisonError::into_inner).bans()?;
        Ok(bans
            .into_iter()
            .map(|b| Explanation {
                addr: b.addr,
                strikes: b.strikes.max(self.engine.source_strikes(b.addr)),
                chain: self.engine.source_chain(b.addr),
                ban: Some(b),
            })
            .collect())
    }

    /// Lifts a kernel ban. Returns whether there was one.
    pub fn lift(&self, addr: IpAddr) -> Result<bool, crate::Error> {
        match &self.kernel {
            Some(k) => k.lock().unwrap_or_else(PoisonError::into_inner).unban(addr),
            None => Ok(false),
        }
    }

    #[must_use]
    pub fn blocked_identities(&self) -> Vec<BlockedIdentity> {
        self.engine
            .blocked_identities(Instant::now())
            .into_iter()
            .map(|(identity, left, chain)| BlockedIdentity {
                identity,
                remaining_secs: left.as_secs(),
                chain,
            })
            .collect()
    }

    #[must_use]
    pub fn unblock_identity(&self, identity: &str) -> bool {
        self.engine.unblock_identity(identity)
    }

    /// Housekeeping, once a second: kernel packet rates into the engine (volumetric abuse the proxy never sees)
    /// and, every `reap_every` calls, expired bans out of the map.
    pub fn tick(&self, metrics: &Metrics, reap: bool, derive_rate_limit: bool) {
        if let Some(logger) = &self.kernel_log {
            logger.lock().unwrap_or_else(PoisonError::into_inner).flush();
        }
        let Some(kernel) = &self.kernel else { return };
        let cfg = self.engine.config();
        let flood_pps = cfg.flood_pps;
        let rates = {
            let mut maps = kernel.lock().unwrap_or_else(PoisonError::into_inner);
            if reap && let Err(e) = maps.reap_expired_bans() {
                tracing::warn!(error = %e, "could not reap expired bans");
            }
            if derive_rate_limit && cfg.auto_rate_limit {
                derive_kernel_rate_limit(&mut maps, cfg);
            }
            if flood_pps <= 0.0 {
                return;
            }
            match maps.rates() {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the kernel rates");
                    return;
                }
            }
        };
        for r in rates.iter().take_while(|r| r.packets_per_sec > flood_pps) {
            let ctx = Context {
                source: r.addr,
                identity: None,
                route: None,
                sensitivity: 1.0,
                request_id: None,
            };
            let _ = self.observe(
                &ctx,
                Signal::KernelPps(r.packets_per_sec),
                Instant::now(),
                metrics,
            );
        }
    }
}

impl Enforcer {
    /// Copies the kernel's counters into the metrics (at scrape time): stats by outcome (counters only move
    /// forward by the difference since the last scrape), bans in force, and the ten busiest sources.
    pub fn export_kernel_metrics(&self, metrics: &Metrics) {
        use crate::metrics::{SourceLabels, XdpLabels};
        let Some(kernel) = &self.kernel else { return };
        let maps = kernel.lock().unwrap_or_else(PoisonError::into_inner);
        if let Ok(stats) = maps.stats() {
            for s in stats {
                let labels = XdpLabels { outcome: s.name };
                let packets = metrics.xdp_packets.get_or_create(&labels);
                packets.inc_by(s.packets.saturating_sub(packets.get()));
                let bytes = metrics.xdp_bytes.get_or_create(&labels);
                bytes.inc_by(s.bytes.saturating_sub(bytes.get()));
            }
        }
        if let Ok(bans) = maps.bans() {
            metrics
                .bans_active
                .set(i64::try_from(bans.iter().filter(|b| !b.expired).count()).unwrap_or(i64::MAX));
        }
        if let Ok(rates) = maps.rates() {
            metrics.top_source_pps.clear();
            for r in rates.iter().take(10) {
                metrics
                    .top_source_pps
                    .get_or_create(&SourceLabels {
                        source: r.addr.to_string(),
                    })
                    .set(r.packets_per_sec);
            }
        }
    }
}
