//! Every bpffs path the project uses, in one place.
//!
//! ```text
//! <pin dir>/              default /sys/fs/bpf/rasp-proxy, `--pin-dir` everywhere
//!   maps/<MAP NAME>       one pinned map per name in proxy_common::map_names
//!   links/<mode>/<iface>  the pinned XDP link of one interface (mode: native | skb)
//! ```
//!
//! bpffs refuses names with a dot (they are reserved for its own `maps.debug`-style files), while interface
//! names may hold one (`eth0.100`), so a link's file name escapes `%` and `.` as `%25` and `%2E`.
//!
//! Maps and links are pinned so that they outlive any process: bans survive a daemon restart, and the filter
//! stays attached while the daemon is down.

use std::path::{Path, PathBuf};

use super::AttachMode;

/// The pin directory and every path under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    #[must_use]
    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    #[must_use]
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    #[must_use]
    pub fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    #[must_use]
    pub fn link(&self, iface: &str, mode: AttachMode) -> PathBuf {
        self.links_dir()
            .join(mode.as_str())
            .join(iface.replace('%', "%25").replace('.', "%2E"))
    }

    /// Reverses the escaping of [`PinDir::link`]'s file name.
    #[must_use]
    pub fn iface_of_link(file_name: &str) -> String {
        file_name.replace("%2E", ".").replace("%25", "%")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_have_no_dots_and_round_trip() {
        let pins = PinDir::new("/sys/fs/bpf/rasp-proxy");
        let p = pins.link("eth0.100%x", AttachMode::Skb);
        assert_eq!(
            p,
            PathBuf::from("/sys/fs/bpf/rasp-proxy/links/skb/eth0%2E100%25x")
        );
        let name = p.file_name().unwrap().to_str().unwrap();
        assert!(!name.contains('.'));
        assert_eq!(PinDir::iface_of_link(name), "eth0.100%x");
    }
}
