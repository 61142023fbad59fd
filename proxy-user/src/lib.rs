//! rasp-proxy: an eBPF/XDP-accelerated RASP access proxy. See `ARCHITECTURE.md` at the repository root for the
//! bird's-eye view; each module's docs say what it owns.

pub mod addr;
pub mod admin;
pub mod cli;
pub mod config;
pub mod error;
pub mod eval;
pub mod event;
pub mod identity;
pub mod inspect;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod risk;
pub mod xdp;

pub use error::Error;
