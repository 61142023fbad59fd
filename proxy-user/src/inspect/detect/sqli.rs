//! SQL injection. The primary detector is libinjection's (via the `libinjectionrs` port): it tokenizes the
//! value as SQL in the three quoting contexts an application may embed it in (none, `'…'`, `"…"`), folds the
//! token stream (comments, whitespace, unary operators) into a fingerprint like `s&sos` and looks it up among
//! the fingerprints of real injections. That classifies token sequences, not words, so `select your plan`
//! and `O'Brien` pass and `1' OR '1'='1` does not. Beside it, a few token-sequence rules over the
//! comment-folded value cover the time- and error-based forms whose fingerprint alone is ambiguous.

use std::sync::LazyLock;

use regex::Regex;

use super::{Classes, Value, excerpt};
use crate::{
    event::{AttackCategory, Severity},
    inspect::{Rule, Sink, decode::fold_sql, extract::FieldKind},
};

const LIBINJECTION: Rule = Rule {
    id: "sqli.libinjection",
    category: AttackCategory::Sqli,
    severity: Severity::Critical,
    paranoia: 1,
};
/// libinjection on headers other than User-Agent: free-form values there are rarer, so it takes a higher level.
const LIBINJECTION_HEADER: Rule = Rule {
    id: "sqli.libinjection_header",
    category: AttackCategory::Sqli,
    severity: Severity::Critical,
    paranoia: 1,
};
const TIME_BASED: Rule = Rule {
    id: "sqli.time_based",
    category: AttackCategory::Sqli,
    severity: Severity::Critical,
    paranoia: 1,
};
const ERROR_BASED: Rule = Rule {
    id: "sqli.error_based",
    category: AttackCategory::Sqli,
    severity: Severity::Critical,
    paranoia: 1,
};
const UNION: Rule = Rule {
    id: "sqli.union",
    category: AttackCategory::Sqli,
    severity: Severity::Critical,
    paranoia: 1,
};
const STACKED: Rule = Rule {
    id: "sqli.stacked_query",
    category: AttackCategory::Sqli,
    severity: Severity::Critical,
    paranoia: 1,
};

/// Characters without which a value cannot leave a SQL string or numeric context.
const TRIGGERS: u32 = Classes::QUOTE
    | Classes::PAREN
    | Classes::SEMI
    | Classes::HASH
    | Classes::DASH
    | Classes::STAR
    | Classes::EQ
    | Classes::AT
    | Classes::OP
    | Classes::PIPE
    | Classes::AMP
    | Classes::LT
    | Classes::SLASH;

static TIME_RE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"\b(?:sleep|pg_sleep|benchmark)\s*\(\s*[\d(]|\bwaitfor\s+(?:delay|time)\s+'|\bdbms_pipe\s*\.\s*receive_message\s*\(|\bdbms_lock\s*\.\s*sleep\s*\(|\brandomblob\s*\(\s*\d{6,}",
    )
    .ok()
});
static ERROR_RE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"\b(?:extractvalue|updatexml|xmltype|utl_inaddr\s*\.\s*get_host_\w+|ctxsys\s*\.\s*drithsx\s*\.\s*sn|exp\s*\(\s*~|geometrycollection|multipoint|multilinestring|multipolygon|linestring|polygon)\s*\(")
        .ok()
});
static UNION_RE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"\bunion(?:\s+(?:all|distinct))?\s*[\s(]\s*select\s*(?:[\d@*('\x22(-]|null\b|all\b|distinct\b|top\b|[\w.]+\s*(?:,|\(|\bfrom\b))",
    )
    .ok()
});
static STACKED_RE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"['\d)]\s*;\s*(?:drop|insert|update|delete|exec|execute|declare|shutdown|create|alter|truncate|select)\s+[\w@(*]",
    )
    .ok()
});

pub(super) fn scan(v: &Value<'_>, sink: &mut Sink<'_>) {
    let keyword_only = v.classes.any(Classes::SPACE) && has_sql_word(v.lower);
    if !v.classes.any(TRIGGERS) && !keyword_only {
        return;
    }
    let rule = match v.kind {
        FieldKind::Header | FieldKind::Referer => &LIBINJECTION_HEADER,
        _ => &LIBINJECTION,
    };
    if sink.enabled(rule) && libinjectionrs::detect_sqli(v.text.as_bytes()).is_injection() {
        sink.report(rule, v.location, excerpt(v.text, 0));
    }
    if !v
        .classes
        .any(Classes::PAREN | Classes::SEMI | Classes::SPACE | Classes::STAR | Classes::QUOTE)
    {
        return;
    }
    let folded = fold_sql(v.lower);
    for (re, rule) in [
        (&TIME_RE, &TIME_BASED),
        (&ERROR_RE, &ERROR_BASED),
        (&UNION_RE, &UNION),
        (&STACKED_RE, &STACKED),
    ] {
        if let Some(m) = re.as_ref().and_then(|re| re.find(&folded)) {
            sink.report(rule, v.location, excerpt(&folded, m.start()));
        }
    }
}

/// Whether a value of only words and spaces holds a SQL keyword that could start a numeric-context
/// injection (`1 union select …`, `1 or sleep(5)`).
fn has_sql_word(lower: &str) -> bool {
    const WORDS: [&str; 8] = [
        "union",
        "select",
        "sleep",
        "waitfor",
        "benchmark",
        " or ",
        " and ",
        "having",
    ];
    WORDS.iter().any(|w| lower.contains(w))
}
