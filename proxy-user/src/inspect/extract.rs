//! Splits a request into the fields an application reads, each with its location (`query:id`,
//! `json:$.user.name`, `header:user-agent`, `cookie:lang`, `multipart:avatar`, `path`, `body`) and with the
//! syntax of its container already undone (form `+`, JSON escapes), so the detectors see values, not framing.

use super::{Policy, RequestView, decode};

/// What part of the request a value came from; detectors weigh some findings by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldKind {
    Path,
    /// A parameter or JSON key name.
    Name,
    /// A parameter, JSON string, form field, XML text or multipart field value.
    Value,
    Cookie,
    UserAgent,
    /// Referer and Origin: URLs by nature, so URL rules do not apply to them as a whole.
    Referer,
    /// Any other inspected header.
    Header,
    /// A body that is none of the structured types, inspected whole.
    Body,
    Filename,
    /// A whole XML document: only document-level rules (external entities) look at it.
    XmlDocument,
}

pub(crate) struct Field<'a> {
    pub location: &'a str,
    pub raw: &'a [u8],
    pub kind: FieldKind,
    /// `raw` as text, when the extractor already knows it is UTF-8 (a slice of a body validated once):
    /// spares the detectors validating it again, value by value.
    pub text: Option<&'a str>,
}

/// Headers whose values are fixed syntax set by browsers and HTTP stacks, not application data; inspecting
/// them only adds false positives (`Accept: */*` looks like a SQL comment).
const UNINSPECTED_HEADERS: &[&str] = &[
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "authorization",
    "cache-control",
    "connection",
    "content-length",
    "date",
    "dnt",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "keep-alive",
    "pragma",
    "priority",
    "proxy-authorization",
    "range",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "upgrade-insecure-requests",
    "x-requested-with",
];

fn inspected_header(lower_name: &str) -> Option<FieldKind> {
    if lower_name.starts_with("sec-") || UNINSPECTED_HEADERS.contains(&lower_name) {
        return None;
    }
    Some(match lower_name {
        "user-agent" => FieldKind::UserAgent,
        "referer" | "origin" => FieldKind::Referer,
        "cookie" => FieldKind::Cookie,
        _ => FieldKind::Header,
    })
}

/// Calls `f` once per inspectable field of `req`.
pub(crate) fn walk(req: &RequestView<'_>, policy: &Policy, f: &mut dyn FnMut(Field<'_>)) {
    let mut loc = String::with_capacity(64);
    let (path, query) = match req.target.split_once('?') {
        Some((p, q)) => (p, q.split('#').next().unwrap_or("")),
        None => (req.target.split('#').next().unwrap_or(""), ""),
    };
    if path.len() > 1 || path.contains('%') {
        f(Field {
            location: "path",
            raw: path.as_bytes(),
            kind: FieldKind::Path,
            text: None,
        });
    }
    walk_form(query.as_bytes(), "query:", &mut loc, f);

    let mut content_type: Option<&[u8]> = None;
    let mut lower = String::with_capacity(32);
    for (name, value) in req.headers {
        lower.clear();
        lower.push_str(name);
        lower.make_ascii_lowercase();
        if lower == "content-type" {
            content_type = Some(value);
        }
        match inspected_header(&lower) {
            Some(FieldKind::Cookie) => walk_cookies(value, &mut loc, f),
            Some(FieldKind::Referer) => {
                loc.clear();
                loc.push_str("header:");
                loc.push_str(&lower);
                f(Field {
                    location: &loc,
                    raw: value,
                    kind: FieldKind::Referer,
                    text: None,
                });
                walk_referer_query(value, &mut loc, f);
            }
            Some(kind) => {
                loc.clear();
                loc.push_str("header:");
                loc.push_str(&lower);
                f(Field {
                    location: &loc,
                    raw: value,
                    kind,
                    text: None,
                });
            }
            None => {}
        }
    }

    let body = &req.body[..req.body.len().min(policy.max_body_bytes)];
    if body.is_empty() {
        return;
    }
    let ct = content_type
        .map(|c| String::from_utf8_lossy(c).to_ascii_lowercase())
        .unwrap_or_default();
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime == "application/x-www-form-urlencoded" {
        walk_form(body, "form:", &mut loc, f);
    } else if mime.starts_with("multipart/") {
        match boundary(&ct, content_type.unwrap_or_default()) {
            Some(b) => walk_multipart(body, &b, &mut loc, f),
            None => f(Field {
                location: "body",
                raw: body,
                kind: FieldKind::Body,
                text: None,
            }),
        }
    } else if (mime.contains("json") || matches!(body.trim_ascii_start().first(), Some(b'{' | b'[')))
        && json::walk(body, policy.max_json_depth, &mut loc, f).is_ok()
    {
        // Walked as JSON (whatever the declared type: beacons often send JSON as text/plain).
    } else if mime.contains("xml") {
        walk_xml(body, f);
    } else if looks_like_form(body) {
        walk_form(body, "form:", &mut loc, f);
    } else {
        f(Field {
            location: "body",
            raw: body,
            kind: FieldKind::Body,
            text: None,
        });
    }
}

/// An undeclared body shaped like `name=value&…`: walked as a form, as the application's framework would.
fn looks_like_form(body: &[u8]) -> bool {
    let Some(eq) = memchr::memchr(b'=', &body[..body.len().min(256)]) else {
        return false;
    };
    eq > 0
        && body[..eq]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'[' | b']' | b'%'))
        && !body.contains(&b'\n')
}

/// The query of a Referer URL, each value located as `referer:NAME`: a link crafted to carry a payload
/// shows up here. Values keep the Referer kind, so rules that misfire on what people search for
/// (SQL keywords) stay off.
fn walk_referer_query(referer: &[u8], loc: &mut String, f: &mut dyn FnMut(Field<'_>)) {
    let Some(q) = memchr::memchr(b'?', referer) else {
        return;
    };
    let query = &referer[q + 1..];
    let query = &query[..memchr::memchr(b'#', query).unwrap_or(query.len())];
    let mut flags = decode::DecodeFlags::default();
    for pair in query.split(|&b| b == b'&') {
        let Some(eq) = memchr::memchr(b'=', pair) else {
            continue;
        };
        let (name, value) = (&pair[..eq], &pair[eq + 1..]);
        loc.clear();
        loc.push_str("referer:");
        loc.push_str(&String::from_utf8_lossy(name));
        let decoded = decode::percent_decode(value, true, &mut flags);
        f(Field {
            location: loc,
            raw: decoded.as_deref().unwrap_or(value),
            kind: FieldKind::Referer,
            text: None,
        });
    }
}

/// `a=1&b=2` (query strings and form bodies): names and values, `+` as space, percent-decoded once.
fn walk_form(input: &[u8], prefix: &str, loc: &mut String, f: &mut dyn FnMut(Field<'_>)) {
    let mut flags = decode::DecodeFlags::default();
    for pair in input.split(|&b| b == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = match memchr::memchr(b'=', pair) {
            Some(i) => (&pair[..i], Some(&pair[i + 1..])),
            None => (pair, None),
        };
        let decoded = decode::percent_decode(name, true, &mut flags);
        let name = decoded.as_deref().unwrap_or(name);
        loc.clear();
        loc.push_str(prefix);
        loc.push_str(&String::from_utf8_lossy(name));
        f(Field {
            location: loc,
            raw: name,
            kind: FieldKind::Name,
            text: None,
        });
        if let Some(value) = value {
            let decoded = decode::percent_decode(value, true, &mut flags);
            f(Field {
                location: loc,
                raw: decoded.as_deref().unwrap_or(value),
                kind: FieldKind::Value,
                text: None,
            });
        }
    }
}

fn walk_cookies(header: &[u8], loc: &mut String, f: &mut dyn FnMut(Field<'_>)) {
    let mut flags = decode::DecodeFlags::default();
    for pair in header.split(|&b| b == b';') {
        let pair = pair.trim_ascii();
        if pair.is_empty() {
            continue;
        }
        let (name, value) = match memchr::memchr(b'=', pair) {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (&b""[..], pair),
        };
        loc.clear();
        loc.push_str("cookie:");
        loc.push_str(&String::from_utf8_lossy(name));
        let decoded = decode::percent_decode(value, false, &mut flags);
        f(Field {
            location: loc,
            raw: decoded.as_deref().unwrap_or(value),
            kind: FieldKind::Cookie,
            text: None,
        });
    }
}

/// The multipart boundary from a Content-Type (case preserved: boundaries are case-sensitive).
fn boundary(lower_ct: &str, ct: &[u8]) -> Option<Vec<u8>> {
    let at = lower_ct.find("boundary=")? + "boundary=".len();
    let rest = ct.get(at..)?;
    let rest = rest.strip_prefix(b"\"").unwrap_or(rest);
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'"' | b';' | b' ' | b'\t'))
        .unwrap_or(rest.len());
    (end > 0 && end <= 200).then(|| rest[..end].to_vec())
}

fn walk_multipart(body: &[u8], boundary: &[u8], loc: &mut String, f: &mut dyn FnMut(Field<'_>)) {
    let mut delim = b"--".to_vec();
    delim.extend_from_slice(boundary);
    let finder = memchr::memmem::Finder::new(&delim);
    let starts: Vec<usize> = finder.find_iter(body).collect();
    if starts.is_empty() {
        f(Field {
            location: "body",
            raw: body,
            kind: FieldKind::Body,
            text: None,
        });
        return;
    }
    for (i, &start) in starts.iter().enumerate() {
        let part_start = start + delim.len();
        let part_end = starts.get(i + 1).copied().unwrap_or(body.len());
        let part = &body[part_start.min(part_end)..part_end];
        if part.starts_with(b"--") {
            break;
        }
        let (head, content) = match memchr::memmem::find(part, b"\r\n\r\n") {
            Some(h) => (&part[..h], &part[h + 4..]),
            None => match memchr::memmem::find(part, b"\n\n") {
                Some(h) => (&part[..h], &part[h + 2..]),
                None => (part, &b""[..]),
            },
        };
        let content = content
            .strip_suffix(b"\r\n")
            .or_else(|| content.strip_suffix(b"\n"))
            .unwrap_or(content);
        let head = String::from_utf8_lossy(head);
        let mut name = "";
        let mut filename = None;
        for line in head.lines() {
            let lower = line.to_ascii_lowercase();
            if lower.starts_with("content-disposition:") {
                name = disposition_param(line, "name").unwrap_or("");
                filename = disposition_param(line, "filename");
            }
        }
        loc.clear();
        loc.push_str("multipart:");
        loc.push_str(name);
        if !name.is_empty() {
            f(Field {
                location: loc,
                raw: name.as_bytes(),
                kind: FieldKind::Name,
                text: None,
            });
        }
        if let Some(fname) = filename {
            f(Field {
                location: loc,
                raw: fname.as_bytes(),
                kind: FieldKind::Filename,
                text: None,
            });
        }
        f(Field {
            location: loc,
            raw: content,
            kind: FieldKind::Value,
            text: None,
        });
    }
}

/// `name="x"` from a Content-Disposition line (not matching `filename=` for `name=`).
fn disposition_param<'h>(line: &'h str, key: &str) -> Option<&'h str> {
    let lower = line.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(key) {
        let at = from + i;
        from = at + key.len();
        let before_ok = at == 0 || matches!(lower.as_bytes()[at - 1], b' ' | b';' | b'\t');
        if !before_ok || lower.as_bytes().get(from) != Some(&b'=') {
            continue;
        }
        let rest = &line[from + 1..];
        return Some(match rest.strip_prefix('"') {
            Some(q) => q.split('"').next().unwrap_or(""),
            None => rest.split(';').next().unwrap_or("").trim(),
        });
    }
    None
}

/// XML: the whole document once (for DTD and entity declarations), then each text node and CDATA section.
/// Markup itself is not a value: a benign document is all tags.
fn walk_xml(body: &[u8], f: &mut dyn FnMut(Field<'_>)) {
    f(Field {
        location: "xml",
        raw: body,
        kind: FieldKind::XmlDocument,
        text: None,
    });
    let mut i = 0;
    while i < body.len() {
        let Some(lt) = memchr::memchr(b'<', &body[i..]) else {
            let text = body[i..].trim_ascii();
            if !text.is_empty() {
                f(Field {
                    location: "xml:text",
                    raw: text,
                    kind: FieldKind::Value,
                    text: None,
                });
            }
            break;
        };
        let text = body[i..i + lt].trim_ascii();
        if !text.is_empty() {
            f(Field {
                location: "xml:text",
                raw: text,
                kind: FieldKind::Value,
                text: None,
            });
        }
        let tag = i + lt;
        if body[tag..].starts_with(b"<![CDATA[") {
            let start = tag + 9;
            let end = memchr::memmem::find(&body[start..], b"]]>").map_or(body.len(), |e| start + e);
            f(Field {
                location: "xml:cdata",
                raw: &body[start..end],
                kind: FieldKind::Value,
                text: None,
            });
            i = end + 3;
        } else {
            i = memchr::memchr(b'>', &body[tag..]).map_or(body.len(), |e| tag + e + 1);
        }
    }
}

/// A small JSON walker: linear, bounded depth, no tree built. Invalid JSON is an `Err`, and the body is then
/// inspected as text.
mod json {
    use std::borrow::Cow;

    use super::{Field, FieldKind};

    /// `[index]`, without the formatting machinery: large arrays pay this once per element.
    fn push_index(loc: &mut String, mut index: usize) {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b"0123456789"[index % 10];
            index /= 10;
            if index == 0 {
                break;
            }
        }
        loc.push('[');
        loc.extend(digits[start..].iter().map(|&d| char::from(d)));
        loc.push(']');
    }

    /// Appends a key to the location: borrowed when it is UTF-8, as keys nearly always are.
    fn push_key(loc: &mut String, key: &[u8]) {
        loc.push('.');
        match std::str::from_utf8(key) {
            Ok(k) => loc.push_str(k),
            Err(_) => loc.push_str(&String::from_utf8_lossy(key)),
        }
    }

    pub(super) struct Invalid;

    pub(super) fn walk(
        body: &[u8],
        max_depth: usize,
        loc: &mut String,
        f: &mut dyn FnMut(Field<'_>),
    ) -> Result<(), Invalid> {
        let mut p = Parser {
            s: body,
            utf8: std::str::from_utf8(body).ok(),
            i: 0,
            max_depth,
        };
        loc.clear();
        loc.push_str("json:$");
        p.value(loc, 0, f)?;
        p.ws();
        if p.i == p.s.len() { Ok(()) } else { Err(Invalid) }
    }

    struct Parser<'a> {
        s: &'a [u8],
        /// `s` as text, if it is UTF-8: strings sliced out of it need no validation of their own.
        utf8: Option<&'a str>,
        i: usize,
        max_depth: usize,
    }

    impl<'a> Parser<'a> {
        fn ws(&mut self) {
            while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\r' | b'\n') {
                self.i += 1;
            }
        }

        fn peek(&self) -> Option<u8> {
            self.s.get(self.i).copied()
        }

        fn value(
            &mut self,
            loc: &mut String,
            depth: usize,
            f: &mut dyn FnMut(Field<'_>),
        ) -> Result<(), Invalid> {
            if depth > self.max_depth {
                return Err(Invalid);
            }
            self.ws();
            match self.peek().ok_or(Invalid)? {
                b'{' => {
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                        return Ok(());
                    }
                    loop {
                        self.ws();
                        if self.peek() != Some(b'"') {
                            return Err(Invalid);
                        }
                        let (key, text) = self.string()?;
                        let keep = loc.len();
                        match text {
                            Some(k) => {
                                loc.push('.');
                                loc.push_str(k);
                            }
                            None => push_key(loc, &key),
                        }
                        f(Field {
                            location: loc,
                            raw: &key,
                            kind: FieldKind::Name,
                            text,
                        });
                        self.ws();
                        if self.peek() != Some(b':') {
                            return Err(Invalid);
                        }
                        self.i += 1;
                        self.value(loc, depth + 1, f)?;
                        loc.truncate(keep);
                        self.ws();
                        match self.peek() {
                            Some(b',') => self.i += 1,
                            Some(b'}') => {
                                self.i += 1;
                                return Ok(());
                            }
                            _ => return Err(Invalid),
                        }
                    }
                }
                b'[' => {
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(b']') {
                        self.i += 1;
                        return Ok(());
                    }
                    let mut index = 0usize;
                    loop {
                        let keep = loc.len();
                        push_index(loc, index);
                        self.value(loc, depth + 1, f)?;
                        loc.truncate(keep);
                        index += 1;
                        self.ws();
                        match self.peek() {
                            Some(b',') => self.i += 1,
                            Some(b']') => {
                                self.i += 1;
                                return Ok(());
                            }
                            _ => return Err(Invalid),
                        }
                    }
                }
                b'"' => self.string_value(loc, depth, f),
                _ => {
                    let start = self.i;
                    while self.i < self.s.len()
                        && !matches!(self.s[self.i], b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n')
                    {
                        self.i += 1;
                    }
                    let lit = &self.s[start..self.i];
                    let ok = matches!(lit, b"true" | b"false" | b"null")
                        || (!lit.is_empty()
                            && lit
                                .iter()
                                .all(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')));
                    if ok { Ok(()) } else { Err(Invalid) }
                }
            }
        }

        /// A string value: JSON encoded inside a JSON string (log shippers, analytics beacons) is walked as
        /// JSON, so each inner value is inspected in its own context rather than as one blob.
        fn string_value(
            &mut self,
            loc: &mut String,
            depth: usize,
            f: &mut dyn FnMut(Field<'_>),
        ) -> Result<(), Invalid> {
            let (v, text) = self.string()?;
            let t = v.trim_ascii();
            let nested = matches!(
                (t.first(), t.last()),
                (Some(b'{'), Some(b'}')) | (Some(b'['), Some(b']'))
            ) && depth < self.max_depth;
            if nested {
                let keep = loc.len();
                let mut inner = Parser {
                    s: t,
                    utf8: match text {
                        Some(text) => Some(text.trim_ascii()),
                        None => std::str::from_utf8(t).ok(),
                    },
                    i: 0,
                    max_depth: self.max_depth,
                };
                let ok = inner.value(loc, depth + 1, f).is_ok() && {
                    inner.ws();
                    inner.i == t.len()
                };
                loc.truncate(keep);
                if ok {
                    return Ok(());
                }
            }
            f(Field {
                location: loc,
                raw: &v,
                kind: FieldKind::Value,
                text,
            });
            Ok(())
        }

        /// A string starting at the opening quote; borrowed unless it has escapes, and then also as text if
        /// the document is UTF-8.
        fn string(&mut self) -> Result<(Cow<'a, [u8]>, Option<&'a str>), Invalid> {
            self.i += 1;
            let start = self.i;
            let s: &'a [u8] = self.s;
            let end = memchr::memchr2(b'"', b'\\', &s[start..]).ok_or(Invalid)? + start;
            if s[end] == b'"' {
                self.i = end + 1;
                return Ok((
                    Cow::Borrowed(&s[start..end]),
                    self.utf8.and_then(|t| t.get(start..end)),
                ));
            }
            let mut out = s[start..end].to_vec();
            self.i = end;
            loop {
                let b = *s.get(self.i).ok_or(Invalid)?;
                self.i += 1;
                match b {
                    b'"' => return Ok((Cow::Owned(out), None)),
                    b'\\' => {
                        let e = *s.get(self.i).ok_or(Invalid)?;
                        self.i += 1;
                        match e {
                            b'"' | b'\\' | b'/' => out.push(e),
                            b'b' => out.push(8),
                            b'f' => out.push(12),
                            b'n' => out.push(b'\n'),
                            b'r' => out.push(b'\r'),
                            b't' => out.push(b'\t'),
                            b'u' => {
                                let cp = self.hex4()?;
                                let c = if (0xD800..0xDC00).contains(&cp)
                                    && s.get(self.i) == Some(&b'\\')
                                    && s.get(self.i + 1) == Some(&b'u')
                                {
                                    self.i += 2;
                                    let lo = self.hex4()?;
                                    char::from_u32(
                                        0x10000 + ((cp - 0xD800) << 10) + (lo.wrapping_sub(0xDC00) & 0x3FF),
                                    )
                                } else {
                                    char::from_u32(cp)
                                };
                                let mut buf = [0u8; 4];
                                out.extend_from_slice(
                                    c.unwrap_or(char::REPLACEMENT_CHARACTER)
                                        .encode_utf8(&mut buf)
                                        .as_bytes(),
                                );
                            }
                            _ => return Err(Invalid),
                        }
                    }
                    _ => {
                        // Copy the run up to the next quote or backslash in one go.
                        let run_end =
                            memchr::memchr2(b'"', b'\\', &s[self.i..]).map_or(s.len(), |e| e + self.i);
                        out.push(b);
                        out.extend_from_slice(&s[self.i..run_end]);
                        self.i = run_end;
                    }
                }
            }
        }

        fn hex4(&mut self) -> Result<u32, Invalid> {
            let h = self.s.get(self.i..self.i + 4).ok_or(Invalid)?;
            let v = std::str::from_utf8(h)
                .ok()
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .ok_or(Invalid)?;
            self.i += 4;
            Ok(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(req: &RequestView<'_>) -> Vec<(String, String, FieldKind)> {
        let mut out = Vec::new();
        walk(req, &Policy::default(), &mut |fl| {
            out.push((
                fl.location.to_owned(),
                String::from_utf8_lossy(fl.raw).into_owned(),
                fl.kind,
            ));
        });
        out
    }

    fn req<'a>(target: &'a str, headers: &'a [(&'a str, &'a [u8])], body: &'a [u8]) -> RequestView<'a> {
        RequestView {
            method: "POST",
            target,
            headers,
            body,
            body_truncated: false,
        }
    }

    #[test]
    fn query_cookies_and_headers_are_located() {
        let h: &[(&str, &[u8])] = &[
            ("User-Agent", b"curl/8"),
            ("Accept", b"*/*"),
            ("Cookie", b"sid=abc; lang=en%2Dgb"),
            ("X-Trace", b"t1"),
        ];
        let f = fields(&req("/a/b?q=1+2%27&flag", h, b""));
        assert!(f.contains(&("path".into(), "/a/b".into(), FieldKind::Path)));
        assert!(f.contains(&("query:q".into(), "1 2'".into(), FieldKind::Value)));
        assert!(f.contains(&("query:flag".into(), "flag".into(), FieldKind::Name)));
        assert!(f.contains(&("header:user-agent".into(), "curl/8".into(), FieldKind::UserAgent)));
        assert!(f.contains(&("cookie:lang".into(), "en-gb".into(), FieldKind::Cookie)));
        assert!(f.contains(&("header:x-trace".into(), "t1".into(), FieldKind::Header)));
        assert!(!f.iter().any(|(l, _, _)| l == "header:accept"));
    }

    #[test]
    fn json_values_keys_and_escapes() {
        let h: &[(&str, &[u8])] = &[("Content-Type", b"application/json")];
        let body = br#"{"user":{"name":"O\u0027Brien","tags":["a","b\"c"]},"n":1.5e3,"ok":true}"#;
        let f = fields(&req("/", h, body));
        assert!(f.contains(&("json:$.user.name".into(), "O'Brien".into(), FieldKind::Value)));
        assert!(f.contains(&("json:$.user.tags[1]".into(), "b\"c".into(), FieldKind::Value)));
        assert!(f.contains(&("json:$.user".into(), "user".into(), FieldKind::Name)));
    }

    #[test]
    fn invalid_or_too_deep_json_is_inspected_as_text() {
        let h: &[(&str, &[u8])] = &[("Content-Type", b"application/json")];
        let f = fields(&req("/", h, br#"{"a": 'x' or 1=1}"#));
        assert_eq!(f.last().map(|x| x.0.as_str()), Some("body"));
        let deep = "[".repeat(10_000);
        let f = fields(&req("/", h, deep.as_bytes()));
        assert_eq!(f.last().map(|x| x.0.as_str()), Some("body"));
    }

    #[test]
    fn form_and_multipart_bodies() {
        let h: &[(&str, &[u8])] = &[("Content-Type", b"application/x-www-form-urlencoded")];
        let f = fields(&req("/", h, b"name=O%27Brien&plan=select+your+plan"));
        assert!(f.contains(&("form:plan".into(), "select your plan".into(), FieldKind::Value)));

        let h: &[(&str, &[u8])] = &[("Content-Type", b"multipart/form-data; boundary=XyZ")];
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nhello\r\n--XyZ\r\n\
Content-Disposition: form-data; name=\"file\"; filename=\"../../a.php\"\r\nContent-Type: text/plain\r\n\r\n\
<?php x\r\n--XyZ--\r\n";
        let f = fields(&req("/", h, body));
        assert!(f.contains(&("multipart:title".into(), "hello".into(), FieldKind::Value)));
        assert!(f.contains(&("multipart:file".into(), "../../a.php".into(), FieldKind::Filename)));
        assert!(f.contains(&("multipart:file".into(), "<?php x".into(), FieldKind::Value)));
    }
}
