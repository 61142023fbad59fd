//! Types shared by the XDP program (`proxy-ebpf`) and userspace (`proxy-user`).
//!
//! Every type here crosses the kernel boundary as raw bytes, so each is `#[repr(C)]`, `Copy`, and has no
//! implicit padding (checked by `const` size assertions): padding bytes would be uninitialised in map keys,
//! and two equal keys with different padding would never match.
//!
//! Addresses are one 16-byte form for both families: IPv6 as is, IPv4 as an IPv4-mapped IPv6 address
//! (`::ffff:a.b.c.d`). One set of maps then serves both families, and an IPv4 CIDR `/n` is the LPM prefix
//! `96 + n`.
#![no_std]

/// A source address in the 16-byte form described in the crate docs.
pub type Addr = [u8; 16];

/// Length in bits of the IPv4-mapped prefix `::ffff:0:0/96`.
pub const V4_MAPPED_PREFIX_BITS: u32 = 96;

/// Maps an IPv4 address (network byte order octets) into the shared 16-byte form.
#[must_use]
pub const fn v4_mapped(octets: [u8; 4]) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// Names of the maps in the eBPF object; also their file names in the pin directory.
pub mod map_names {
    pub const ALLOWLIST: &str = "ALLOWLIST";
    pub const BLOCKLIST: &str = "BLOCKLIST";
    pub const BANS: &str = "BANS";
    pub const RATES: &str = "RATES";
    pub const CONFIG: &str = "CONFIG";
    pub const STATS: &str = "STATS";
    pub const DROP_EVENTS: &str = "DROP_EVENTS";
    pub const EVENT_BUDGET: &str = "EVENT_BUDGET";
    pub const BAN_NOTES: &str = "BAN_NOTES";
    /// Every pinned map, for listing and purging a pin directory.
    pub const ALL: [&str; 9] = [
        ALLOWLIST,
        BLOCKLIST,
        BANS,
        BAN_NOTES,
        RATES,
        CONFIG,
        STATS,
        DROP_EVENTS,
        EVENT_BUDGET,
    ];
}

/// Default capacities. Userspace may override them when it first creates the pinned maps.
pub mod capacity {
    /// CIDR entries in the allowlist.
    pub const ALLOWLIST: u32 = 16_384;
    /// CIDR entries in the blocklist.
    pub const BLOCKLIST: u32 = 262_144;
    /// Exact-address bans (least recently used evicted when full).
    pub const BANS: u32 = 262_144;
    /// Tracked sources (least recently used evicted when full).
    pub const RATES: u32 = 262_144;
    /// Drop-event ring buffer size in bytes (a power of two, a multiple of the page size).
    pub const DROP_EVENTS_BYTES: u32 = 256 * 1024;
}

/// Why a ban was placed. Stored as a `u32` in [`Ban::reason`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BanReason {
    /// Placed by an operator through the CLI or admin API.
    Manual = 1,
    /// Payload inspection found attacks (SQL injection, cross-site scripting, ...).
    Injection = 2,
    /// Token tampering or repeated authentication failures.
    AuthAbuse = 3,
    /// Scanning or enumeration (bursts of 4xx answers).
    Scanning = 4,
    /// Request rate far above the route's learned baseline.
    RateAbuse = 5,
    /// Volumetric packet flood seen by the kernel.
    Flood = 6,
}

impl BanReason {
    pub const ALL: [BanReason; 6] = [
        BanReason::Manual,
        BanReason::Injection,
        BanReason::AuthAbuse,
        BanReason::Scanning,
        BanReason::RateAbuse,
        BanReason::Flood,
    ];

    #[must_use]
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Manual),
            2 => Some(Self::Injection),
            3 => Some(Self::AuthAbuse),
            4 => Some(Self::Scanning),
            5 => Some(Self::RateAbuse),
            6 => Some(Self::Flood),
            _ => None,
        }
    }

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::Injection => "injection",
            Self::AuthAbuse => "auth_abuse",
            Self::Scanning => "scanning",
            Self::RateAbuse => "rate_abuse",
            Self::Flood => "flood",
        }
    }
}

/// Value of the `BANS` map, keyed by [`Addr`]. Written by userspace; the kernel only bumps `hits`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ban {
    /// `CLOCK_MONOTONIC` time after which the ban no longer applies. The kernel lets an expired ban pass on its
    /// own (it reads the coarse clock, so a ban may outlast its expiry by one scheduler tick); userspace reaps the
    /// entry at leisure.
    pub expires_ns: u64,
    /// `CLOCK_MONOTONIC` time the ban was placed.
    pub created_ns: u64,
    /// Packets dropped because of this ban, up to the last fold of [`SourceState::ban_hits_pending`].
    pub hits: u64,
    /// A [`BanReason`] as `u32`.
    pub reason: u32,
    /// How many bans this source has had, this one included; drives escalating TTLs.
    pub strikes: u32,
}

/// Value of the `BAN_NOTES` map, keyed by [`Addr`]: the operator's or detector's words on a ban (UTF-8, cut
/// at [`BanNote::CAPACITY`] bytes). Only userspace reads and writes it; it is a map rather than a file so that
/// it lives and dies with the bans, on the same bpffs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BanNote {
    pub len: u32,
    /// Explicit padding, always zero.
    pub pad: u32,
    pub text: [u8; BanNote::CAPACITY],
}

impl BanNote {
    pub const CAPACITY: usize = 120;
    pub const EMPTY: BanNote = BanNote {
        len: 0,
        pad: 0,
        text: [0; BanNote::CAPACITY],
    };
}

/// Verdict-cache bits kept in [`SourceState::cached`].
pub mod cached {
    /// The source matched the allowlist.
    pub const ALLOW: u32 = 1;
    /// The source matched the blocklist.
    pub const BLOCK: u32 = 1 << 1;
    /// The source had a ban; its expiry is in [`super::SourceState::ban_expires_ns`].
    pub const BAN: u32 = 1 << 2;
}

/// Value of the `RATES` map, keyed by [`Addr`]: per-source traffic counters, plus a cache of the source's
/// allowlist / blocklist / ban lookups so the common packet costs one hash lookup.
///
/// The cache is valid while `policy_epoch` equals [`XdpConfig::policy_epoch`]; userspace bumps that epoch after
/// every write to the allowlist, blocklist or bans, which makes every source look its policy up again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceState {
    /// Packets and bytes seen from this source before the current window; the total is these plus the window's.
    /// (Folding the window in at roll-over keeps the per-packet path to one atomic add.)
    pub packets_before_window: u64,
    pub bytes_before_window: u64,
    /// Start of the current rate window, `CLOCK_MONOTONIC` ns.
    pub window_start_ns: u64,
    /// Packets and bytes in the current window. `window_packets` is added atomically, since the rate limit
    /// depends on it.
    pub window_packets: u64,
    pub window_bytes: u64,
    /// Packets and bytes in the previous (complete) window.
    pub prev_window_packets: u64,
    pub prev_window_bytes: u64,
    /// First and last packet, `CLOCK_MONOTONIC` ns (coarse: scheduler-tick resolution).
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// Packets dropped from this source, all reasons. Like the window's byte count, a plain add: exact for a
    /// source whose packets one CPU handles, approximate under a multi-queue flood.
    pub dropped_packets: u64,
    /// Last drop event emitted for this source, `CLOCK_MONOTONIC` ns (drop-event sampling).
    pub last_event_ns: u64,
    /// Epoch of the cached verdict below.
    pub policy_epoch: u64,
    /// Expiry of the cached ban, when `cached & BAN`.
    pub ban_expires_ns: u64,
    /// Ban drops not yet added to [`Ban::hits`]. The kernel folds them into the ban at most once per rate
    /// window, so a banned flood costs no bans-map lookup per packet; readers add the two.
    pub ban_hits_pending: u64,
    /// When pending hits were last folded into the ban, `CLOCK_MONOTONIC` ns.
    pub ban_hits_flushed_ns: u64,
    /// [`cached`] bits.
    pub cached: u32,
    /// Explicit padding, always zero.
    pub pad: u32,
}

/// The single entry of the `CONFIG` array map. Written by userspace only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpConfig {
    /// Bumped by userspace after every allowlist / blocklist / ban write; invalidates [`SourceState`] caches.
    /// Starts at 1 so a zeroed `SourceState` is never valid.
    pub policy_epoch: u64,
    /// Length of a rate window in ns.
    pub rate_window_ns: u64,
    /// Per-source packet ceiling per window; 0 disables the kernel rate limit.
    pub rate_limit_packets: u64,
    /// Minimum gap between two drop events of the same source, ns.
    pub event_interval_ns: u64,
    /// Drop events each CPU may emit per [`XdpConfig::rate_window_ns`], across all sources.
    pub event_budget_per_window: u64,
}

impl XdpConfig {
    pub const DEFAULT: XdpConfig = XdpConfig {
        policy_epoch: 1,
        rate_window_ns: 1_000_000_000,
        rate_limit_packets: 0,
        event_interval_ns: 1_000_000_000,
        event_budget_per_window: 1024,
    };
}

impl Default for XdpConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Per-CPU drop-event budget (the `EVENT_BUDGET` array, one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventBudget {
    pub window_start_ns: u64,
    pub used: u64,
}

/// Index into the per-CPU `STATS` array. Every packet lands in exactly one of these.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// IP packets that passed (not allowlisted).
    Passed = 0,
    /// Passed because the source is allowlisted.
    Allowlisted = 1,
    DroppedBan = 2,
    DroppedBlocklist = 3,
    DroppedRateLimit = 4,
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed.
    NonIp = 5,
    /// Truncated or malformed headers: passed, the stack decides.
    Malformed = 6,
    /// Drop events not written because the ring buffer or the budget was exhausted. Counts events, not packets.
    EventsLost = 7,
}

impl Stat {
    pub const COUNT: u32 = 8;
    pub const ALL: [Stat; 8] = [
        Stat::Passed,
        Stat::Allowlisted,
        Stat::DroppedBan,
        Stat::DroppedBlocklist,
        Stat::DroppedRateLimit,
        Stat::NonIp,
        Stat::Malformed,
        Stat::EventsLost,
    ];

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Allowlisted => "allowlisted",
            Self::DroppedBan => "dropped_ban",
            Self::DroppedBlocklist => "dropped_blocklist",
            Self::DroppedRateLimit => "dropped_rate_limit",
            Self::NonIp => "non_ip",
            Self::Malformed => "malformed",
            Self::EventsLost => "events_lost",
        }
    }
}

/// Value of the `STATS` per-CPU array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// Why a packet was dropped, in a [`DropEvent`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    Ban = 1,
    Blocklist = 2,
    RateLimit = 3,
}

impl DropReason {
    #[must_use]
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Ban),
            2 => Some(Self::Blocklist),
            3 => Some(Self::RateLimit),
            _ => None,
        }
    }

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ban => "ban",
            Self::Blocklist => "blocklist",
            Self::RateLimit => "rate_limit",
        }
    }
}

/// A sampled drop, written to the `DROP_EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropEvent {
    pub addr: Addr,
    /// When the packet was dropped, `CLOCK_MONOTONIC` ns (fine resolution).
    pub ts_ns: u64,
    /// Packets dropped from this source so far (all reasons).
    pub dropped_packets: u64,
    /// A [`DropReason`] as `u32`.
    pub reason: u32,
    pub ifindex: u32,
}

const _: () = {
    assert!(core::mem::size_of::<Ban>() == 32);
    assert!(core::mem::size_of::<BanNote>() == 128);
    assert!(core::mem::size_of::<SourceState>() == 128);
    assert!(core::mem::size_of::<XdpConfig>() == 40);
    assert!(core::mem::size_of::<EventBudget>() == 16);
    assert!(core::mem::size_of::<Counter>() == 16);
    assert!(core::mem::size_of::<DropEvent>() == 40);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is `repr(C)`, `Copy`, made only of integers, and has no padding (size asserts above), so
    // every bit pattern is valid and no byte is uninitialised.
    unsafe impl aya::Pod for super::Ban {}
    unsafe impl aya::Pod for super::BanNote {}
    unsafe impl aya::Pod for super::SourceState {}
    unsafe impl aya::Pod for super::XdpConfig {}
    unsafe impl aya::Pod for super::EventBudget {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::DropEvent {}
}

/// Value of the `ALLOWLIST` and `BLOCKLIST` LPM tries: who put the entry there, so the daemon can reconcile
/// its config-managed entries without touching the ones an operator added by hand.
pub mod list_origin {
    /// Added by an operator through the CLI or admin API.
    pub const OPERATOR: u32 = 1;
    /// Added by the daemon from its config file.
    pub const CONFIG: u32 = 2;
}
