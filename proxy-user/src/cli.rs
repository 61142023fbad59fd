//! The command line: one binary, `rasp-proxy`, with a subcommand per job.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::{
    Error,
    xdp::{
        ListKind,
        commands::{self, BanArgs, ListCommand, MapsCommand, XdpCommand},
    },
};

/// Default bpffs directory for the pinned maps and links.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/rasp-proxy";

#[derive(Debug, Parser)]
#[command(
    name = "rasp-proxy",
    version,
    about = "eBPF/XDP-accelerated RASP access proxy"
)]
pub struct Cli {
    #[command(flatten)]
    pub pins: PinDirArg,
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
    /// Attach, detach and inspect the XDP data plane.
    #[command(subcommand)]
    Xdp(XdpCommand),
    /// Ban an address in the kernel for a while.
    Ban(BanArgs),
    /// Lift a ban.
    Unban { addr: String },
    /// Edit the CIDR blocklist.
    #[command(subcommand)]
    Blocklist(ListCommand),
    /// Edit the CIDR allowlist (allowed sources are never dropped).
    #[command(subcommand)]
    Allowlist(ListCommand),
    /// Read the pinned maps.
    #[command(subcommand)]
    Maps(MapsCommand),
    /// Bans placed by the self-protection loop: list, explain, lift.
    #[command(subcommand)]
    Bans(crate::risk::commands::BansCommand),
    /// Identities refused at L7: list, unblock.
    #[command(subcommand)]
    Identities(crate::risk::commands::IdentitiesCommand),
    /// Run the payload inspector over request corpora (JSONL) and report detection and false-positive rates.
    Eval(crate::eval::EvalArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// The TOML config file.
    #[arg(long, short = 'c', env = "RASP_CONFIG")]
    pub config: PathBuf,
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<(), Error> {
    let pins = &cli.pins;
    match cli.command {
        // The daemon sets up its own JSON logging.
        Command::Run(args) => run_daemon(&args.config),
        Command::Eval(args) => crate::eval::run(&args),
        Command::Check(args) => {
            let config = crate::config::Config::load(&args.config)?;
            // Building a generation also loads the certificates, so a bad PEM is caught here too.
            crate::proxy::generation::Generation::build(config, 0)?;
            println!("{}: ok", args.config.display());
            Ok(())
        }
        command => {
            init_cli_logging();
            match command {
                Command::Xdp(cmd) => commands::run_xdp(pins, cmd),
                Command::Ban(args) => commands::run_ban(pins, &args),
                Command::Unban { addr } => commands::run_unban(pins, &addr),
                Command::Blocklist(cmd) => commands::run_list(pins, ListKind::Blocklist, &cmd),
                Command::Allowlist(cmd) => commands::run_list(pins, ListKind::Allowlist, &cmd),
                Command::Maps(cmd) => commands::run_maps(pins, &cmd),
                Command::Bans(cmd) => crate::risk::commands::run_bans(pins, &cmd),
                Command::Identities(cmd) => crate::risk::commands::run_identities(&cmd),
                Command::Run(_) | Command::Check(_) | Command::Eval(_) => Ok(()),
            }
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

/// Human-readable logs on stderr for one-shot commands (`RUST_LOG` overrides the `info` default).
fn init_cli_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .try_init();
}
