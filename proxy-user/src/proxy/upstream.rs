//! Upstream endpoint sets: round-robin over the healthy endpoints, with passive ejection. An endpoint that
//! fails `eject_after_failures` times in a row (refused, reset, timed out) leaves the rotation for
//! `eject_cooldown`, then comes back on probation: its next failure ejects it again at once.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use crate::config::UpstreamConfig;

#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `addr` as a URI authority, made once rather than per request.
    pub authority: http::uri::Authority,
    consecutive_failures: AtomicU32,
    /// End of the ejection in nanoseconds after the upstream's `epoch`; 0 when not ejected. An atomic rather than
    /// a locked `Option<Instant>`: every request reads it, for every endpoint it looks at.
    ejected_until: AtomicU64,
}

impl Endpoint {
    /// `now` (nanoseconds after the epoch) is read only for an ejected endpoint: the healthy case, every
    /// request's, needs no clock.
    fn is_available(&self, now: &mut Option<u64>, epoch: Instant) -> bool {
        match self.ejected_until.load(Ordering::Relaxed) {
            0 => true,
            until => until <= *now.get_or_insert_with(|| nanos_since(epoch)),
        }
    }
}

fn nanos_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// One `[[upstream]]` at run time.
#[derive(Debug)]
pub struct Upstream {
    /// Shared, not copied, by every request sent to the upstream.
    pub name: std::sync::Arc<str>,
    endpoints: Vec<Endpoint>,
    next: AtomicUsize,
    eject_after: u32,
    cooldown: Duration,
    /// Where the endpoints' ejection clocks start.
    epoch: Instant,
}

impl Upstream {
    #[must_use]
    pub fn new(config: &UpstreamConfig) -> Self {
        Self {
            name: config.name.as_str().into(),
            endpoints: config
                .endpoints
                .iter()
                .map(|&addr| Endpoint {
                    addr,
                    authority: authority_of(addr),
                    consecutive_failures: AtomicU32::new(0),
                    ejected_until: AtomicU64::new(0),
                })
                .collect(),
            next: AtomicUsize::new(0),
            eject_after: config.eject_after_failures,
            cooldown: config.eject_cooldown,
            epoch: Instant::now(),
        }
    }

    /// The next endpoint in round-robin order that is not ejected. When every endpoint is ejected, the one whose
    /// cool-down ends first is tried anyway: refusing all traffic would turn a partial outage into a full one.
    #[must_use]
    pub fn pick(&self) -> Option<(usize, &Endpoint)> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        // One endpoint needs no turn-taking, and the counter is a write every worker would contend for.
        let start = if n == 1 {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed)
        };
        let mut now = None;
        for i in 0..n {
            let idx = (start + i) % n;
            if self.endpoints[idx].is_available(&mut now, self.epoch) {
                return Some((idx, &self.endpoints[idx]));
            }
        }
        let idx = (0..n).min_by_key(|&i| self.endpoints[i].ejected_until.load(Ordering::Relaxed))?;
        Some((idx, &self.endpoints[idx]))
    }

    /// Reports a transport failure of endpoint `idx`; returns true when this failure ejected it.
    pub fn report_failure(&self, idx: usize) -> bool {
        let Some(ep) = self.endpoints.get(idx) else {
            return false;
        };
        let failures = ep
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if failures >= self.eject_after {
            let cooldown = u64::try_from(self.cooldown.as_nanos()).unwrap_or(u64::MAX);
            // Never 0, which means "not ejected".
            let until = nanos_since(self.epoch).saturating_add(cooldown).max(1);
            ep.ejected_until.store(until, Ordering::Relaxed);
            return true;
        }
        false
    }

    pub fn report_success(&self, idx: usize) {
        let Some(ep) = self.endpoints.get(idx) else { return };
        // Read first: a write on every success would bounce the line between the workers for nothing.
        if ep.consecutive_failures.load(Ordering::Relaxed) != 0
            && ep.consecutive_failures.swap(0, Ordering::Relaxed) != 0
        {
            ep.ejected_until.store(0, Ordering::Relaxed);
        }
    }
}

fn authority_of(addr: SocketAddr) -> http::uri::Authority {
    // `SocketAddr`'s display form (`1.2.3.4:80`, `[::1]:80`) is always a valid authority; the fallback only
    // satisfies the type.
    http::uri::Authority::try_from(addr.to_string())
        .unwrap_or_else(|_| http::uri::Authority::from_static("invalid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(n: u16, eject_after: u32, cooldown: Duration) -> Upstream {
        Upstream::new(&UpstreamConfig {
            name: "u".into(),
            endpoints: (0..n)
                .map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i)))
                .collect(),
            eject_after_failures: eject_after,
            eject_cooldown: cooldown,
        })
    }

    #[test]
    fn round_robin_skips_ejected_and_readmits_after_cooldown() {
        let u = upstream(3, 2, Duration::from_millis(50));
        let picks: Vec<usize> = (0..6).map(|_| u.pick().unwrap().0).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        assert!(!u.report_failure(1));
        assert!(u.report_failure(1));
        let picks: Vec<usize> = (0..4).map(|_| u.pick().unwrap().0).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        std::thread::sleep(Duration::from_millis(60));
        let picks: Vec<usize> = (0..3).map(|_| u.pick().unwrap().0).collect();
        assert!(picks.contains(&1), "{picks:?}");
    }

    #[test]
    fn all_ejected_still_tries_one() {
        let u = upstream(2, 1, Duration::from_mins(1));
        u.report_failure(0);
        u.report_failure(1);
        assert!(u.pick().is_some());
        u.report_success(1);
        assert_eq!(u.pick().unwrap().0, 1);
        assert_eq!(u.pick().unwrap().0, 1);
    }
}
