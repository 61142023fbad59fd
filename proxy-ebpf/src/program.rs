//! The XDP program.
//!
//! Per packet: parse the source address, find the source's [`SourceState`] (one LRU hash lookup), count the
//! packet, and decide from the verdict cached in that state. The allowlist, bans and blocklist are looked up
//! only when userspace has changed one of them since the source's last packet (the policy epoch moved), so an
//! unknown, well-behaved source costs one hash lookup, one array lookup, one coarse clock read and one atomic
//! add. The coarse clock (scheduler-tick resolution) is plenty for 1 s windows and ban expiries, at a fraction of
//! `bpf_ktime_get_ns`'s cost.
//!
//! Precedence: allowlist > ban (until it expires) > blocklist > rate limit > pass.
//!
//! Invariants: no allocation, no unbounded loop (the two VLAN tags are unrolled), every packet counted in
//! exactly one [`Stat`], and userspace is the only writer of every map except `RATES`, `STATS`,
//! `EVENT_BUDGET`, `DROP_EVENTS` and the `hits` field of a [`Ban`].

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, xdp_action},
    helpers::{bpf_ktime_get_ns, generated::bpf_ktime_get_coarse_ns},
    macros::{map, xdp},
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::XdpContext,
};
use aya_log_ebpf::error;
use proxy_common::{
    Addr, Ban, BanNote, Counter, DropEvent, DropReason, EventBudget, SourceState, Stat, XdpConfig, cached,
    capacity, v4_mapped,
};

#[map]
static ALLOWLIST: LpmTrie<Addr, u32> = LpmTrie::pinned(capacity::ALLOWLIST, 0);
#[map]
static BLOCKLIST: LpmTrie<Addr, u32> = LpmTrie::pinned(capacity::BLOCKLIST, 0);
#[map]
static BANS: LruHashMap<Addr, Ban> = LruHashMap::pinned(capacity::BANS, 0);
/// Userspace-only (ban reasons in words); declared here so it is created and pinned with the other maps.
#[map]
static BAN_NOTES: LruHashMap<Addr, BanNote> = LruHashMap::pinned(capacity::BANS, 0);
#[map]
static RATES: LruHashMap<Addr, SourceState> = LruHashMap::pinned(capacity::RATES, 0);
#[map]
static CONFIG: Array<XdpConfig> = Array::pinned(1, 0);
#[map]
static STATS: PerCpuArray<Counter> = PerCpuArray::pinned(Stat::COUNT, 0);
#[map]
static DROP_EVENTS: RingBuf = RingBuf::pinned(capacity::DROP_EVENTS_BYTES, 0);
#[map]
static EVENT_BUDGET: PerCpuArray<EventBudget> = PerCpuArray::pinned(1, 0);

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;

#[xdp]
pub fn rasp_xdp(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    match source_addr(&ctx) {
        Ok(addr) => filter(&ctx, &addr, len),
        Err(stat) => {
            count(stat, len);
            xdp_action::XDP_PASS
        }
    }
}

/// Returns a pointer to a `T` at `offset`, or `Err` if the packet is too short. The one bounds check the
/// verifier needs before each header read.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, Stat> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(Stat::Malformed);
    }
    Ok((start + offset) as *const T)
}

#[inline(always)]
fn load_be16(ctx: &XdpContext, offset: usize) -> Result<u16, Stat> {
    let p = ptr_at::<[u8; 2]>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that both bytes are inside the packet.
    let b = unsafe { p.read() };
    Ok(u16::from_be_bytes(b))
}

#[inline(always)]
fn is_vlan(proto: u16) -> bool {
    proto == ETH_P_8021Q || proto == ETH_P_8021AD
}

/// Parses Ethernet, up to two VLAN tags and the IP header; returns the source in the shared 16-byte form, or
/// the [`Stat`] to count a frame that is passed without a verdict.
#[inline(always)]
fn source_addr(ctx: &XdpContext) -> Result<Addr, Stat> {
    let mut proto = load_be16(ctx, ETH_HLEN - 2)?;
    let mut off = ETH_HLEN;
    // Two tags at most (802.1ad outer + 802.1Q inner), unrolled so the verifier sees no loop.
    if is_vlan(proto) {
        proto = load_be16(ctx, off + 2)?;
        off += VLAN_HLEN;
    }
    if is_vlan(proto) {
        proto = load_be16(ctx, off + 2)?;
        off += VLAN_HLEN;
    }
    match proto {
        ETH_P_IP => ipv4_source(ctx, off),
        ETH_P_IPV6 => ipv6_source(ctx, off),
        _ => Err(Stat::NonIp),
    }
}

#[inline(always)]
fn ipv4_source(ctx: &XdpContext, off: usize) -> Result<Addr, Stat> {
    let hdr = ptr_at::<[u8; IPV4_MIN_HLEN]>(ctx, off)?;
    // SAFETY: `ptr_at` checked the fixed 20-byte header is inside the packet.
    let hdr = unsafe { hdr.read() };
    let version = hdr[0] >> 4;
    let header_len = usize::from(hdr[0] & 0x0f) * 4;
    if version != 4 || header_len < IPV4_MIN_HLEN {
        return Err(Stat::Malformed);
    }
    // Options (any IHL) are not read, but a header claiming more bytes than the frame holds is malformed.
    if ctx.data() + off + header_len > ctx.data_end() {
        return Err(Stat::Malformed);
    }
    Ok(v4_mapped([hdr[12], hdr[13], hdr[14], hdr[15]]))
}

#[inline(always)]
fn ipv6_source(ctx: &XdpContext, off: usize) -> Result<Addr, Stat> {
    let version = ptr_at::<u8>(ctx, off)?;
    // SAFETY: `ptr_at` checked the byte is inside the packet.
    if unsafe { version.read() } >> 4 != 6 {
        return Err(Stat::Malformed);
    }
    // The fixed header must be whole even though only the source is read.
    ptr_at::<[u8; IPV6_HLEN]>(ctx, off)?;
    let src = ptr_at::<Addr>(ctx, off + 8)?;
    // SAFETY: `ptr_at` checked the 16 source bytes are inside the packet; `Addr` has alignment 1.
    Ok(unsafe { src.read() })
}

#[inline(always)]
fn filter(ctx: &XdpContext, addr: &Addr, len: u64) -> u32 {
    let Some(cfg) = CONFIG.get(0) else {
        // An array map always has index 0; this is unreachable short of a corrupted object.
        error!(ctx, "CONFIG map has no entry 0; passing");
        count(Stat::Passed, len);
        return xdp_action::XDP_PASS;
    };
    let cfg = *cfg;
    // SAFETY: a helper with no arguments and no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let Some(state) = source_state(addr, now) else {
        error!(ctx, "RATES: could not track a new source; passing");
        count(Stat::Passed, len);
        return xdp_action::XDP_PASS;
    };
    // SAFETY: the pointer came from a map lookup and stays valid for this program run (RCU); fields other CPUs
    // may update concurrently are counters, written with atomics below or tolerated as racy (window roll-over).
    let state = unsafe { &mut *state };
    account(state, &cfg, now, len);

    if state.policy_epoch != cfg.policy_epoch {
        refresh(state, addr, cfg.policy_epoch);
    }
    let verdict = state.cached;
    if verdict & cached::ALLOW != 0 {
        count(Stat::Allowlisted, len);
        return xdp_action::XDP_PASS;
    }
    if verdict & cached::BAN != 0 && now < state.ban_expires_ns {
        state.ban_hits_pending += 1;
        if now.wrapping_sub(state.ban_hits_flushed_ns) < cfg.rate_window_ns {
            return drop_packet(ctx, state, addr, &cfg, now, len, DropReason::Ban);
        }
        // At most once per window: fold the pending hits into the ban, and check the ban is still in the map.
        if let Some(ban) = BANS.get_ptr_mut(addr) {
            // SAFETY: pointer from a map lookup, valid for this run. A plain add: a lost update under a
            // multi-queue flood only undercounts hits.
            unsafe { (*ban).hits += state.ban_hits_pending };
            state.ban_hits_pending = 0;
            state.ban_hits_flushed_ns = now;
            return drop_packet(ctx, state, addr, &cfg, now, len, DropReason::Ban);
        }
        // Evicted from the LRU map: the map is the truth, so the ban is gone.
        state.ban_hits_pending = 0;
        state.cached &= !cached::BAN;
    }
    if verdict & cached::BLOCK != 0 {
        return drop_packet(ctx, state, addr, &cfg, now, len, DropReason::Blocklist);
    }
    if cfg.rate_limit_packets != 0 && state.window_packets > cfg.rate_limit_packets {
        return drop_packet(ctx, state, addr, &cfg, now, len, DropReason::RateLimit);
    }
    count(Stat::Passed, len);
    xdp_action::XDP_PASS
}

/// Finds the source's state, creating it on its first packet.
#[inline(always)]
fn source_state(addr: &Addr, now: u64) -> Option<*mut SourceState> {
    if let Some(p) = RATES.get_ptr_mut(addr) {
        return Some(p);
    }
    let fresh = SourceState {
        window_start_ns: now,
        first_seen_ns: now,
        ..SourceState::default()
    };
    // Another CPU may have inserted it meanwhile (EEXIST): either way the lookup below finds one.
    let _ = RATES.insert(addr, &fresh, u64::from(BPF_NOEXIST));
    RATES.get_ptr_mut(addr)
}

/// Counts the packet in the source's totals and rate window.
#[inline(always)]
fn account(state: &mut SourceState, cfg: &XdpConfig, now: u64, len: u64) {
    let elapsed = now.wrapping_sub(state.window_start_ns);
    if elapsed >= cfg.rate_window_ns {
        // Roll the window. Racy across CPUs by design: at worst a few packets land in the wrong window.
        let adjacent = elapsed < cfg.rate_window_ns.saturating_mul(2);
        state.packets_before_window += state.window_packets;
        state.bytes_before_window += state.window_bytes;
        state.prev_window_packets = if adjacent { state.window_packets } else { 0 };
        state.prev_window_bytes = if adjacent { state.window_bytes } else { 0 };
        state.window_start_ns = now;
        state.window_packets = 0;
        state.window_bytes = 0;
    }
    atomic_add(&raw mut state.window_packets, 1);
    state.window_bytes += len;
    state.last_seen_ns = now;
}

/// Looks the source up in the allowlist, bans and blocklist, and caches the outcome for `epoch`.
#[inline(always)]
fn refresh(state: &mut SourceState, addr: &Addr, epoch: u64) {
    let key = Key::new(128, *addr);
    let mut verdict = 0;
    if ALLOWLIST.get(&key).is_some() {
        verdict |= cached::ALLOW;
    } else {
        // SAFETY: the value is copied out at once; a concurrent userspace update can only tear the copy,
        // and the next epoch bump refreshes it.
        if let Some(ban) = unsafe { BANS.get(addr) } {
            verdict |= cached::BAN;
            state.ban_expires_ns = ban.expires_ns;
            // A new or changed ban: fold hits into it from its first drop on.
            state.ban_hits_flushed_ns = 0;
        }
        if BLOCKLIST.get(&key).is_some() {
            verdict |= cached::BLOCK;
        }
    }
    state.cached = verdict;
    state.policy_epoch = epoch;
}

#[inline(always)]
fn drop_packet(
    ctx: &XdpContext,
    state: &mut SourceState,
    addr: &Addr,
    cfg: &XdpConfig,
    now: u64,
    len: u64,
    reason: DropReason,
) -> u32 {
    state.dropped_packets += 1;
    count(
        match reason {
            DropReason::Ban => Stat::DroppedBan,
            DropReason::Blocklist => Stat::DroppedBlocklist,
            DropReason::RateLimit => Stat::DroppedRateLimit,
        },
        len,
    );
    if now.wrapping_sub(state.last_event_ns) >= cfg.event_interval_ns {
        state.last_event_ns = now;
        emit_drop_event(ctx, state, addr, cfg, now, reason);
    }
    xdp_action::XDP_DROP
}

/// Writes a sampled drop event: at most one per source per `event_interval_ns`, and at most
/// `event_budget_per_window` per CPU per rate window, so a flood from many sources cannot swamp the ring.
#[inline(always)]
fn emit_drop_event(
    ctx: &XdpContext,
    state: &SourceState,
    addr: &Addr,
    cfg: &XdpConfig,
    now: u64,
    reason: DropReason,
) {
    let Some(budget) = EVENT_BUDGET.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU value from a map lookup; XDP runs without preemption on this CPU.
    let budget = unsafe { &mut *budget };
    if now.wrapping_sub(budget.window_start_ns) >= cfg.rate_window_ns {
        budget.window_start_ns = now;
        budget.used = 0;
    }
    if budget.used >= cfg.event_budget_per_window {
        count(Stat::EventsLost, 0);
        return;
    }
    budget.used += 1;
    let event = DropEvent {
        addr: *addr,
        // The fine clock here (rare path): reaction-time measurements need better than tick resolution.
        // SAFETY: a helper with no arguments and no preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        dropped_packets: state.dropped_packets,
        reason: reason as u32,
        // SAFETY: reads a field of the XDP context.
        ifindex: unsafe { (*ctx.ctx).ingress_ifindex },
    };
    if DROP_EVENTS.output::<DropEvent>(&event, 0).is_err() {
        count(Stat::EventsLost, 0);
    }
}

#[inline(always)]
fn count(stat: Stat, len: u64) {
    if let Some(c) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU value from a map lookup; XDP runs without preemption on this CPU.
        let c = unsafe { &mut *c };
        c.packets += 1;
        c.bytes += len;
    }
}

#[inline(always)]
fn atomic_add(p: *mut u64, v: u64) {
    // `core::sync::atomic` has no read-modify-write ops on the BPF target; the intrinsic lowers to BPF's atomic
    // add. SAFETY: `p` points into a map value, which is 8-byte aligned and outlives this program run.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v) };
}
