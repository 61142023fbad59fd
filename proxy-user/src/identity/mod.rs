//! Identity: JWT and API-key checks. `config` holds the typed config sections the proxy's config embeds.

pub mod config;
