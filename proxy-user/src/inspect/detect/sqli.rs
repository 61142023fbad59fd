//! SQL injection. The primary detector is libinjection's (via the `libinjectionrs` port): it tokenizes the
//! value as SQL in the three quoting contexts an application may embed it in (none, `'…'`, `"…"`), folds the
//! token stream (comments, whitespace, unary operators) into a fingerprint like `s&sos` and looks it up among
//! the fingerprints of real injections. That classifies token sequences, not words, so `select your plan`
//! and `O'Brien` pass and `1' OR '1'='1` does not. Beside it, a few token-sequence rules over the
//! comment-folded value cover the time- and error-based forms whose fingerprint alone is ambiguous.

use std::sync::LazyLock;

use regex::Regex;

use super::{Classes, Needles, Value, excerpt, needles};
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
const BREAKOUT: Rule = Rule {
    id: "sqli.string_breakout",
    category: AttackCategory::Sqli,
    severity: Severity::Critical,
    paranoia: 1,
};
const TAUTOLOGY: Rule = Rule {
    id: "sqli.tautology",
    category: AttackCategory::Sqli,
    severity: Severity::Critical,
    paranoia: 1,
};
const SUBQUERY: Rule = Rule {
    id: "sqli.subquery",
    category: AttackCategory::Sqli,
    severity: Severity::Critical,
    paranoia: 1,
};
const DANGEROUS_FN: Rule = Rule {
    id: "sqli.dangerous_function",
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
/// A string closed and the rest of the query commented away (`admin' #`, `x" -- -`): the classic login
/// bypass, but also how a product name with an inch mark and a hashtag ends. Paranoia 2.
const QUOTE_COMMENT: Rule = Rule {
    id: "sqli.quote_comment",
    category: AttackCategory::Sqli,
    severity: Severity::Critical,
    paranoia: 2,
};
const STACKED: Rule = Rule {
    id: "sqli.stacked_query",
    category: AttackCategory::Sqli,
    severity: Severity::Critical,
    paranoia: 1,
};

/// Characters without which a value cannot leave a SQL string or numeric context.
pub(super) const TRIGGERS: u32 = Classes::QUOTE
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
        r"(?-u:\b)(?:sleep|pg_sleep|benchmark)\s*\(\s*[\d(]|(?-u:\b)waitfor\s+(?:delay|time)\s+'|(?-u:\b)dbms_pipe\s*\.\s*receive_message\s*\(|(?-u:\b)dbms_lock\s*\.\s*sleep\s*\(|(?-u:\b)randomblob\s*\(\s*\d{6,}",
    )
    .ok()
});
static ERROR_RE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"(?-u:\b)(?:extractvalue|updatexml|xmltype|utl_inaddr\s*\.\s*get_host_\w+|ctxsys\s*\.\s*drithsx\s*\.\s*sn|exp\s*\(\s*~|geometrycollection|multipoint|multilinestring|multipolygon|linestring|polygon)\s*\(")
        .ok()
});
/// A string or parenthesis closed, then a logic operator and a comparison: `') OR x=y`, `' and 'a'='a`.
static BREAKOUT_RE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r#"['")]\s*\)*\s*(?:(?:or|and|xor)\s+|\|\||&&)[^=<>]{0,60}?(?:=|<>|!=|<|>|(?-u:\b)like(?-u:\b)|(?-u:\b)rlike(?-u:\b)|(?-u:\b)regexp(?-u:\b)|(?-u:\b)is\s+(?:not\s+)?null(?-u:\b)|(?-u:\b)between(?-u:\b))"#).ok()
});
/// `and 12=12`: a numeric tautology after a logic operator.
static NUMERIC_TAUTOLOGY_RE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"(?-u:\b)(?:and|or|xor|&&|\|\|)\s+\(?\s*(\d+)\s*=\s*(\d+)(?-u:\b)").ok());

/// A subquery glued to a closed string or number (`'||(select …`), or a probe of the catalog tables.
static SUBQUERY_RE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"['\x22\d)]\s*(?:\|\||\+|,|&&|(?-u:\b)and(?-u:\b)|(?-u:\b)or(?-u:\b))\s*\(\s*select(?-u:\b)|(?-u:\b)select(?-u:\b).{0,120}(?-u:\b)from\s+(?:information_schema|mysql\s*\.\s*user|pg_catalog|pg_shadow|sysobjects|syscolumns|sys\s*\.\s*\w+|sqlite_master|all_(?:tables|tab_\w+|users|objects|views|source)(?-u:\b)|user_tables|dual(?-u:\b)|master\s*\.\s*\.|sys(?:users|servers|databases|logins|processes|files)(?-u:\b)|pg_(?:group|user|roles|database|tables|stat\w*)(?-u:\b)|all_users|dba_\w+|v\$\w+)|(?-u:\b)select\s+(?:@@\w+|(?:current_user|session_user|system_user|user|version|database|schema)\s*(?:\(\s*\)|;|$))").ok()
});

/// Stored procedures and functions that reach the file system or the network from SQL.
static DANGEROUS_FN_RE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"(?-u:\b)xp_(?:cmdshell|dirtree|fileexist|regread|regwrite|servicecontrol|subdirs)(?-u:\b)|(?-u:\b)into\s+(?:out|dump)file(?-u:\b)|(?-u:\b)load_file\s*\(|(?-u:\b)utl_(?:http|inaddr|file)\s*\.|(?-u:\b)sp_(?:oacreate|oamethod|executesql|makewebtask|configure)(?-u:\b)|(?-u:\b)openrowset\s*\(|(?-u:\b)copy\s+\w+\s+(?:from|to)\s+program(?-u:\b)").ok()
});

static UNION_RE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"(?-u:\b)union(?:\s+(?:all|distinct))?\s*[\s(]\s*select\s*(?:[\d@*('\x22(-]|null(?-u:\b)|all(?-u:\b)|distinct(?-u:\b)|top(?-u:\b)|[\w.]+\s*(?:,|\(|(?-u:\b)from(?-u:\b)))",
    )
    .ok()
});
/// A value that opens as the tail of a query in a numeric context: a logic operator and a comparison, a
/// boolean or a subquery (` OR x=x`, `or true--`), a column-count probe (` ORDER BY 7--`), a `HAVING` or
/// `WHERE` condition. Prose does not start with `or` and continue with `x=y`.
static LEADING_LOGIC_RE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r#"^[\s'"`)]*(?:(?:or|and|xor|\|\||&&)\s+(?:\(?\s*[\w'"]+\s*(?:=|<>|!=|<|>|(?-u:\b)like(?-u:\b))\s*[\w'"]+|(?:true|false)\s*(?:$|--|#|/\*|;)|\(\s*select(?-u:\b))|(?:order|group)\s+by\s+\d+\s*(?:$|--|#|/\*|;|,|asc(?-u:\b)|desc(?-u:\b))|having\s+\w+\s*(?:=|<|>)|(?:as\s+\w+\s+)?where\s+\w+\s*(?:=|<|>)\s*\w+)"#)
        .ok()
});
/// Statements that create accounts, grant rights or write rows: `create user … identified by`,
/// `grant dba to x`, `insert into t (…) values (…)`.
static DDL_RE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"(?-u:\b)create\s+(?:user|login|role)\s+\w+\s+(?:identified|with)(?-u:\b)|(?-u:\b)grant\s+(?:all|connect|resource|dba|sysdba|select|insert|execute|admin)(?-u:\b)[\w\s,]{0,60}(?-u:\b)to\s+\w+|(?-u:\b)insert\s+into\s+[\w.`\x22\[\]]+\s*\([^)]{0,200}\)\s*values\s*\(|(?-u:\b)create\s+table\s+\w+\s*\(\s*\w+\s+(?:text|int|varchar|blob)(?-u:\b)")
        .ok()
});
static QUOTE_COMMENT_RE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r#"['"]\s*\)*\s*(?:#|--|/\*)[\s\-#*/]*$"#).ok());
static STACKED_RE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"['\d)]\s*;\s*(?:drop|insert|update|delete|exec|execute|declare|shutdown|create|alter|truncate|select)\s+[\w@(*]",
    )
    .ok()
});

pub(super) fn scan(v: &Value<'_>, sink: &mut Sink<'_>) {
    // The Referer is the URL of the page before, search terms included: people search for SQL.
    if v.kind == FieldKind::Referer {
        return;
    }
    if !v.classes.any(TRIGGERS | Classes::SPACE) || !could_be_sql(v) {
        return;
    }
    let rule = match v.kind {
        FieldKind::Header | FieldKind::Referer => &LIBINJECTION_HEADER,
        _ => &LIBINJECTION,
    };
    if sink.enabled(rule) {
        let found = libinjectionrs::detect_sqli(v.text.as_bytes());
        if found.is_injection() {
            let fingerprint = found.fingerprint.as_ref().map_or("", |f| f.as_str());
            let ambiguous = sink.level() < 2
                && (LONE_OPERATOR_FINGERPRINTS.contains(&fingerprint) && reads_as_prose(v.lower)
                    || is_plain_statement(fingerprint, v.lower));
            let severity = if ambiguous {
                Severity::Error
            } else {
                Severity::Critical
            };
            sink.report_as(rule, severity, v.location, excerpt(v.text, 0));
        }
    }
    if !v
        .classes
        .any(Classes::PAREN | Classes::SEMI | Classes::SPACE | Classes::STAR | Classes::QUOTE)
    {
        return;
    }
    let folded = fold_sql(v.lower);
    // Natural-language text around SQL words (a search for "union select 用法") is how people look things
    // up; our own pattern rules then count as evidence, not proof. libinjection's verdict is unaffected.
    let prose = v
        .text
        .chars()
        .filter(|c| c.is_alphabetic() && !c.is_ascii())
        .take(3)
        .count()
        >= 3;
    let severity = if prose {
        Severity::Error
    } else {
        Severity::Critical
    };
    if v.classes.any(Classes::QUOTE | Classes::PAREN)
        && let Some(m) = BREAKOUT_RE.as_ref().and_then(|re| re.find(&folded))
    {
        sink.report_as(&BREAKOUT, severity, v.location, excerpt(&folded, m.start()));
    }
    if let Some(c) = NUMERIC_TAUTOLOGY_RE.as_ref().and_then(|re| re.captures(&folded))
        && c.get(1).map(|m| m.as_str()) == c.get(2).map(|m| m.as_str())
        && let Some(m) = c.get(0)
    {
        sink.report_as(&TAUTOLOGY, severity, v.location, excerpt(&folded, m.start()));
    }
    for (re, rule) in [
        (&SUBQUERY_RE, &SUBQUERY),
        (&DANGEROUS_FN_RE, &DANGEROUS_FN),
        (&TIME_RE, &TIME_BASED),
        (&ERROR_RE, &ERROR_BASED),
        (&UNION_RE, &UNION),
        (&STACKED_RE, &STACKED),
        (&LEADING_LOGIC_RE, &TAUTOLOGY),
        (&QUOTE_COMMENT_RE, &QUOTE_COMMENT),
        (&DDL_RE, &STACKED),
    ] {
        if let Some(m) = re.as_ref().and_then(|re| re.find(&folded)) {
            sink.report_as(rule, severity, v.location, excerpt(&folded, m.start()));
        }
    }
}

/// libinjection fingerprints of a single operator between two literals (`' + '`, `"&"`, `1 & 1`) or a number
/// and a comment. As whole payloads they probe how a query concatenates; inside prose they are how people
/// quote a word (`CHRISTMAS STOCKING "NOT" STUFFER`). There, libinjection's verdict is evidence, not proof.
const LONE_OPERATOR_FINGERPRINTS: &[&str] =
    &["sos", "s&s", "1&1", "1o1", "1os", "so1", "s&1", "1&s", "1c", "sc"];

/// A value that is a plain statement and nothing else (`select 1 from a`, `SELECT * FROM t WHERE x = 'y'`):
/// no function, comment, union or quote to break out with, so it reaches SQL only where the application
/// runs the parameter as a query. People paste SQL into search boxes; probes of the catalog or of functions
/// are caught by the rules below and by other fingerprints.
fn is_plain_statement(fingerprint: &str, lower: &str) -> bool {
    fingerprint
        .strip_prefix('E')
        .is_some_and(|rest| rest.bytes().all(|b| matches!(b, b'1' | b'n' | b'k' | b'o')))
        && lower.trim_start().starts_with("select")
        && !lower.contains("0x")
}

/// At least two words of three letters or more that are neither SQL keywords nor identifiers attacks
/// name: the value is text a person wrote, not an expression.
fn reads_as_prose(lower: &str) -> bool {
    const SQL_VOCABULARY: &[&str] = &[
        "select",
        "union",
        "insert",
        "update",
        "delete",
        "drop",
        "and",
        "not",
        "like",
        "null",
        "mod",
        "div",
        "xor",
        "regexp",
        "rlike",
        "sounds",
        "from",
        "where",
        "having",
        "order",
        "group",
        "limit",
        "sleep",
        "benchmark",
        "true",
        "false",
        "case",
        "when",
        "then",
        "else",
        "end",
        "exec",
        "char",
        "concat",
        "column",
        "table",
        "current",
        "date",
        "time",
        "user",
        "load",
        "data",
        "infile",
        "outfile",
        "into",
        "password",
        "version",
        "database",
        "schema",
        "all",
        "distinct",
        "values",
        "set",
        "create",
    ];
    lower
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| w.len() >= 3 && !SQL_VOCABULARY.contains(w))
        .take(2)
        .count()
        >= 2
}

/// SQL words that can carry an injection without any quote or comment (numeric context: `1 or 1=1`,
/// `1 union select …`, `1;drop table t`). Prose words that SQL also uses (`in`, `is`, `by`, `from`) are
/// left out: alone they never make libinjection's fingerprint an injection.
pub(super) const SQL_WORDS: &[&str] = &[
    "select",
    "union",
    "insert",
    "update",
    "delete",
    "drop",
    "truncate",
    "alter",
    "exec",
    "execute",
    "declare",
    "sleep",
    "benchmark",
    "waitfor",
    "pg_sleep",
    "or",
    "and",
    "xor",
    "having",
    "procedure",
    "rlike",
    "regexp",
    "div",
    "exists",
    "concat",
    "database",
    "information_schema",
    "shutdown",
    "load_file",
    "outfile",
    "dumpfile",
    "current_user",
    "system_user",
    "ascii",
    "substring",
    "substr",
    "unhex",
];

/// Whether `lower` holds one of [`SQL_WORDS`] as a whole word.
fn has_sql_word(lower: &str) -> bool {
    static AUTOMATON: Needles = Needles::new(|| needles(SQL_WORDS));
    let Some(ac) = AUTOMATON.as_ref() else { return true };
    let b = lower.as_bytes();
    let is_word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    ac.find_overlapping_iter(lower).any(|m| {
        (m.start() == 0 || !is_word(b[m.start() - 1])) && b.get(m.end()).is_none_or(|&c| !is_word(c))
    })
}

/// Whether the value can leave a SQL string or numeric context at all: a quote, a comment, a variable, or
/// a SQL word. Everything else (prose, URLs, user agents) is skipped without tokenizing.
fn could_be_sql(v: &Value<'_>) -> bool {
    let s = v.lower.as_bytes();
    v.classes.any(Classes::QUOTE | Classes::HASH | Classes::AT)
        || memchr::memmem::find(s, b"--").is_some()
        || memchr::memmem::find(s, b"/*").is_some()
        || has_sql_word(v.lower)
}
