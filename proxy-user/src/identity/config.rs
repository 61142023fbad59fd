//! Config sections for identity: `[jwt]` with `[[jwt.issuer]]`, and `[[api_key]]`. The proxy's config file
//! embeds these types; the `identity` module turns them into verifiers.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Deserializer};

/// A JWS algorithm name as it appears in config and in a token's `alg`. `none` has no variant, so it can never
/// be allowed.
pub use jsonwebtoken::Algorithm;

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
/// `jwks_url`. HS algorithms go with `secret_env` and nothing else, so a public key can never be used as an HMAC
/// secret; the combination is checked when the verifier is built.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtIssuerConfig {
    /// Expected `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values; a token must name at least one.
    pub audiences: Vec<String>,
    /// Allowed `alg` values for this issuer; nothing else is ever accepted.
    pub algorithms: Vec<Algorithm>,
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
    /// Least time between two fetches of `jwks_url`, so tokens with made-up `kid`s cannot make us hammer the
    /// identity provider.
    #[serde(default = "default_jwks_min_refresh", with = "humantime_serde")]
    pub jwks_min_refresh: Duration,
    /// Budget for one JWKS fetch (connect, TLS, response).
    #[serde(default = "default_jwks_timeout", with = "humantime_serde")]
    pub jwks_timeout: Duration,
    /// PEM CA bundle trusted for an `https` `jwks_url` instead of the system roots (private PKI).
    pub jwks_ca_file: Option<PathBuf>,
    /// Allows a plain `http` `jwks_url` on a non-loopback host, where anyone on the path could swap the keys.
    #[serde(default)]
    pub danger_allow_plain_http_jwks: bool,
}

fn default_jwks_refresh() -> Duration {
    Duration::from_mins(5)
}

fn default_jwks_min_refresh() -> Duration {
    Duration::from_secs(30)
}

fn default_jwks_timeout() -> Duration {
    Duration::from_secs(5)
}

/// One `[[api_key]]`: the key itself never appears in config, only its SHA-256.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Identity name reported for this key (logs, upstream subject header).
    pub identity: String,
    /// Hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    pub sha256: Sha256Digest,
    /// Route names (or path prefixes) the key may be used on; empty means every route that accepts API keys.
    #[serde(default)]
    pub routes: Vec<String>,
}

/// A SHA-256 digest, written in config as 64 hex characters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sha256Digest(pub [u8; 32]);

impl std::fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A digest of a weak key can be brute-forced; keep it out of debug dumps of the config.
        f.write_str("Sha256Digest(..)")
    }
}

impl std::str::FromStr for Sha256Digest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0_u8; 32];
        hex::decode_to_slice(s.trim(), &mut out).map_err(|_| {
            "expected the key's SHA-256 as 64 hex characters (`printf %s \"$KEY\" | sha256sum`)".to_owned()
        })?;
        Ok(Self(out))
    }
}

impl<'de> Deserialize<'de> for Sha256Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
