//! Prometheus metrics for the proxy, served as text on the admin listener's `/metrics`.

use std::{
    cell::RefCell,
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet, text::encode},
    metrics::{MetricType, TypedMetric, counter::Counter, family::Family, gauge::Gauge},
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
    pub requests: Family<RequestLabels, ShardedCounter>,
    pub latency: Family<RequestLabels, ShardedHistogram>,
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
        let requests = Family::<RequestLabels, ShardedCounter>::default();
        let latency = Family::<RequestLabels, ShardedHistogram>::new_with_constructor(|| {
            ShardedHistogram::new(&LATENCY_BOUNDS)
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
    requests: ShardedCounter,
    latency: ShardedHistogram,
}

/// A counter kept per thread and summed when scraped, for the same reason as [`ShardedHistogram`]: one atomic
/// shared by every worker, written once per request, moves its cache line between cores on every request.
#[derive(Clone, Debug)]
pub struct ShardedCounter {
    shards: Arc<[Padded<AtomicU64>]>,
}

impl Default for ShardedCounter {
    fn default() -> Self {
        Self {
            shards: (0..shard_count()).map(|_| Padded::default()).collect(),
        }
    }
}

impl ShardedCounter {
    pub fn inc(&self) {
        let shard = &self.shards[SHARD.with(|s| *s) % self.shards.len()].0;
        shard.fetch_add(1, Ordering::Relaxed);
    }

    #[must_use]
    pub fn get(&self) -> u64 {
        self.shards.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Upper bounds of the request latency buckets, in seconds (`+Inf` follows).
const LATENCY_BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets a [`ShardedHistogram`] can hold, `+Inf` included.
const MAX_BUCKETS: usize = 16;

/// A histogram whose observations land in the observing thread's own shard, summed only when scraped.
///
/// Why not prometheus-client's `Histogram`: its `observe` takes one mutex that every worker shares, once per
/// request, so the lock's and the counts' cache lines move between cores on every request. Here each thread
/// locks its own shard (uncontended, and its lines stay in its core's cache); the text is the same.
#[derive(Clone, Debug)]
pub struct ShardedHistogram {
    inner: Arc<Shards>,
}

#[derive(Debug)]
struct Shards {
    /// Finite upper bounds, ascending; the last bucket is `+Inf`.
    bounds: Vec<f64>,
    shards: Box<[Padded<Mutex<Shard>>]>,
}

/// One cache line pair per shard, so that two threads' shards never share a line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

#[derive(Debug, Default, Clone, Copy)]
struct Shard {
    sum: f64,
    count: u64,
    buckets: [u64; MAX_BUCKETS],
}

/// Shards per histogram: enough that the worker threads (one per CPU) each get their own.
fn shard_count() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .clamp(1, 32)
        * 2
}

static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// The calling thread's shard, handed out in order of first use: the worker threads, the only ones that
    /// observe requests, take consecutive (so distinct) shards.
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed);
}

impl ShardedHistogram {
    /// `bounds`: finite, ascending, at most `MAX_BUCKETS - 1` of them (the rest are ignored).
    #[must_use]
    pub fn new(bounds: &[f64]) -> Self {
        let bounds: Vec<f64> = bounds
            .iter()
            .copied()
            .filter(|b| b.is_finite())
            .take(MAX_BUCKETS - 1)
            .collect();
        Self {
            inner: Arc::new(Shards {
                bounds,
                shards: (0..shard_count()).map(|_| Padded::default()).collect(),
            }),
        }
    }

    pub fn observe(&self, v: f64) {
        let shards = &self.inner.shards;
        let shard = &shards[SHARD.with(|s| *s) % shards.len()].0;
        // NaN compares false with every bound and lands in `+Inf`, as in prometheus-client.
        let bucket = self
            .inner
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.inner.bounds.len());
        let mut s = shard.lock().unwrap_or_else(PoisonError::into_inner);
        s.sum += v;
        s.count += 1;
        s.buckets[bucket] += 1;
    }

    /// The shards summed: (sum, count, per-bucket counts with their upper bounds, `+Inf` last).
    fn total(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let bounds = &self.inner.bounds;
        let mut total = Shard::default();
        for shard in &self.inner.shards {
            let s = *shard.0.lock().unwrap_or_else(PoisonError::into_inner);
            total.sum += s.sum;
            total.count += s.count;
            for (t, c) in total.buckets.iter_mut().zip(s.buckets) {
                *t += c;
            }
        }
        let buckets = bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(total.buckets)
            .collect();
        (total.sum, total.count, buckets)
    }
}

impl TypedMetric for ShardedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ShardedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.total();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
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

    /// The text one registry with what `register` puts in it encodes to.
    fn encoded(register: &dyn Fn(&mut Registry)) -> String {
        let mut registry = Registry::default();
        register(&mut registry);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn sharded_histogram_reads_as_prometheus_clients_own() {
        use prometheus_client::metrics::histogram::Histogram;
        let ours = ShardedHistogram::new(&LATENCY_BOUNDS);
        let theirs = Histogram::new(LATENCY_BOUNDS);
        // Powers of two, so that the sum is exact in any order.
        let values = [
            0.000_244_140_625,
            0.000_488_281_25,
            0.001_953_125,
            0.125,
            0.125,
            8.0,
            32.0,
        ];
        // From several threads, so that several shards hold observations.
        std::thread::scope(|scope| {
            for chunk in values.chunks(2) {
                let (ours, theirs) = (&ours, &theirs);
                scope.spawn(move || {
                    for v in chunk {
                        ours.observe(*v);
                        theirs.observe(*v);
                    }
                });
            }
        });
        let ours_text = encoded(&|r| r.register("latency", "l", ours.clone()));
        assert_eq!(
            ours_text,
            encoded(&|r| r.register("latency", "l", theirs.clone()))
        );
        assert!(ours_text.contains("latency_count 7"), "{ours_text}");
        assert!(ours_text.contains("latency_bucket{le=\"0.25\"} 5"), "{ours_text}");
    }

    #[test]
    fn sharded_counter_reads_as_prometheus_clients_own() {
        let ours = ShardedCounter::default();
        let theirs = Counter::<u64>::default();
        std::thread::scope(|scope| {
            for n in [3, 5, 9] {
                let (ours, theirs) = (&ours, &theirs);
                scope.spawn(move || {
                    for _ in 0..n {
                        ours.inc();
                        theirs.inc();
                    }
                });
            }
        });
        let ours_text = encoded(&|r| r.register("requests", "r", ours.clone()));
        assert_eq!(
            ours_text,
            encoded(&|r| r.register("requests", "r", theirs.clone()))
        );
        assert!(ours_text.contains("requests_total 17"), "{ours_text}");
    }

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
