//! Protocol anomalies: request smuggling set-ups (Content-Length with Transfer-Encoding, conflicting
//! lengths, obfuscated chunking), request-line junk, header injection (CR/LF in a value that becomes a
//! header or a redirect), encodings no correct client produces, and known attack-tool user agents.

use super::{Classes, Needles, Value, excerpt, find_any, needles};
use crate::{
    event::{AttackCategory, Severity},
    inspect::{RequestView, Rule, Sink, decode::DecodeFlags, extract::FieldKind},
};

const CL_AND_TE: Rule = Rule {
    id: "protocol.cl_and_te",
    category: AttackCategory::Protocol,
    severity: Severity::Critical,
    paranoia: 1,
};
const DUPLICATE_CL: Rule = Rule {
    id: "protocol.duplicate_content_length",
    category: AttackCategory::Protocol,
    severity: Severity::Critical,
    paranoia: 1,
};
const BAD_TE: Rule = Rule {
    id: "protocol.bad_transfer_encoding",
    category: AttackCategory::Protocol,
    severity: Severity::Critical,
    paranoia: 1,
};
const BAD_CL: Rule = Rule {
    id: "protocol.bad_content_length",
    category: AttackCategory::Protocol,
    severity: Severity::Critical,
    paranoia: 1,
};
const BAD_METHOD: Rule = Rule {
    id: "protocol.bad_method",
    category: AttackCategory::Protocol,
    severity: Severity::Critical,
    paranoia: 1,
};
const BAD_TARGET: Rule = Rule {
    id: "protocol.bad_request_target",
    category: AttackCategory::Protocol,
    severity: Severity::Error,
    paranoia: 1,
};
const BAD_HEADER: Rule = Rule {
    id: "protocol.bad_header",
    category: AttackCategory::Protocol,
    severity: Severity::Critical,
    paranoia: 1,
};
const TRUNCATED: Rule = Rule {
    id: "protocol.body_truncated",
    category: AttackCategory::Protocol,
    severity: Severity::Notice,
    paranoia: 1,
};
const OVERLONG: Rule = Rule {
    id: "protocol.overlong_utf8",
    category: AttackCategory::Protocol,
    severity: Severity::Error,
    paranoia: 1,
};
const NULL_BYTE: Rule = Rule {
    id: "protocol.null_byte",
    category: AttackCategory::Protocol,
    severity: Severity::Error,
    paranoia: 1,
};
const DOUBLE_ENCODING: Rule = Rule {
    id: "protocol.double_encoding",
    category: AttackCategory::Protocol,
    severity: Severity::Warning,
    paranoia: 1,
};
const CRLF: Rule = Rule {
    id: "crlf.header_injection",
    category: AttackCategory::Crlf,
    severity: Severity::Critical,
    paranoia: 1,
};
const SCANNER: Rule = Rule {
    id: "scanner.user_agent",
    category: AttackCategory::Scanner,
    severity: Severity::Critical,
    paranoia: 1,
};

/// Request-level checks that need the whole request, not one value.
pub(crate) fn inspect_framing(req: &RequestView<'_>, sink: &mut Sink<'_>) {
    if req.method.is_empty() || !req.method.bytes().all(is_tchar) {
        sink.report(&BAD_METHOD, "method", req.method);
    }
    let t = req.target;
    let target_ok = (t.starts_with('/') || t == "*" || t.starts_with("http://") || t.starts_with("https://"))
        && !t.bytes().any(|b| b <= b' ' || b == 0x7F);
    if !target_ok {
        sink.report(&BAD_TARGET, "target", t);
    }
    let mut content_lengths: Vec<&[u8]> = Vec::new();
    let mut te: Option<&[u8]> = None;
    for (name, value) in req.headers {
        if name.is_empty()
            || !name.bytes().all(is_tchar)
            || value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0)
        {
            sink.report(&BAD_HEADER, "headers", name);
        }
        if name.eq_ignore_ascii_case("content-length") {
            content_lengths.push(value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            te = Some(value);
        }
    }
    if te.is_some() && !content_lengths.is_empty() {
        sink.report(
            &CL_AND_TE,
            "header:transfer-encoding",
            "Content-Length and Transfer-Encoding",
        );
    }
    if content_lengths
        .windows(2)
        .any(|w| w[0].trim_ascii() != w[1].trim_ascii())
    {
        sink.report(
            &DUPLICATE_CL,
            "header:content-length",
            "conflicting Content-Length",
        );
    }
    if content_lengths
        .iter()
        .any(|v| v.is_empty() || !v.trim_ascii().iter().all(u8::is_ascii_digit))
    {
        sink.report(&BAD_CL, "header:content-length", "non-numeric Content-Length");
    }
    if let Some(te) = te {
        // Only `chunked` as the final coding is valid in a request; anything dressed up around it
        // (`chunked, identity`, `xchunked`, ` chunked` with odd whitespace) is how front and back ends are
        // made to disagree.
        let lower = String::from_utf8_lossy(te).to_ascii_lowercase();
        let codings: Vec<&str> = lower.split(',').map(str::trim).collect();
        let valid = codings.last() == Some(&"chunked")
            && codings
                .iter()
                .all(|c| matches!(*c, "chunked" | "gzip" | "deflate" | "compress"))
            && codings.iter().filter(|c| **c == "chunked").count() == 1
            && !te.iter().any(|&b| b == b'\t' || b == 0x0B || b == 0x0C);
        if !valid {
            sink.report(&BAD_TE, "header:transfer-encoding", &lower);
        }
    }
    if req.body_truncated {
        sink.report(&TRUNCATED, "body", "body longer than max_body_bytes");
    }
}

/// RFC 9110 token characters (method and header names).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Encodings that correct clients never produce in these places.
pub(crate) fn decode_anomalies(v: &Value<'_>, flags: DecodeFlags, sink: &mut Sink<'_>) {
    let in_url_or_header =
        !matches!(v.kind, FieldKind::Body | FieldKind::Value) || v.location.starts_with("query:");
    if flags.overlong_utf8 && in_url_or_header {
        sink.report(&OVERLONG, v.location, excerpt(v.text, 0));
    }
    if flags.null_byte && in_url_or_header {
        sink.report(&NULL_BYTE, v.location, excerpt(v.text, 0));
    }
    // URLs carried inside values (redirect targets, analytics beacons) legitimately nest encodings.
    if flags.double_encoded && matches!(v.kind, FieldKind::Path | FieldKind::Cookie)
        || flags.double_encoded && v.location.starts_with("query:") && !v.text.contains("://")
    {
        sink.report(&DOUBLE_ENCODING, v.location, excerpt(v.text, 0));
    }
}

/// CR or LF followed by something shaped like a header line: response splitting and header injection.
///
/// Only values that can reach a response header count (path, query, cookies, headers): a line starting
/// `Host:` in a JSON or form text field is just text.
pub(crate) fn crlf(v: &Value<'_>, sink: &mut Sink<'_>) {
    if !v.classes.any(Classes::COLON)
        || !v.classes.any(Classes::NEWLINE)
            && !v.lower.contains(['\u{560a}', '\u{560d}', '\u{010a}', '\u{010d}'])
    {
        return;
    }
    let reaches_headers = !matches!(
        v.kind,
        FieldKind::Value | FieldKind::Name | FieldKind::Body | FieldKind::Filename
    ) || v.location.starts_with("query:");
    if !reaches_headers {
        return;
    }
    // Characters whose low byte is CR or LF (`嘍` U+560D, `嘊` U+560A): some servers truncate them to one
    // byte when writing headers.
    let folded;
    let lower = if v.lower.contains(['\u{560a}', '\u{560d}', '\u{010a}', '\u{010d}']) {
        folded = v
            .lower
            .replace(['\u{560a}', '\u{010a}'], "\n")
            .replace(['\u{560d}', '\u{010d}'], "\r");
        folded.as_str()
    } else {
        v.lower
    };
    let s = lower.as_bytes();
    for (i, &b) in s.iter().enumerate() {
        if b != b'\r' && b != b'\n' {
            continue;
        }
        let mut j = i + 1;
        while j < s.len() && matches!(s[j], b'\r' | b'\n') {
            j += 1;
        }
        let name_start = j;
        while j < s.len() && (s[j].is_ascii_alphanumeric() || s[j] == b'-') {
            j += 1;
        }
        let name = &lower[name_start..j];
        if s.get(j) == Some(&b':')
            && matches!(
                name,
                "set-cookie"
                    | "location"
                    | "content-type"
                    | "content-length"
                    | "refresh"
                    | "x-xss-protection"
                    | "content-security-policy"
                    | "access-control-allow-origin"
                    | "transfer-encoding"
                    | "host"
                    | "cookie"
                    | "link"
                    | "x-forwarded-for"
                    | "content-disposition"
            )
        {
            sink.report(&CRLF, v.location, excerpt(v.text, i));
            return;
        }
    }
}

/// User agents of attack tools (not of well-behaved crawlers or monitoring).
pub(crate) fn scanner(v: &Value<'_>, sink: &mut Sink<'_>) {
    const TOOLS: &[&str] = &[
        "sqlmap",
        "nikto",
        "nmap",
        "masscan",
        "nuclei",
        "acunetix",
        "netsparker",
        "wpscan",
        "dirbuster",
        "gobuster",
        "dirb/",
        "zgrab",
        "w3af",
        "arachni",
        "havij",
        "appscan",
        "openvas",
        "nessus",
        "jaeles",
        "fuzz faster u fool",
        "wfuzz",
        "commix",
        "xsstrike",
        "burpcollaborator",
        "zmeu",
        "morfeus",
        "paros",
        "webinspect",
        "whatweb",
        "skipfish",
        "vega/",
        "brutus",
        "hydra",
        "medusa",
        "grabber",
        "qualys",
        "detectify",
        "bbot",
        "feroxbuster",
        "ffuf",
        "dalfox",
        "interactsh",
        "x-scanner",
        "struts-pwn",
        "goby",
        "xray",
        "awvs",
        "pangolin",
        "owasp zap",
        "zaproxy",
        "interact.sh",
        ".oast.",
        "oastify.com",
        ".nasl",
        "burpcollaborator.net",
        "dnslog.cn",
        "ceye.io",
        "nmap scripting engine",
        "libwww-perl",
        "python-httpx/0",
        "scrapy-redis",
    ];
    static AUTOMATON: Needles = Needles::new(|| needles(TOOLS));
    if let Some((at, _)) = find_any(&AUTOMATON, v.lower) {
        sink.report(&SCANNER, v.location, excerpt(v.text, at));
    }
}
