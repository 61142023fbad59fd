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
    connections: Arc<ConnectionRegistry>,
}

impl Enforcer {
    #[must_use]
    pub fn new(engine: RiskEngine, kernel: Option<KernelMaps>, connections: Arc<ConnectionRegistry>) -> Self {
        Self {
            engine,
            kernel: kernel.map(Mutex::new),
            connections,
        }
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

    /// Feeds one signal and applies what it triggers; returns what the current request gets.
    pub fn observe(&self, ctx: &Context<'_>, signal: Signal<'_>, metrics: &Metrics) -> Option<Refusal> {
        let outcome = self.engine.record(ctx, signal, Instant::now());
        self.apply(&outcome, metrics)
    }

    /// Whether an identity is refused right now (block mode only).
    #[must_use]
    pub fn identity_refused(&self, identity: &Identity) -> bool {
        self.mode() == Mode::Block && self.engine.identity_blocked(identity, Instant::now()).is_some()
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
                if let Err(e) = maps.ban(ban.addr, ban.ttl, ban.reason, &note) {
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
