//! `cargo xtask`: what plain cargo cannot do — set-up, the eBPF build, privileged tests, benches, the demo.

mod bench_proxy;
mod image;
mod pgo;
mod release;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use release::Build;

#[derive(Parser)]
#[command(about = "rasp-proxy project automation")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the eBPF build and the tests need (idempotent): nightly rust-src, LLVM 22, bpf-linker, tools.
    Setup,
    /// Build the XDP object (nightly, bpfel-unknown-none) into target/bpfel-unknown-none/release/proxy-ebpf.
    BuildEbpf,
    /// Build the XDP object and a release `rasp-proxy` that embeds it.
    Build {
        /// Profile-guided: an instrumented build, a training load, then the release build with the profile,
        /// in target/pgo/release/rasp-proxy (about three times as long; needs nginx, wrk, curl, openssl and `PyJWT`).
        #[arg(long)]
        pgo: bool,
    },
    /// Run every test: set-up, eBPF build, lints, unit tests, then the privileged tests (root, netns).
    Test {
        /// Extra arguments for the privileged test binary (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Run the demo: namespaces with a client and an attacker, the XDP program, a ban, and what the maps show.
    Demo,
    /// Build the container image (static musl binary, FROM scratch) with podman and check its binary starts.
    Image {
        /// Also run the XDP commands in it under the `DaemonSet`'s capabilities (root; netns, veth, bpffs).
        #[arg(long)]
        check_capabilities: bool,
        #[command(flatten)]
        build: BuildChoice,
    },
    /// Benchmarks that print a table.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// ns per packet of the XDP program (`BPF_PROG_TEST_RUN`) for each path, beside xdp-filter.
    Xdp,
    /// rasp-proxy against the upstream alone and nginx, with wrk on loopback.
    Proxy {
        #[command(flatten)]
        build: BuildChoice,
    },
    /// User-space instructions per proxied request under callgrind: a load-independent A/B measure.
    ProxyInstructions {
        #[command(flatten)]
        build: BuildChoice,
    },
    /// Time from the first byte of a banning request to the first XDP drop of its source: p50, p90, p99, max.
    Reaction,
}

/// Which `rasp-proxy` the image ships and the proxy benches measure: profile-guided unless told otherwise.
#[derive(clap::Args)]
struct BuildChoice {
    /// The plain release build instead of the profile-guided one (`cargo xtask build --pgo`): quicker to build,
    /// slower to run.
    #[arg(long)]
    no_pgo: bool,
}

impl BuildChoice {
    fn build(&self) -> Build {
        if self.no_pgo { Build::Release } else { Build::Pgo }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.task {
        Task::Setup => setup::install(),
        Task::BuildEbpf => build_ebpf(&root),
        Task::Build { pgo } => {
            build_ebpf(&root)?;
            let build = if pgo { Build::Pgo } else { Build::Release };
            build.binary(&root, &release::HOST).map(drop)
        }
        Task::Test { args } => test(&root, &args),
        Task::Demo => {
            setup::install()?;
            build_ebpf(&root)?;
            cargo(&root, &["build", "-p", "proxy-user"])?;
            let bin = root.join("target/debug/rasp-proxy");
            run(Command::new("cargo")
                .current_dir(&root)
                .env("RASP_PROXY_BIN", &bin)
                .args(["run", "--quiet", "-p", "rasp-tests", "--bin", "demo"]))
        }
        Task::Bench {
            which: Bench::Proxy { build },
        } => {
            setup::install()?;
            bench_proxy::run(&root, build.build())
        }
        Task::Bench {
            which: Bench::ProxyInstructions { build },
        } => {
            setup::install()?;
            bench_proxy::run_instructions(&root, build.build())
        }
        Task::Image {
            check_capabilities,
            build,
        } => image::build(&root, check_capabilities, build.build()),
        Task::Bench { which: Bench::Xdp } => {
            setup::install()?;
            build_ebpf(&root)?;
            cargo(&root, &["bench", "-p", "rasp-tests", "--bench", "xdp"])
        }
        Task::Bench {
            which: Bench::Reaction,
        } => {
            setup::install()?;
            build_ebpf(&root)?;
            // The daemon under test is optimised like the bench (the bench profile shares its build with it).
            cargo(
                &root,
                &[
                    "build",
                    "--profile",
                    "bench",
                    "-p",
                    "proxy-user",
                    "--bin",
                    "rasp-proxy",
                ],
            )?;
            let bin = root.join("target/release/rasp-proxy");
            run(Command::new("cargo")
                .current_dir(&root)
                .env("RASP_PROXY_BIN", &bin)
                .args(["bench", "-p", "rasp-tests", "--bench", "reaction"]))
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The eBPF build: nightly for `-Z build-std=core`, bpf-linker as the linker (set by the BPF target).
fn build_ebpf(root: &Path) -> Result<()> {
    run(Command::new("cargo")
        .current_dir(root)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env("PATH", setup::path_with_cargo_bin())
        .args([
            "+nightly",
            "build",
            "--package",
            "proxy-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
        ]))
    .context("building the XDP object (run `cargo xtask setup` if the toolchain is missing)")
}

fn test(root: &Path, extra: &[String]) -> Result<()> {
    setup::install()?;
    build_ebpf(root)?;
    cargo(root, &["fmt", "--all", "--", "--check"])?;
    cargo(
        root,
        &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"],
    )?;
    let mut tally = Tally::default();
    // Unit and non-privileged integration tests of the default members.
    tally.run(Command::new("cargo").current_dir(root).arg("test"))?;
    if !is_root() {
        bail!("the privileged tests need root (CAP_BPF, CAP_NET_ADMIN, network namespaces)");
    }
    cargo(root, &["build", "-p", "proxy-user"])?;
    let bin = root.join("target/debug/rasp-proxy");
    let mut args: Vec<&str> = vec!["test", "-p", "rasp-tests", "--tests", "--", "--test-threads=1"];
    args.extend(extra.iter().map(String::as_str));
    tally.run(
        Command::new("cargo")
            .current_dir(root)
            .env("RASP_PROXY_BIN", &bin)
            .args(&args),
    )?;
    // One closing line over every test binary, so the total is read rather than the last binary's count.
    println!("tests: {} passed, {} failed", tally.passed, tally.failed);
    if tally.failed > 0 {
        bail!("{} tests failed", tally.failed);
    }
    Ok(())
}

/// Adds up libtest's `test result:` lines while passing the output through.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    fn run(&mut self, cmd: &mut Command) -> Result<()> {
        use std::io::{BufRead as _, BufReader};
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        if let Some(out) = child.stdout.take() {
            for line in BufReader::new(out).lines() {
                let line = line.context("reading test output")?;
                println!("{line}");
                if let Some(rest) = line.strip_prefix("test result: ") {
                    self.passed += count_before(rest, " passed");
                    self.failed += count_before(rest, " failed");
                }
            }
        }
        let status = child.wait().context("waiting for cargo test")?;
        if !status.success() {
            bail!("{cmd:?} failed: {status}");
        }
        Ok(())
    }
}

/// In `ok. 17 passed; 0 failed; ...`, the number before `word`.
fn count_before(text: &str, word: &str) -> u64 {
    text.split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(word.trim_start())
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    run(Command::new("cargo").current_dir(root).args(args))
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
