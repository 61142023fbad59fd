//! The detectors. [`scan_field`] decodes one field and hands it to each detector whose trigger characters
//! the value contains: most real values (ids, names, timestamps) contain none and cost one table scan.

mod cmdi;
mod expr;
mod jndi;
pub(crate) mod protocol;
mod sqli;
mod ssrf;
mod traversal;
mod xss;

use super::{
    Policy, Sink,
    decode::{self, Normalized},
    extract::{Field, FieldKind},
};

/// Character classes present in a value, computed in one pass; each detector gates on the ones it needs.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Classes(u32);

impl Classes {
    pub const QUOTE: u32 = 1; // ' " `
    pub const LT: u32 = 1 << 1; // <
    pub const PAREN: u32 = 1 << 2; // ( )
    pub const SEMI: u32 = 1 << 3; // ;
    pub const PIPE: u32 = 1 << 4; // |
    pub const AMP: u32 = 1 << 5; // &
    pub const DOLLAR: u32 = 1 << 6; // $
    pub const BACKTICK: u32 = 1 << 7; // `
    pub const DOT: u32 = 1 << 8; // .
    pub const SLASH: u32 = 1 << 9; // / \
    pub const COLON: u32 = 1 << 10; // :
    pub const BRACE: u32 = 1 << 11; // { }
    pub const EQ: u32 = 1 << 12; // =
    pub const HASH: u32 = 1 << 13; // #
    pub const DASH: u32 = 1 << 14; // -
    pub const SPACE: u32 = 1 << 15; // whitespace
    pub const NEWLINE: u32 = 1 << 16; // \r \n
    pub const STAR: u32 = 1 << 17; // *
    pub const AT: u32 = 1 << 18; // @
    pub const OP: u32 = 1 << 19; // + ! ^ ~ > , %
    pub const DIGIT: u32 = 1 << 20;
    pub const ALPHA: u32 = 1 << 21;

    fn of(s: &[u8]) -> Self {
        let mut m = 0;
        for &b in s {
            m |= CLASS_TABLE[usize::from(b)];
        }
        Self(m)
    }

    pub(crate) const fn any(self, mask: u32) -> bool {
        self.0 & mask != 0
    }
}

const CLASS_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        #[expect(clippy::cast_possible_truncation, reason = "i < 256")]
        let b = i as u8;
        t[i] = match b {
            b'\'' | b'"' => Classes::QUOTE,
            b'`' => Classes::QUOTE | Classes::BACKTICK,
            b'<' => Classes::LT,
            b'(' | b')' => Classes::PAREN,
            b';' => Classes::SEMI,
            b'|' => Classes::PIPE,
            b'&' => Classes::AMP,
            b'$' => Classes::DOLLAR,
            b'.' => Classes::DOT,
            b'/' | b'\\' => Classes::SLASH,
            b':' => Classes::COLON,
            b'{' | b'}' => Classes::BRACE,
            b'=' => Classes::EQ,
            b'#' => Classes::HASH,
            b'-' => Classes::DASH,
            b' ' | b'\t' | 0x0B | 0x0C => Classes::SPACE,
            b'\r' | b'\n' => Classes::NEWLINE | Classes::SPACE,
            b'*' => Classes::STAR,
            b'@' => Classes::AT,
            b'+' | b'!' | b'^' | b'~' | b'>' | b',' | b'%' => Classes::OP,
            b'0'..=b'9' => Classes::DIGIT,
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => Classes::ALPHA,
            _ => 0,
        };
        i += 1;
    }
    t
};

/// One decoded value, as every detector receives it.
pub(crate) struct Value<'a> {
    pub location: &'a str,
    pub kind: FieldKind,
    pub text: &'a str,
    /// `text` ASCII-lowercased.
    pub lower: &'a str,
    pub classes: Classes,
}

/// Characters that never start or carry an attack on their own: a value of only these (an id, a number, a
/// slug, a timestamp) is skipped without decoding. `..` (traversal), `__` (`__proto__`) and a leading dot
/// before a name (`.htaccess`, `.env`: hidden files) are the exceptions built from them.
fn is_plain(raw: &[u8]) -> bool {
    !(raw.first() == Some(&b'.') && raw.get(1).is_some_and(u8::is_ascii_alphabetic))
        && raw
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b',' | b':' | b'@'))
        && memchr::memmem::find(raw, b"..").is_none()
        && memchr::memmem::find(raw, b"__").is_none()
        && !has_hex_separator(raw)
}

/// `0x2e`, `0x2f`, `0x5c`: a dot or separator spelled as a C hex literal, which lenient path parsers and
/// fuzz lists use and which is made only of plain characters.
fn has_hex_separator(raw: &[u8]) -> bool {
    memchr::memmem::find_iter(raw, b"0x").any(|at| {
        raw.get(at + 2..at + 4)
            .is_some_and(|h| matches!(&*h.to_ascii_lowercase(), b"2e" | b"2f" | b"5c"))
    })
}

/// Binary content: a well-known binary file signature, or a long value with control bytes that no text
/// format uses. Short values with control bytes are attack payloads far more often than data.
fn is_binary(raw: &[u8]) -> bool {
    const MAGIC: &[&[u8]] = &[
        b"GIF8",
        b"\x89PNG",
        b"\xFF\xD8\xFF",
        b"\x1F\x8B",
        b"PK\x03\x04",
        b"%PDF-",
        b"RIFF",
        b"\x78\x9C",
        b"\x78\xDA",
        b"BM",
        b"\x00\x00\x01\x00",
        b"wOFF",
        b"wOF2",
        b"\x00asm",
        b"7z\xBC\xAF",
    ];
    if MAGIC.iter().any(|m| raw.starts_with(m)) && raw.len() >= 16 {
        return true;
    }
    let head = &raw[..raw.len().min(1024)];
    let control = head
        .iter()
        .filter(|&&b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0C))
        .count();
    raw.len() >= 256 && control * 20 > head.len()
}

/// Decodes one field and runs the relevant detectors on it.
pub(crate) fn scan_field(field: &Field<'_>, policy: &Policy, sink: &mut Sink<'_>) {
    if field.kind == FieldKind::XmlDocument {
        expr::scan_xml_document(field, sink);
        return;
    }
    if field.raw.len() < 2 {
        return;
    }
    if let Some(decoded) = decode::base64_text(field.raw) {
        // A parameter that is base64 of readable text is read by the application after decoding.
        let inner = Field {
            location: field.location,
            raw: &decoded,
            kind: field.kind,
        };
        scan_decoded(&inner, policy, sink);
    }
    if is_plain(field.raw) && (field.kind == FieldKind::Name || !cmdi::is_bare_command(field.raw)) {
        return;
    }
    if matches!(field.kind, FieldKind::Body | FieldKind::Value) && is_binary(field.raw) {
        // Images, archives, compressed beacons: only code smuggled into them (polyglot uploads) matters.
        let text = String::from_utf8_lossy(&field.raw[..field.raw.len().min(policy.max_value_bytes)]);
        let lower = text.to_ascii_lowercase();
        let v = Value {
            location: field.location,
            kind: field.kind,
            text: &text,
            lower: &lower,
            classes: Classes::of(lower.as_bytes()),
        };
        expr::scan_code(&v, sink);
        return;
    }
    scan_decoded(field, policy, sink);
}

/// The detectors over one field's decoded value.
fn scan_decoded(field: &Field<'_>, policy: &Policy, sink: &mut Sink<'_>) {
    let Normalized { text, lower, flags } = decode::normalize(field.raw, policy.max_value_bytes);
    let v = Value {
        location: field.location,
        kind: field.kind,
        text: &text,
        lower: &lower,
        classes: Classes::of(lower.as_bytes()),
    };
    protocol::decode_anomalies(&v, flags, sink);
    xss::encoded_markup_probe(&v, field.raw, sink);
    protocol::crlf(&v, sink);
    if field.kind == FieldKind::UserAgent {
        protocol::scanner(&v, sink);
    }
    sqli::scan(&v, sink);
    xss::scan(&v, sink);
    cmdi::scan(&v, sink);
    traversal::scan(&v, sink);
    if field.kind != FieldKind::Referer {
        ssrf::scan(&v, sink);
    }
    jndi::scan(&v, sink);
    expr::scan(&v, sink);
}

/// A short excerpt around byte `at` of `text`, on char boundaries.
pub(crate) fn excerpt(text: &str, at: usize) -> &str {
    let mut start = at.saturating_sub(16).min(text.len());
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = (at + 64).min(text.len());
    while !text.is_char_boundary(end) {
        end += 1;
    }
    &text[start..end]
}

/// A multi-needle matcher built once: one pass over the value instead of one search per needle.
pub(crate) type Needles = std::sync::LazyLock<Option<aho_corasick::AhoCorasick>>;

/// Builds a [`Needles`] automaton; `None` only if the list is unbuildable, which the tests rule out.
pub(crate) fn needles(words: &[&str]) -> Option<aho_corasick::AhoCorasick> {
    // A full DFA: the lists are small, so its memory is too, and it is the fastest search kind.
    aho_corasick::AhoCorasick::builder()
        .kind(Some(aho_corasick::AhoCorasickKind::DFA))
        .build(words)
        .ok()
}

/// First match of any needle: its start and the needle's index.
pub(crate) fn find_any(n: &Needles, hay: &str) -> Option<(usize, usize)> {
    n.as_ref()?.find(hay).map(|m| (m.start(), m.pattern().as_usize()))
}

/// Start of the run of ASCII bytes satisfying `keep` that ends at `at`: always a char boundary, since the
/// run holds only ASCII.
pub(crate) fn run_start(s: &str, at: usize, keep: impl Fn(u8) -> bool) -> usize {
    let b = s.as_bytes();
    let mut i = at.min(b.len());
    while i > 0 && b[i - 1].is_ascii() && keep(b[i - 1]) {
        i -= 1;
    }
    i
}
