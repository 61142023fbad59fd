//! The command line: one binary, `rasp-proxy`, with a subcommand per job.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::Error;

/// Default bpffs directory for the pinned maps and links.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/rasp-proxy";

#[derive(Debug, Parser)]
#[command(
    name = "rasp-proxy",
    version,
    about = "eBPF/XDP-accelerated RASP access proxy"
)]
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
    /// Run the proxy daemon: reloads on SIGHUP, drains and exits on SIGTERM or ctrl-c.
    Run(ConfigArg),
    /// Check a config file and exit: nothing is bound or started.
    Check(ConfigArg),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// The TOML config file.
    #[arg(long, short = 'c', env = "RASP_CONFIG")]
    pub config: PathBuf,
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Run(args) => run_daemon(&args.config),
        Command::Check(args) => {
            let config = crate::config::Config::load(&args.config)?;
            // Building a generation also loads the certificates, so a bad PEM is caught here too.
            crate::proxy::generation::Generation::build(config, 0)?;
            println!("{}: ok", args.config.display());
            Ok(())
        }
    }
}

fn run_daemon(config_path: &std::path::Path) -> Result<(), Error> {
    let config = crate::config::Config::load(config_path)?;
    let _log_guard = crate::logging::init(config.log.security_file.as_deref())?;
    // Signals and the admin endpoint only: the proxy's worker threads run their own runtimes.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the async runtime", e))?;
    runtime.block_on(crate::proxy::run(config_path))
}
