//! The `[risk]` config section. Every knob has a documented default; the defaults ban a source after about
//! four critical findings, or a burst of scanning, within a few minutes.

use std::time::Duration;

use serde::Deserialize;

use crate::addr::Cidr;

/// Whether verdicts are enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Refuse, ban and block.
    #[default]
    Block,
    /// Log and count every action that would have happened; refuse, ban and block nothing.
    Detect,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RiskConfig {
    pub mode: Mode,
    /// A source whose score reaches this is banned in the kernel.
    pub ban_threshold: f64,
    /// An identity whose score reaches this is refused at L7 wherever it comes from.
    pub identity_block_threshold: f64,
    /// Scores halve after this long without new events.
    #[serde(with = "humantime_serde")]
    pub half_life: Duration,
    /// Ban (and identity block) lengths by strike, e.g. `["1m", "10m", "1h"]`: the first ban uses the first,
    /// repeat offenders the next, capped at the last.
    #[serde(deserialize_with = "durations")]
    pub ban_ttls: Vec<Duration>,
    /// IPv6 sources are scored per prefix of this length (one attacker rarely owns a single address).
    pub ipv6_prefix: u8,
    /// Sources and identities tracked at most (least recently seen forgotten first), so a spoofed-address storm
    /// cannot exhaust memory.
    pub max_sources: usize,
    pub max_identities: usize,
    /// 4xx answers a source may get per `scan_window` before each further one adds `scan_weight`.
    pub scan_allowance: f64,
    #[serde(with = "humantime_serde")]
    pub scan_window: Duration,
    pub scan_weight: f64,
    /// A source (or identity) sending more than `rate_factor` times a route's learned per-source rate, and more
    /// than `rate_min_rps`, gains `rate_weight` per request over it.
    pub rate_factor: f64,
    pub rate_min_rps: f64,
    pub rate_weight: f64,
    /// Length of a rate sample: a caller's requests to a route are counted per bucket.
    #[serde(with = "humantime_serde")]
    pub rate_bucket: Duration,
    /// Samples a route needs before its learned rate is enforced.
    pub rate_min_samples: u64,
    /// Kernel packet rate (per source, from the rates map) above which a source gains `flood_weight` per check;
    /// 0 turns it off.
    pub flood_pps: f64,
    pub flood_weight: f64,
    /// Derive the kernel's per-source packet ceiling from observed traffic: every minute, `auto_rate_limit_factor`
    /// times the 99th percentile of the tracked sources' packet rates, never below `auto_rate_limit_min_pps`.
    /// Off by default; `[xdp] rate_limit_pps` sets a fixed ceiling instead.
    pub auto_rate_limit: bool,
    pub auto_rate_limit_factor: f64,
    pub auto_rate_limit_min_pps: f64,
    /// Multiplier for events of authenticated callers (their identity is scored as well).
    pub authenticated_factor: f64,
    /// Sources never banned, besides loopback, the proxy's own addresses and its upstreams.
    pub never_ban: Vec<Cidr>,
}

impl Default for RiskConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Block,
            ban_threshold: 20.0,
            identity_block_threshold: 20.0,
            half_life: Duration::from_mins(5),
            ban_ttls: vec![
                Duration::from_mins(1),
                Duration::from_mins(10),
                Duration::from_hours(1),
            ],
            ipv6_prefix: 64,
            max_sources: 100_000,
            max_identities: 100_000,
            scan_allowance: 10.0,
            scan_window: Duration::from_secs(10),
            scan_weight: 2.0,
            rate_factor: 5.0,
            rate_min_rps: 10.0,
            rate_weight: 1.0,
            rate_bucket: Duration::from_secs(1),
            rate_min_samples: 30,
            flood_pps: 0.0,
            flood_weight: 10.0,
            auto_rate_limit: false,
            auto_rate_limit_factor: 10.0,
            auto_rate_limit_min_pps: 1000.0,
            authenticated_factor: 0.5,
            never_ban: Vec::new(),
        }
    }
}

fn durations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|s| humantime::parse_duration(s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}"))))
        .collect()
}

impl RiskConfig {
    /// Checks ranges; the error names the key.
    pub fn check(&self) -> Result<(), String> {
        if self.ban_ttls.is_empty() || self.ban_ttls.iter().any(Duration::is_zero) {
            return Err("risk.ban_ttls: give at least one duration, each more than zero".into());
        }
        for (key, v) in [
            ("risk.ban_threshold", self.ban_threshold),
            ("risk.identity_block_threshold", self.identity_block_threshold),
            ("risk.rate_factor", self.rate_factor),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{key}: must be a positive number"));
            }
        }
        if self.half_life.is_zero() || self.scan_window.is_zero() || self.rate_bucket.is_zero() {
            return Err(
                "risk.half_life, risk.scan_window and risk.rate_bucket must be more than zero".into(),
            );
        }
        if self.ipv6_prefix == 0 || self.ipv6_prefix > 128 {
            return Err("risk.ipv6_prefix: must be 1..=128".into());
        }
        if self.max_sources == 0 || self.max_identities == 0 {
            return Err("risk.max_sources and risk.max_identities must be at least 1".into());
        }
        Ok(())
    }

    /// The ban length for the `strike`-th ban (1-based).
    #[must_use]
    pub fn ttl_for(&self, strike: u32) -> Duration {
        let i = usize::try_from(strike.saturating_sub(1)).unwrap_or(usize::MAX);
        self.ban_ttls
            .get(i)
            .or_else(|| self.ban_ttls.last())
            .copied()
            .unwrap_or(Duration::from_mins(1))
    }
}
