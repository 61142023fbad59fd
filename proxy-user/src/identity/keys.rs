//! Verification keys and the rule that ties each key to the algorithms it may verify.
//!
//! Key confusion (an RSA public key used as an HMAC secret, an HMAC secret used for an RS token) is stopped here
//! by construction: every key carries its [`KeyKind`], and [`KeySet::select`] hands out a key only for an
//! algorithm of that kind. HMAC keys come only from `secret_env`; JWKS `oct` keys are ignored, since a symmetric
//! secret published in a key set is a configuration mistake, not something to honour.

use std::{fmt, path::Path, str::FromStr as _};

use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse},
};

use crate::Error;

/// The kind of key material, which fixes the algorithms a key can verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Hmac,
    Rsa,
    /// P-256, for ES256.
    EcP256,
    /// P-384, for ES384.
    EcP384,
    /// Ed25519, for `EdDSA`.
    Ed25519,
}

impl KeyKind {
    /// Whether a key of this kind may verify `alg`. The single place that decides key/algorithm compatibility.
    pub(crate) fn verifies(self, alg: Algorithm) -> bool {
        use Algorithm as A;
        match self {
            Self::Hmac => matches!(alg, A::HS256 | A::HS384 | A::HS512),
            Self::Rsa => matches!(
                alg,
                A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512
            ),
            Self::EcP256 => alg == A::ES256,
            Self::EcP384 => alg == A::ES384,
            Self::Ed25519 => alg == A::EdDSA,
        }
    }
}

/// The family of `alg`, used to check an issuer's allow-list against its key source at config time.
pub(crate) fn is_hmac(alg: Algorithm) -> bool {
    KeyKind::Hmac.verifies(alg)
}

/// One verification key.
pub(crate) struct VerifyKey {
    pub kid: Option<String>,
    /// The JWK's own `alg`, when it pins one.
    pub alg: Option<Algorithm>,
    pub kind: KeyKind,
    pub key: DecodingKey,
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key itself stays out of logs (it is a secret for HMAC).
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Why no key could be picked for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SelectError {
    /// The token's `kid` names no key in the set (or names none and the set holds several candidates).
    UnknownKid,
    /// The key named by `kid` exists but cannot verify the token's `alg`: a confusion attempt.
    WrongAlgorithm,
}

/// An issuer's keys. Immutable; a JWKS refresh builds a new one.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    keys: Vec<VerifyKey>,
}

impl KeySet {
    pub(crate) fn new(keys: Vec<VerifyKey>) -> Self {
        Self { keys }
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(crate) fn contains_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Picks the key for a token. A token with a `kid` gets exactly that key; a token without one gets the only
    /// key able to verify its `alg`, and an ambiguous choice is refused rather than tried key by key.
    pub(crate) fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<&VerifyKey, SelectError> {
        let usable = |k: &&VerifyKey| k.kind.verifies(alg) && k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) if self.keys.iter().any(|k| k.kid.is_some()) => {
                let key = self
                    .keys
                    .iter()
                    .find(|k| k.kid.as_deref() == Some(kid))
                    .ok_or(SelectError::UnknownKid)?;
                if usable(&key) {
                    Ok(key)
                } else {
                    Err(SelectError::WrongAlgorithm)
                }
            }
            // A `kid` against a set of unnamed keys (secret, PEM): the kid is meaningless here, pick by alg.
            _ => {
                let mut candidates = self.keys.iter().filter(usable);
                match (candidates.next(), candidates.next()) {
                    (Some(key), None) => Ok(key),
                    (None, _) if self.keys.is_empty() => Err(SelectError::UnknownKid),
                    (None, _) => Err(SelectError::WrongAlgorithm),
                    (Some(_), Some(_)) => Err(SelectError::UnknownKid),
                }
            }
        }
    }
}

/// The HMAC key from an environment variable. RFC 7518 §3.2 asks for a key at least as long as the hash output,
/// so a short secret is refused for every HS algorithm it would be too short for.
pub(crate) fn hmac_from_env(var: &str, algorithms: &[Algorithm], at: &str) -> Result<KeySet, Error> {
    let secret = std::env::var_os(var)
        .ok_or_else(|| Error::Config(format!("{at}.secret_env: environment variable {var} is not set")))?;
    let secret = secret.as_encoded_bytes();
    for alg in algorithms {
        let min = match alg {
            Algorithm::HS384 => 48,
            Algorithm::HS512 => 64,
            _ => 32,
        };
        if secret.len() < min {
            return Err(Error::Config(format!(
                "{at}.secret_env: the secret in {var} is {} bytes; {alg:?} needs at least {min}",
                secret.len()
            )));
        }
    }
    Ok(KeySet::new(vec![VerifyKey {
        kid: None,
        alg: None,
        kind: KeyKind::Hmac,
        key: DecodingKey::from_secret(secret),
    }]))
}

/// A PEM public key (SPKI `PUBLIC KEY`, or PKCS#1 `RSA PUBLIC KEY`, or a certificate's key). Which parser applies
/// follows from the issuer's algorithms, which config checking has already limited to one key kind.
pub(crate) fn from_pem_file(path: &Path, algorithms: &[Algorithm], at: &str) -> Result<KeySet, Error> {
    let pem = std::fs::read(path)
        .map_err(|e| Error::io(format!("reading {at}.public_key_file {}", path.display()), e))?;
    let kind = single_asymmetric_kind(algorithms).ok_or_else(|| {
        Error::Config(format!(
            "{at}.algorithms: a public_key_file verifies one key type only; list algorithms of one family \
                 (RS*/PS*, ES256, ES384 or EdDSA)"
        ))
    })?;
    let key = match kind {
        KeyKind::Rsa => DecodingKey::from_rsa_pem(&pem),
        KeyKind::EcP256 | KeyKind::EcP384 => DecodingKey::from_ec_pem(&pem),
        KeyKind::Ed25519 => DecodingKey::from_ed_pem(&pem),
        KeyKind::Hmac => {
            return Err(Error::Config(format!(
                "{at}: HS algorithms take secret_env, not public_key_file"
            )));
        }
    }
    .map_err(|e| {
        Error::Config(format!(
            "{at}.public_key_file {}: not a {kind:?} public key in PEM form ({e})",
            path.display()
        ))
    })?;
    Ok(KeySet::new(vec![VerifyKey {
        kid: None,
        alg: None,
        kind,
        key,
    }]))
}

/// The one asymmetric key kind every algorithm in `algorithms` needs, if there is one.
fn single_asymmetric_kind(algorithms: &[Algorithm]) -> Option<KeyKind> {
    let kinds = [KeyKind::Rsa, KeyKind::EcP256, KeyKind::EcP384, KeyKind::Ed25519];
    kinds
        .into_iter()
        .find(|kind| !algorithms.is_empty() && algorithms.iter().all(|alg| kind.verifies(*alg)))
}

/// Upper bound on a JWKS document, fetched or read; real ones are a few KiB.
pub(crate) const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Upper bound on the keys kept from one JWKS.
const MAX_JWKS_KEYS: usize = 64;

/// Parses a JWKS document, keeping the signature keys this proxy can use and logging the rest. A document that
/// is not a JWKS at all is an error; one with no usable key is an error too, since it could verify nothing.
pub(crate) fn parse_jwks(doc: &[u8], what: &str) -> Result<KeySet, String> {
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    if doc.len() > MAX_JWKS_BYTES {
        return Err(format!("{what}: JWKS larger than {MAX_JWKS_BYTES} bytes"));
    }
    let raw: RawSet =
        serde_json::from_slice(doc).map_err(|e| format!("{what}: not a JWKS document ({e})"))?;
    let mut keys = Vec::new();
    for (i, value) in raw.keys.into_iter().enumerate() {
        if keys.len() == MAX_JWKS_KEYS {
            tracing::warn!(
                jwks = what,
                "JWKS holds more than {MAX_JWKS_KEYS} keys; the rest are ignored"
            );
            break;
        }
        match jwk_to_key(value) {
            Ok(key) => keys.push(key),
            Err(why) => tracing::warn!(jwks = what, index = i, "JWKS key ignored: {why}"),
        }
    }
    if keys.is_empty() {
        return Err(format!(
            "{what}: JWKS holds no usable signature key (RSA, EC P-256/P-384 or Ed25519)"
        ));
    }
    Ok(KeySet::new(keys))
}

fn jwk_to_key(value: serde_json::Value) -> Result<VerifyKey, String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| format!("not a JWK ({e})"))?;
    if let Some(usage) = &jwk.common.public_key_use
        && *usage != PublicKeyUse::Signature
    {
        return Err("`use` is not `sig`".to_owned());
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyKind::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyKind::EcP256,
            EllipticCurve::P384 => KeyKind::EcP384,
            _ => return Err("unsupported EC curve".to_owned()),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => KeyKind::Ed25519,
        AlgorithmParameters::OctetKeyPair(_) => return Err("unsupported OKP curve".to_owned()),
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (`oct`) key: HMAC secrets are configured with secret_env only".to_owned());
        }
        _ => return Err("unsupported key type".to_owned()),
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a) => {
            let alg = Algorithm::from_str(&a.to_string())
                .map_err(|_| format!("`alg` {a} is not a signature algorithm"))?;
            if !kind.verifies(alg) {
                return Err(format!("`alg` {alg:?} does not match the key type {kind:?}"));
            }
            Some(alg)
        }
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("bad key material ({e})"))?;
    Ok(VerifyKey {
        kid: jwk.common.key_id,
        alg,
        kind,
        key,
    })
}

/// Reads a JWKS file at start.
pub(crate) fn from_jwks_file(path: &Path, at: &str) -> Result<KeySet, Error> {
    let doc = std::fs::read(path)
        .map_err(|e| Error::io(format!("reading {at}.jwks_file {}", path.display()), e))?;
    parse_jwks(&doc, &format!("{at}.jwks_file {}", path.display())).map_err(Error::Config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: Option<&str>, kind: KeyKind) -> VerifyKey {
        VerifyKey {
            kid: id.map(str::to_owned),
            alg: None,
            kind,
            key: DecodingKey::from_secret(b"x"),
        }
    }

    #[test]
    fn selection_never_crosses_key_kinds() {
        let set = KeySet::new(vec![
            key(Some("r"), KeyKind::Rsa),
            key(Some("e"), KeyKind::EcP256),
        ]);
        assert_eq!(
            set.select(Some("r"), Algorithm::RS256).map(|k| k.kind),
            Ok(KeyKind::Rsa)
        );
        assert_eq!(
            set.select(Some("r"), Algorithm::HS256).map(|k| k.kind),
            Err(SelectError::WrongAlgorithm)
        );
        assert_eq!(
            set.select(Some("e"), Algorithm::ES384).map(|k| k.kind),
            Err(SelectError::WrongAlgorithm)
        );
        assert_eq!(
            set.select(Some("zz"), Algorithm::RS256).map(|k| k.kind),
            Err(SelectError::UnknownKid)
        );
        // No kid: the only RSA key is unambiguous.
        assert_eq!(
            set.select(None, Algorithm::PS256).map(|k| k.kind),
            Ok(KeyKind::Rsa)
        );
        let two = KeySet::new(vec![key(Some("a"), KeyKind::Rsa), key(Some("b"), KeyKind::Rsa)]);
        assert_eq!(
            two.select(None, Algorithm::RS256).map(|k| k.kind),
            Err(SelectError::UnknownKid)
        );
        let secret = KeySet::new(vec![key(None, KeyKind::Hmac)]);
        assert_eq!(
            secret.select(Some("any"), Algorithm::HS256).map(|k| k.kind),
            Ok(KeyKind::Hmac)
        );
        assert_eq!(
            secret.select(None, Algorithm::RS256).map(|k| k.kind),
            Err(SelectError::WrongAlgorithm)
        );
    }

    #[test]
    fn jwks_drops_symmetric_and_mismatched_keys() {
        let doc = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0","kid":"h"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"ed","alg":"RS256"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"ok","use":"sig"}
        ]}"#;
        let set = parse_jwks(doc, "test").unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.contains_kid("ok"));
        assert!(parse_jwks(br#"{"keys":[{"kty":"oct","k":"AAAA"}]}"#, "t").is_err());
        assert!(parse_jwks(b"[]", "t").is_err());
    }
}
