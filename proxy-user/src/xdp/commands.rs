//! The operator commands on the data plane: `xdp`, `ban`, `unban`, `blocklist`, `allowlist`, `maps dump`.
//! They work on the pinned maps, so they act on a running daemon's data plane directly.

use std::{net::IpAddr, time::Duration};

use clap::{Args, Subcommand, ValueEnum};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use proxy_common::{BanReason, DropEvent, DropReason, list_origin, map_names};
use serde::Serialize;

use super::{AttachMode, KernelMaps, ListKind, MapSizes, PinDir, loader, maps::BanRecord};
use crate::{
    Error,
    addr::{Cidr, from_key, parse_addr},
    cli::PinDirArg,
};

#[derive(Debug, Subcommand)]
pub enum XdpCommand {
    /// Load the XDP program and attach it to an interface (idempotent; keeps pinned maps and bans).
    Attach {
        #[arg(long)]
        iface: String,
        #[arg(long, value_enum, default_value_t = AttachMode::Native)]
        mode: AttachMode,
        #[command(flatten)]
        sizes: SizeArgs,
    },
    /// Detach the XDP program from an interface, or from all with `--all`; pinned maps stay unless `--purge`.
    Detach {
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        iface: Option<String>,
        #[arg(long)]
        all: bool,
        /// Also delete the pinned maps: every ban, list entry and counter is lost.
        #[arg(long, requires = "all")]
        purge: bool,
    },
    /// Show attachments, map sizes and the kernel-side settings.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Change the kernel-side settings.
    Set {
        /// Per-source packet ceiling per second; 0 turns the kernel rate limit off.
        #[arg(long)]
        rate_limit_pps: Option<u64>,
        /// Length of a rate window, e.g. `1s`, `500ms`.
        #[arg(long, value_parser = parse_duration)]
        rate_window: Option<Duration>,
        /// Minimum gap between two drop events of one source.
        #[arg(long, value_parser = parse_duration)]
        event_interval: Option<Duration>,
    },
    /// Print sampled drop events as they arrive (JSON lines), for at most `--count` events or `--timeout`.
    Events {
        #[arg(long, default_value_t = 100)]
        count: usize,
        #[arg(long, value_parser = parse_duration, default_value = "10s")]
        timeout: Duration,
    },
}

/// Sizes used only when the pinned maps are first created.
#[derive(Debug, Args, Clone, Copy)]
pub struct SizeArgs {
    #[arg(long, default_value_t = proxy_common::capacity::BANS)]
    pub max_bans: u32,
    #[arg(long, default_value_t = proxy_common::capacity::RATES)]
    pub max_sources: u32,
    #[arg(long, default_value_t = proxy_common::capacity::BLOCKLIST)]
    pub max_blocklist: u32,
    #[arg(long, default_value_t = proxy_common::capacity::ALLOWLIST)]
    pub max_allowlist: u32,
}

impl From<SizeArgs> for MapSizes {
    fn from(a: SizeArgs) -> Self {
        Self {
            bans: a.max_bans,
            rates: a.max_sources,
            blocklist: a.max_blocklist,
            allowlist: a.max_allowlist,
        }
    }
}

#[derive(Debug, Args)]
pub struct BanArgs {
    /// IPv4 or IPv6 address.
    pub addr: String,
    /// How long, e.g. `90s`, `10m`, `1h`.
    #[arg(long)]
    pub ttl: String,
    /// Why, in words (kept with the ban, cut at 120 bytes).
    #[arg(long, default_value = "")]
    pub reason: String,
}

#[derive(Debug, Subcommand)]
pub enum ListCommand {
    /// Add a CIDR (or a single address).
    Add { cidr: String },
    /// Remove a CIDR.
    Remove { cidr: String },
}

#[derive(Debug, Subcommand)]
pub enum MapsCommand {
    /// Print one map as a table (or JSON with `--json`).
    Dump {
        #[arg(value_enum)]
        map: DumpTarget,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DumpTarget {
    Bans,
    Blocklist,
    Allowlist,
    Rates,
    Stats,
}

/// Parses `10m`, `90s`, `1h30m`, `500ms`; rejects zero.
pub fn parse_duration(input: &str) -> Result<Duration, Error> {
    let d = humantime::parse_duration(input.trim()).map_err(|e| Error::InvalidDuration {
        input: input.to_owned(),
        reason: e.to_string(),
    })?;
    if d.is_zero() {
        return Err(Error::InvalidDuration {
            input: input.to_owned(),
            reason: "must be more than zero".into(),
        });
    }
    Ok(d)
}

pub fn run_xdp(pins: &PinDirArg, cmd: XdpCommand) -> Result<(), Error> {
    let pins = PinDir::new(&pins.pin_dir);
    match cmd {
        XdpCommand::Attach { iface, mode, sizes } => {
            let what = loader::attach(&pins, &iface, mode, sizes.into())?;
            let verb = match what {
                loader::Attached::New => "attached",
                loader::Attached::Replaced => "re-attached (program replaced in the pinned link)",
            };
            println!(
                "{verb} to {iface} in {} mode; maps pinned in {}",
                mode.as_str(),
                pins.maps_dir().display()
            );
        }
        XdpCommand::Detach {
            iface: Some(iface), ..
        } => {
            if !loader::detach(&pins, &iface)? {
                return Err(Error::NotAttached(iface));
            }
            println!(
                "detached from {iface}; pinned maps kept in {}",
                pins.maps_dir().display()
            );
        }
        XdpCommand::Detach {
            iface: None, purge, ..
        } => {
            let detached = loader::detach_all(&pins, purge)?;
            println!(
                "detached from {} interface(s){}",
                detached.len(),
                if purge { "; pinned maps removed" } else { "" }
            );
        }
        XdpCommand::Status { json } => status(&pins, json)?,
        XdpCommand::Set {
            rate_limit_pps,
            rate_window,
            event_interval,
        } => {
            let mut maps = KernelMaps::open(&pins)?;
            let cfg = maps.update_config(|cfg| {
                // The ceiling is kept per window; keep its per-second value when only the window changes.
                let old_pps = u128::from(cfg.rate_limit_packets) * 1_000_000_000
                    / u128::from(cfg.rate_window_ns.max(1));
                if let Some(w) = rate_window {
                    cfg.rate_window_ns = u64::try_from(w.as_nanos()).unwrap_or(u64::MAX);
                }
                let pps = rate_limit_pps.unwrap_or_else(|| u64::try_from(old_pps).unwrap_or(u64::MAX));
                cfg.rate_limit_packets = per_window(pps, cfg.rate_window_ns);
                if let Some(i) = event_interval {
                    cfg.event_interval_ns = u64::try_from(i.as_nanos()).unwrap_or(u64::MAX);
                }
            })?;
            println!("{}", settings_line(&cfg));
        }
        XdpCommand::Events { count, timeout } => events(&pins, count, timeout)?,
    }
    Ok(())
}

/// A packets-per-second ceiling as packets per window (at least 1 when enabled).
#[must_use]
pub fn per_window(pps: u64, window_ns: u64) -> u64 {
    if pps == 0 {
        return 0;
    }
    let per = u128::from(pps) * u128::from(window_ns) / 1_000_000_000;
    u64::try_from(per).unwrap_or(u64::MAX).max(1)
}

fn settings_line(cfg: &proxy_common::XdpConfig) -> String {
    let window = Duration::from_nanos(cfg.rate_window_ns);
    let limit = if cfg.rate_limit_packets == 0 {
        "off".to_owned()
    } else {
        format!(
            "{} packets per {}",
            cfg.rate_limit_packets,
            humantime::format_duration(window)
        )
    };
    format!(
        "rate window {}, kernel rate limit {limit}, drop events at most every {} per source",
        humantime::format_duration(window),
        humantime::format_duration(Duration::from_nanos(cfg.event_interval_ns)),
    )
}

#[derive(Serialize)]
struct Status {
    pin_dir: String,
    links: Vec<loader::LinkStatus>,
    rate_window_ms: u64,
    rate_limit_packets_per_window: u64,
    bans: usize,
    blocklist: usize,
    allowlist: usize,
    tracked_sources: usize,
}

fn status(pins: &PinDir, json: bool) -> Result<(), Error> {
    let maps = KernelMaps::open(pins)?;
    let links = loader::links(pins)?;
    let cfg = maps.config()?;
    let status = Status {
        pin_dir: pins.root().display().to_string(),
        rate_window_ms: cfg.rate_window_ns / 1_000_000,
        rate_limit_packets_per_window: cfg.rate_limit_packets,
        bans: maps.bans()?.iter().filter(|b| !b.expired).count(),
        blocklist: maps.list(ListKind::Blocklist)?.len(),
        allowlist: maps.list(ListKind::Allowlist)?.len(),
        tracked_sources: maps.rates()?.len(),
        links,
    };
    if json {
        print_json(&status)?;
        return Ok(());
    }
    println!("pin dir   {}", status.pin_dir);
    if status.links.is_empty() {
        println!("links     none (not attached)");
    }
    for l in &status.links {
        println!(
            "link      {} {} mode: {} (link id {}, prog id {})",
            l.iface,
            l.mode.as_str(),
            if l.attached {
                "attached"
            } else {
                "DEFUNCT (interface gone)"
            },
            l.link_id,
            l.prog_id
        );
    }
    println!("settings  {}", settings_line(&cfg));
    println!(
        "entries   {} active bans, {} blocklist CIDRs, {} allowlist CIDRs, {} tracked sources",
        status.bans, status.blocklist, status.allowlist, status.tracked_sources
    );
    Ok(())
}

pub fn run_ban(pins: &PinDirArg, args: &BanArgs) -> Result<(), Error> {
    // Parsed here rather than by clap so that a bad value gets the same one-line error as everything else.
    let ip = parse_addr(&args.addr)?;
    let ttl = parse_duration(&args.ttl)?;
    let mut maps = KernelMaps::open(&PinDir::new(&pins.pin_dir))?;
    let ban = maps.ban(ip, ttl, BanReason::Manual, &args.reason)?;
    println!(
        "banned {ip} for {} (strike {})",
        humantime::format_duration(ttl),
        ban.strikes
    );
    Ok(())
}

pub fn run_unban(pins: &PinDirArg, addr: &str) -> Result<(), Error> {
    let ip = parse_addr(addr)?;
    let mut maps = KernelMaps::open(&PinDir::new(&pins.pin_dir))?;
    if maps.unban(ip)? {
        println!("unbanned {ip}");
    } else {
        println!("{ip} was not banned");
    }
    Ok(())
}

pub fn run_list(pins: &PinDirArg, list: ListKind, cmd: &ListCommand) -> Result<(), Error> {
    let name = match list {
        ListKind::Allowlist => "allowlist",
        ListKind::Blocklist => "blocklist",
    };
    match cmd {
        ListCommand::Add { cidr } => {
            let cidr: Cidr = cidr.parse()?;
            KernelMaps::open(&PinDir::new(&pins.pin_dir))?.list_add(list, cidr, list_origin::OPERATOR)?;
            println!("added {cidr} to the {name}");
        }
        ListCommand::Remove { cidr } => {
            let cidr: Cidr = cidr.parse()?;
            if KernelMaps::open(&PinDir::new(&pins.pin_dir))?.list_remove(list, cidr)? {
                println!("removed {cidr} from the {name}");
            } else {
                println!("{cidr} was not in the {name}");
            }
        }
    }
    Ok(())
}

pub fn run_maps(pins: &PinDirArg, cmd: &MapsCommand) -> Result<(), Error> {
    let MapsCommand::Dump { map, json } = cmd;
    let maps = KernelMaps::open(&PinDir::new(&pins.pin_dir))?;
    match map {
        DumpTarget::Bans => {
            let bans = maps.bans()?;
            if *json {
                return print_json(&bans);
            }
            print_bans(&bans);
        }
        DumpTarget::Blocklist | DumpTarget::Allowlist => {
            let kind = if matches!(map, DumpTarget::Blocklist) {
                ListKind::Blocklist
            } else {
                ListKind::Allowlist
            };
            let entries = maps.list(kind)?;
            if *json {
                return print_json(&entries);
            }
            let mut t = table(&["CIDR", "ORIGIN"]);
            for e in &entries {
                t.add_row(vec![e.cidr.to_string(), e.origin.to_owned()]);
            }
            println!("{t}");
        }
        DumpTarget::Rates => {
            let rates = maps.rates()?;
            if *json {
                return print_json(&rates);
            }
            let mut t = table(&[
                "SOURCE",
                "PKT/S",
                "BYTES/S",
                "PACKETS",
                "BYTES",
                "DROPPED",
                "LAST SEEN",
                "TRACKED",
            ]);
            for r in &rates {
                t.add_row(vec![
                    r.addr.to_string(),
                    format!("{:.1}", r.packets_per_sec),
                    format!("{:.0}", r.bytes_per_sec),
                    r.total_packets.to_string(),
                    r.total_bytes.to_string(),
                    r.dropped_packets.to_string(),
                    format!("{} ago", short(r.last_seen)),
                    short(r.tracked_for),
                ]);
            }
            println!("{t}");
        }
        DumpTarget::Stats => {
            let stats = maps.stats()?;
            if *json {
                return print_json(&stats);
            }
            let mut t = table(&["COUNTER", "PACKETS", "BYTES"]);
            for s in &stats {
                t.add_row(vec![
                    s.name.to_owned(),
                    s.packets.to_string(),
                    s.bytes.to_string(),
                ]);
            }
            println!("{t}");
        }
    }
    Ok(())
}

fn print_bans(bans: &[BanRecord]) {
    let mut t = table(&["ADDRESS", "REMAINING", "AGE", "REASON", "HITS", "STRIKES", "NOTE"]);
    for b in bans {
        t.add_row(vec![
            b.addr.to_string(),
            if b.expired {
                "expired".to_owned()
            } else {
                short(b.remaining)
            },
            short(b.age),
            b.reason.clone(),
            b.hits.to_string(),
            b.strikes.to_string(),
            b.note.clone(),
        ]);
    }
    println!("{t}");
}

fn events(pins: &PinDir, count: usize, timeout: Duration) -> Result<(), Error> {
    let path = pins.map(map_names::DROP_EVENTS);
    let data = aya::maps::MapData::from_pin(&path).map_err(|e| {
        super::maps::map_error(
            format!("opening {}", path.display()),
            map_names::DROP_EVENTS,
            0,
            e,
        )
    })?;
    let map = aya::maps::Map::from_map_data(data)
        .map_err(|e| super::maps::map_error("opening the drop events", map_names::DROP_EVENTS, 0, e))?;
    let mut ring = aya::maps::RingBuf::try_from(map)
        .map_err(|e| super::maps::map_error("opening the drop events", map_names::DROP_EVENTS, 0, e))?;
    let deadline = std::time::Instant::now() + timeout;
    let mut seen = 0;
    while seen < count && std::time::Instant::now() < deadline {
        match ring.next() {
            Some(item) => {
                if let Some(event) = decode_event(&item) {
                    print_json_line(&event)?;
                    seen += 1;
                }
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    Ok(())
}

/// A drop event as printed and logged.
#[derive(Debug, Serialize)]
pub struct DropEventRecord {
    pub source: IpAddr,
    pub reason: &'static str,
    pub ifindex: u32,
    pub dropped_packets: u64,
    pub monotonic_ns: u64,
}

/// Decodes one ring-buffer record; `None` for a record of the wrong size (never trust a map's bytes).
#[must_use]
pub fn decode_event(bytes: &[u8]) -> Option<DropEventRecord> {
    if bytes.len() < size_of::<DropEvent>() {
        return None;
    }
    // SAFETY: `DropEvent` is plain old data (`aya::Pod`) and the slice holds at least its size; unaligned read.
    let e: DropEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<DropEvent>()) };
    Some(DropEventRecord {
        source: from_key(e.addr),
        reason: DropReason::from_u32(e.reason).map_or("unknown", DropReason::as_str),
        ifindex: e.ifindex,
        dropped_packets: e.dropped_packets,
        monotonic_ns: e.ts_ns,
    })
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY);
    t.set_header(header.to_vec());
    t
}

/// A duration for a table cell: `4m 12s`, `350ms`.
fn short(d: Duration) -> String {
    let rounded = if d >= Duration::from_secs(1) {
        Duration::from_secs(d.as_secs())
    } else {
        Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(0))
    };
    humantime::format_duration(rounded).to_string()
}

pub(crate) fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<(), Error> {
    let s = serde_json::to_string_pretty(value).map_err(|e| Error::Other(e.to_string()))?;
    println!("{s}");
    Ok(())
}

fn print_json_line<T: Serialize + ?Sized>(value: &T) -> Result<(), Error> {
    let s = serde_json::to_string(value).map_err(|e| Error::Other(e.to_string()))?;
    println!("{s}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_zero_is_refused() {
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_mins(10));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_mins(90));
        assert!(matches!(parse_duration("0s"), Err(Error::InvalidDuration { .. })));
        assert!(matches!(
            parse_duration("ten minutes"),
            Err(Error::InvalidDuration { .. })
        ));
        assert!(matches!(
            parse_duration("-5m"),
            Err(Error::InvalidDuration { .. })
        ));
    }

    #[test]
    fn pps_becomes_packets_per_window() {
        assert_eq!(per_window(0, 1_000_000_000), 0);
        assert_eq!(per_window(1000, 1_000_000_000), 1000);
        assert_eq!(per_window(1000, 100_000_000), 100);
        assert_eq!(per_window(1, 100_000_000), 1);
    }

    #[test]
    fn short_events_are_rejected() {
        assert!(decode_event(&[0u8; 10]).is_none());
        let mut raw = [0u8; size_of::<DropEvent>()];
        raw[10] = 0xff;
        raw[11] = 0xff;
        raw[12..16].copy_from_slice(&[192, 0, 2, 9]);
        raw[32..36].copy_from_slice(&1u32.to_ne_bytes());
        let e = decode_event(&raw).unwrap();
        assert_eq!(e.source, "192.0.2.9".parse::<IpAddr>().unwrap());
        assert_eq!(e.reason, "ban");
    }
}
