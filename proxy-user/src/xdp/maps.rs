//! Typed access to the pinned kernel maps: the mechanism every writer (CLI, daemon, risk engine) goes through.
//!
//! Invariant: after any write to the allowlist, blocklist or bans, [`KernelMaps`] moves the policy epoch in
//! `CONFIG` (see [`proxy_common::SourceState`]), so the XDP program's per-source verdict cache never serves a
//! stale verdict. Each epoch is a fresh `CLOCK_MONOTONIC` reading, never a re-used value, so a writer that
//! raced with another can never move the epoch back to a value some source has cached.

use std::{net::IpAddr, time::Duration};

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key};
use proxy_common::{
    Addr, Ban, BanNote, BanReason, Counter, SourceState, Stat, XdpConfig, capacity, list_origin, map_names,
};
use serde::Serialize;

use super::{pins::PinDir, sys::monotonic_ns};
use crate::{
    Error,
    addr::{Cidr, from_key, to_key},
};

/// The two CIDR lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ListKind {
    Allowlist,
    Blocklist,
}

impl ListKind {
    #[must_use]
    pub const fn map_name(self) -> &'static str {
        match self {
            Self::Allowlist => map_names::ALLOWLIST,
            Self::Blocklist => map_names::BLOCKLIST,
        }
    }
}

/// A ban as read back from the maps, with times made relative to now.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BanRecord {
    pub addr: IpAddr,
    pub reason: String,
    pub note: String,
    /// Time left; zero once expired (the kernel already lets the source pass).
    #[serde(serialize_with = "secs")]
    pub remaining: Duration,
    #[serde(serialize_with = "secs")]
    pub age: Duration,
    pub expired: bool,
    pub hits: u64,
    pub strikes: u32,
}

/// One CIDR list entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ListEntry {
    pub cidr: Cidr,
    pub origin: &'static str,
}

/// One source's counters, with rates computed from the last complete window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RateRecord {
    pub addr: IpAddr,
    pub total_packets: u64,
    pub total_bytes: u64,
    pub dropped_packets: u64,
    pub packets_per_sec: f64,
    pub bytes_per_sec: f64,
    #[serde(serialize_with = "secs")]
    pub last_seen: Duration,
    #[serde(serialize_with = "secs")]
    pub tracked_for: Duration,
}

/// One line of the XDP stats: one [`Stat`], summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatRecord {
    pub name: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

/// Handles on every pinned map, opened from a [`PinDir`].
pub struct KernelMaps {
    /// `max_entries` of the allowlist and blocklist as created, for "map full" errors.
    allowlist_capacity: u32,
    blocklist_capacity: u32,
    bans: HashMap<MapData, Addr, Ban>,
    notes: HashMap<MapData, Addr, BanNote>,
    allowlist: LpmTrie<MapData, Addr, u32>,
    blocklist: LpmTrie<MapData, Addr, u32>,
    rates: HashMap<MapData, Addr, SourceState>,
    config: Array<MapData, XdpConfig>,
    stats: PerCpuArray<MapData, Counter>,
}

impl KernelMaps {
    /// Opens the pinned maps. Fails with [`Error::PinDirMissing`] when nothing was ever attached there.
    pub fn open(pins: &PinDir) -> Result<Self, Error> {
        match std::fs::metadata(pins.maps_dir()) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::PinDirMissing(pins.root().to_path_buf()));
            }
            Err(e) => return Err(Error::io(format!("reading {}", pins.maps_dir().display()), e)),
        }
        let capacity = |name: &'static str| {
            aya::maps::MapInfo::from_pin(pins.map(name))
                .map(|info| info.max_entries())
                .map_err(|e| map_error(format!("inspecting {name}"), name, 0, e))
        };
        Ok(Self {
            allowlist_capacity: capacity(map_names::ALLOWLIST)?,
            blocklist_capacity: capacity(map_names::BLOCKLIST)?,
            bans: open_typed(pins, map_names::BANS)?,
            notes: open_typed(pins, map_names::BAN_NOTES)?,
            allowlist: open_typed(pins, map_names::ALLOWLIST)?,
            blocklist: open_typed(pins, map_names::BLOCKLIST)?,
            rates: open_typed(pins, map_names::RATES)?,
            config: open_typed(pins, map_names::CONFIG)?,
            stats: open_typed(pins, map_names::STATS)?,
        })
    }

    /// Bans `ip` for `ttl`. A ban already in place is replaced; its strike count carries over, plus one.
    pub fn ban(&mut self, ip: IpAddr, ttl: Duration, reason: BanReason, note: &str) -> Result<Ban, Error> {
        self.ban_with_strikes(ip, ttl, reason, note, None)
    }

    /// Like [`KernelMaps::ban`], with the strike count the caller has decided (the risk engine, which remembers
    /// offenders after their ban was lifted or reaped); never lower than the map's own count plus one.
    pub fn ban_with_strikes(
        &mut self,
        ip: IpAddr,
        ttl: Duration,
        reason: BanReason,
        note: &str,
        strikes: Option<u32>,
    ) -> Result<Ban, Error> {
        let key = to_key(ip);
        let now = monotonic_ns();
        let previous = self.bans.get(&key, 0).ok();
        let ttl_ns = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
        let ban = Ban {
            expires_ns: now.saturating_add(ttl_ns),
            created_ns: now,
            hits: previous.map_or(0, |b| b.hits),
            reason: reason as u32,
            strikes: previous
                .map_or(1, |b| b.strikes.saturating_add(1))
                .max(strikes.unwrap_or(0)),
        };
        self.bans
            .insert(key, ban, 0)
            .map_err(|e| map_error(format!("banning {ip}"), map_names::BANS, capacity::BANS, e))?;
        let mut stored = BanNote::EMPTY;
        let text = truncate_utf8(note, BanNote::CAPACITY);
        stored.text[..text.len()].copy_from_slice(text.as_bytes());
        stored.len = u32::try_from(text.len()).unwrap_or(0);
        if let Err(e) = self.notes.insert(key, stored, 0) {
            // The ban stands without its words; say so rather than fail the ban.
            tracing::warn!(%ip, error = %e, "could not store the ban note");
        }
        self.bump_epoch()?;
        Ok(ban)
    }

    /// Lifts a ban. Returns whether there was one.
    pub fn unban(&mut self, ip: IpAddr) -> Result<bool, Error> {
        let key = to_key(ip);
        let existed = match self.bans.remove(&key) {
            Ok(()) => true,
            Err(e) if is_not_found(&e) => false,
            Err(e) => {
                return Err(map_error(
                    format!("unbanning {ip}"),
                    map_names::BANS,
                    capacity::BANS,
                    e,
                ));
            }
        };
        let _ = self.notes.remove(&key);
        self.bump_epoch()?;
        Ok(existed)
    }

    /// Adds a CIDR to a list. Adding one already there only updates its origin.
    pub fn list_add(&mut self, list: ListKind, cidr: Cidr, origin: u32) -> Result<(), Error> {
        let (len, data) = cidr.key();
        let capacity = self.capacity(list);
        self.trie_mut(list)
            .insert(&Key::new(len, data), origin, 0)
            .map_err(|e| map_error(format!("adding {cidr}"), list.map_name(), capacity, e))?;
        self.bump_epoch()
    }

    /// Removes a CIDR from a list. Returns whether it was there.
    pub fn list_remove(&mut self, list: ListKind, cidr: Cidr) -> Result<bool, Error> {
        let (len, data) = cidr.key();
        let capacity = self.capacity(list);
        let existed = match self.trie_mut(list).remove(&Key::new(len, data)) {
            Ok(()) => true,
            Err(e) if is_not_found(&e) => false,
            Err(e) => {
                return Err(map_error(
                    format!("removing {cidr}"),
                    list.map_name(),
                    capacity,
                    e,
                ));
            }
        };
        self.bump_epoch()?;
        Ok(existed)
    }

    /// Makes `list`'s entries of `origin` exactly `wanted`, leaving other origins' entries alone. Used by the
    /// daemon to apply its config without touching what operators added by hand.
    pub fn list_reconcile(&mut self, list: ListKind, origin: u32, wanted: &[Cidr]) -> Result<(), Error> {
        let current: Vec<ListEntry> = self.list(list)?;
        for entry in &current {
            if entry.origin == origin_name(origin) && !wanted.contains(&entry.cidr) {
                self.list_remove(list, entry.cidr)?;
            }
        }
        for cidr in wanted {
            self.list_add(list, *cidr, origin)?;
        }
        Ok(())
    }

    /// Every ban, soonest expiry last.
    pub fn bans(&self) -> Result<Vec<BanRecord>, Error> {
        let now = monotonic_ns();
        let mut out = Vec::new();
        for item in &self.bans {
            let (key, ban) =
                item.map_err(|e| map_error("reading bans", map_names::BANS, capacity::BANS, e))?;
            out.push(self.ban_record(key, &ban, now));
        }
        out.sort_by(|a, b| b.remaining.cmp(&a.remaining).then(a.addr.cmp(&b.addr)));
        Ok(out)
    }

    /// One ban, if any (expired ones included until reaped).
    pub fn ban_of(&self, ip: IpAddr) -> Result<Option<BanRecord>, Error> {
        let key = to_key(ip);
        match self.bans.get(&key, 0) {
            Ok(ban) => Ok(Some(self.ban_record(key, &ban, monotonic_ns()))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(map_error(
                format!("reading the ban of {ip}"),
                map_names::BANS,
                capacity::BANS,
                e,
            )),
        }
    }

    /// Deletes expired bans (the kernel already ignores them); returns how many.
    pub fn reap_expired_bans(&mut self) -> Result<usize, Error> {
        let now = monotonic_ns();
        let expired: Vec<Addr> = self
            .bans
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, ban)| ban.expires_ns <= now)
            .map(|(key, _)| key)
            .collect();
        for key in &expired {
            let _ = self.bans.remove(key);
            let _ = self.notes.remove(key);
        }
        if !expired.is_empty() {
            self.bump_epoch()?;
        }
        Ok(expired.len())
    }

    /// The entries of one list, in address order.
    pub fn list(&self, list: ListKind) -> Result<Vec<ListEntry>, Error> {
        let trie = match list {
            ListKind::Allowlist => &self.allowlist,
            ListKind::Blocklist => &self.blocklist,
        };
        let mut out = Vec::new();
        for item in trie {
            let (key, origin) =
                item.map_err(|e| map_error("reading the list", list.map_name(), self.capacity(list), e))?;
            if let Some(cidr) = Cidr::from_key(key.prefix_len(), key.data()) {
                out.push(ListEntry {
                    cidr,
                    origin: origin_name(origin),
                });
            }
        }
        out.sort_by_key(|e| (e.cidr.net().addr(), e.cidr.net().prefix_len()));
        Ok(out)
    }

    /// Every tracked source, busiest first.
    pub fn rates(&self) -> Result<Vec<RateRecord>, Error> {
        let now = monotonic_ns();
        let window = self.config()?.rate_window_ns.max(1);
        let mut out = Vec::new();
        for item in &self.rates {
            let (key, s) =
                item.map_err(|e| map_error("reading rates", map_names::RATES, capacity::RATES, e))?;
            out.push(rate_record(key, &s, now, window));
        }
        out.sort_by(|a, b| {
            b.packets_per_sec
                .total_cmp(&a.packets_per_sec)
                .then(a.addr.cmp(&b.addr))
        });
        Ok(out)
    }

    /// One source's counters, if tracked.
    pub fn rate_of(&self, ip: IpAddr) -> Result<Option<RateRecord>, Error> {
        let window = self.config()?.rate_window_ns.max(1);
        match self.rates.get(&to_key(ip), 0) {
            Ok(s) => Ok(Some(rate_record(to_key(ip), &s, monotonic_ns(), window))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(map_error(
                format!("reading the rate of {ip}"),
                map_names::RATES,
                capacity::RATES,
                e,
            )),
        }
    }

    /// Packet counters by outcome, summed over CPUs.
    pub fn stats(&self) -> Result<Vec<StatRecord>, Error> {
        Stat::ALL
            .iter()
            .map(|&stat| {
                let per_cpu = self
                    .stats
                    .get(&(stat as u32), 0)
                    .map_err(|e| map_error("reading stats", map_names::STATS, Stat::COUNT, e))?;
                let (packets, bytes) = per_cpu
                    .iter()
                    .fold((0u64, 0u64), |(p, b), c| (p + c.packets, b + c.bytes));
                Ok(StatRecord {
                    name: stat.as_str(),
                    packets,
                    bytes,
                })
            })
            .collect()
    }

    pub fn config(&self) -> Result<XdpConfig, Error> {
        self.config
            .get(&0, 0)
            .map_err(|e| map_error("reading the XDP config", map_names::CONFIG, 1, e))
    }

    /// Applies `change` to the XDP config and moves the policy epoch.
    pub fn update_config(&mut self, change: impl FnOnce(&mut XdpConfig)) -> Result<XdpConfig, Error> {
        let mut cfg = self.config()?;
        change(&mut cfg);
        cfg.policy_epoch = fresh_epoch(cfg.policy_epoch);
        self.config
            .set(0, cfg, 0)
            .map_err(|e| map_error("writing the XDP config", map_names::CONFIG, 1, e))?;
        Ok(cfg)
    }

    fn bump_epoch(&mut self) -> Result<(), Error> {
        self.update_config(|_| {}).map(drop)
    }

    /// A ban with its note, and with the hits the kernel has not folded into it yet.
    fn ban_record(&self, key: Addr, ban: &Ban, now: u64) -> BanRecord {
        let note = self
            .notes
            .get(&key, 0)
            .ok()
            .map(|n| note_text(&n))
            .unwrap_or_default();
        let pending = self.rates.get(&key, 0).map_or(0, |s| s.ban_hits_pending);
        let mut record = ban_record(key, ban, note, now);
        record.hits += pending;
        record
    }

    fn capacity(&self, list: ListKind) -> u32 {
        match list {
            ListKind::Allowlist => self.allowlist_capacity,
            ListKind::Blocklist => self.blocklist_capacity,
        }
    }

    fn trie_mut(&mut self, list: ListKind) -> &mut LpmTrie<MapData, Addr, u32> {
        match list {
            ListKind::Allowlist => &mut self.allowlist,
            ListKind::Blocklist => &mut self.blocklist,
        }
    }
}

/// A policy epoch never used before: the monotonic clock, nudged past the previous value should two writes
/// land in the same nanosecond.
fn fresh_epoch(previous: u64) -> u64 {
    let now = monotonic_ns();
    if now == previous { now + 1 } else { now.max(1) }
}

fn ban_record(key: Addr, ban: &Ban, note: String, now: u64) -> BanRecord {
    BanRecord {
        addr: from_key(key),
        reason: BanReason::from_u32(ban.reason)
            .map_or_else(|| format!("code {}", ban.reason), |r| r.as_str().to_owned()),
        note,
        remaining: Duration::from_nanos(ban.expires_ns.saturating_sub(now)),
        age: Duration::from_nanos(now.saturating_sub(ban.created_ns)),
        expired: ban.expires_ns <= now,
        hits: ban.hits,
        strikes: ban.strikes,
    }
}

#[expect(
    clippy::cast_precision_loss,
    reason = "rates are displayed, not computed with"
)]
fn rate_record(key: Addr, s: &SourceState, now: u64, window_ns: u64) -> RateRecord {
    // A window's worth of traffic: the busier of the last complete window and the current one (a burst shows at
    // once); once the source goes quiet, what it sent since the window began, spread over the time elapsed.
    let since_window = now.saturating_sub(s.window_start_ns);
    let (packets, bytes, span) = if since_window < window_ns {
        if s.window_packets > s.prev_window_packets {
            (s.window_packets, s.window_bytes, window_ns)
        } else {
            (s.prev_window_packets, s.prev_window_bytes, window_ns)
        }
    } else {
        (s.window_packets, s.window_bytes, since_window)
    };
    let span_secs = span as f64 / 1e9;
    RateRecord {
        addr: from_key(key),
        total_packets: s.packets_before_window + s.window_packets,
        total_bytes: s.bytes_before_window + s.window_bytes,
        dropped_packets: s.dropped_packets,
        packets_per_sec: packets as f64 / span_secs,
        bytes_per_sec: bytes as f64 / span_secs,
        last_seen: Duration::from_nanos(now.saturating_sub(s.last_seen_ns)),
        tracked_for: Duration::from_nanos(now.saturating_sub(s.first_seen_ns)),
    }
}

fn note_text(note: &BanNote) -> String {
    let len = usize::try_from(note.len).unwrap_or(0).min(BanNote::CAPACITY);
    String::from_utf8_lossy(&note.text[..len]).into_owned()
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The name of a list entry's origin.
#[must_use]
pub const fn origin_name(origin: u32) -> &'static str {
    match origin {
        list_origin::OPERATOR => "operator",
        list_origin::CONFIG => "config",
        _ => "unknown",
    }
}

fn open_typed<T>(pins: &PinDir, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = pins.map(name);
    let data =
        MapData::from_pin(&path).map_err(|e| map_error(format!("opening {}", path.display()), name, 0, e))?;
    let map =
        Map::from_map_data(data).map_err(|e| map_error(format!("opening {}", path.display()), name, 0, e))?;
    T::try_from(map).map_err(|e| map_error(format!("opening {}", path.display()), name, 0, e))
}

fn is_not_found(e: &MapError) -> bool {
    matches!(e, MapError::KeyNotFound | MapError::ElementNotFound)
        || os_error(e).is_some_and(|code| code == libc::ENOENT)
}

/// The errno buried in an aya error, if any.
pub(crate) fn os_error(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io.raw_os_error();
        }
        cur = err.source();
    }
    None
}

/// Turns an aya map error into the project's error, naming permission problems and full maps plainly.
pub(crate) fn map_error(action: impl Into<String>, map: &'static str, capacity: u32, e: MapError) -> Error {
    let action = action.into();
    match os_error(&e) {
        Some(libc::EPERM | libc::EACCES) => Error::PermissionDenied { action },
        Some(libc::E2BIG | libc::ENOSPC | libc::ENOMEM) if capacity > 0 => Error::MapFull { map, capacity },
        _ => Error::Bpf {
            action,
            source: Box::new(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(window_start_ns: u64, window_packets: u64, prev_window_packets: u64) -> SourceState {
        SourceState {
            window_start_ns,
            window_packets,
            window_bytes: window_packets * 100,
            prev_window_packets,
            prev_window_bytes: prev_window_packets * 100,
            ..SourceState::default()
        }
    }

    #[test]
    fn a_burst_in_the_current_window_shows_at_once() {
        let s = state(10_000_000_000, 500, 7);
        let r = rate_record([0; 16], &s, 10_100_000_000, 1_000_000_000);
        assert!((r.packets_per_sec - 500.0).abs() < 1e-9);
    }

    #[test]
    fn rate_uses_the_last_complete_window() {
        let s = state(10_000_000_000, 5, 200);
        let r = rate_record([0; 16], &s, 10_500_000_000, 1_000_000_000);
        assert!((r.packets_per_sec - 200.0).abs() < 1e-9);
        assert!((r.bytes_per_sec - 20_000.0).abs() < 1e-9);
    }

    #[test]
    fn a_quiet_source_decays_over_the_time_since_its_window() {
        let s = state(10_000_000_000, 100, 200);
        let r = rate_record([0; 16], &s, 20_000_000_000, 1_000_000_000);
        assert!((r.packets_per_sec - 10.0).abs() < 1e-9);
    }

    #[test]
    fn epochs_are_never_reused() {
        let a = fresh_epoch(0);
        let b = fresh_epoch(a);
        assert_ne!(a, b);
        assert_ne!(fresh_epoch(u64::MAX - 1), u64::MAX - 1);
    }

    #[test]
    fn notes_are_cut_on_a_char_boundary() {
        let s = "é".repeat(100);
        let t = truncate_utf8(&s, BanNote::CAPACITY);
        assert!(t.len() <= BanNote::CAPACITY);
        assert!(t.chars().all(|c| c == 'é'));
    }
}
