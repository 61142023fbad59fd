//! API keys: the config holds only each key's SHA-256, so a leaked config file leaks no key. A presented key is
//! hashed and compared with every configured digest in constant time, without stopping at the first match, so
//! the time taken says nothing about how close a guess was or which entry matched.

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::config::ApiKeyConfig;
use crate::{
    Error,
    event::{Identity, IdentityKind},
};

/// Presented keys longer than this are refused unhashed.
pub(crate) const MAX_API_KEY_BYTES: usize = 1024;

pub(crate) struct ApiKeys {
    entries: Vec<Entry>,
}

struct Entry {
    digest: [u8; 32],
    identity: Identity,
    routes: Vec<String>,
}

/// Outcome of checking a presented key against a route.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ApiKeyCheck {
    Allowed(Identity),
    UnknownKey,
    /// The key is valid but not for this route.
    RouteNotAllowed(Identity),
}

impl ApiKeys {
    pub(crate) fn from_config(cfg: &[ApiKeyConfig]) -> Result<Self, Error> {
        let mut entries: Vec<Entry> = Vec::with_capacity(cfg.len());
        for (i, key) in cfg.iter().enumerate() {
            let at = format!("api_key[{i}]");
            if key.identity.is_empty() || http::HeaderValue::from_str(&key.identity).is_err() {
                return Err(Error::Config(format!(
                    "{at}.identity: must be non-empty printable ASCII (it is forwarded in a header)"
                )));
            }
            if let Some(j) = entries.iter().position(|e| e.digest == key.sha256.0) {
                return Err(Error::Config(format!(
                    "{at}.sha256: the same key as api_key[{j}]"
                )));
            }
            entries.push(Entry {
                digest: key.sha256.0,
                identity: Identity::new(IdentityKind::ApiKey, key.identity.as_str(), None),
                routes: key.routes.clone(),
            });
        }
        Ok(Self { entries })
    }

    pub(crate) fn check(&self, presented: &[u8], route: &str) -> ApiKeyCheck {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for entry in &self.entries {
            let equal: bool = entry.digest.ct_eq(&digest).into();
            if equal && found.is_none() {
                found = Some(entry);
            }
        }
        let Some(entry) = found else {
            return ApiKeyCheck::UnknownKey;
        };
        let identity = entry.identity.clone();
        if entry.routes.is_empty() || entry.routes.iter().any(|r| r == route) {
            ApiKeyCheck::Allowed(identity)
        } else {
            ApiKeyCheck::RouteNotAllowed(identity)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::config::Sha256Digest;

    fn cfg(key: &str, identity: &str, routes: &[&str]) -> ApiKeyConfig {
        ApiKeyConfig {
            identity: identity.into(),
            sha256: hex::encode(Sha256::digest(key.as_bytes()))
                .parse::<Sha256Digest>()
                .unwrap(),
            routes: routes.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    #[test]
    fn keys_match_by_digest_and_route() {
        let keys =
            ApiKeys::from_config(&[cfg("k-one", "billing", &["/orders"]), cfg("k-two", "ops", &[])]).unwrap();
        let who = |s: &str| Identity::new(IdentityKind::ApiKey, s, None);
        assert_eq!(
            keys.check(b"k-one", "/orders"),
            ApiKeyCheck::Allowed(who("billing"))
        );
        assert_eq!(
            keys.check(b"k-one", "/admin"),
            ApiKeyCheck::RouteNotAllowed(who("billing"))
        );
        assert_eq!(keys.check(b"k-two", "/admin"), ApiKeyCheck::Allowed(who("ops")));
        assert_eq!(keys.check(b"k-three", "/orders"), ApiKeyCheck::UnknownKey);
        assert_eq!(keys.check(b"", "/orders"), ApiKeyCheck::UnknownKey);
    }

    #[test]
    fn duplicate_keys_and_bad_digests_are_refused() {
        assert!(ApiKeys::from_config(&[cfg("a", "x", &[]), cfg("a", "y", &[])]).is_err());
        assert!("abc".parse::<Sha256Digest>().is_err());
        assert!("zz".repeat(32).parse::<Sha256Digest>().is_err());
        assert!("AB".repeat(32).parse::<Sha256Digest>().is_ok());
    }
}
