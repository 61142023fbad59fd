//! Log set-up: JSON lines through `tracing`. Three streams by target: `access` (one line per request),
//! `security` (one line per [`SecurityEvent`]) and everything else (the daemon's own diagnostics). The
//! security stream can go to its own file so a SIEM can tail it alone.

use std::{fs::OpenOptions, path::Path, sync::Mutex};

use tracing_subscriber::{
    EnvFilter, Layer as _, filter, fmt, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

use crate::{Error, event::SecurityEvent};

/// Target of the per-request lines.
pub const ACCESS: &str = "access";
/// Target of security events.
pub const SECURITY: &str = "security";

/// Installs the global subscriber. `RUST_LOG` filters the diagnostics stream (default `info`); access and
/// security lines are always written.
pub fn init(security_file: Option<&Path>) -> Result<(), Error> {
    let diag_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let is_stream = |t: &str| t == ACCESS || t == SECURITY;
    let diagnostics = fmt::layer()
        .json()
        .flatten_event(true)
        .with_writer(std::io::stdout)
        .with_filter(filter::filter_fn(move |m| !is_stream(m.target())))
        .with_filter(diag_filter);
    let access = fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(std::io::stdout)
        .with_filter(filter::filter_fn(|m| m.target() == ACCESS));
    let security_base = fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false);
    let security = match security_file {
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| Error::io(format!("opening security log {}", path.display()), e))?;
            security_base.with_writer(Mutex::new(file)).boxed()
        }
        None => security_base.with_writer(std::io::stdout).boxed(),
    }
    .with_filter(filter::filter_fn(|m| m.target() == SECURITY));
    tracing_subscriber::registry()
        .with(diagnostics)
        .with(access)
        .with(security)
        .try_init()
        .map_err(|e| Error::Other(format!("installing the log subscriber: {e}")))
}

/// Writes one security event to the `security` stream.
pub fn security_event(event: &SecurityEvent) {
    let json = serde_json::to_string(event).unwrap_or_else(|e| format!("{{\"unserialisable\":\"{e}\"}}"));
    tracing::warn!(target: SECURITY, event = %json);
}
