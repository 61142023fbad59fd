//! What the operator decides: how much evidence blocks a request, how eager the rules are, and which fields
//! legitimately carry SQL or HTML. The detectors know nothing of this; [`super::inspect`] applies it.

use serde::Deserialize;

/// Whether a request over the threshold is refused or only reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Block,
    /// Findings are reported (audit log, risk engine) but the request goes through: for rolling out new rules.
    Detect,
}

/// The `[inspection]` config section. Every field has a safe default, so an empty section is a blocking
/// inspector at paranoia level 1.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Anomaly score at which a request is refused (or reported, in `detect` mode). One critical finding
    /// weighs 5, as in the OWASP CRS, so the default blocks on one critical or on two lesser findings.
    pub threshold: u32,
    /// 1 to 4. Higher levels switch on rules that catch more obfuscated attacks at the price of more false
    /// positives on unusual but legitimate traffic.
    pub paranoia: u8,
    pub mode: Mode,
    /// Body bytes the proxy buffers for inspection. A longer body is inspected up to this length and flagged
    /// as truncated, so an attacker cannot hide a payload past it unnoticed.
    pub max_body_bytes: usize,
    /// Longest single value (after decoding) handed to the detectors; the rest is not looked at. Bounds the
    /// time spent on one field whatever the body limit.
    pub max_value_bytes: usize,
    /// Deepest JSON nesting walked; deeper values are inspected as raw text of their enclosing body.
    pub max_json_depth: usize,
    /// Rules switched off everywhere, by id or id prefix (`sqli.` switches off all SQL injection rules).
    pub disabled_rules: Vec<String>,
    /// Fields where some rules do not apply.
    pub exclusions: Vec<Exclusion>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            threshold: 5,
            paranoia: 1,
            mode: Mode::Block,
            max_body_bytes: 1024 * 1024,
            max_value_bytes: 16 * 1024,
            max_json_depth: 32,
            disabled_rules: Vec::new(),
            exclusions: Vec::new(),
        }
    }
}

/// One exclusion: on requests whose path starts with `path_prefix` (every path if unset), findings at
/// locations matching `location` by the rules in `rules` (every rule if empty) are dropped.
///
/// `location` is a location as reported in findings (`query:q`, `json:$.post.body`, `header:user-agent`);
/// a trailing `*` makes it a prefix (`json:$.post.*`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exclusion {
    #[serde(default)]
    pub path_prefix: Option<String>,
    pub location: String,
    #[serde(default)]
    pub rules: Vec<String>,
}

impl Exclusion {
    fn applies(&self, path: &str, location: &str, rule_id: &str) -> bool {
        self.path_prefix.as_deref().is_none_or(|p| path.starts_with(p))
            && pattern_matches(&self.location, location)
            && (self.rules.is_empty() || self.rules.iter().any(|r| rule_matches(r, rule_id)))
    }
}

/// A per-route `[route.inspection]` table: only the fields it names replace the global policy's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyOverride {
    pub threshold: Option<u32>,
    pub paranoia: Option<u8>,
    pub mode: Option<Mode>,
    pub max_body_bytes: Option<usize>,
    /// Added to the global list.
    #[serde(default)]
    pub disabled_rules: Vec<String>,
    /// Added to the global list.
    #[serde(default)]
    pub exclusions: Vec<Exclusion>,
}

impl Policy {
    /// The policy for one route: this one with the route's override applied. Built once at config load.
    #[must_use]
    pub fn with_override(&self, o: &PolicyOverride) -> Self {
        let mut p = self.clone();
        if let Some(t) = o.threshold {
            p.threshold = t;
        }
        if let Some(l) = o.paranoia {
            p.paranoia = l;
        }
        if let Some(m) = o.mode {
            p.mode = m;
        }
        if let Some(b) = o.max_body_bytes {
            p.max_body_bytes = b;
        }
        p.disabled_rules.extend(o.disabled_rules.iter().cloned());
        p.exclusions.extend(o.exclusions.iter().cloned());
        p
    }

    /// How many body bytes the proxy must buffer before calling [`super::inspect`].
    #[must_use]
    pub const fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// Paranoia clamped to the levels that exist, so a config typo cannot switch every rule off.
    pub(crate) fn level(&self) -> u8 {
        self.paranoia.clamp(1, 4)
    }

    /// Whether a finding of `rule_id` at `location` counts on a request for `path`.
    pub(crate) fn allows(&self, path: &str, location: &str, rule_id: &str) -> bool {
        !self.disabled_rules.iter().any(|r| rule_matches(r, rule_id))
            && !self.exclusions.iter().any(|e| e.applies(path, location, rule_id))
    }
}

fn rule_matches(pattern: &str, rule_id: &str) -> bool {
    rule_id == pattern
        || (pattern.ends_with('.') && rule_id.starts_with(pattern))
        || pattern_matches(pattern, rule_id)
}

fn pattern_matches(pattern: &str, s: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => s.starts_with(prefix),
        None => s == pattern,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusions_match_by_route_location_and_rule() {
        let p = Policy {
            exclusions: vec![Exclusion {
                path_prefix: Some("/cms".into()),
                location: "json:$.post.*".into(),
                rules: vec!["xss.".into()],
            }],
            disabled_rules: vec!["scanner.user_agent".into()],
            ..Policy::default()
        };
        assert!(!p.allows("/cms/save", "json:$.post.body", "xss.tag"));
        assert!(p.allows("/cms/save", "json:$.post.body", "sqli.libinjection"));
        assert!(p.allows("/api/save", "json:$.post.body", "xss.tag"));
        assert!(p.allows("/cms/save", "json:$.title", "xss.tag"));
        assert!(!p.allows("/", "header:user-agent", "scanner.user_agent"));
    }

    #[test]
    fn policy_parses_with_defaults_and_rejects_unknown_fields() {
        let p: Policy = serde_json::from_str(r#"{"threshold": 8, "mode": "detect"}"#).unwrap();
        assert_eq!(p.threshold, 8);
        assert_eq!(p.mode, Mode::Detect);
        assert_eq!(p.paranoia, 1);
        assert!(serde_json::from_str::<Policy>(r#"{"treshold": 8}"#).is_err());
        let o: PolicyOverride = serde_json::from_str(r#"{"paranoia": 3}"#).unwrap();
        assert_eq!(p.with_override(&o).paranoia, 3);
        assert_eq!(
            Policy {
                paranoia: 0,
                ..Policy::default()
            }
            .level(),
            1
        );
    }
}
