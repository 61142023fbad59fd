//! Loading the embedded XDP object against the pinned maps, attaching it, detaching it, and reporting status.
//!
//! Attaching is idempotent and restart-safe: the maps are created once and pinned, and the XDP link is pinned
//! per interface. Attaching again (a daemon restart, an upgrade) loads the program against the same maps and
//! swaps it into the existing link atomically, so no ban is lost and no packet goes unfiltered.

use std::{
    fs,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::MapType,
    programs::{
        Xdp,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use proxy_common::{Addr, Ban, BanNote, Counter, EventBudget, SourceState, XdpConfig, capacity, map_names};
use serde::Serialize;

use super::{AttachMode, bpffs, pins::PinDir, sys};
use crate::Error;

/// The XDP object built by `cargo xtask build-ebpf`, embedded at build time (empty if it was not built).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/proxy-ebpf.o"));

/// Name of the XDP function in the object.
const PROGRAM: &str = "rasp_xdp";

/// Map sizes chosen when the maps are first created; ignored when pinned maps already exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    pub bans: u32,
    pub rates: u32,
    pub blocklist: u32,
    pub allowlist: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            bans: capacity::BANS,
            rates: capacity::RATES,
            blocklist: capacity::BLOCKLIST,
            allowlist: capacity::ALLOWLIST,
        }
    }
}

/// Loads the program with its maps pinned under `pins` (creating and pinning them on first use), without
/// attaching it anywhere. Used by `attach`, and by tests and benchmarks that drive the program with
/// `BPF_PROG_TEST_RUN`.
pub fn load(pins: &PinDir, sizes: MapSizes) -> Result<Ebpf, Error> {
    if EBPF_OBJECT.is_empty() {
        return Err(Error::NoEbpfObject);
    }
    bpffs::ensure_dir(pins.root())?;
    fs::create_dir_all(pins.maps_dir())
        .map_err(|e| Error::io(format!("creating {}", pins.maps_dir().display()), e))?;
    check_pinned_layout(pins)?;
    let fresh = !pins.map(map_names::CONFIG).exists();
    let maps_dir = pins.maps_dir();
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&maps_dir)
        .map_max_entries(map_names::BANS, sizes.bans)
        .map_max_entries(map_names::BAN_NOTES, sizes.bans)
        .map_max_entries(map_names::RATES, sizes.rates)
        .map_max_entries(map_names::BLOCKLIST, sizes.blocklist)
        .map_max_entries(map_names::ALLOWLIST, sizes.allowlist)
        .load(EBPF_OBJECT)
        .map_err(|e| bpf_error("loading the XDP object", e))?;
    if fresh {
        let mut config: aya::maps::Array<_, XdpConfig> = aya::maps::Array::try_from(
            ebpf.map_mut(map_names::CONFIG)
                .ok_or_else(|| Error::Other("object has no CONFIG map".into()))?,
        )
        .map_err(|e| bpf_error("opening CONFIG", e))?;
        config
            .set(0, XdpConfig::DEFAULT, 0)
            .map_err(|e| bpf_error("initialising CONFIG", e))?;
    }
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM)
        .ok_or_else(|| Error::Other(format!("object has no program {PROGRAM}")))?
        .try_into()
        .map_err(|e| bpf_error("reading the XDP program", e))?;
    program
        .load()
        .map_err(|e| bpf_error("loading the XDP program into the kernel (verifier)", e))?;
    Ok(ebpf)
}

/// The loaded program, for `BPF_PROG_TEST_RUN` and attaching.
pub fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp, Error> {
    ebpf.program_mut(PROGRAM)
        .ok_or_else(|| Error::Other(format!("object has no program {PROGRAM}")))?
        .try_into()
        .map_err(|e| bpf_error("reading the XDP program", e))
}

/// What `attach` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attached {
    /// A new link was made and pinned.
    New,
    /// The pinned link already existed; the program in it was swapped atomically.
    Replaced,
}

/// Loads the program and attaches it to `iface`, reusing the pinned maps and, if present, the pinned link.
/// The link stays attached after this process exits.
pub fn attach(pins: &PinDir, iface: &str, mode: AttachMode, sizes: MapSizes) -> Result<Attached, Error> {
    let ifindex = ifindex(iface)?;
    let mut ebpf = load(pins, sizes)?;
    let mode_dir = pins.links_dir().join(mode.as_str());
    fs::create_dir_all(&mode_dir).map_err(|e| Error::io(format!("creating {}", mode_dir.display()), e))?;
    // A link pinned with the other mode is replaced by a fresh one: the mode of a link cannot change.
    let other = pins.link(iface, mode.other());
    if other.exists() {
        detach_pinned(&other)?;
    }
    let link_path = pins.link(iface, mode);
    let program = program(&mut ebpf)?;
    if live_link(&link_path, ifindex)? {
        let pinned = PinnedLink::from_pin(&link_path)
            .map_err(|e| bpf_error(format!("opening {}", link_path.display()), e))?;
        let link = XdpLink::try_from(FdLink::from(pinned))
            .map_err(|e| bpf_error("reusing the pinned XDP link", e))?;
        program
            .attach_to_link(link)
            .map_err(|e| bpf_error(format!("replacing the program on {iface}"), e))?;
        return Ok(Attached::Replaced);
    }
    let id = program
        .attach_to_if_index(ifindex, mode.xdp_mode())
        .map_err(|e| bpf_error(format!("attaching XDP to {iface} in {} mode", mode.as_str()), e))?;
    let link = program
        .take_link(id)
        .map_err(|e| bpf_error("taking the XDP link", e))?;
    let fd_link = FdLink::try_from(link).map_err(|e| bpf_error("XDP link is not a bpf_link", e))?;
    fd_link
        .pin(&link_path)
        .map_err(|e| bpf_error(format!("pinning {}", link_path.display()), e))?;
    Ok(Attached::New)
}

/// Whether the pinned link at `path` is still attached to `ifindex`; removes a stale pin (interface gone or
/// re-created).
fn live_link(path: &Path, ifindex: u32) -> Result<bool, Error> {
    if !path.exists() {
        return Ok(false);
    }
    let fd = sys::obj_get(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let info =
        sys::xdp_link_info(fd.as_fd()).map_err(|e| Error::io(format!("querying {}", path.display()), e))?;
    if info.ifindex == ifindex {
        return Ok(true);
    }
    tracing::info!(pin = %path.display(), "removing a stale XDP link pin");
    fs::remove_file(path).map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
    Ok(false)
}

/// Detaches the program from `iface` (both modes). Returns whether anything was attached.
pub fn detach(pins: &PinDir, iface: &str) -> Result<bool, Error> {
    let mut found = false;
    for mode in [AttachMode::Native, AttachMode::Skb] {
        let path = pins.link(iface, mode);
        if path.exists() {
            detach_pinned(&path)?;
            found = true;
        }
    }
    Ok(found)
}

/// Detaches every pinned link; with `purge`, also removes the pinned maps (all bans and lists are lost).
pub fn detach_all(pins: &PinDir, purge: bool) -> Result<Vec<String>, Error> {
    let mut detached = Vec::new();
    for link in links(pins)? {
        detach_pinned(&link.pin)?;
        detached.push(link.iface);
    }
    if purge {
        for name in map_names::ALL {
            let path = pins.map(name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("removing {}", path.display()), e)),
            }
        }
        let links = pins.links_dir();
        for dir in [
            links.join("native"),
            links.join("skb"),
            links,
            pins.maps_dir(),
            pins.root().to_path_buf(),
        ] {
            let _ = fs::remove_dir(dir);
        }
    }
    Ok(detached)
}

fn detach_pinned(path: &Path) -> Result<(), Error> {
    let fd = sys::obj_get(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    fs::remove_file(path).map_err(|e| Error::io(format!("unpinning {}", path.display()), e))?;
    // Another holder (a running daemon) would keep the program attached; detach it for everyone.
    match sys::link_detach(fd.as_fd()) {
        Ok(()) => Ok(()),
        // Already detached (the interface went away).
        Err(e) if e.raw_os_error() == Some(libc::ENOLINK) || e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        Err(e) => Err(Error::io(format!("detaching {}", path.display()), e)),
    }
}

/// One pinned XDP link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LinkStatus {
    pub iface: String,
    pub mode: AttachMode,
    /// False when the interface is gone or the link was detached behind our back.
    pub attached: bool,
    pub link_id: u32,
    pub prog_id: u32,
    #[serde(skip)]
    pub pin: PathBuf,
}

/// Every pinned link under `pins`.
pub fn links(pins: &PinDir) -> Result<Vec<LinkStatus>, Error> {
    let mut out = Vec::new();
    for mode in [AttachMode::Native, AttachMode::Skb] {
        let dir = pins.links_dir().join(mode.as_str());
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
            let iface = PinDir::iface_of_link(&entry.file_name().to_string_lossy());
            let fd = sys::obj_get(&entry.path())
                .map_err(|e| Error::io(format!("opening {}", entry.path().display()), e))?;
            let info = sys::xdp_link_info(fd.as_fd())
                .map_err(|e| Error::io(format!("querying {}", entry.path().display()), e))?;
            let attached = info.ifindex != 0 && ifindex(&iface).is_ok_and(|i| i == info.ifindex);
            out.push(LinkStatus {
                iface,
                mode,
                attached,
                link_id: info.link_id,
                prog_id: info.prog_id,
                pin: entry.path(),
            });
        }
    }
    out.sort_by(|a, b| a.iface.cmp(&b.iface));
    Ok(out)
}

/// The index of a network interface in the current network namespace.
pub fn ifindex(iface: &str) -> Result<u32, Error> {
    let c = std::ffi::CString::new(iface).map_err(|_| Error::NoSuchInterface(iface.to_owned()))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        Err(Error::NoSuchInterface(iface.to_owned()))
    } else {
        Ok(index)
    }
}

/// The layout each pinned map must have for this build: type, key size, value size.
fn expected_layout(name: &str) -> Option<(MapType, usize, usize)> {
    const ADDR: usize = size_of::<Addr>();
    const LPM_KEY: usize = 4 + ADDR;
    Some(match name {
        map_names::ALLOWLIST | map_names::BLOCKLIST => (MapType::LpmTrie, LPM_KEY, 4),
        map_names::BANS => (MapType::LruHash, ADDR, size_of::<Ban>()),
        map_names::BAN_NOTES => (MapType::LruHash, ADDR, size_of::<BanNote>()),
        map_names::RATES => (MapType::LruHash, ADDR, size_of::<SourceState>()),
        map_names::CONFIG => (MapType::Array, 4, size_of::<XdpConfig>()),
        map_names::STATS => (MapType::PerCpuArray, 4, size_of::<Counter>()),
        map_names::EVENT_BUDGET => (MapType::PerCpuArray, 4, size_of::<EventBudget>()),
        map_names::DROP_EVENTS => (MapType::RingBuf, 0, 0),
        _ => return None,
    })
}

/// Refuses to load against pinned maps left by an incompatible build: aya would silently reuse them, and the
/// program would then read garbage.
fn check_pinned_layout(pins: &PinDir) -> Result<(), Error> {
    for name in map_names::ALL {
        let path = pins.map(name);
        if !path.exists() {
            continue;
        }
        let Some((want_type, want_key, want_value)) = expected_layout(name) else {
            continue;
        };
        let info = aya::maps::MapInfo::from_pin(&path)
            .map_err(|e| bpf_error(format!("inspecting {}", path.display()), e))?;
        let got_type = info
            .map_type()
            .map_err(|e| bpf_error(format!("inspecting {}", path.display()), e))?;
        let (got_key, got_value) = (info.key_size() as usize, info.value_size() as usize);
        if got_type != want_type || got_key != want_key || got_value != want_value {
            return Err(Error::IncompatiblePin {
                map: name,
                dir: pins.root().to_path_buf(),
                detail: format!(
                    "found {got_type:?} key {got_key} value {got_value}, expected {want_type:?} key {want_key} \
                     value {want_value}"
                ),
            });
        }
    }
    Ok(())
}

/// Turns an aya error into the project's error, naming permission problems plainly.
pub(crate) fn bpf_error(
    action: impl Into<String>,
    e: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    let action = action.into();
    match super::maps::os_error(&e) {
        Some(libc::EPERM | libc::EACCES) => Error::PermissionDenied { action },
        _ => Error::Bpf {
            action,
            source: Box::new(e),
        },
    }
}
