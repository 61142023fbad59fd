//! `cargo xtask setup`: installs what the eBPF build, the tests and the benches need. Idempotent: each step
//! checks first and does nothing when its tool is already there, so the test command can always run it.

use std::{
    env,
    ffi::OsString,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result};

use crate::run;

/// Debian packages: LLVM 22 to build bpf-linker against nightly's LLVM; the rest for tests and benches.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "iproute2",
    "util-linux",
    "curl",
    "openssl",
    "bpftool",
    "xdp-tools",
    "wrk",
    "nginx-light",
    // `cargo xtask bench proxy-instructions`.
    "valgrind",
    // The container image (`cargo xtask image`): a static musl build, podman, and runc where crun cannot run.
    "musl-tools",
    "podman",
    "runc",
    // `systemd-analyze verify` for the unit file test.
    "systemd",
];

/// Python modules: `PyJWT` mints tokens with an independent JWT implementation; kubernetes-validate checks the
/// manifests against the Kubernetes schemas offline.
const PIP_PACKAGES: &[(&str, &str)] = &[
    ("jwt", "pyjwt"),
    ("cryptography", "cryptography"),
    ("kubernetes_validate", "kubernetes-validate"),
];

pub fn install() -> Result<()> {
    apt()?;
    nightly()?;
    bpf_linker()?;
    python()?;
    Ok(())
}

fn apt() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing))
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn nightly() -> Result<()> {
    let has_nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_nightly {
        eprintln!("setup: installing the nightly toolchain");
        run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("running rustup")?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        eprintln!("setup: adding rust-src to nightly");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let works = Command::new("bpf-linker")
        .arg("--version")
        .env("PATH", path_with_cargo_bin())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker against LLVM 22 (about 2 minutes)");
    let mut path = OsString::from("/usr/lib/llvm-22/bin:");
    path.push(path_with_cargo_bin());
    run(Command::new("cargo").env("PATH", path).args([
        "install",
        "bpf-linker",
        "--locked",
        "--no-default-features",
        "--features",
        "llvm-22",
    ]))
}

fn python() -> Result<()> {
    let missing: Vec<&str> = PIP_PACKAGES
        .iter()
        .filter(|(module, _)| {
            !Command::new("python3")
                .args(["-c", &format!("import {module}")])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: pip install {}", missing.join(" "));
    run(Command::new("python3")
        .args(["-m", "pip", "install", "-q"])
        .args(&missing))
}

/// `PATH` with `~/.cargo/bin` in front, where `cargo install` puts bpf-linker.
pub fn path_with_cargo_bin() -> OsString {
    let cargo_bin = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|p| p.join("bin"));
    let mut path = OsString::new();
    if let Some(bin) = cargo_bin {
        path.push(bin);
        path.push(":");
    }
    path.push(env::var_os("PATH").unwrap_or_default());
    path
}
