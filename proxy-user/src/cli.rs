//! The command line: one binary, `rasp-proxy`, with a subcommand per job.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::Error;

/// Default bpffs directory for the pinned maps and links.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/rasp-proxy";

#[derive(Debug, Parser)]
#[command(name = "rasp-proxy", version, about = "eBPF/XDP-accelerated RASP access proxy")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where the pinned maps live; every command that touches the kernel takes it.
#[derive(Debug, Clone, clap::Args)]
pub struct PinDirArg {
    /// bpffs directory holding the pinned maps and links.
    #[arg(long, global = true, env = "RASP_PIN_DIR", default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the payload inspector over request corpora (JSONL) and report detection and false-positive rates.
    Eval(crate::eval::EvalArgs),
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Eval(args) => crate::eval::run(&args),
    }
}
