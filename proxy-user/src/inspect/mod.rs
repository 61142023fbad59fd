//! Payload inspection: everything an attacker controls in a request, decoded the way the application will
//! decode it, run through tokenizing detectors, scored, and judged against a [`Policy`].
//!
//! The engine knows nothing of hyper or sockets: the proxy builds a [`RequestView`] of borrowed slices and
//! calls [`inspect`]; the `eval` command, the benches and the fuzz target call exactly the same function.
//!
//! Pipeline: [`extract`] splits the request into located fields (path, query arguments, headers, cookies,
//! JSON/form/multipart/XML body values); each field is decoded by [`decode::normalize`]; [`detect`] runs the
//! detectors that the field's characters make relevant; findings are filtered by the policy's paranoia level
//! and exclusions, summed into an anomaly score, and compared with the threshold.

pub mod decode;
mod detect;
mod extract;
pub mod policy;

use serde::Serialize;

pub use self::policy::{Exclusion, Mode, Policy, PolicyOverride};
use crate::event::{AttackCategory, Evidence, Severity};

/// A request as the inspector sees it: borrowed, already framed by the HTTP layer.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    /// The raw request-target, still percent-encoded (`/a%20b?q=1`).
    pub target: &'a str,
    /// Headers in arrival order; names in any case.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// At most [`Policy::max_body_bytes`] of the body, de-chunked.
    pub body: &'a [u8],
    /// The body was longer than what is in `body`.
    pub body_truncated: bool,
}

/// One rule that matched, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub category: AttackCategory,
    pub severity: Severity,
    /// Rule id, location and redacted excerpt.
    pub evidence: Evidence,
}

/// The outcome of inspecting one request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Every finding that counts under the policy, most severe first.
    pub findings: Vec<Finding>,
    /// Sum of the findings' severity weights.
    pub score: u32,
    /// The score reached the policy's threshold (whatever the mode).
    pub over_threshold: bool,
    /// The request must be refused: over the threshold in `block` mode.
    pub blocked: bool,
    /// The rules whose findings took the score over the threshold, most severe first; empty when it was not.
    pub decided_by: Vec<String>,
}

impl Verdict {
    /// The category of the most severe finding: what the security event reports.
    #[must_use]
    pub fn category(&self) -> Option<AttackCategory> {
        self.findings.first().map(|f| f.category)
    }

    /// The most severe finding's severity.
    #[must_use]
    pub fn severity(&self) -> Option<Severity> {
        self.findings.first().map(|f| f.severity)
    }
}

/// A detection rule. Ids are stable: operators exclude them by name and the risk engine keys on them.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Rule {
    pub id: &'static str,
    pub category: AttackCategory,
    pub severity: Severity,
    /// Lowest paranoia level at which the rule is on.
    pub paranoia: u8,
}

/// Collects findings for one request, applying paranoia, exclusions and de-duplication as they arrive.
pub(crate) struct Sink<'p> {
    policy: &'p Policy,
    /// Path of the request (no query), for per-route exclusions.
    path: &'p str,
    level: u8,
    findings: Vec<Finding>,
}

/// Findings kept per request: enough for any verdict and any audit log line, bounded whatever the request.
const MAX_FINDINGS: usize = 64;

impl<'p> Sink<'p> {
    fn new(policy: &'p Policy, path: &'p str) -> Self {
        Self {
            policy,
            path,
            level: policy.level(),
            findings: Vec::new(),
        }
    }

    /// The paranoia level in force: detectors that weigh ambiguous evidence lower at level 1 weigh it fully
    /// above.
    pub(crate) fn level(&self) -> u8 {
        self.level
    }

    /// Whether a rule can count under this policy; detectors skip work for rules that cannot.
    pub(crate) fn enabled(&self, rule: &Rule) -> bool {
        rule.paranoia <= self.level
    }

    pub(crate) fn report(&mut self, rule: &Rule, location: &str, excerpt: &str) {
        self.report_as(rule, rule.severity, location, excerpt);
    }

    /// Reports a finding of `rule` at a severity the detector adjusted for context.
    pub(crate) fn report_as(&mut self, rule: &Rule, severity: Severity, location: &str, excerpt: &str) {
        if !self.enabled(rule) || self.findings.len() >= MAX_FINDINGS {
            return;
        }
        if self
            .findings
            .iter()
            .any(|f| f.evidence.rule_id == rule.id && f.evidence.location == location)
        {
            return;
        }
        if !self.policy.allows(self.path, location, rule.id) {
            return;
        }
        self.findings.push(Finding {
            category: rule.category,
            severity,
            evidence: Evidence::new(rule.id, location, excerpt),
        });
    }

    fn into_verdict(mut self) -> Verdict {
        self.findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
        // One rule firing in many places is one piece of evidence, not many: a long list of benign values
        // that each look slightly odd must not add up to a block. Each rule counts once, at its severity.
        let mut counted: Vec<(&str, u32)> = Vec::new();
        for f in &self.findings {
            if !counted.iter().any(|(id, _)| *id == f.evidence.rule_id) {
                counted.push((&f.evidence.rule_id, f.severity.weight()));
            }
        }
        let score: u32 = counted.iter().map(|(_, w)| w).sum();
        let over = score >= self.policy.threshold && !counted.is_empty();
        let mut decided_by = Vec::new();
        if over {
            let mut acc = 0;
            for (id, w) in &counted {
                decided_by.push((*id).to_owned());
                acc += w;
                if acc >= self.policy.threshold {
                    break;
                }
            }
        }
        Verdict {
            findings: self.findings,
            score,
            over_threshold: over,
            blocked: over && self.policy.mode == Mode::Block,
            decided_by,
        }
    }
}

/// Inspects one request under `policy`. Linear in the size of the request (bounded by the policy's body and
/// value limits); never panics on any input.
#[must_use]
pub fn inspect(req: &RequestView<'_>, policy: &Policy) -> Verdict {
    inspect_with(req, policy, detect::Prefilter::On)
}

/// [`inspect`] without its prefilter: every value fully decoded and handed to every detector. Always the same
/// verdict as [`inspect`], only slower; it exists so that the prefilter can be checked against it (the
/// property tests, `rasp-proxy eval --check-prefilter`) and its gain measured (the `inspect` bench).
#[must_use]
pub fn inspect_exhaustive(req: &RequestView<'_>, policy: &Policy) -> Verdict {
    inspect_with(req, policy, detect::Prefilter::Off)
}

fn inspect_with(req: &RequestView<'_>, policy: &Policy, prefilter: detect::Prefilter) -> Verdict {
    let path = req.target.split(['?', '#']).next().unwrap_or("");
    let mut sink = Sink::new(policy, path);
    let mut scratch = detect::Scratch::default();
    detect::protocol::inspect_framing(req, &mut sink);
    extract::walk(req, policy, &mut |field| {
        detect::scan_field(&field, policy, prefilter, &mut scratch, &mut sink);
    });
    sink.into_verdict()
}

#[cfg(test)]
mod prefilter_tests;
#[cfg(test)]
mod tests;
