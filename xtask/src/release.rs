//! How a release `rasp-proxy` is built: plain (`cargo build --release`, LTO) or profile-guided (`pgo.rs`), for
//! the host or another target. The `build` task, the image and the proxy benches all build through here.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The platform a binary is for.
pub struct Platform<'a> {
    /// `--target`, or the host.
    pub triple: Option<&'a str>,
    /// Environment the target's build needs (e.g. the C compiler for ring on musl).
    pub env: &'a [(&'a str, &'a str)],
}

/// The host's own binary.
pub const HOST: Platform<'static> = Platform {
    triple: None,
    env: &[],
};

/// How a release `rasp-proxy` is built.
#[derive(Clone, Copy)]
pub enum Build {
    /// `cargo build --release` (LTO, one codegen unit) into `target/`.
    Release,
    /// The same, guided by a profile of a training load (`pgo.rs`), into `target/pgo/`.
    Pgo,
}

impl Build {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Release => "release (LTO), no PGO",
            Self::Pgo => "release (LTO) with PGO, as `cargo xtask build --pgo`",
        }
    }

    /// Builds the binary for `platform` and returns its path. The XDP object is embedded when it has been built
    /// (`cargo xtask build-ebpf`).
    pub fn binary(self, root: &Path, platform: &Platform<'_>) -> Result<PathBuf> {
        match self {
            Self::Release => cargo_build(root, platform, "target", None),
            Self::Pgo => crate::pgo::build(root, platform),
        }
    }
}

/// `cargo build --release` of `rasp-proxy` into `target_dir` (relative to `root`), with `rustflags` in place of
/// the environment's when given; returns the binary's path.
pub fn cargo_build(
    root: &Path,
    platform: &Platform<'_>,
    target_dir: &str,
    rustflags: Option<&str>,
) -> Result<PathBuf> {
    println!("building rasp-proxy (release) in {target_dir}");
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .current_dir(root)
        .env("CARGO_TARGET_DIR", root.join(target_dir))
        .envs(platform.env.iter().copied())
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "proxy-user",
            "--bin",
            "rasp-proxy",
        ]);
    if let Some(flags) = rustflags {
        cargo.env("RUSTFLAGS", flags);
    }
    let mut out = root.join(target_dir);
    if let Some(triple) = platform.triple {
        cargo.args(["--target", triple]);
        out.push(triple);
    }
    let status = cargo.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build in {target_dir} failed");
    }
    Ok(out.join("release/rasp-proxy"))
}
