//! The `rasp-proxy` binary: parses the command line and hands it to [`proxy_user::cli`].

use std::process::ExitCode;

use clap::Parser as _;

/// mimalloc instead of glibc's malloc: the request path allocates and frees many small objects per request
/// (header maps, boxed bodies, futures), where glibc's bins and consolidation showed up in profiles. Set in
/// the binary, so the library's users (tests, benches, the fuzz target) keep their own allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
