//! rasp-proxy: an eBPF/XDP-accelerated RASP access proxy. See `ARCHITECTURE.md` at the repository root for the
//! bird's-eye view; each module's docs say what it owns.

pub mod addr;
pub mod cli;
pub mod error;
pub mod eval;
pub mod event;
pub mod identity;
pub mod inspect;

pub use error::Error;
