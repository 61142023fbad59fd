//! The userspace side of the XDP data plane: loading and attaching the program, the pinned maps, and the
//! commands operators run against them. Mechanism only: what to ban and for how long is decided elsewhere.

pub mod bpffs;
pub mod commands;
pub mod daemon;
pub mod loader;
pub mod maps;
pub mod pins;
pub mod sys;

use aya::programs::XdpMode;
use serde::Serialize;

pub use loader::{Attached, LinkStatus, MapSizes};
pub use maps::{KernelMaps, ListKind};
pub use pins::PinDir;

/// How the program is attached to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AttachMode {
    /// In the driver, before the kernel allocates an skb: the fast path.
    #[default]
    Native,
    /// Generic XDP, for drivers without native support.
    Skb,
}

impl AttachMode {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Skb => "skb",
        }
    }

    #[must_use]
    pub const fn other(self) -> Self {
        match self {
            Self::Native => Self::Skb,
            Self::Skb => Self::Native,
        }
    }

    const fn xdp_mode(self) -> XdpMode {
        match self {
            Self::Native => XdpMode::Driver,
            Self::Skb => XdpMode::Skb,
        }
    }
}
