//! The XDP data plane. See `program.rs`; this file only switches between the BPF build and the host build
//! (an empty binary, so `cargo clippy --workspace` on the host type-checks the workspace without a BPF target).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(
    target_arch = "bpf",
    expect(
        internal_features,
        reason = "atomic_xadd: core::sync::atomic lacks RMW ops on BPF"
    )
)]

#[cfg(target_arch = "bpf")]
mod program;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable call to this; it exists only to satisfy `no_std`.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
