//! Security events: the one type every detector emits and every consumer reads.
//!
//! The identity checks (auth failures), the payload inspector (attacks, protocol anomalies) and the abuse
//! detectors (scanning, rates, floods) each produce [`SecurityEvent`]s; the security log stream, the metrics
//! and the risk engine consume them. Evidence is redacted where it is built, so no consumer can leak a secret.

use std::{net::IpAddr, sync::Arc, time::SystemTime};

use serde::Serialize;

/// How bad one event is. The numeric weights follow the OWASP CRS anomaly-scoring convention, so a score
/// threshold means the same thing for inspection findings and auth failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Notice,
    Warning,
    Error,
    Critical,
}

impl Severity {
    /// Anomaly-score weight.
    #[must_use]
    pub const fn weight(self) -> u32 {
        match self {
            Self::Notice => 2,
            Self::Warning => 3,
            Self::Error => 4,
            Self::Critical => 5,
        }
    }
}

/// Which authentication check failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthFailure {
    /// No credentials on a route that needs them.
    Missing,
    /// Not a parsable token or key.
    Malformed,
    BadSignature,
    /// The token's `alg` is not in the issuer's allow-list (`none`, HS/RS confusion, ...).
    AlgorithmNotAllowed,
    UnknownKeyId,
    UnknownIssuer,
    Expired,
    NotYetValid,
    WrongAudience,
    MissingScope,
    UnknownApiKey,
    /// A known API key used on a route it is not allowed on.
    RouteNotAllowed,
}

/// Attack classes, aligned with the categories of the evaluation corpora.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttackCategory {
    Sqli,
    Xss,
    Cmdi,
    Traversal,
    Rfi,
    Ssrf,
    Jndi,
    Crlf,
    Php,
    Java,
    Nodejs,
    Protocol,
    Scanner,
    Other,
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "type", content = "detail", rename_all = "snake_case")]
pub enum EventKind {
    Auth(AuthFailure),
    Attack(AttackCategory),
    /// Many 4xx answers in a short time: path scanning, enumeration.
    Scanning,
    /// Request rate far above the route's learned baseline.
    RateAbuse,
    /// Packet rate seen by the kernel far above normal.
    Flood,
}

/// Who the request was from, once verified (or claimed, for a failure that got that far).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Identity {
    pub kind: IdentityKind,
    /// JWT `sub`, or the API key's configured identity name.
    pub subject: Arc<str>,
    /// JWT `iss`; `None` for API keys.
    pub issuer: Option<Arc<str>>,
    /// See [`Identity::key`].
    #[serde(skip)]
    key: Arc<str>,
}

impl Identity {
    #[must_use]
    pub fn new(kind: IdentityKind, subject: impl Into<Arc<str>>, issuer: Option<Arc<str>>) -> Self {
        let subject = subject.into();
        let kind_name = match kind {
            IdentityKind::Jwt => "jwt",
            IdentityKind::ApiKey => "api_key",
        };
        let key = match &issuer {
            Some(issuer) => format!("{kind_name}:{issuer}:{subject}"),
            None => format!("{kind_name}:{subject}"),
        };
        Self {
            kind,
            subject,
            issuer,
            key: key.into(),
        }
    }

    /// The one string that names the identity, `kind:issuer:subject` (`api_key:subject` for API keys): how the
    /// risk engine keys it and the admin API spells it. Made once, with the identity, since an identity's
    /// strings are shared (not copied) by every request a cached verification serves.
    #[must_use]
    pub fn key(&self) -> &str {
        &self.key
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    Jwt,
    ApiKey,
}

/// One piece of evidence: which rule, where in the request, and a short redacted excerpt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Evidence {
    /// Stable rule id, e.g. `sqli.tautology` or `auth.bad_signature`.
    pub rule_id: String,
    /// Where it matched, e.g. `query:id`, `json:$.user.name`, `header:authorization`.
    pub location: String,
    /// At most [`Evidence::MAX_EXCERPT`] characters, secrets redacted (see [`Evidence::new`]).
    pub excerpt: String,
}

impl Evidence {
    pub const MAX_EXCERPT: usize = 96;

    /// Builds evidence, truncating the excerpt and redacting it entirely when the location holds a secret
    /// (credentials, cookies, passwords, tokens).
    #[must_use]
    pub fn new(rule_id: impl Into<String>, location: impl Into<String>, excerpt: &str) -> Self {
        let location = location.into();
        let excerpt = if is_secret_location(&location) {
            "[redacted]".to_owned()
        } else {
            truncate_chars(excerpt, Self::MAX_EXCERPT)
        };
        Self {
            rule_id: rule_id.into(),
            location,
            excerpt,
        }
    }
}

/// Locations whose values are secrets and never appear in logs.
#[must_use]
pub fn is_secret_location(location: &str) -> bool {
    const SECRET_WORDS: [&str; 9] = [
        "authorization",
        "cookie",
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "x-api-key",
    ];
    let lower = location.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| lower.contains(w))
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// A security event. See the module docs.
#[derive(Clone, Debug, Serialize)]
pub struct SecurityEvent {
    #[serde(serialize_with = "serialize_time")]
    pub at: SystemTime,
    pub source: IpAddr,
    pub identity: Option<Identity>,
    /// The matched route's name or path prefix.
    pub route: Option<String>,
    pub request_id: Option<String>,
    pub kind: EventKind,
    pub severity: Severity,
    pub evidence: Vec<Evidence>,
}

fn serialize_time<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_excerpts_bounded() {
        assert_eq!(
            Evidence::new("auth.bad_signature", "header:authorization", "Bearer eyJ").excerpt,
            "[redacted]"
        );
        assert_eq!(
            Evidence::new("sqli", "cookie:session", "x' or 1=1").excerpt,
            "[redacted]"
        );
        assert_eq!(
            Evidence::new("sqli", "json:$.password", "x").excerpt,
            "[redacted]"
        );
        let long = "a".repeat(500);
        let e = Evidence::new("xss", "query:q", &long);
        assert_eq!(e.excerpt.chars().count(), Evidence::MAX_EXCERPT + 1);
        assert_eq!(Evidence::new("xss", "query:q", "<script>").excerpt, "<script>");
    }

    #[test]
    fn event_serialises_to_one_json_object() {
        let e = SecurityEvent {
            at: SystemTime::UNIX_EPOCH,
            source: "192.0.2.1".parse().unwrap(),
            identity: None,
            route: Some("/orders".into()),
            request_id: Some("r1".into()),
            kind: EventKind::Auth(AuthFailure::Expired),
            severity: Severity::Warning,
            evidence: vec![],
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["kind"]["type"], "auth");
        assert_eq!(v["kind"]["detail"], "expired");
        assert_eq!(v["at"], "1970-01-01T00:00:00.000Z");
    }
}
