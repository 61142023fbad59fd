//! `cargo xtask`: what plain cargo cannot do.

mod bench_proxy;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run a benchmark that prints a comparison table.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand)]
enum Bench {
    /// rasp-proxy against the upstream alone and nginx, with wrk on loopback.
    Proxy,
}

fn workspace_root() -> PathBuf {
    // xtask lives one level below the workspace root.
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), PathBuf::from)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Task::Bench(Bench::Proxy) => bench_proxy::run(&workspace_root()),
    }
}
