//! Prometheus metrics for the proxy, served as text on the admin listener's `/metrics`.

use std::{
    cell::RefCell,
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub upstream: String,
    /// `connect`, `timeout`, `protocol`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthFailureLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RiskActionLabels {
    /// `ban`, `identity_block`, `rate_refusal`.
    pub action: &'static str,
    /// The ban reason (`injection`, `auth_abuse`, `scanning`, `rate_abuse`, `flood`) or `risk`.
    pub reason: String,
    /// `block`, or `detect` (the action was only logged).
    pub mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct XdpLabels {
    /// A `proxy_common::Stat` name: `passed`, `allowlisted`, `dropped_ban`, `dropped_blocklist`,
    /// `dropped_rate_limit`, `non_ip`, `malformed`, `events_lost`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

#[derive(Debug)]
pub struct Metrics {
    /// Tells this instance's entries in a thread's [`REQUEST_HANDLES`] from another instance's (tests run several).
    id: u64,
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<RequestLabels, Histogram>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub auth_failures: Family<AuthFailureLabels, Counter>,
    pub open_connections: Gauge,
    pub rejected_connections: Counter,
    pub reloads_failed: Counter,
    /// Actions of the self-protection loop, enforced or (in detect mode) only logged.
    pub risk_actions: Family<RiskActionLabels, Counter>,
    /// The kernel's packet and byte counters by outcome, read from the pinned `STATS` map at scrape time.
    pub xdp_packets: Family<XdpLabels, Counter>,
    pub xdp_bytes: Family<XdpLabels, Counter>,
    /// Bans in the kernel map that are still in force, at scrape time.
    pub bans_active: Gauge,
    /// The busiest sources by packet rate (top 10, from the `RATES` map), at scrape time.
    pub top_source_pps: Family<SourceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("rasp_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
        });
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        let auth_failures = Family::<AuthFailureLabels, Counter>::default();
        let open_connections = Gauge::default();
        let rejected_connections = Counter::default();
        let reloads_failed = Counter::default();
        let risk_actions = Family::<RiskActionLabels, Counter>::default();
        let xdp_packets = Family::<XdpLabels, Counter>::default();
        let xdp_bytes = Family::<XdpLabels, Counter>::default();
        let bans_active = Gauge::default();
        let top_source_pps = Family::<SourceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "xdp_packets",
            "Packets seen by the XDP program, by outcome",
            xdp_packets.clone(),
        );
        registry.register(
            "xdp_bytes",
            "Bytes seen by the XDP program, by outcome",
            xdp_bytes.clone(),
        );
        registry.register("bans_active", "Kernel bans in force", bans_active.clone());
        registry.register(
            "top_source_packets_per_second",
            "Packet rate of the ten busiest sources, as the kernel counts them",
            top_source_pps.clone(),
        );
        registry.register(
            "risk_actions",
            "Self-protection actions (bans, identity blocks, rate refusals), by action, reason and mode",
            risk_actions.clone(),
        );
        registry.register(
            "requests",
            "Requests answered, by route and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to the response head, by route and status",
            latency.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed upstream exchanges, by upstream and kind",
            upstream_errors.clone(),
        );
        registry.register(
            "auth_failures",
            "Authentication failures, by kind",
            auth_failures.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        registry.register(
            "rejected_connections",
            "Client connections refused at accept (per-source limit or ban)",
            rejected_connections.clone(),
        );
        registry.register(
            "config_reloads_failed",
            "Config reloads refused",
            reloads_failed.clone(),
        );
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            registry,
            requests,
            latency,
            upstream_errors,
            auth_failures,
            open_connections,
            rejected_connections,
            reloads_failed,
            risk_actions,
            xdp_packets,
            xdp_bytes,
            bans_active,
            top_source_pps,
        }
    }

    /// Counts one answered request of `route` with `status`, and its time to the response head.
    ///
    /// The handles for a (route, status) are looked up in the families once per thread and kept: a family
    /// lookup takes the family's lock (shared by every worker) and hashes an owned copy of the labels.
    pub fn observe_request(&self, route: &str, status: u16, seconds: f64) {
        let observe = |h: &RequestHandles| {
            h.requests.inc();
            h.latency.observe(seconds);
        };
        REQUEST_HANDLES.with(|cache| {
            let Ok(mut cache) = cache.try_borrow_mut() else {
                observe(&self.request_handles(route, status));
                return;
            };
            if cache.owner != self.id {
                cache.owner = self.id;
                cache.routes.clear();
            }
            // One lookup when the handles are known, as they are for all but a route's first request per status.
            if let Some(h) = cache
                .routes
                .get(route)
                .and_then(|by_status| by_status.iter().find(|h| h.status == status))
            {
                observe(h);
                return;
            }
            let h = self.request_handles(route, status);
            observe(&h);
            cache.routes.entry(route.to_owned()).or_default().push(h);
        });
    }

    fn request_handles(&self, route: &str, status: u16) -> RequestHandles {
        let labels = RequestLabels {
            route: route.to_owned(),
            status,
        };
        RequestHandles {
            status,
            requests: self.requests.get_or_create(&labels).clone(),
            latency: self.latency.get_or_create(&labels).clone(),
        }
    }

    /// The text exposition format.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// One (route, status)'s series; the metric types are handles onto the same atomics as the family's entry.
struct RequestHandles {
    status: u16,
    requests: Counter,
    latency: Histogram,
}

#[derive(Default)]
struct HandleCache {
    owner: u64,
    /// Bounded by the routes the configs had and the statuses answered (at most 1000 per route).
    routes: HashMap<String, Vec<RequestHandles>>,
}

thread_local! {
    static REQUEST_HANDLES: RefCell<HandleCache> = RefCell::new(HandleCache {
        owner: u64::MAX,
        routes: HashMap::new(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_handles_count_into_the_families_of_their_own_instance() {
        let (a, b) = (Metrics::new(), Metrics::new());
        for _ in 0..3 {
            a.observe_request("/api", 200, 0.001);
        }
        a.observe_request("/api", 404, 0.001);
        b.observe_request("/api", 200, 0.001);
        let text = a.encode();
        assert!(
            text.contains("rasp_proxy_requests_total{route=\"/api\",status=\"200\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("rasp_proxy_requests_total{route=\"/api\",status=\"404\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("rasp_proxy_request_duration_seconds_count{route=\"/api\",status=\"200\"} 3"),
            "{text}"
        );
        let text = b.encode();
        assert!(
            text.contains("rasp_proxy_requests_total{route=\"/api\",status=\"200\"} 1"),
            "{text}"
        );
    }
}
