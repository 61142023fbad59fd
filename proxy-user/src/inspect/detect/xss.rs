//! Cross-site scripting. Two tokenizers: libinjection's HTML5 tokenizer (via `libinjectionrs`), which parses
//! the value in each context it could land in (text, unquoted/single/double-quoted attribute) and flags
//! dangerous tags, attributes and URL schemes; and our own tag scanner below, which reads `<tag attr=value>`
//! structure to catch what libinjection leaves out (SVG/MathML animation, `srcdoc`, template expressions,
//! attribute breaking out of a quoted value) and to name the rule that matched.

use super::{Classes, Needles, Value, excerpt, find_any, needles};
use crate::{
    event::{AttackCategory, Severity},
    inspect::{Rule, Sink, extract::FieldKind},
};

/// libinjection's verdict alone does not block: it also fires on benign rich text (`style` attributes,
/// `<!DOCTYPE html>`). With any of the structural rules below it does.
const LIBINJECTION: Rule = Rule {
    id: "xss.libinjection",
    category: AttackCategory::Xss,
    severity: Severity::Error,
    paranoia: 1,
};
const SCRIPT_TAG: Rule = Rule {
    id: "xss.script_tag",
    category: AttackCategory::Xss,
    severity: Severity::Critical,
    paranoia: 1,
};
const EVENT_HANDLER: Rule = Rule {
    id: "xss.event_handler",
    category: AttackCategory::Xss,
    severity: Severity::Critical,
    paranoia: 1,
};
const DANGEROUS_TAG: Rule = Rule {
    id: "xss.dangerous_tag",
    category: AttackCategory::Xss,
    severity: Severity::Critical,
    paranoia: 1,
};
const SCRIPT_URI: Rule = Rule {
    id: "xss.script_uri",
    category: AttackCategory::Xss,
    severity: Severity::Critical,
    paranoia: 1,
};
const ATTRIBUTE_BREAK: Rule = Rule {
    id: "xss.attribute_break",
    category: AttackCategory::Xss,
    severity: Severity::Critical,
    paranoia: 1,
};
const JS_BREAKOUT: Rule = Rule {
    id: "xss.js_breakout",
    category: AttackCategory::Xss,
    severity: Severity::Critical,
    paranoia: 1,
};
const JS_SINK: Rule = Rule {
    id: "xss.js_sink",
    category: AttackCategory::Xss,
    severity: Severity::Warning,
    paranoia: 1,
};
const DOCUMENT_MARKUP: Rule = Rule {
    id: "xss.document_markup",
    category: AttackCategory::Xss,
    severity: Severity::Critical,
    paranoia: 1,
};
const HTML_INJECTION: Rule = Rule {
    id: "xss.html_injection",
    category: AttackCategory::Xss,
    severity: Severity::Critical,
    paranoia: 3,
};
const ENCODED_PROBE: Rule = Rule {
    id: "xss.encoded_markup_probe",
    category: AttackCategory::Xss,
    severity: Severity::Critical,
    paranoia: 1,
};
const JS_CALL: Rule = Rule {
    id: "xss.js_call",
    category: AttackCategory::Xss,
    severity: Severity::Critical,
    paranoia: 1,
};
/// The proof-of-concept calls of XSS payloads in every spelling that evades a plain `alert(` match.
static JS_CALL_RE: std::sync::LazyLock<Option<regex::Regex>> = std::sync::LazyLock::new(|| {
    regex::Regex::new(r#"(?-u:\b)(?:window|top|self|parent|this|frames|globalthis|document|content)\s*\[[^\]]{1,200}\]\s*\(|/\w+/\s*\.\s*source\s*\+|!\s*!\s*\[\s*\]\s*\]|\(\s*!\s*\[\s*\]\s*\+\s*\[\s*\]\s*\)|(?-u:\b)(?:alert|confirm|prompt)\s*(?:\?\.\s*)?(?:\(\s*(?:\d|['"`/]|document|window|this|self|top|string\.|null|\))|`|\.\s*(?:call|apply|bind)\s*\()|\(\s*(?:alert|confirm|prompt)\s*\)\s*\(|document\s*(?:\?\.)?\s*\[\s*['"`](?:cookie|domain|write)|(?-u:\b)document\s*(?:\?\.)\s*cookie"#).ok()
});
const TEMPLATE: Rule = Rule {
    id: "xss.template_injection",
    category: AttackCategory::Xss,
    severity: Severity::Critical,
    paranoia: 1,
};

/// Attributes whose value is a URL or script.
const URL_ATTRS: &[&str] = &[
    "href",
    "src",
    "action",
    "formaction",
    "data",
    "xlink:href",
    "srcdoc",
    "background",
    "dynsrc",
    "lowsrc",
    "poster",
    "codebase",
    "values",
    "to",
    "from",
    "by",
];
pub(super) const SINKS: &[&str] = &[
    "alert(",
    "alert`",
    "prompt(",
    "prompt`",
    "confirm(",
    "confirm`",
    "eval(",
    "document.cookie",
    "document.domain",
    "document.write",
    "fromcharcode(",
    "window.location",
    ".innerhtml",
    "settimeout(",
    "setinterval(",
    "atob(",
    "print(",
    "top[",
    "window[",
    "self[",
    "parent[",
    "constructor(",
    "import(",
];

pub(super) fn scan(v: &Value<'_>, sink: &mut Sink<'_>) {
    let c = v.classes;
    // libinjection's attribute contexts need markup or an `=`; without either, it only adds false positives
    // on JSON-in-a-string and URLs, and script URLs are caught by `script_uri` below.
    if (c.any(Classes::LT)
        || c.any(Classes::EQ) && (c.any(Classes::QUOTE) || has_handler_assignment(v.lower)))
        && sink.enabled(&LIBINJECTION)
        && v.kind != FieldKind::Referer
        && libinjectionrs::detect_xss(v.text.as_bytes()).is_injection()
    {
        // Above paranoia 1, libinjection's verdict alone is enough.
        let severity = if sink.level() >= 2 {
            Severity::Critical
        } else {
            LIBINJECTION.severity
        };
        sink.report_as(&LIBINJECTION, severity, v.location, excerpt(v.text, 0));
    }
    if c.any(Classes::LT) {
        scan_tags(v, sink);
        for pi in ["<?xml-stylesheet", "<?import"] {
            if let Some(at) = v.lower.find(pi) {
                sink.report(&DANGEROUS_TAG, v.location, excerpt(v.text, at));
            }
        }
        // IE conditional comments: markup that only some browsers parse, to slip past filters.
        for cc in ["<!--[if", "<![endif"] {
            if let Some(at) = v.lower.find(cc) {
                sink.report(&DOCUMENT_MARKUP, v.location, excerpt(v.text, at));
            }
        }
    }
    if c.any(Classes::COLON) {
        script_uri(v, sink);
    }
    if c.any(Classes::QUOTE) && c.any(Classes::EQ) {
        attribute_break(v, sink);
    }
    if c.any(Classes::PAREN | Classes::QUOTE | Classes::DOT) {
        js(v, sink);
    }
    if c.any(Classes::BRACE) {
        template(v, sink);
    }
    if c.any(Classes::PAREN | Classes::BACKTICK | Classes::QUOTE)
        && let Some(m) = JS_CALL_RE.as_ref().and_then(|re| re.find(v.lower))
    {
        sink.report(&JS_CALL, v.location, excerpt(v.text, m.start()));
    }
}

/// `on<letters>=`: an event handler assigned, the way an unquoted attribute injection starts.
fn has_handler_assignment(lower: &str) -> bool {
    let b = lower.as_bytes();
    memchr::memmem::find_iter(b, b"on").any(|at| {
        let mut k = at + 2;
        while k < b.len() && b[k].is_ascii_alphabetic() {
            k += 1;
        }
        while k < b.len() && b[k].is_ascii_whitespace() {
            k += 1;
        }
        k > at + 2 && b.get(k) == Some(&b'=') && (at == 0 || !b[at - 1].is_ascii_alphanumeric())
    })
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b':' | b'_')
}

fn scan_tags(v: &Value<'_>, sink: &mut Sink<'_>) {
    let s = v.lower.as_bytes();
    let mut i = 0;
    while let Some(off) = memchr::memchr(b'<', &s[i..]) {
        let lt = i + off;
        i = lt + 1;
        let mut j = i;
        if s.get(j) == Some(&b'/') {
            j += 1;
        }
        let name_start = j;
        while j < s.len() && is_name_byte(s[j]) {
            j += 1;
        }
        if j == name_start || !s[name_start].is_ascii_alphabetic() {
            continue;
        }
        let name = &v.lower[name_start..j];
        // A tag needs its name to end at whitespace, `/`, `>` or the end: `<3` or `<b2b` in prose is not one.
        if !s
            .get(j)
            .is_none_or(|&b| b.is_ascii_whitespace() || b == b'/' || b == b'>' || b == 0x0C)
        {
            continue;
        }
        let tag_end = memchr::memchr(b'>', &s[j..]).map_or(s.len(), |e| j + e);
        let attrs = &v.lower[j..tag_end];
        let closed = tag_end < s.len();
        // An unclosed `<script` with no attribute (`binary<script is incorrect`) is a word in a sentence.
        if name == "script" && (closed || attrs.contains('=')) {
            sink.report(&SCRIPT_TAG, v.location, excerpt(v.text, lt));
        }
        scan_attrs(v, attrs, lt, sink);
        // A page's own structure (`<html>`, `</head>`, `<body onload…>`) has no place in a parameter: it is
        // markup injected to rewrite the page it lands in. Rich-text fields carry fragments, not documents.
        if matches!(name, "html" | "head" | "body" | "frameset") && closed {
            sink.report(&DOCUMENT_MARKUP, v.location, excerpt(v.text, lt));
        }
        // Any element with attributes: rich-text fields send these, so only at paranoia 3.
        if closed && attrs.contains('=') {
            sink.report(&HTML_INJECTION, v.location, excerpt(v.text, lt));
        }
        // Tags that run script or load active content by themselves.
        if (matches!(
            name,
            "iframe"
                | "frame"
                | "object"
                | "embed"
                | "applet"
                | "svg"
                | "math"
                | "base"
                | "meta"
                | "isindex"
                | "xss"
                | "portal"
                | "frameset"
                | "handler"
                | "listener"
                | "style"
                | "link"
                | "xml"
                | "import"
                | "vmlframe"
                | "set"
                | "animate"
                | "animatetransform"
                | "bgsound"
                | "layer"
                | "ilayer"
        ) || ["svg:", "xsl:", "vml:", "html:", "xhtml:", "math:"]
            .iter()
            .any(|p| name.starts_with(p)))
            && (closed || !attrs.trim().is_empty())
        {
            sink.report(&DANGEROUS_TAG, v.location, excerpt(v.text, lt));
        }
        i = j;
    }
}

/// A value that is nothing but an escaped `<` (`&#x3C`, `&lt`, `\x3c`, `\u003c`, in any of their spellings):
/// the probe that maps which encodings a page decodes before it reflects them. Typed text never spells a
/// lone `<` that way; a literal `<` (a filter operator) is left alone.
pub(super) fn encoded_markup_probe(v: &Value<'_>, raw: &[u8], sink: &mut Sink<'_>) {
    if v.text.trim() == "<" && raw.trim_ascii() != b"<" {
        sink.report(&ENCODED_PROBE, v.location, excerpt(v.text, 0));
    }
}

/// CSS that runs script or loads behaviour (old IE and Gecko), or hides it behind escapes.
fn is_active_css(css: &str) -> bool {
    [
        "expression",
        "behavior",
        "behaviour",
        "-moz-binding",
        "@import",
        "javascript:",
        "vbscript:",
        "\\",
    ]
    .iter()
    .any(|t| css.contains(t))
}

/// Reads `name=value` pairs of one tag and reports event handlers and script URLs.
fn scan_attrs(v: &Value<'_>, attrs: &str, lt: usize, sink: &mut Sink<'_>) {
    let b = attrs.as_bytes();
    let mut k = 0;
    while k < b.len() {
        while k < b.len() && (b[k].is_ascii_whitespace() || matches!(b[k], b'/' | b'"' | b'\'' | 0x0C)) {
            k += 1;
        }
        let ns = k;
        while k < b.len() && !b[k].is_ascii_whitespace() && !matches!(b[k], b'=' | b'/' | b'>' | b'"' | b'\'')
        {
            k += 1;
        }
        let name = &attrs[ns..k];
        while k < b.len() && b[k].is_ascii_whitespace() {
            k += 1;
        }
        if b.get(k) != Some(&b'=') {
            if k == ns {
                k += 1;
            }
            continue;
        }
        k += 1;
        while k < b.len() && b[k].is_ascii_whitespace() {
            k += 1;
        }
        let (vs, ve) = if let Some(&q @ (b'"' | b'\'' | b'`')) = b.get(k) {
            let vs = k + 1;
            (vs, memchr::memchr(q, &b[vs..]).map_or(b.len(), |e| vs + e))
        } else {
            (
                k,
                b[k..]
                    .iter()
                    .position(u8::is_ascii_whitespace)
                    .map_or(b.len(), |e| k + e),
            )
        };
        let value = &attrs[vs..ve];
        k = ve + 1;
        if name.len() > 2 && name.starts_with("on") && name[2..].bytes().all(|c| c.is_ascii_alphabetic()) {
            sink.report(&EVENT_HANDLER, v.location, excerpt(v.text, lt));
        } else if URL_ATTRS.contains(&name) && is_script_url(value)
            || name == "srcdoc"
            || matches!(
                name,
                "datasrc" | "dataformatas" | "datafld" | "ev:event" | "attributename"
            )
            || name == "style" && is_active_css(value)
        {
            sink.report(&SCRIPT_URI, v.location, excerpt(v.text, lt));
        }
    }
}

/// `javascript:`, `vbscript:`, `data:text/html` and friends, with the whitespace and control characters
/// browsers ignore inside a scheme removed.
fn is_script_url(value: &str) -> bool {
    let compact: String = value
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .take(32)
        .collect::<String>();
    // The inert placeholders of countless real links.
    let inert = [
        "javascript:void(0)",
        "javascript:void0",
        "javascript:;",
        "javascript:",
    ]
    .iter()
    .any(|p| {
        compact
            .strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([';', '"', '\'']))
    });
    if inert {
        return false;
    }
    compact.starts_with("javascript:")
        || compact.starts_with("vbscript:")
        || compact.starts_with("livescript:")
        || compact.starts_with("data:text/html")
        || compact.starts_with("data:image/svg")
        || compact.starts_with("data:application/x")
        || compact.starts_with("data:text/xml")
}

fn script_uri(v: &Value<'_>, sink: &mut Sink<'_>) {
    for scheme in ["javascript:", "vbscript:", "livescript:"] {
        if let Some(at) = v.lower.find(scheme)
            && is_script_url(&v.lower[at..])
        {
            // The value is (or starts) a script URL, or has one after a quote or `=`: not a word in prose.
            let before = v.lower[..at].trim_end().bytes().last();
            if before.is_none_or(|b| matches!(b, b'"' | b'\'' | b'=' | b'(' | b'`' | b'>')) {
                sink.report(&SCRIPT_URI, v.location, excerpt(v.text, at));
            }
        }
    }
    let compact: String = v
        .lower
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .take(64)
        .collect();
    if is_script_url(&compact) && !compact.starts_with("data:image/svg+xml;base64") {
        sink.report(&SCRIPT_URI, v.location, excerpt(v.text, 0));
    }
}

/// A quote that closes an attribute value followed by a new event-handler attribute: `" onmouseover="…`.
fn attribute_break(v: &Value<'_>, sink: &mut Sink<'_>) {
    let s = v.lower.as_bytes();
    for (q, _) in v.lower.match_indices(['"', '\'', '`']) {
        let mut k = q + 1;
        let ws = k;
        while k < s.len() && (s[k].is_ascii_whitespace() || s[k] == b'/' || s[k] == 0x0C) {
            k += 1;
        }
        if k == ws {
            continue;
        }
        let ns = k;
        while k < s.len() && s[k].is_ascii_alphabetic() {
            k += 1;
        }
        let name = &v.lower[ns..k];
        while k < s.len() && s[k].is_ascii_whitespace() {
            k += 1;
        }
        if name.len() > 4 && name.starts_with("on") && s.get(k) == Some(&b'=') {
            sink.report(&ATTRIBUTE_BREAK, v.location, excerpt(v.text, q));
            return;
        }
    }
}

/// Breaking out of a JavaScript string into a call of a known sink: `';alert(1)//`, `"-prompt(1)-"`.
fn js(v: &Value<'_>, sink: &mut Sink<'_>) {
    static AUTOMATON: Needles = Needles::new(|| needles(SINKS));
    if let Some((at, _)) = find_any(&AUTOMATON, v.lower) {
        let before = v.lower[..at].trim_end();
        let prev = before.bytes().last();
        let breakout = matches!(
            prev,
            Some(b';' | b'+' | b'-' | b'*' | b'|' | b'&' | b'{' | b'}' | b'(' | b',')
        ) && before
            .bytes()
            .any(|b| matches!(b, b'\'' | b'"' | b'`' | b';' | b'>' | b')' | b'}'));
        if breakout {
            sink.report(&JS_BREAKOUT, v.location, excerpt(v.text, at));
        } else if prev.is_none_or(|b| !b.is_ascii_alphanumeric() && b != b'.' && b != b'_') {
            sink.report(&JS_SINK, v.location, excerpt(v.text, at));
        }
    }
}

/// Client- and server-side template expressions that evaluate code: `{{constructor.constructor(…)()}}`,
/// `{{7*7}}`, `${{…}}`.
fn template(v: &Value<'_>, sink: &mut Sink<'_>) {
    let mut from = 0;
    while let Some(off) = v.lower[from..].find("{{") {
        let start = from + off;
        let Some(end) = v.lower[start + 2..].find("}}") else {
            return;
        };
        let inner = &v.lower[start + 2..start + 2 + end];
        let code = inner.contains("constructor")
            || inner.contains("$on")
            || inner.contains("$eval")
            || inner.contains("__proto__")
            || inner.contains("alert")
            || inner.contains("_self")
            || inner.contains("config")
            || inner.contains("__class__")
            || inner.contains("__globals__")
            || inner.contains("lipsum")
            || inner.contains("cycler")
            || inner.contains("request.")
            || is_arithmetic(inner);
        if code {
            sink.report(&TEMPLATE, v.location, excerpt(v.text, start));
            return;
        }
        from = start + 2 + end + 2;
    }
}

/// `7*7`, `7 * '7'`: the canonical probe of an evaluating template.
fn is_arithmetic(inner: &str) -> bool {
    let t = inner.trim();
    let mut parts = t.splitn(2, ['*', '+', '/', '-']);
    let (Some(a), Some(b)) = (parts.next(), parts.next()) else {
        return false;
    };
    let num = |s: &str| {
        let s = s.trim().trim_matches(['\'', '"']);
        !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())
    };
    num(a) && num(b) && t.contains('*')
}
