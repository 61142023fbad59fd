//! The one error type of `proxy-user`. Each variant says what failed and where, in one line an operator can
//! act on.

use std::{io, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid address {input:?}: expected an IPv4 or IPv6 address such as 192.0.2.7 or 2001:db8::7")]
    InvalidAddress { input: String },

    #[error("invalid CIDR {input:?}: expected ADDRESS/PREFIX such as 192.0.2.0/24 or 2001:db8::/32")]
    InvalidCidr { input: String },

    #[error("invalid duration {input:?}: {reason}")]
    InvalidDuration { input: String, reason: String },

    #[error(
        "pin directory {} not found: is the XDP program attached? (`rasp-proxy xdp attach --iface IF`)",
        .0.display()
    )]
    PinDirMissing(PathBuf),

    #[error("permission denied {action}: rasp-proxy needs root, or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON")]
    PermissionDenied { action: String },

    #[error("map {map} is full ({capacity} entries): remove entries or raise its size")]
    MapFull { map: &'static str, capacity: u32 },

    #[error("no such network interface {0:?}")]
    NoSuchInterface(String),

    #[error("the XDP program is not attached to {0}")]
    NotAttached(String),

    #[error(
        "this rasp-proxy was built without the XDP object: run `cargo xtask build-ebpf`, then rebuild rasp-proxy"
    )]
    NoEbpfObject,

    #[error(
        "pinned map {map} in {} does not match this build ({detail}); detach with \
         `rasp-proxy xdp detach --all --purge` to recreate the maps",
        dir.display()
    )]
    IncompatiblePin {
        map: &'static str,
        dir: PathBuf,
        detail: String,
    },

    #[error("{action}: {source}")]
    Bpf {
        action: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: io::Error,
    },

    /// A config file (or the text of one) that does not parse or does not hold together; the message names
    /// the key.
    #[error("config: {0}")]
    Config(String),

    #[error("TLS: {0}")]
    Tls(String),

    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Wraps an I/O error with what was being done, turning `EPERM`/`EACCES` into [`Error::PermissionDenied`].
    pub fn io(action: impl Into<String>, source: io::Error) -> Self {
        let action = action.into();
        match source.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => Self::PermissionDenied { action },
            _ => Self::Io { action, source },
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
