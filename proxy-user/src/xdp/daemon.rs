//! What the daemon does with the data plane at start: attach to the configured interfaces, reconcile the
//! config-managed list entries, and set the kernel rate limit. Operators' own entries (CLI) are left alone.

use proxy_common::list_origin;

use super::{KernelMaps, ListKind, MapSizes, PinDir, commands::per_window, loader};
use crate::{Error, config::XdpConfig};

/// Attaches and configures the XDP data plane; `None` when `[xdp] interfaces` is empty (L7 only).
pub fn setup(cfg: &XdpConfig) -> Result<Option<KernelMaps>, Error> {
    if cfg.interfaces.is_empty() {
        return Ok(None);
    }
    let pins = PinDir::new(&cfg.pin_dir);
    for iface in &cfg.interfaces {
        let what = loader::attach(&pins, iface, cfg.mode, MapSizes::default())?;
        tracing::info!(iface, mode = cfg.mode.as_str(), ?what, pin_dir = %pins.root().display(), "XDP attached");
    }
    let mut maps = KernelMaps::open(&pins)?;
    maps.list_reconcile(ListKind::Allowlist, list_origin::CONFIG, &cfg.allowlist)?;
    maps.list_reconcile(ListKind::Blocklist, list_origin::CONFIG, &cfg.blocklist)?;
    let pps = cfg.rate_limit_pps.map_or(0, u64::from);
    maps.update_config(|c| c.rate_limit_packets = per_window(pps, c.rate_window_ns))?;
    Ok(Some(maps))
}
