//! The `rasp-proxy` binary: parses the command line and hands it to [`proxy_user::cli`].

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = proxy_user::cli::Cli::parse();
    match proxy_user::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, for operators and scripts; `RUST_LOG=debug` gives the detail.
            eprintln!("rasp-proxy: error: {e}");
            ExitCode::FAILURE
        }
    }
}
