//! Config sections for identity: `[jwt]` with `[[jwt.issuer]]`, and `[[api_key]]`. The proxy's config file
//! embeds these types; the `identity` module turns them into verifiers.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

/// What a route requires of a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    #[default]
    None,
    Jwt,
    ApiKey,
    JwtOrApiKey,
}

/// The `[jwt]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    #[serde(default)]
    pub issuer: Vec<JwtIssuerConfig>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Request header that carries the verified subject to the upstream. A client-sent header of this name is
    /// always removed.
    #[serde(default = "default_subject_header")]
    pub subject_header: String,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            issuer: Vec::new(),
            leeway: default_leeway(),
            subject_header: default_subject_header(),
        }
    }
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

fn default_subject_header() -> String {
    "x-authenticated-subject".to_owned()
}

/// One `[[jwt.issuer]]`: exactly one key source among `secret_env`, `public_key_file`, `jwks_file`,
/// `jwks_url`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuerConfig {
    /// Expected `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values; a token must name at least one.
    pub audiences: Vec<String>,
    /// Allowed `alg` values for this issuer; nothing else is ever accepted.
    pub algorithms: Vec<String>,
    /// Environment variable holding the HMAC secret.
    pub secret_env: Option<String>,
    /// PEM public key (RSA, EC or Ed25519).
    pub public_key_file: Option<PathBuf>,
    /// JWKS document on disk.
    pub jwks_file: Option<PathBuf>,
    /// JWKS URL, fetched at start, refreshed every `jwks_refresh` and on an unknown `kid`.
    pub jwks_url: Option<String>,
    #[serde(default = "default_jwks_refresh", with = "humantime_serde")]
    pub jwks_refresh: Duration,
}

fn default_jwks_refresh() -> Duration {
    Duration::from_mins(5)
}

/// One `[[api_key]]`: the key itself never appears in config, only its SHA-256.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Identity name reported for this key (logs, upstream subject header).
    pub identity: String,
    /// Lower-case hex SHA-256 of the key.
    pub sha256: String,
    /// Route names (or path prefixes) the key may be used on; empty means every route that accepts API keys.
    #[serde(default)]
    pub routes: Vec<String>,
}
