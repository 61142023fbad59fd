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
    decode::{self, DecodeFlags, Normalized},
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
    /// Any byte of a multi-byte UTF-8 character.
    pub const NON_ASCII: u32 = 1 << 22;

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
            0x80..=0xFF => Classes::NON_ASCII,
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
/// slug, a timestamp) is skipped without decoding. `..` (traversal), `__` (`__proto__`) and the spellings of
/// [`attack_from_plain_chars`] are the exceptions built from them.
fn is_plain(raw: &[u8]) -> bool {
    raw.iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b',' | b':' | b'@'))
        && memchr::memmem::find(raw, b"..").is_none()
        && memchr::memmem::find(raw, b"__").is_none()
        && !attack_from_plain_chars(raw, true, true)
}

/// Attacks spelled only with plain characters: a hidden file's name (`.htaccess`), a separator as a C hex
/// literal, a script URL. `digits` and `colon` say whether the value can hold one of those at all, so a
/// caller that already knows its classes skips the searches. Both plainness tests call this one.
fn attack_from_plain_chars(raw: &[u8], digits: bool, colon: bool) -> bool {
    raw.first() == Some(&b'.') && raw.get(1).is_some_and(u8::is_ascii_alphabetic)
        || digits && has_hex_separator(raw)
        || colon && has_script_scheme(raw)
}

/// `javascript:`, `vbscript:`, `livescript:`: a script URL needs no punctuation beyond its colon
/// (`javascript:alert` in a redirect parameter).
fn has_script_scheme(raw: &[u8]) -> bool {
    memchr::memchr_iter(b':', raw)
        .any(|at| raw[..at].len() >= 6 && raw[at - 6..at].eq_ignore_ascii_case(b"script"))
}

/// `0x2e`, `0x2f`, `0x5c`: a dot or separator spelled as a C hex literal, which lenient path parsers and
/// fuzz lists use and which is made only of plain characters.
fn has_hex_separator(raw: &[u8]) -> bool {
    // A `memchr` per `x` (rarer in ids and text than `0`) rather than a substring searcher per value.
    memchr::memchr_iter(b'x', raw).any(|x| {
        x > 0
            && raw[x - 1] == b'0'
            && raw.get(x + 1..x + 3).is_some_and(|h| {
                [b"2e", b"2f", b"5c"]
                    .iter()
                    .any(|sep| h.eq_ignore_ascii_case(*sep))
            })
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
    if raw.len() < 256 {
        return false;
    }
    let head = &raw[..raw.len().min(1024)];
    let control = head
        .iter()
        .filter(|&&b| b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r' | 0x0C))
        .count();
    control * 20 > head.len()
}

/// Whether [`scan_field`] may skip work that provably cannot change the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prefilter {
    /// Values that need no decoding are not copied, and each detector runs only when its trigger (see
    /// [`triggers`]) holds. What production uses.
    On,
    /// Every value through [`decode::normalize`] and every detector: the reference the prefilter is tested
    /// against.
    Off,
}

/// Buffers reused across the fields of one request, so that a value costs no allocation unless decoding
/// changes it.
#[derive(Default)]
pub(crate) struct Scratch {
    lower: String,
}

/// Decodes one field and runs the relevant detectors on it.
pub(crate) fn scan_field(
    field: &Field<'_>,
    policy: &Policy,
    prefilter: Prefilter,
    scratch: &mut Scratch,
    sink: &mut Sink<'_>,
) {
    if field.kind == FieldKind::XmlDocument {
        expr::scan_xml_document(field, sink);
        return;
    }
    if field.raw.len() < 2 {
        return;
    }
    // With the prefilter, one pass over the raw bytes answers "can it be base64 text?", "is it plain?" and
    // "does decoding change it?" at once.
    let shape = (prefilter == Prefilter::On).then(|| RawShape::of(field.raw));
    let maybe_base64 = shape.is_none_or(|s| s.maybe_base64_text(field.raw));
    if maybe_base64 && let Some(decoded) = decode::base64_text(field.raw) {
        // A parameter that is base64 of readable text is read by the application after decoding.
        let inner = Field {
            location: field.location,
            raw: &decoded,
            kind: field.kind,
            text: None,
        };
        scan_decoded(&inner, policy, prefilter, None, scratch, sink);
    }
    let plain = match shape {
        Some(s) => s.is_plain(field.raw),
        None => is_plain(field.raw),
    };
    if plain && (field.kind == FieldKind::Name || !cmdi::is_bare_command(field.raw)) {
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
    scan_decoded(field, policy, prefilter, shape, scratch, sink);
}

/// Facts about a raw value, gathered in one pass of one table: its [`Classes`] (those of its lowercase form
/// too, since the class table does not tell case apart) and the flags above them.
#[derive(Clone, Copy)]
struct RawShape(u32);

impl RawShape {
    /// A byte [`is_plain`] rejects.
    const NOT_PLAIN: u32 = 1 << 24;
    /// A byte outside the base64 alphabets [`decode::base64_text`] accepts.
    const NOT_BASE64: u32 = 1 << 25;
    const UPPER: u32 = 1 << 26;
    const LOWER: u32 = 1 << 27;
    /// A byte [`decode::normalize`] may change: non-ASCII, `%`, `&`, `\\`, NUL.
    const DECODES: u32 = 1 << 28;
    /// `_`, which [`is_plain`] rejects when doubled.
    const UNDERSCORE: u32 = 1 << 29;
    const CLASSES: u32 = (1 << 24) - 1;

    fn of(raw: &[u8]) -> Self {
        Self(raw.iter().fold(0, |m, &b| m | SHAPE_TABLE[usize::from(b)]))
    }

    const fn has(self, bit: u32) -> bool {
        self.0 & bit != 0
    }

    const fn classes(self) -> Classes {
        Classes(self.0 & Self::CLASSES)
    }

    /// False only where [`decode::base64_text`] returns `None`: it needs 8 bytes or more, an upper- and a
    /// lowercase letter, and nothing but its alphabet once ASCII whitespace is trimmed off the ends.
    fn maybe_base64_text(self, raw: &[u8]) -> bool {
        let trims = raw.first().is_some_and(u8::is_ascii_whitespace)
            || raw.last().is_some_and(u8::is_ascii_whitespace);
        raw.len() >= 8
            && self.has(Self::UPPER)
            && self.has(Self::LOWER)
            && (!self.has(Self::NOT_BASE64) || trims)
    }

    /// [`is_plain`], from the pass already made.
    fn is_plain(self, raw: &[u8]) -> bool {
        let doubled = |c: u8| memchr::memchr_iter(c, raw).any(|i| raw.get(i + 1) == Some(&c));
        let doubled_dot = self.has(Classes::DOT) && doubled(b'.');
        let doubled_underscore = self.has(Self::UNDERSCORE) && doubled(b'_');
        !self.has(Self::NOT_PLAIN)
            && !doubled_dot
            && !doubled_underscore
            && !attack_from_plain_chars(raw, self.has(Classes::DIGIT), self.has(Classes::COLON))
    }
}

/// [`CLASS_TABLE`] with the [`RawShape`] flags on top.
const SHAPE_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        #[expect(clippy::cast_possible_truncation, reason = "i < 256")]
        let b = i as u8;
        let mut f = CLASS_TABLE[i];
        if !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b',' | b':' | b'@')) {
            f |= RawShape::NOT_PLAIN;
        }
        if !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_')) {
            f |= RawShape::NOT_BASE64;
        }
        if b.is_ascii_uppercase() {
            f |= RawShape::UPPER;
        }
        if b.is_ascii_lowercase() {
            f |= RawShape::LOWER;
        }
        if !b.is_ascii() || matches!(b, b'%' | b'&' | b'\\' | 0) {
            f |= RawShape::DECODES;
        }
        if b == b'_' {
            f |= RawShape::UNDERSCORE;
        }
        t[i] = f;
        i += 1;
    }
    t
};

/// The detectors over one field's decoded value. `shape` is the raw value's, when already computed.
fn scan_decoded(
    field: &Field<'_>,
    policy: &Policy,
    prefilter: Prefilter,
    shape: Option<RawShape>,
    scratch: &mut Scratch,
    sink: &mut Sink<'_>,
) {
    let shape = match (prefilter, shape) {
        (Prefilter::Off, _) => None,
        (Prefilter::On, Some(s)) => Some(s),
        (Prefilter::On, None) => Some(RawShape::of(field.raw)),
    };
    if let Some(shape) = shape
        && !shape.has(RawShape::DECODES)
        && field.raw.len() <= policy.max_value_bytes
        && let Some(text) = field.text.or_else(|| std::str::from_utf8(field.raw).ok())
    {
        // `normalize` would return `text` itself (see `decode::unchanged_by_normalize`): skip its copies,
        // lowercase into the reused buffer (or not at all), and the flags are all clear.
        let lower = if shape.has(RawShape::UPPER) {
            scratch.lower.clear();
            scratch.lower.push_str(text);
            scratch.lower.make_ascii_lowercase();
            scratch.lower.as_str()
        } else {
            text
        };
        let v = Value {
            location: field.location,
            kind: field.kind,
            text,
            lower,
            classes: shape.classes(),
        };
        debug_assert_eq!(v.classes.0, Classes::of(lower.as_bytes()).0);
        run_detectors(
            &v,
            DecodeFlags::default(),
            triggers(&v, DecodeFlags::default()),
            sink,
        );
        return;
    }
    let Normalized { text, lower, flags } = decode::normalize(field.raw, policy.max_value_bytes);
    let v = Value {
        location: field.location,
        kind: field.kind,
        text: &text,
        lower: &lower,
        classes: Classes::of(lower.as_bytes()),
    };
    // Only decoding can turn a value into a lone `<`: the probe is looked for here, not in the fast path.
    xss::encoded_markup_probe(&v, field.raw, sink);
    let run = match prefilter {
        Prefilter::On => triggers(&v, flags),
        Prefilter::Off => Detectors::ALL,
    };
    run_detectors(&v, flags, run, sink);
}

/// A set of detectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Detectors(u16);

impl Detectors {
    const DECODE_ANOMALIES: Self = Self(1);
    const CRLF: Self = Self(1 << 1);
    const SCANNER: Self = Self(1 << 2);
    const SQLI: Self = Self(1 << 3);
    const XSS: Self = Self(1 << 4);
    const CMDI: Self = Self(1 << 5);
    const TRAVERSAL: Self = Self(1 << 6);
    const SSRF: Self = Self(1 << 7);
    const JNDI: Self = Self(1 << 8);
    const EXPR: Self = Self(1 << 9);
    const NONE: Self = Self(0);
    const ALL: Self = Self(u16::MAX);

    const fn has(self, d: Self) -> bool {
        self.0 & d.0 != 0
    }

    fn add_if(&mut self, d: Self, cond: bool) {
        if cond {
            self.0 |= d.0;
        }
    }
}

/// The dispatch. Kind rules (which detector applies to which field kind) are part of the detection logic and
/// hold whatever `run` says; `run` only removes detectors that [`triggers`] proved silent.
fn run_detectors(v: &Value<'_>, flags: DecodeFlags, run: Detectors, sink: &mut Sink<'_>) {
    if run.has(Detectors::DECODE_ANOMALIES) {
        protocol::decode_anomalies(v, flags, sink);
    }
    if run.has(Detectors::CRLF) {
        protocol::crlf(v, sink);
    }
    if run.has(Detectors::SCANNER) && v.kind == FieldKind::UserAgent {
        protocol::scanner(v, sink);
    }
    if run.has(Detectors::SQLI) {
        sqli::scan(v, sink);
    }
    if run.has(Detectors::XSS) {
        xss::scan(v, sink);
    }
    if run.has(Detectors::CMDI) {
        cmdi::scan(v, sink);
    }
    if run.has(Detectors::TRAVERSAL) {
        traversal::scan(v, sink);
    }
    if run.has(Detectors::SSRF) && v.kind != FieldKind::Referer {
        ssrf::scan(v, sink);
    }
    if run.has(Detectors::JNDI) {
        jndi::scan(v, sink);
    }
    if run.has(Detectors::EXPR) {
        expr::scan(v, sink);
    }
}

/// The prefilter: the detectors that can possibly report on `v`. Each condition below is *necessary* for its
/// detector to report anything, read off the detector's code: a detector left out cannot produce a finding.
/// The conditions only use facts about `v` the detector itself sees (its decoded, lowercased text): its
/// [`Classes`] (computed anyway) and at most one walk of [`PREFILTER_DFA`].
///
/// Keeping this true is a duty of whoever changes a detector: a new rule whose trigger is not covered here
/// must widen its detector's condition (the gates read `sqli::TRIGGERS`, `cmdi::SEPARATORS` and
/// `cmdi::has_escaped_line_break`, and [`PREFILTER_PATTERNS`] `sqli::SQL_WORDS` and `xss::SINKS`, from the
/// detectors themselves; [`NEEDLES`] names the detector list each of its literals comes from). The property tests `prefilter_is_conservative_per_field` and
/// `…_per_request` (over strings generated from the detectors' own regexes and literals, read from their
/// source files, and attack characters), `rasp-proxy eval --check-prefilter`, and a diff of
/// `rasp-proxy eval --verdicts` before and after catch a condition that became too narrow.
fn triggers(v: &Value<'_>, flags: DecodeFlags) -> Detectors {
    let c = v.classes;
    let mut run = Detectors::NONE;
    // decode_anomalies: reports only on one of the decoding flags.
    run.add_if(Detectors::DECODE_ANOMALIES, flags != DecodeFlags::default());
    // crlf: returns unless the value has a `:` and a CR/LF, or one of four non-ASCII characters it folds to
    // CR/LF.
    run.add_if(
        Detectors::CRLF,
        c.any(Classes::COLON) && c.any(Classes::NEWLINE | Classes::NON_ASCII),
    );
    // scanner: user agents only, whatever they contain (one value per request).
    run.add_if(Detectors::SCANNER, v.kind == FieldKind::UserAgent);
    // jndi: returns unless the value has `$` and a brace (it then looks for `${`).
    run.add_if(Detectors::JNDI, c.any(Classes::DOLLAR) && c.any(Classes::BRACE));

    // sqli: skips the Referer, and returns unless a trigger class or whitespace is present and
    // `could_be_sql` holds: a quote, `#` or `@`, `--` or `/*`, or one of its SQL words bounded by non-word
    // bytes. All of its rules, libinjection included, run after that check.
    let sqli_gate = v.kind != FieldKind::Referer && c.any(sqli::TRIGGERS | Classes::SPACE);
    let sqli_by_class = sqli_gate && c.any(Classes::QUOTE | Classes::HASH | Classes::AT);
    // xss, rule by rule: libinjection needs `<`, or `=` with a quote or an `on…=` handler (which contains
    // `on`); tags and processing instructions need `<`; `attribute_break` needs a quote and `=`; `template`
    // needs a brace. Then, with needles: `script_uri` needs `:` and either a literal `…script:` or a value
    // whose first visible character starts `javascript:`, `vbscript:`, `livescript:` or `data:` (it
    // compares prefixes after dropping whitespace and control characters); `js` needs `(`, a quote or `.`,
    // and one of its sink literals; `js_call` needs `(`, a backtick or a quote, and its regex needs `[`,
    // `source`, `alert`, `confirm`, `prompt` or `document` in every alternative.
    let xss_by_class = c.any(Classes::LT | Classes::BRACE)
        || c.any(Classes::EQ) && (c.any(Classes::QUOTE) || has_on(v.lower.as_bytes()))
        || c.any(Classes::COLON)
            && v.lower
                .chars()
                .find(|ch| !ch.is_whitespace() && !ch.is_control())
                .is_some_and(|ch| matches!(ch, 'j' | 'v' | 'l' | 'd'));
    // cmdi: shellshock needs `(` and `{`; chained commands need a separator or substitution character (its
    // own first check); `shell_path` needs `/` and one of its literals, all of which contain `/bin/`,
    // `/dev/`, `cmd` or `powershell`.
    // `direct_command` needs the value's first word (past whitespace and quotes) to be a command or to be
    // spelled with shell quoting (`cmdi::may_start_command`, the detector's own fast reading), in a field
    // that is not a parameter name unless it has a space; an escaped line break (`\n`) needs a backslash.
    let first_letter = cmdi::may_start_command(v.lower);
    let cmdi_by_class = c.any(Classes::PAREN) && c.any(Classes::BRACE)
        || c.any(cmdi::SEPARATORS)
        || first_letter && (v.kind != FieldKind::Name || c.any(Classes::SPACE))
        || cmdi::has_escaped_line_break(v);
    // traversal: returns unless `/`, `\`, `.` or `:`; then every rule needs `..`, or a sensitive file or
    // directory name, or a stream wrapper, in the value after it un-mangles `0x2f`-style and split-percent
    // separators. With no `0x` and no `%` that is the value itself (with `\` as `/`), and each of its file
    // names, path-name pairs and wrappers contains one of the `TRAVERSAL` needles, none of which has a
    // separator in it.
    // It also reads garbled separators: `%` (class OP), `0x` (a digit) and undecodable bytes (non-ASCII) each
    // stand for `/`, so those classes open the gate too; a needle is still required.
    let traversal_gate = c.any(
        Classes::SLASH | Classes::DOT | Classes::COLON | Classes::OP | Classes::DIGIT | Classes::NON_ASCII,
    );
    // ssrf: returns unless `:` and `/`; every rule is about a `://` it finds.
    let ssrf_gate = c.any(Classes::COLON) && c.any(Classes::SLASH);
    // expr: its rules gate on `<`, `(`, braces, `#`, `$` or a newline; the Java, Node.js and prototype
    // regexes gate on `.`, and each alternative of theirs needs one of the `EXPR_DOTTED` literals; the
    // markers and `__proto__` are literals.
    let expr_by_class = c.any(
        Classes::LT | Classes::PAREN | Classes::BRACE | Classes::HASH | Classes::DOLLAR | Classes::NEWLINE,
    );

    // Only needle groups that can still change a decision are looked for.
    let mut wanted = Needle::NONE;
    wanted.add_if(Needle::SQL, sqli_gate && !sqli_by_class);
    if !xss_by_class {
        wanted.add_if(Needle::SCRIPT_SCHEME, c.any(Classes::COLON));
        wanted.add_if(
            Needle::JS_SINK,
            c.any(Classes::PAREN | Classes::QUOTE | Classes::DOT),
        );
        wanted.add_if(
            Needle::JS_CALL,
            c.any(Classes::PAREN | Classes::BACKTICK | Classes::QUOTE),
        );
    }
    wanted.add_if(Needle::SHELL_PATH, !cmdi_by_class && c.any(Classes::SLASH));
    wanted.add_if(Needle::TRAVERSAL, traversal_gate);
    wanted.add_if(Needle::URL, ssrf_gate);
    if !expr_by_class {
        wanted.add_if(Needle::EXPR_DOTTED, c.any(Classes::DOT));
        wanted.add_if(Needle::EXPR, true);
    }
    let found = needles_in(v.lower, wanted);

    run.add_if(Detectors::SQLI, sqli_by_class || found.has(Needle::SQL));
    run.add_if(
        Detectors::XSS,
        xss_by_class || found.has(Needle::SCRIPT_SCHEME | Needle::JS_SINK | Needle::JS_CALL),
    );
    run.add_if(Detectors::CMDI, cmdi_by_class || found.has(Needle::SHELL_PATH));
    run.add_if(Detectors::TRAVERSAL, found.has(Needle::TRAVERSAL));
    run.add_if(Detectors::SSRF, found.has(Needle::URL));
    run.add_if(
        Detectors::EXPR,
        expr_by_class || found.has(Needle::EXPR_DOTTED | Needle::EXPR),
    );
    run
}

/// Whether `on` occurs: one `memchr` per `o`, no searcher built for a two-byte needle.
fn has_on(b: &[u8]) -> bool {
    memchr::memchr_iter(b'o', b).any(|i| b.get(i + 1) == Some(&b'n'))
}

/// Groups of literals the prefilter looks for, as bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Needle(u16);

impl Needle {
    /// `sqli`'s SQL words (whole words only) and comment openers.
    const SQL: Self = Self(1);
    const SCRIPT_SCHEME: Self = Self(1 << 1);
    const JS_SINK: Self = Self(1 << 2);
    const JS_CALL: Self = Self(1 << 3);
    const SHELL_PATH: Self = Self(1 << 4);
    const TRAVERSAL: Self = Self(1 << 5);
    const URL: Self = Self(1 << 6);
    const EXPR_DOTTED: Self = Self(1 << 7);
    const EXPR: Self = Self(1 << 8);

    const NONE: Self = Self(0);

    /// Whether any group of `n` is in the set.
    const fn has(self, n: Self) -> bool {
        self.0 & n.0 != 0
    }

    fn add_if(&mut self, n: Self, cond: bool) {
        if cond {
            self.0 |= n.0;
        }
    }
}

impl std::ops::BitOr for Needle {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// The literals besides `sqli::SQL_WORDS` and `xss::SINKS` (read from their detectors), each with its group.
const NEEDLES: &[(&str, Needle)] = &[
    ("--", Needle::SQL),
    ("/*", Needle::SQL),
    ("script:", Needle::SCRIPT_SCHEME),
    // xss `JS_CALL_RE`.
    ("[", Needle::JS_CALL),
    ("source", Needle::JS_CALL),
    ("alert", Needle::JS_CALL),
    ("confirm", Needle::JS_CALL),
    ("prompt", Needle::JS_CALL),
    ("document", Needle::JS_CALL),
    // cmdi `shell_path`.
    ("/bin/", Needle::SHELL_PATH),
    ("/dev/", Needle::SHELL_PATH),
    ("cmd", Needle::SHELL_PATH),
    ("powershell", Needle::SHELL_PATH),
    // traversal: `..`, the un-mangling triggers, pieces of `SENSITIVE`, `UNMISTAKABLE`, `SENSITIVE_PAIRS`
    // and `WRAPPERS`.
    ("..", Needle::TRAVERSAL),
    ("?.", Needle::TRAVERSAL),
    ("0x", Needle::TRAVERSAL),
    ("%", Needle::TRAVERSAL),
    ("etc", Needle::TRAVERSAL),
    ("proc", Needle::TRAVERSAL),
    ("self", Needle::TRAVERSAL),
    ("win", Needle::TRAVERSAL),
    ("boot", Needle::TRAVERSAL),
    ("system", Needle::TRAVERSAL),
    ("web-inf", Needle::TRAVERSAL),
    ("meta-inf", Needle::TRAVERSAL),
    (".ht", Needle::TRAVERSAL),
    ("history", Needle::TRAVERSAL),
    ("id_rsa", Needle::TRAVERSAL),
    ("authorized_keys", Needle::TRAVERSAL),
    (".git", Needle::TRAVERSAL),
    (".svn", Needle::TRAVERSAL),
    ("wp-config", Needle::TRAVERSAL),
    ("var", Needle::TRAVERSAL),
    ("usr", Needle::TRAVERSAL),
    ("inetpub", Needle::TRAVERSAL),
    ("autoexec", Needle::TRAVERSAL),
    ("config", Needle::TRAVERSAL),
    ("php.ini", Needle::TRAVERSAL),
    ("my.cnf", Needle::TRAVERSAL),
    ("httpd", Needle::TRAVERSAL),
    (".env", Needle::TRAVERSAL),
    ("localstart", Needle::TRAVERSAL),
    ("sam", Needle::TRAVERSAL),
    ("ntuser", Needle::TRAVERSAL),
    ("c$", Needle::TRAVERSAL),
    ("admin$", Needle::TRAVERSAL),
    ("php:", Needle::TRAVERSAL),
    ("zip:", Needle::TRAVERSAL),
    ("phar:", Needle::TRAVERSAL),
    ("expect:", Needle::TRAVERSAL),
    ("glob:", Needle::TRAVERSAL),
    ("data:", Needle::TRAVERSAL),
    ("zlib:", Needle::TRAVERSAL),
    ("jar:", Needle::TRAVERSAL),
    ("ogg:", Needle::TRAVERSAL),
    ("ssh2.", Needle::TRAVERSAL),
    ("rar:", Needle::TRAVERSAL),
    // ssrf.
    ("://", Needle::URL),
    // expr `JAVA_RE`, `NODE_RE` and `PROTO_RE` alternatives that need no class of their own.
    ("java", Needle::EXPR_DOTTED),
    ("getruntime", Needle::EXPR_DOTTED),
    ("processbuilder", Needle::EXPR_DOTTED),
    ("forname", Needle::EXPR_DOTTED),
    ("getclass", Needle::EXPR_DOTTED),
    ("xwork2", Needle::EXPR_DOTTED),
    ("ognl", Needle::EXPR_DOTTED),
    ("exec", Needle::EXPR_DOTTED),
    ("scriptenginemanager", Needle::EXPR_DOTTED),
    ("com.sun", Needle::EXPR_DOTTED),
    ("commons", Needle::EXPR_DOTTED),
    ("mchange", Needle::EXPR_DOTTED),
    ("templatesimpl", Needle::EXPR_DOTTED),
    ("jdbcrowsetimpl", Needle::EXPR_DOTTED),
    ("bsh.", Needle::EXPR_DOTTED),
    ("groovy", Needle::EXPR_DOTTED),
    ("require", Needle::EXPR_DOTTED),
    ("process", Needle::EXPR_DOTTED),
    ("constructor", Needle::EXPR_DOTTED),
    // expr: `__proto__` (checked without a class) and `MARKERS`.
    ("__proto__", Needle::EXPR),
    ("aced0005", Needle::EXPR),
    ("ro0ab", Needle::EXPR),
    ("+adw-", Needle::EXPR),
    ("+ad4-", Needle::EXPR),
    ("+aci-", Needle::EXPR),
    ("+acc-", Needle::EXPR),
    ("!!python/", Needle::EXPR),
    ("!!java", Needle::EXPR),
    ("!!ruby/", Needle::EXPR),
    ("!!perl/", Needle::EXPR),
    ("!!php/", Needle::EXPR),
    ("tag:yaml.org,2002:python", Needle::EXPR),
    ("[#post_render]", Needle::EXPR),
    ("[#pre_render]", Needle::EXPR),
    ("[#lazy_builder]", Needle::EXPR),
    ("[#access_callback]", Needle::EXPR),
    ("#post_render[", Needle::EXPR),
    ("#lazy_builder[", Needle::EXPR),
    ("--open-files-in-pager=", Needle::EXPR),
    ("--upload-pack=", Needle::EXPR),
    ("--receive-pack=", Needle::EXPR),
    ("-oproxycommand", Needle::EXPR),
    ("core.sshcommand=", Needle::EXPR),
    ("--exec=", Needle::EXPR),
    ("--checkpoint-action=exec", Needle::EXPR),
    ("__schema", Needle::EXPR),
];

/// Every literal the prefilter looks for, with its group: the detectors' own `sqli::SQL_WORDS` first (so a
/// pattern id below their count is a SQL word, matched whole), then `xss::SINKS`, then [`NEEDLES`].
static PREFILTER_PATTERNS: std::sync::LazyLock<Vec<(&'static str, Needle)>> =
    std::sync::LazyLock::new(|| {
        sqli::SQL_WORDS
            .iter()
            .map(|w| (*w, Needle::SQL))
            .chain(xss::SINKS.iter().map(|w| (*w, Needle::JS_SINK)))
            .chain(NEEDLES.iter().copied())
            .collect()
    });

/// All of [`PREFILTER_PATTERNS`] in one DFA. Standard match semantics, so that walking it reports every
/// occurrence of every literal (see [`needles_in`]).
static PREFILTER_DFA: std::sync::LazyLock<Option<aho_corasick::dfa::DFA>> = std::sync::LazyLock::new(|| {
    aho_corasick::dfa::DFA::builder()
        .match_kind(aho_corasick::MatchKind::Standard)
        .prefilter(false)
        .build(PREFILTER_PATTERNS.iter().map(|(n, _)| *n))
        .ok()
});

/// The longest literal in [`PREFILTER_PATTERNS`]: how far apart two lanes of [`needles_in`] must overlap.
static LONGEST_PATTERN: std::sync::LazyLock<usize> =
    std::sync::LazyLock::new(|| PREFILTER_PATTERNS.iter().map(|(n, _)| n.len()).max().unwrap_or(0));

/// Values at least this long are walked in two lanes by [`needles_in`]; shorter ones gain too little from a
/// second lane to pay for its overlap.
const TWO_LANES_FROM: usize = 64;

/// Which of the `wanted` needle groups occur in `lower`, walking [`PREFILTER_DFA`] and stopping once all of
/// them have been seen (no walk at all when none is wanted). Groups not wanted may be missing from the
/// answer. An unbuildable automaton (ruled out by the tests) reports every group.
///
/// The walk is the textbook overlapping search, one transition per byte: every match state reached reports
/// every literal ending there, so no occurrence can hide behind another (which a leftmost search would
/// allow, and a prefilter cannot afford).
///
/// One walk is a chain of dependent table loads, so its speed is the memory latency, not the core's width.
/// A long value is therefore walked as two independent lanes in step, which the core overlaps: the first
/// over `[0, mid)`, the second from the start state at `mid - (longest literal - 1)` to the end. An
/// occurrence ending by `mid` is seen by the first; one ending after `mid` starts at or after the second's
/// start, and an unanchored walk from the start state sees every occurrence that begins where it began or
/// later. Both lanes only ever report real occurrences, so the answer is exactly the one-lane answer.
fn needles_in(lower: &str, wanted: Needle) -> Needle {
    use aho_corasick::{Anchored, automaton::Automaton as _};
    if wanted == Needle::NONE {
        return Needle::NONE;
    }
    let Some(dfa) = PREFILTER_DFA.as_ref() else {
        return Needle(u16::MAX);
    };
    let Ok(start) = dfa.start_state(Anchored::No) else {
        return Needle(u16::MAX);
    };
    let b = lower.as_bytes();
    let is_word = |ch: u8| ch.is_ascii_alphanumeric() || ch == b'_';
    // The groups reported by the match state `sid` reached on the byte before `end`; `None` for a dead
    // state (an unanchored walk never reaches one; if it did, every group is reported, to stay a superset).
    let groups_at = |sid, end: usize| -> Option<Needle> {
        if !dfa.is_match(sid) {
            return (!dfa.is_dead(sid)).then_some(Needle::NONE);
        }
        let mut found = Needle::NONE;
        for i in 0..dfa.match_len(sid) {
            let pid = dfa.match_pattern(sid, i);
            let group = if pid.as_usize() < sqli::SQL_WORDS.len() {
                let start = end - dfa.pattern_len(pid);
                let bounded =
                    (start == 0 || !is_word(b[start - 1])) && b.get(end).is_none_or(|&ch| !is_word(ch));
                if !bounded {
                    continue;
                }
                Needle::SQL
            } else {
                PREFILTER_PATTERNS
                    .get(pid.as_usize())
                    .map_or(Needle(u16::MAX), |(_, g)| *g)
            };
            found = found | group;
        }
        Some(found)
    };
    let mut found = Needle::NONE;
    let overlap = LONGEST_PATTERN.saturating_sub(1);
    // The first lane's end and the second lane's start; a short value is walked by the second lane alone.
    let (mid, second_from) = if b.len() >= TWO_LANES_FROM.max(4 * overlap) {
        let mid = b.len().midpoint(overlap);
        (mid, mid - overlap)
    } else {
        (0, 0)
    };
    let mut first = start;
    let mut second = start;
    // Both lanes in step, as long as the first has bytes; the second is at most one byte longer.
    for (at_first, (&byte_first, &byte_second)) in b[..mid].iter().zip(&b[second_from..]).enumerate() {
        first = dfa.next_state(Anchored::No, first, byte_first);
        second = dfa.next_state(Anchored::No, second, byte_second);
        if !dfa.is_special(first) && !dfa.is_special(second) {
            continue;
        }
        for (sid, end) in [(first, at_first + 1), (second, second_from + at_first + 1)] {
            if dfa.is_special(sid) {
                match groups_at(sid, end) {
                    Some(g) => found = found | g,
                    None => return Needle(u16::MAX),
                }
            }
        }
        if found.0 & wanted.0 == wanted.0 {
            return found;
        }
    }
    // The rest of the second lane: its last byte, or the whole of a short value.
    let mut sid = second;
    for (at, &byte) in b.iter().enumerate().skip(second_from + mid) {
        sid = dfa.next_state(Anchored::No, sid, byte);
        if !dfa.is_special(sid) {
            continue;
        }
        match groups_at(sid, at + 1) {
            Some(g) => found = found | g,
            None => return Needle(u16::MAX),
        }
        if found.0 & wanted.0 == wanted.0 {
            break;
        }
    }
    found
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_flags_agree_with_the_functions_they_stand_for() {
        for b in 0..=255u8 {
            let two = [b, b'a'];
            let shape = RawShape::of(&two);
            assert_eq!(
                !shape.has(RawShape::DECODES),
                decode::unchanged_by_normalize(&two, 16).is_some(),
                "byte {b:#x}"
            );
            assert_eq!(shape.is_plain(&two), is_plain(&two), "byte {b:#x}");
            assert_eq!(shape.classes().0, Classes::of(&two).0, "byte {b:#x}");
            let doubled = [b, b];
            assert_eq!(
                RawShape::of(&doubled).is_plain(&doubled),
                is_plain(&doubled),
                "byte {b:#x}"
            );
        }
        assert!(PREFILTER_DFA.is_some());
    }

    /// Every group in `lower`, found independently of [`needles_in`]: an overlapping search of a
    /// non-DFA automaton, with the same whole-word rule for SQL words.
    fn groups_by_reference(lower: &str) -> Needle {
        let patterns: Vec<&str> = PREFILTER_PATTERNS.iter().map(|(n, _)| *n).collect();
        let ac = aho_corasick::AhoCorasick::builder()
            .kind(Some(aho_corasick::AhoCorasickKind::NoncontiguousNFA))
            .build(&patterns)
            .unwrap_or_else(|e| panic!("prefilter patterns: {e}"));
        let b = lower.as_bytes();
        let is_word = |ch: u8| ch.is_ascii_alphanumeric() || ch == b'_';
        ac.find_overlapping_iter(lower)
            .filter(|m| {
                m.pattern().as_usize() >= sqli::SQL_WORDS.len()
                    || (m.start() == 0 || !is_word(b[m.start() - 1]))
                        && b.get(m.end()).is_none_or(|&ch| !is_word(ch))
            })
            .fold(Needle::NONE, |found, m| {
                found | PREFILTER_PATTERNS[m.pattern().as_usize()].1
            })
    }

    const ALL_GROUPS: Needle = Needle((1 << 9) - 1);

    fn value_of_needles() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            3 => proptest::sample::select(PREFILTER_PATTERNS.iter().map(|(n, _)| (*n).to_owned()).collect::<Vec<_>>()),
            4 => "[a-z0-9 ,._/:-]{0,12}",
        ];
        proptest::collection::vec(piece, 0..24).prop_map(|parts| parts.concat())
    }

    proptest::proptest! {
        /// Two lanes or one, the walk finds exactly the groups an independent search finds, wherever
        /// the needles sit relative to the lanes' split.
        #[test]
        fn needles_in_finds_what_an_overlapping_search_finds(
            lower in value_of_needles(),
            wanted in 1u16..(1 << 9),
        ) {
            let reference = groups_by_reference(&lower);
            proptest::prop_assert_eq!(needles_in(&lower, ALL_GROUPS), reference);
            proptest::prop_assert_eq!(needles_in(&lower, Needle(wanted)).0 & wanted, reference.0 & wanted);
        }
    }

    #[test]
    fn needles_at_the_lane_split_are_found() {
        assert!(*LONGEST_PATTERN > 1);
        for len in [TWO_LANES_FROM - 1, 4 * *LONGEST_PATTERN + 1, 150] {
            for (needle, group) in PREFILTER_PATTERNS.iter() {
                for at in 0..=len.saturating_sub(needle.len()) {
                    let mut lower = " ".repeat(len);
                    lower.replace_range(at..at + needle.len(), needle);
                    assert!(
                        needles_in(&lower, ALL_GROUPS).has(*group),
                        "{needle:?} at {at} of {len}"
                    );
                }
            }
        }
    }
}
