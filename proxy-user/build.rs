//! Embeds the XDP object built by `cargo xtask build-ebpf`.
//!
//! The object is optional at build time so that `cargo build` and `cargo test` work on the stable toolchain
//! without the BPF toolchain: without it, `rasp-proxy` still builds and every command that needs the XDP
//! program fails with a message naming `cargo xtask build-ebpf`.

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let object = env::var_os("RASP_EBPF_OBJECT").map_or_else(
        || manifest_dir.join("../target/bpfel-unknown-none/release/proxy-ebpf"),
        PathBuf::from,
    );
    println!("cargo:rerun-if-env-changed=RASP_EBPF_OBJECT");
    println!("cargo:rerun-if-changed={}", object.display());

    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default()).join("proxy-ebpf.o");
    let bytes = fs::read(&object).unwrap_or_else(|_| {
        println!(
            "cargo:warning=XDP object {} not found: run `cargo xtask build-ebpf` first; this build of rasp-proxy \
             cannot load the XDP program",
            object.display()
        );
        Vec::new()
    });
    if let Err(e) = fs::write(&out, bytes) {
        panic!("cannot write {}: {e}", out.display());
    }
}
