//! The prefilter is conservative: with it, every value gets exactly the findings it gets when fully decoded
//! and handed to every detector. Checked field by field (every field kind, most decoding paths) and request
//! by request (every extractor), over strings built from attack characters, encodings, and every literal
//! the detectors' own source contains, so that a rule added to a detector is exercised here without anyone
//! having to remember this test.

use std::{collections::BTreeSet, sync::LazyLock};

use proptest::prelude::*;

use super::{
    Policy, RequestView, Sink,
    detect::{Prefilter, Scratch, scan_field},
    extract::{Field, FieldKind},
    inspect, inspect_exhaustive,
};

/// The detectors' sources: their rule literals, regexes and word lists are the vocabulary of the inputs.
const DETECTOR_SOURCES: &[&str] = &[
    include_str!("detect/sqli.rs"),
    include_str!("detect/xss.rs"),
    include_str!("detect/cmdi.rs"),
    include_str!("detect/traversal.rs"),
    include_str!("detect/ssrf.rs"),
    include_str!("detect/jndi.rs"),
    include_str!("detect/expr.rs"),
    include_str!("detect/protocol.rs"),
];

/// Every run of word and punctuation characters in the detectors' sources (so `etc/passwd`,
/// `java.lang.`, `getruntime`, `${jndi:` and `xp_cmdshell` are all in), lowercased, plus each run's parts
/// split at punctuation.
static SOURCE_WORDS: LazyLock<Vec<String>> = LazyLock::new(|| {
    let mut words = BTreeSet::new();
    for src in DETECTOR_SOURCES {
        let lower = src.to_ascii_lowercase();
        let is_tok = |c: char| c.is_ascii_alphanumeric() || "_.:/$#!+-@%{[<?=".contains(c);
        for run in lower.split(|c: char| !is_tok(c)) {
            if run.len() >= 2 && run.len() <= 40 {
                words.insert(run.to_owned());
                for part in run.split(|c: char| !c.is_ascii_alphanumeric() && c != '_') {
                    if part.len() >= 2 {
                        words.insert(part.to_owned());
                    }
                }
            }
        }
    }
    words.into_iter().collect()
});

/// The detectors' regexes, as written in their sources (`Regex::new(r"…")`), with `\\b` dropped (the
/// generator does not do assertions): strings generated from them match the rules they come from.
static SOURCE_REGEXES: LazyLock<Vec<String>> = LazyLock::new(|| {
    let mut out = Vec::new();
    for src in DETECTOR_SOURCES {
        let mut rest = *src;
        while let Some(at) = rest.find("Regex::new(") {
            rest = rest[at..].trim_start_matches("Regex::new(").trim_start();
            let (open, close) = if rest.starts_with("r#\"") {
                ("r#\"", "\"#")
            } else if rest.starts_with("r\"") {
                ("r\"", "\"")
            } else {
                continue;
            };
            let body = &rest[open.len()..];
            if let Some(end) = body.find(close) {
                out.push(body[..end].replace("\\b", ""));
                rest = &body[end..];
            }
        }
    }
    out
});

/// Hand-picked pieces: encodings of every kind the decoder undoes, and attack shapes.
const SNIPPETS: &[&str] = &[
    "../",
    "..\\",
    "....//",
    "%2e%2e%2f",
    "%252e%252e%252f",
    "%c0%ae",
    "%u002e",
    "%00",
    "\u{0}",
    "&lt;",
    "&#60;",
    "&#x3c;",
    "&colon;",
    "&quot;",
    "\\x3c",
    "\\u003c",
    "\\u{3c}",
    "0x2f",
    "%2%f",
    "＜",
    "ｓｃｒｉｐｔ",
    "\u{560a}",
    "\u{560d}",
    "\u{2215}",
    "é",
    "\u{a0}",
    "\u{2003}",
    "${jndi:ldap://",
    "${${lower:j}ndi:",
    "${::-j}",
    "http://127.0.0.1/",
    "http://169.254.169.254/latest",
    "https://[::1]:80/",
    "gopher://",
    "http://0x7f000001/",
    "http://2130706433/",
    "file:///etc/passwd",
    "java script:",
    "JaVaScRiPt:",
    "javascript:alert(1)",
    "data:text/html,",
    "vbscript:",
    "<script>",
    "<img src=x onerror=",
    "\" onmouseover=",
    "';alert(1)//",
    "{{7*7}}",
    "${7*7}",
    "#{7*7}",
    "<%= 7*7 %>",
    "' or '1'='1",
    "1 or 1=1",
    "union select",
    "/*!50000union*/",
    "; ls -la",
    "| id",
    "`id`",
    "$(id)",
    "&& whoami",
    "\r\nSet-Cookie: a",
    "\nLocation:",
    "() { :; };",
    "/bin/sh",
    "cmd.exe /c",
    "php://filter",
    "O:8:\"stdClass\":0:{}",
    "rO0AB",
    "+ADw-",
    "__proto__",
    "constructor.prototype",
    "*)(|(uid=*))",
    "$ne",
    "{\"$gt\":\"\"}",
    "__schema {",
    "PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "Li4vLi4vZXRjL3Bhc3N3ZA==",
    "aced0005",
    "\r\nRCPT TO:",
];

/// Single characters, attack metacharacters first.
const CHARS: &[char] = &[
    '\'', '"', '`', '<', '>', ';', '|', '&', '$', '(', ')', '{', '}', '[', ']', '.', '/', '\\', ':', '=',
    '#', '-', '*', '@', '+', '!', '^', '~', ',', '%', '?', ' ', '\t', '\n', '\r', '_', '0', '1', '7', 'x',
    'A', 'e',
];

/// A string matching one of the detectors' regexes (or a part of one: each alternative on its own).
fn regex_match() -> BoxedStrategy<String> {
    let mut parts: Vec<BoxedStrategy<String>> = Vec::new();
    for re in SOURCE_REGEXES.iter() {
        if let Ok(s) = proptest::string::string_regex(re) {
            parts.push(s.boxed());
        }
    }
    proptest::strategy::Union::new(parts).boxed()
}

fn piece() -> impl Strategy<Value = String> {
    let words = SOURCE_WORDS.clone();
    prop_oneof![
        3 => regex_match(),
        4 => proptest::sample::select(words.clone()),
        1 => proptest::sample::select(words).prop_map(|w| w.to_ascii_uppercase()),
        3 => proptest::sample::select(SNIPPETS).prop_map(str::to_owned),
        4 => proptest::sample::select(CHARS).prop_map(String::from),
        1 => "[a-zA-Z0-9 ]{1,12}",
    ]
}

fn value() -> impl Strategy<Value = String> {
    proptest::collection::vec(piece(), 1..10).prop_map(|p| p.concat())
}

const KINDS: &[(FieldKind, &str)] = &[
    (FieldKind::Path, "path"),
    (FieldKind::Name, "query:q"),
    (FieldKind::Value, "query:q"),
    (FieldKind::Value, "json:$.a"),
    (FieldKind::Value, "form:a"),
    (FieldKind::Cookie, "cookie:a"),
    (FieldKind::UserAgent, "header:user-agent"),
    (FieldKind::Referer, "header:referer"),
    (FieldKind::Header, "header:x-search"),
    (FieldKind::Body, "body"),
    (FieldKind::Filename, "multipart:f"),
    (FieldKind::XmlDocument, "xml"),
];

/// Every finding of one field, with or without the prefilter.
fn field_findings(raw: &[u8], kind: FieldKind, location: &str, prefilter: Prefilter) -> super::Verdict {
    let policy = Policy {
        paranoia: 4,
        ..Policy::default()
    };
    let mut sink = Sink::new(&policy, "/");
    let mut scratch = Scratch::default();
    scan_field(
        &Field {
            location,
            raw,
            kind,
            text: std::str::from_utf8(raw).ok(),
        },
        &policy,
        prefilter,
        &mut scratch,
        &mut sink,
    );
    sink.into_verdict()
}

fn requests_agree(target: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Result<(), TestCaseError> {
    let req = RequestView {
        method: "POST",
        target,
        headers,
        body,
        body_truncated: false,
    };
    for paranoia in [1, 4] {
        let policy = Policy {
            paranoia,
            ..Policy::default()
        };
        prop_assert_eq!(
            inspect(&req, &policy),
            inspect_exhaustive(&req, &policy),
            "{:?}",
            req
        );
    }
    Ok(())
}

fn percent_encode(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn prefilter_is_conservative_per_field(v in value(), k in 0..KINDS.len()) {
        let (kind, location) = KINDS[k];
        let with = field_findings(v.as_bytes(), kind, location, Prefilter::On);
        let without = field_findings(v.as_bytes(), kind, location, Prefilter::Off);
        prop_assert_eq!(with, without, "{:?} as {:?}", v, kind);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn prefilter_is_conservative_per_request(v in value(), place in 0..8usize) {
        let enc = percent_encode(&v);
        let json = serde_json::to_string(&v).unwrap_or_default();
        match place {
            0 => requests_agree(&format!("/search?q={enc}&{enc}=1"), &[], b"")?,
            1 => requests_agree(&format!("/a/{enc}/{v}"), &[], b"")?,
            2 => requests_agree("/api", &[("Content-Type", b"application/json")],
                format!("{{\"a\":{json},{json}:[{json},1]}}").as_bytes())?,
            3 => requests_agree("/api", &[("Content-Type", b"application/x-www-form-urlencoded")],
                format!("a={enc}&b={v}").as_bytes())?,
            4 => requests_agree("/", &[("Cookie", format!("sid=1; a={v}").as_bytes()),
                ("User-Agent", v.as_bytes()), ("X-Search", v.as_bytes())], b"")?,
            5 => requests_agree("/", &[("Referer", format!("https://example.com/?q={enc}&r={v}").as_bytes()),
                ("Origin", v.as_bytes())], b"")?,
            6 => requests_agree("/upload", &[("Content-Type", b"multipart/form-data; boundary=XyZ")],
                format!("--XyZ\r\nContent-Disposition: form-data; name=\"{v}\"; filename=\"{v}\"\r\n\r\n{v}\r\n--XyZ--\r\n").as_bytes())?,
            _ => requests_agree("/soap", &[("Content-Type", b"text/xml")],
                format!("<a><b>{v}</b><![CDATA[{v}]]></a>").as_bytes())?,
        }
    }
}

#[test]
fn vocabulary_holds_the_detectors_literals() {
    let usable = SOURCE_REGEXES
        .iter()
        .filter(|re| proptest::string::string_regex(re).is_ok())
        .count();
    assert!(
        usable >= 15,
        "only {usable} of {} regexes generate",
        SOURCE_REGEXES.len()
    );
    for w in [
        "etc/passwd",
        "getruntime",
        "child_process",
        "cmdshell",
        "javascript:",
        "information_schema",
    ] {
        assert!(SOURCE_WORDS.iter().any(|s| s == w), "{w} missing");
    }
}

/// Fixed cases each prefilter condition was written for: the detector must still fire through it.
#[test]
fn prefilter_keeps_each_detectors_trigger() {
    for (raw, kind, rule) in [
        ("java\tscript:alert(document.domain)", FieldKind::Value, "xss."),
        ("1 or 1=1", FieldKind::Value, "sqli."),
        ("a@b.c' --", FieldKind::Value, "sqli."),
        ("x; cat /etc/passwd", FieldKind::Value, "cmdi."),
        ("/bin/sh -c id", FieldKind::Value, "cmdi."),
        ("..\\..\\windows\\win.ini", FieldKind::Value, "traversal."),
        ("/etc%%passwd", FieldKind::Value, "traversal."),
        (
            "http://169.254.169.254/latest/meta-data",
            FieldKind::Value,
            "ssrf.",
        ),
        ("${jndi:ldap://x/a}", FieldKind::Header, "jndi."),
        (
            "java.lang.Runtime.getRuntime().exec('id')",
            FieldKind::Value,
            "java.",
        ),
        ("a.constructor.prototype.x=1", FieldKind::Value, "nodejs."),
        ("x\r\nSet-Cookie: a=b", FieldKind::Cookie, "crlf."),
        ("sqlmap/1.7", FieldKind::UserAgent, "scanner."),
    ] {
        let v = field_findings(raw.as_bytes(), kind, "query:q", Prefilter::On);
        assert!(
            v.findings.iter().any(|f| f.evidence.rule_id.starts_with(rule)),
            "{raw:?}: expected {rule}, got {:?}",
            v.findings
        );
    }
}
