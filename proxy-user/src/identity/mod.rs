//! Identity: who is calling, checked from a JWT or an API key, and whether that caller may use the route.
//!
//! `config` holds the typed config sections the proxy's config embeds. [`Authenticator`] is built from them once
//! per config generation and answers one question per request: [`Authenticator::authenticate`]. Every failure
//! becomes an [`AuthRejection`] that carries what the response, the security log and the risk engine need, and
//! nothing of the credential itself.

pub mod config;

mod api_key;
mod jwt;
mod keys;
mod remote;

use std::{
    fmt,
    net::IpAddr,
    sync::{Arc, Weak},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header::AUTHORIZATION};

pub use self::config::{ApiKeyConfig, AuthMode, JwtConfig, JwtIssuerConfig};
use self::{
    api_key::{ApiKeyCheck, ApiKeys, MAX_API_KEY_BYTES},
    jwt::{JwtVerifier, Rejected},
    remote::{RefreshError, RemoteJwks},
};
use crate::{
    Error,
    event::{AuthFailure, EventKind, Evidence, Identity, SecurityEvent, Severity},
};

/// The header an API key is sent in (also accepted as `Authorization: ApiKey KEY`).
pub const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");

const LOCATION_AUTHORIZATION: &str = "header:authorization";
const LOCATION_API_KEY: &str = "header:x-api-key";

/// What one route asks of a request.
#[derive(Debug, Clone, Copy)]
pub struct RouteAuth<'a> {
    pub mode: AuthMode,
    /// The route's name or path prefix; API keys list the routes they may use by this string.
    pub route: &'a str,
    /// Scopes a JWT must grant, all of them. API keys are authorised by route instead.
    pub scopes: &'a [String],
}

/// A refused request: the status to answer, and the security-event material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRejection {
    /// 401 when the caller is not authenticated, 403 when it is but may not do this.
    pub status: StatusCode,
    pub event_kind: AuthFailure,
    /// Set once the credential itself was proven good (signature checked or key matched).
    pub identity: Option<Identity>,
    pub evidence: Evidence,
}

impl AuthRejection {
    fn new(kind: AuthFailure, identity: Option<Identity>, location: &str) -> Self {
        let status = match kind {
            AuthFailure::MissingScope | AuthFailure::RouteNotAllowed => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        };
        // The excerpt is the credential's location, which `Evidence::new` redacts: the rule id says what failed.
        let evidence = Evidence::new(format!("auth.{}", failure_name(kind)), location, "");
        Self {
            status,
            event_kind: kind,
            identity,
            evidence,
        }
    }

    /// How much this failure says about intent: a forged `alg` or a bad signature is an attack, an expired
    /// token is usually a slow client.
    #[must_use]
    pub fn severity(&self) -> Severity {
        match self.event_kind {
            AuthFailure::Missing | AuthFailure::Expired | AuthFailure::NotYetValid => Severity::Notice,
            AuthFailure::Malformed
            | AuthFailure::UnknownKeyId
            | AuthFailure::UnknownIssuer
            | AuthFailure::WrongAudience
            | AuthFailure::MissingScope
            | AuthFailure::RouteNotAllowed => Severity::Warning,
            AuthFailure::BadSignature | AuthFailure::UnknownApiKey => Severity::Error,
            AuthFailure::AlgorithmNotAllowed => Severity::Critical,
        }
    }

    /// The security event for this rejection.
    #[must_use]
    pub fn to_event(
        &self,
        source: IpAddr,
        route: Option<String>,
        request_id: Option<String>,
    ) -> SecurityEvent {
        SecurityEvent {
            at: SystemTime::now(),
            source,
            identity: self.identity.clone(),
            route,
            request_id,
            kind: EventKind::Auth(self.event_kind),
            severity: self.severity(),
            evidence: vec![self.evidence.clone()],
        }
    }

    /// The response body: the status class only. Which check failed stays in the security log, so a caller
    /// probing for valid issuers, key ids or audiences learns nothing.
    #[must_use]
    pub fn json_body(&self) -> Bytes {
        if self.status == StatusCode::FORBIDDEN {
            Bytes::from_static(
                br#"{"error":"forbidden","message":"the credentials do not permit this request"}"#,
            )
        } else {
            Bytes::from_static(br#"{"error":"unauthorized","message":"valid credentials are required"}"#)
        }
    }

    /// `WWW-Authenticate` for a 401 (RFC 9110 §15.5.2 requires one), without error details.
    #[must_use]
    pub fn www_authenticate(&self) -> Option<HeaderValue> {
        (self.status == StatusCode::UNAUTHORIZED)
            .then(|| HeaderValue::from_static(r#"Bearer realm="rasp-proxy""#))
    }
}

impl fmt::Display for AuthRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.evidence.rule_id, self.status)
    }
}

/// The stable name of a failure kind, as used in rule ids and metrics labels.
#[must_use]
pub fn failure_name(kind: AuthFailure) -> &'static str {
    match kind {
        AuthFailure::Missing => "missing",
        AuthFailure::Malformed => "malformed",
        AuthFailure::BadSignature => "bad_signature",
        AuthFailure::AlgorithmNotAllowed => "algorithm_not_allowed",
        AuthFailure::UnknownKeyId => "unknown_key_id",
        AuthFailure::UnknownIssuer => "unknown_issuer",
        AuthFailure::Expired => "expired",
        AuthFailure::NotYetValid => "not_yet_valid",
        AuthFailure::WrongAudience => "wrong_audience",
        AuthFailure::MissingScope => "missing_scope",
        AuthFailure::UnknownApiKey => "unknown_api_key",
        AuthFailure::RouteNotAllowed => "route_not_allowed",
    }
}

/// The credential a request carries.
enum Credential<'a> {
    Bearer(&'a str),
    /// The key, and the header it came in.
    ApiKey(&'a [u8], &'static str),
}

/// Checks JWTs and API keys for one config generation. Cheap to share in an `Arc`.
pub struct Authenticator {
    jwt: JwtVerifier,
    api_keys: ApiKeys,
    subject_header: HeaderName,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("subject_header", &self.subject_header)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Loads every key source that is local (env secrets, PEM and JWKS files) and checks each issuer's
    /// algorithms against its key source. A `jwks_url` is fetched later, inside the runtime: see
    /// [`Self::spawn_jwks_refresh`] and [`Self::refresh_jwks_now`].
    pub fn from_config(jwt: &JwtConfig, api_keys: &[ApiKeyConfig]) -> Result<Self, Error> {
        let subject_header = HeaderName::from_bytes(jwt.subject_header.as_bytes()).map_err(|_| {
            Error::Config(format!(
                "jwt.subject_header: {:?} is not a header name",
                jwt.subject_header
            ))
        })?;
        if subject_header == AUTHORIZATION
            || subject_header == API_KEY_HEADER
            || subject_header == http::header::HOST
        {
            return Err(Error::Config(format!(
                "jwt.subject_header: {subject_header} is reserved"
            )));
        }
        Ok(Self {
            jwt: JwtVerifier::from_config(jwt)?,
            api_keys: ApiKeys::from_config(api_keys)?,
            subject_header,
        })
    }

    /// The header that carries the verified subject upstream. The proxy removes any client-sent header of this
    /// name on every route, authenticated or not.
    #[must_use]
    pub fn subject_header(&self) -> &HeaderName {
        &self.subject_header
    }

    /// Checks a request against a route. `Ok(None)` for `AuthMode::None`; `Ok(Some(identity))` when the
    /// credential is good and allowed here.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        route: &RouteAuth<'_>,
    ) -> Result<Option<Identity>, AuthRejection> {
        let (accept_jwt, accept_key) = match route.mode {
            AuthMode::None => return Ok(None),
            AuthMode::Jwt => (true, false),
            AuthMode::ApiKey => (false, true),
            AuthMode::JwtOrApiKey => (true, true),
        };
        let credential = match credential(headers)
            .map_err(|location| AuthRejection::new(AuthFailure::Malformed, None, location))?
        {
            Some(c @ Credential::Bearer(_)) if accept_jwt => c,
            Some(c @ Credential::ApiKey(..)) if accept_key => c,
            // A credential of a kind this route does not take counts as none.
            _ => {
                let location = if accept_jwt {
                    LOCATION_AUTHORIZATION
                } else {
                    LOCATION_API_KEY
                };
                return Err(AuthRejection::new(AuthFailure::Missing, None, location));
            }
        };
        match credential {
            Credential::Bearer(token) => self.check_jwt(token, route).await.map(Some),
            Credential::ApiKey(key, location) => self.check_api_key(key, location, route).map(Some),
        }
    }

    async fn check_jwt(&self, token: &str, route: &RouteAuth<'_>) -> Result<Identity, AuthRejection> {
        let verified = self.jwt.verify(token).await.map_err(
            |Rejected {
                 kind,
                 identity,
                 reason,
             }| {
                tracing::debug!(
                    route = route.route,
                    kind = failure_name(kind),
                    "JWT refused: {reason}"
                );
                AuthRejection::new(kind, identity, LOCATION_AUTHORIZATION)
            },
        )?;
        if let Some(missing) = route.scopes.iter().find(|s| !verified.scopes.contains(s)) {
            tracing::debug!(
                route = route.route,
                scope = missing.as_str(),
                "JWT lacks a required scope"
            );
            return Err(AuthRejection::new(
                AuthFailure::MissingScope,
                Some(verified.identity),
                LOCATION_AUTHORIZATION,
            ));
        }
        Ok(verified.identity)
    }

    #[expect(
        clippy::result_large_err,
        reason = "a rejection is built once per refused request, off the hot path"
    )]
    fn check_api_key(
        &self,
        key: &[u8],
        location: &str,
        route: &RouteAuth<'_>,
    ) -> Result<Identity, AuthRejection> {
        if key.is_empty() || key.len() > MAX_API_KEY_BYTES {
            return Err(AuthRejection::new(AuthFailure::Malformed, None, location));
        }
        match self.api_keys.check(key, route.route) {
            ApiKeyCheck::Allowed(identity) => Ok(identity),
            ApiKeyCheck::UnknownKey => Err(AuthRejection::new(AuthFailure::UnknownApiKey, None, location)),
            ApiKeyCheck::RouteNotAllowed(identity) => Err(AuthRejection::new(
                AuthFailure::RouteNotAllowed,
                Some(identity),
                location,
            )),
        }
    }

    /// Fetches every `jwks_url` once, now, whatever the minimum interval. For start-up readiness and tests; the
    /// error names the first URL that failed (the others are still fetched).
    pub async fn refresh_jwks_now(&self) -> Result<(), Error> {
        let mut first_error = None;
        for remote in self.jwt.remotes() {
            if let Err(e) = remote.refresh(true).await {
                let why = e.to_string();
                tracing::warn!(url = %remote.url(), "JWKS fetch failed: {why}");
                first_error.get_or_insert_with(|| Error::Other(format!("JWKS {}: {why}", remote.url())));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Starts one task per `jwks_url` that fetches it now and then every `jwks_refresh` (after a failure, again
    /// after `jwks_min_refresh`). The tasks hold only weak references and end once this `Authenticator` is
    /// dropped; dropping the returned guard ends them at once, which is what a config reload wants.
    #[must_use = "dropping the guard stops the refresh tasks"]
    pub fn spawn_jwks_refresh(self: &Arc<Self>) -> JwksRefreshTasks {
        let tasks = self
            .jwt
            .remotes()
            .map(|remote| tokio::spawn(refresh_loop(Arc::downgrade(remote))))
            .collect();
        JwksRefreshTasks { tasks }
    }
}

async fn refresh_loop(remote: Weak<RemoteJwks>) {
    loop {
        let Some(source) = remote.upgrade() else { return };
        let wait: Duration = match source.refresh(false).await {
            Ok(()) | Err(RefreshError::TooSoon) => source.refresh_every(),
            Err(RefreshError::Failed(why)) => {
                tracing::warn!(url = %source.url(), "JWKS refresh failed, keeping the cached keys: {why}");
                source.min_interval()
            }
        };
        drop(source);
        tokio::time::sleep(wait).await;
    }
}

/// The JWKS refresh tasks of one [`Authenticator`]; aborts them when dropped.
#[derive(Debug)]
pub struct JwksRefreshTasks {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for JwksRefreshTasks {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Reads the one credential a request may carry: `Authorization: Bearer …`, `Authorization: ApiKey …` or
/// `X-Api-Key`. Repeated headers, non-ASCII values and two credentials at once are malformed: a request must not
/// be able to show one proxy component one credential and another component a different one.
/// The error is the location of the malformed header.
fn credential(headers: &HeaderMap) -> Result<Option<Credential<'_>>, &'static str> {
    let single = |name: &HeaderName, location: &'static str| {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (None, _) => Ok(None),
            (Some(v), None) => Ok(Some(v)),
            (Some(_), Some(_)) => Err(location),
        }
    };
    let from_authorization = match single(&AUTHORIZATION, LOCATION_AUTHORIZATION)? {
        None => None,
        Some(value) => {
            let value = value.to_str().map_err(|_| LOCATION_AUTHORIZATION)?;
            let (scheme, rest) = value.trim().split_once(' ').ok_or(LOCATION_AUTHORIZATION)?;
            let rest = rest.trim();
            if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
                Some(Credential::Bearer(rest))
            } else if scheme.eq_ignore_ascii_case("apikey") && !rest.is_empty() {
                Some(Credential::ApiKey(rest.as_bytes(), LOCATION_AUTHORIZATION))
            } else {
                return Err(LOCATION_AUTHORIZATION);
            }
        }
    };
    let from_api_key_header = single(&API_KEY_HEADER, LOCATION_API_KEY)?
        .map(|v| Credential::ApiKey(v.as_bytes(), LOCATION_API_KEY));
    match (from_authorization, from_api_key_header) {
        (Some(_), Some(_)) => Err(LOCATION_AUTHORIZATION),
        (a, b) => Ok(a.or(b)),
    }
}
