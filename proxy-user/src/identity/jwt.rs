//! JWT verification: pick the issuer by the token's `iss`, check `alg` against that issuer's allow-list, pick the
//! key by `kid` among that issuer's keys only, then let `jsonwebtoken` check the signature and the registered
//! claims.
//!
//! The header and claims are read unverified first only to choose the issuer and key and to classify failures;
//! nothing from them is trusted until `jsonwebtoken::decode` has checked the signature.

use std::{
    num::NonZeroUsize,
    str::FromStr as _,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, Validation, errors::ErrorKind};
use rustc_hash::FxHashMap;
use serde::Deserialize;

use super::{
    config::{JwtConfig, JwtIssuerConfig},
    keys::{self, KeySet, SelectError},
    remote::RemoteJwks,
};
use crate::{
    Error,
    event::{AuthFailure, Identity, IdentityKind},
};

/// Tokens longer than this are refused before any decoding. Real tokens are well under 4 KiB.
pub(crate) const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Bound on `sub`, which is forwarded upstream in a header.
const MAX_SUBJECT_BYTES: usize = 512;

pub(crate) struct JwtVerifier {
    /// Keyed by configured names only, so a fast unkeyed hash is safe (every request with a cached token looks
    /// its issuer up).
    issuers: FxHashMap<String, Issuer>,
    verified: VerifiedTokens,
}

struct Issuer {
    name: String,
    /// The allow-list: one ready `Validation` per allowed algorithm, built once rather than per token.
    allowed: Vec<(Algorithm, Validation)>,
    keys: IssuerKeys,
}

enum IssuerKeys {
    Static(Arc<KeySet>),
    Remote(Arc<RemoteJwks>),
}

/// A verified token.
#[derive(Debug, Clone)]
pub(crate) struct Verified {
    pub identity: Identity,
    /// Shared: a cached verification hands out clones on every request.
    pub scopes: Arc<[String]>,
}

/// A rejected token: the failure kind, the subject when the signature was good, and a reason for debug logs
/// (never the token).
#[derive(Debug)]
pub(crate) struct Rejected {
    pub kind: AuthFailure,
    pub identity: Option<Identity>,
    pub reason: String,
}

fn reject(kind: AuthFailure, reason: impl Into<String>) -> Rejected {
    Rejected {
        kind,
        identity: None,
        reason: reason.into(),
    }
}

#[derive(Deserialize)]
struct UnverifiedHeader {
    alg: String,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct UnverifiedClaims {
    iss: Option<String>,
    sub: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

impl ScopeClaim {
    fn push_into(self, out: &mut Vec<String>) {
        match self {
            Self::Text(s) => out.extend(s.split_ascii_whitespace().map(str::to_owned)),
            Self::List(l) => out.extend(l),
        }
    }
}

/// The claims kept after verification; the registered ones are checked by `jsonwebtoken`'s `Validation`.
#[derive(Deserialize)]
struct VerifiedClaims {
    sub: String,
    iss: String,
    /// Seconds since the epoch; JWT allows fractions.
    exp: Option<f64>,
    scope: Option<ScopeClaim>,
    scp: Option<ScopeClaim>,
    scopes: Option<ScopeClaim>,
}

impl JwtVerifier {
    pub(crate) fn from_config(cfg: &JwtConfig) -> Result<Self, Error> {
        let mut issuers = FxHashMap::default();
        for (i, issuer) in cfg.issuer.iter().enumerate() {
            let at = format!("jwt.issuer[{i}]");
            let built = Issuer::from_config(issuer, cfg.leeway.as_secs(), &at)?;
            if issuers.insert(built.name.clone(), built).is_some() {
                return Err(Error::Config(format!(
                    "{at}.issuer: {:?} is configured twice",
                    issuer.issuer
                )));
            }
        }
        Ok(Self {
            issuers,
            verified: VerifiedTokens::new(),
        })
    }

    pub(crate) fn remotes(&self) -> impl Iterator<Item = &Arc<RemoteJwks>> {
        self.issuers.values().filter_map(|i| match &i.keys {
            IssuerKeys::Remote(r) => Some(r),
            IssuerKeys::Static(_) => None,
        })
    }

    pub(crate) async fn verify(&self, token: &str) -> Result<Verified, Rejected> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(reject(AuthFailure::Malformed, "token too long"));
        }
        if let Some(verified) = self
            .verified
            .get(token, |issuer| self.issuers.get(issuer).map(Issuer::current_keys))
        {
            return Ok(verified);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(_sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(reject(AuthFailure::Malformed, "not three dot-separated parts"));
        };
        let header: UnverifiedHeader = decode_part(header, "header")?;
        if header.crit.is_some() {
            // RFC 7515 §4.1.11: critical extensions we do not implement make the token invalid.
            return Err(reject(AuthFailure::Malformed, "`crit` header present"));
        }
        let Ok(alg) = Algorithm::from_str(&header.alg) else {
            return Err(reject(
                AuthFailure::AlgorithmNotAllowed,
                format!("alg {:?} is never accepted", header.alg),
            ));
        };
        let claims: UnverifiedClaims = decode_part(payload, "claims")?;
        let Some(iss) = claims.iss else {
            return Err(reject(AuthFailure::UnknownIssuer, "no `iss` claim"));
        };
        let Some(issuer) = self.issuers.get(&iss) else {
            return Err(reject(
                AuthFailure::UnknownIssuer,
                format!("issuer {iss:?} is not configured"),
            ));
        };
        let Some((_, validation)) = issuer.allowed.iter().find(|(allowed, _)| *allowed == alg) else {
            return Err(reject(
                AuthFailure::AlgorithmNotAllowed,
                format!("alg {alg:?} not allowed for {iss:?}"),
            ));
        };
        let keys = issuer.keys_for(header.kid.as_deref()).await;
        let key = keys.select(header.kid.as_deref(), alg).map_err(|e| match e {
            SelectError::UnknownKid => reject(
                AuthFailure::UnknownKeyId,
                format!("no key {:?} for {iss:?}", header.kid),
            ),
            SelectError::WrongAlgorithm => reject(
                AuthFailure::AlgorithmNotAllowed,
                format!("key {:?} of {iss:?} cannot verify {alg:?}", header.kid),
            ),
        })?;

        // Past this point the signature has been checked whenever the error is a claim error, so the subject
        // is known, not merely claimed.
        let signed_identity = || {
            claims
                .sub
                .as_deref()
                .map(|sub| Identity::new(IdentityKind::Jwt, sub, Some(issuer.name.as_str().into())))
        };
        let data = jsonwebtoken::decode::<VerifiedClaims>(token, &key.key, validation).map_err(|e| {
            let (kind, signed) = classify(e.kind());
            Rejected {
                kind,
                identity: if signed { signed_identity() } else { None },
                reason: e.to_string(),
            }
        })?;

        let claims = data.claims;
        if claims.sub.is_empty()
            || claims.sub.len() > MAX_SUBJECT_BYTES
            || http::HeaderValue::from_bytes(claims.sub.as_bytes()).is_err()
        {
            return Err(reject(
                AuthFailure::Malformed,
                "`sub` is empty, too long or not header-safe",
            ));
        }
        let mut scopes = Vec::new();
        for claim in [claims.scope, claims.scp, claims.scopes].into_iter().flatten() {
            claim.push_into(&mut scopes);
        }
        let verified = Verified {
            identity: Identity::new(IdentityKind::Jwt, claims.sub, Some(claims.iss.into())),
            scopes: scopes.into(),
        };
        if let Some(exp) = claims.exp {
            #[expect(
                clippy::cast_precision_loss,
                reason = "a leeway of 2^52 seconds is not a configuration"
            )]
            let until = exp + validation.leeway as f64;
            self.verified.insert(token, &issuer.name, &verified, until, keys);
        }
        Ok(verified)
    }
}

/// Maps a `jsonwebtoken` error to a failure kind, and says whether the signature had been checked by then
/// (`decode` checks it before any claim).
fn classify(error: &ErrorKind) -> (AuthFailure, bool) {
    match error {
        ErrorKind::InvalidSignature => (AuthFailure::BadSignature, false),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat | ErrorKind::MissingAlgorithm => {
            (AuthFailure::AlgorithmNotAllowed, false)
        }
        ErrorKind::ExpiredSignature => (AuthFailure::Expired, true),
        ErrorKind::ImmatureSignature => (AuthFailure::NotYetValid, true),
        ErrorKind::InvalidAudience => (AuthFailure::WrongAudience, true),
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => (AuthFailure::WrongAudience, true),
        ErrorKind::InvalidIssuer => (AuthFailure::UnknownIssuer, true),
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) | ErrorKind::Json(_) => {
            (AuthFailure::Malformed, true)
        }
        _ => (AuthFailure::Malformed, false),
    }
}

/// What `jsonwebtoken` checks for a token of `alg` from `issuer`: exactly that algorithm, the issuer, an
/// audience, and `exp`/`nbf` with leeway; `exp` and `sub` must be present.
fn validation(alg: Algorithm, issuer: &str, audiences: &[String], leeway_secs: u64) -> Validation {
    let mut validation = Validation::new(alg);
    validation.algorithms = vec![alg];
    validation.leeway = leeway_secs;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_issuer(&[issuer]);
    validation.set_audience(audiences);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation
}

fn decode_part<T: for<'de> Deserialize<'de>>(part: &str, what: &str) -> Result<T, Rejected> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| reject(AuthFailure::Malformed, format!("{what} is not base64url")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| reject(AuthFailure::Malformed, format!("{what} is not valid JSON: {e}")))
}

impl Issuer {
    fn from_config(cfg: &JwtIssuerConfig, leeway_secs: u64, at: &str) -> Result<Self, Error> {
        if cfg.issuer.is_empty() {
            return Err(Error::Config(format!("{at}.issuer: must not be empty")));
        }
        if cfg.audiences.is_empty() || cfg.audiences.iter().any(String::is_empty) {
            return Err(Error::Config(format!(
                "{at}.audiences: list at least one non-empty audience"
            )));
        }
        if cfg.algorithms.is_empty() {
            return Err(Error::Config(format!(
                "{at}.algorithms: list at least one algorithm"
            )));
        }
        let sources = [
            cfg.secret_env.is_some(),
            cfg.public_key_file.is_some(),
            cfg.jwks_file.is_some(),
            cfg.jwks_url.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(Error::Config(format!(
                "{at}: set exactly one of secret_env, public_key_file, jwks_file, jwks_url"
            )));
        }
        let hmac = cfg.algorithms.iter().filter(|a| keys::is_hmac(**a)).count();
        match (cfg.secret_env.is_some(), hmac) {
            (true, n) if n != cfg.algorithms.len() => {
                return Err(Error::Config(format!(
                    "{at}.algorithms: secret_env verifies HS256/HS384/HS512 only; an HMAC secret is never used for \
                     public-key algorithms"
                )));
            }
            (false, n) if n > 0 => {
                return Err(Error::Config(format!(
                    "{at}.algorithms: HS algorithms need secret_env; a public key is never used as an HMAC secret"
                )));
            }
            _ => {}
        }
        let keys = if let Some(var) = &cfg.secret_env {
            IssuerKeys::Static(Arc::new(keys::hmac_from_env(var, &cfg.algorithms, at)?))
        } else if let Some(path) = &cfg.public_key_file {
            IssuerKeys::Static(Arc::new(keys::from_pem_file(path, &cfg.algorithms, at)?))
        } else if let Some(path) = &cfg.jwks_file {
            IssuerKeys::Static(Arc::new(keys::from_jwks_file(path, at)?))
        } else if let Some(url) = &cfg.jwks_url {
            IssuerKeys::Remote(Arc::new(RemoteJwks::new(url, cfg, at)?))
        } else {
            return Err(Error::Config(format!("{at}: no key source")));
        };
        let allowed = cfg
            .algorithms
            .iter()
            .map(|alg| (*alg, validation(*alg, &cfg.issuer, &cfg.audiences, leeway_secs)))
            .collect();
        Ok(Self {
            name: cfg.issuer.clone(),
            allowed,
            keys,
        })
    }

    /// The key set in force now, without fetching: what a cached verification is checked against.
    fn current_keys(&self) -> Arc<KeySet> {
        match &self.keys {
            IssuerKeys::Static(set) => Arc::clone(set),
            IssuerKeys::Remote(remote) => remote.keys(),
        }
    }

    /// The key set to pick from; for a remote JWKS lacking the token's `kid`, after a (rate-limited) refresh.
    async fn keys_for(&self, kid: Option<&str>) -> Arc<KeySet> {
        match &self.keys {
            IssuerKeys::Static(set) => Arc::clone(set),
            IssuerKeys::Remote(remote) => {
                let set = remote.keys();
                let needs_refresh = match kid {
                    Some(kid) => !set.contains_kid(kid),
                    // Only the very first token before any fetch: nothing to choose from yet.
                    None => set.len() == 0,
                };
                if needs_refresh {
                    remote.refresh_for_kid(kid.unwrap_or_default()).await;
                    remote.keys()
                } else {
                    set
                }
            }
        }
    }
}

/// Tokens whose signature and claims have been verified, so a client that sends the same token with every
/// request pays for its signature once (HMAC or public-key math, two base64 and JSON decodings: 5–10 µs).
///
/// Only tokens that passed every check are kept, keyed by the whole token (a different byte is a different
/// token). A hit still honours `exp` (with the issuer's leeway), and is dropped when the issuer's key set is
/// no longer the one that verified it (a JWKS refresh retires keys) or after [`Self::MAX_AGE`]. Per-route
/// checks (scopes, route lists) are not cached: they run on every request. A config reload builds a new
/// verifier, with an empty cache.
struct VerifiedTokens {
    shards: Box<[Shard]>,
}

type Shard = Mutex<lru::LruCache<Box<str>, CachedToken>>;

struct CachedToken {
    verified: Verified,
    issuer: String,
    keys: Arc<KeySet>,
    /// The earlier of `exp` plus leeway and [`VerifiedTokens::MAX_AGE`] after caching, on the monotonic clock:
    /// a hit then costs one clock read.
    fresh_until: Instant,
}

impl VerifiedTokens {
    const SHARDS: usize = 16;
    const PER_SHARD: usize = 1024;
    /// How long a verification is trusted without redoing it, whatever `exp` says.
    const MAX_AGE: Duration = Duration::from_mins(1);

    fn new() -> Self {
        let capacity = NonZeroUsize::new(Self::PER_SHARD).unwrap_or(NonZeroUsize::MIN);
        Self {
            shards: (0..Self::SHARDS)
                .map(|_| Mutex::new(lru::LruCache::new(capacity)))
                .collect(),
        }
    }

    /// The shard by the signature's last character: signatures are uniformly random.
    fn shard(&self, token: &str) -> &Shard {
        let last = token.as_bytes().last().copied().unwrap_or_default();
        &self.shards[usize::from(last) % self.shards.len()]
    }

    fn now() -> f64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }

    /// When a verification cached now, for a token valid until `valid_until` (seconds since the epoch), stops
    /// being trusted.
    fn fresh_until(valid_until: f64) -> Instant {
        let left = Duration::try_from_secs_f64(valid_until - Self::now()).unwrap_or(Duration::ZERO);
        Instant::now() + left.min(Self::MAX_AGE)
    }

    /// A still-valid verification of `token`; `current_keys` gives the key set in force for an issuer.
    fn get(&self, token: &str, current_keys: impl Fn(&str) -> Option<Arc<KeySet>>) -> Option<Verified> {
        let mut shard = self.shard(token).lock().unwrap_or_else(PoisonError::into_inner);
        let entry = shard.get(token)?;
        let fresh = Instant::now() < entry.fresh_until
            && current_keys(&entry.issuer).is_some_and(|keys| Arc::ptr_eq(&keys, &entry.keys));
        if fresh {
            Some(entry.verified.clone())
        } else {
            shard.pop(token);
            None
        }
    }

    fn insert(&self, token: &str, issuer: &str, verified: &Verified, valid_until: f64, keys: Arc<KeySet>) {
        let entry = CachedToken {
            verified: verified.clone(),
            issuer: issuer.to_owned(),
            keys,
            fresh_until: Self::fresh_until(valid_until),
        };
        self.shard(token)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put(token.into(), entry);
    }
}
