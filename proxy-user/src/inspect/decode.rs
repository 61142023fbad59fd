//! Decoders: turn what the client sent into what the application will finally see, so that an attack cannot
//! hide behind an encoding the detectors do not speak.
//!
//! Every function here is a single left-to-right pass with output no longer than a small constant times its
//! input, and [`normalize`] runs a bounded number of rounds, so decoding is linear in the input whatever it is.

use std::borrow::Cow;

use unicode_normalization::UnicodeNormalization as _;

/// What decoding had to undo. Some of these are suspicious on their own (nobody legitimately double-encodes
/// a query value or sends overlong UTF-8); [`super::detect`] turns them into findings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent facts about one value, read by name"
)]
pub struct DecodeFlags {
    /// Percent-encoding survived one round of decoding and produced a character that matters to an
    /// interpreter (`%252e` → `%2e` → `.`).
    pub double_encoded: bool,
    /// Overlong UTF-8 (`C0 AE` for `.`): never produced by a correct encoder, the classic filter bypass.
    pub overlong_utf8: bool,
    pub null_byte: bool,
    /// Bytes that are not UTF-8 even after folding overlong forms.
    pub invalid_utf8: bool,
    /// `%uXXXX` (IIS-style) escapes.
    pub percent_u: bool,
}

/// Rounds of decoding before giving up: three layers of encoding cover every real bypass; more is an attack
/// in itself and the result is inspected as far as it got.
const MAX_ROUNDS: usize = 3;

/// A value after every decoding step, ready for the detectors.
#[derive(Debug, Default)]
pub struct Normalized {
    /// Decoded, compatibility-normalised (NFKC), null bytes removed.
    pub text: String,
    /// `text` ASCII-lowercased: the detectors match case-insensitively through it.
    pub lower: String,
    pub flags: DecodeFlags,
}

/// Decodes one value completely: percent (repeated, `%u`), overlong UTF-8, HTML entities, JS/C backslash
/// escapes, Unicode compatibility forms (fullwidth `＜` is `<`), null bytes. Of input longer than `max`,
/// the first and last `max / 2` bytes are kept (joined by a newline): padding a value to push the payload
/// past the limit does not hide it.
#[must_use]
pub fn normalize(input: &[u8], max: usize) -> Normalized {
    let joined;
    let input = if input.len() > max {
        let half = max / 2;
        joined = [&input[..half], b"\n", &input[input.len() - half..]].concat();
        &joined[..]
    } else {
        input
    };
    let mut flags = DecodeFlags::default();
    let mut cur: Cow<'_, [u8]> = Cow::Borrowed(input);
    for round in 0..MAX_ROUNDS {
        let mut changed = false;
        if let Some(next) = percent_decode(&cur, false, &mut flags) {
            if round > 0
                && next
                    .iter()
                    .any(|b| matches!(b, b'.' | b'/' | b'\\' | b'<' | b'\'' | b'"' | b'\r' | b'\n'))
            {
                flags.double_encoded = true;
            }
            cur = Cow::Owned(next);
            changed = true;
        }
        if let Some(next) = fold_overlong(&cur) {
            flags.overlong_utf8 = true;
            cur = Cow::Owned(next);
            changed = true;
        }
        if !cur.is_ascii() {
            let s = String::from_utf8_lossy(&cur);
            if matches!(s, Cow::Owned(_)) {
                flags.invalid_utf8 = true;
            }
            // Text already in NFKC with no confusable in it would come out of the step below unchanged: the
            // quick check spares building a copy of every non-English value just to compare it.
            let unchanged = matches!(s, Cow::Borrowed(_))
                && unicode_normalization::is_nfkc_quick(s.chars())
                    == unicode_normalization::IsNormalized::Yes
                && s.chars().all(|c| fold_confusable(c) == c);
            if !unchanged {
                let nfkc: String = s.nfkc().map(fold_confusable).collect();
                if nfkc.as_bytes() != &*cur {
                    cur = Cow::Owned(nfkc.into_bytes());
                    changed = true;
                }
            }
        }
        if let Some(next) = html_entity_decode(&cur) {
            cur = Cow::Owned(next);
            changed = true;
        }
        if let Some(next) = backslash_decode(&cur) {
            cur = Cow::Owned(next);
            changed = true;
        }
        if !changed {
            break;
        }
    }
    if memchr::memchr(0, &cur).is_some() {
        flags.null_byte = true;
        cur = Cow::Owned(cur.iter().copied().filter(|&b| b != 0).collect());
    }
    let text = String::from_utf8_lossy(&cur).into_owned();
    let lower = text.to_ascii_lowercase();
    Normalized { text, lower, flags }
}

/// `input` as text when [`normalize`] would return it unchanged, with no flag set: ASCII (so no overlong
/// form, invalid UTF-8 or compatibility character), no `%`, `&` or `\\` (so no percent, entity or
/// backslash escape), no NUL, and within `max`. Most values are like this; they need no copy.
#[must_use]
pub fn unchanged_by_normalize(input: &[u8], max: usize) -> Option<&str> {
    if input.len() > max
        || input
            .iter()
            .any(|&b| !b.is_ascii() || matches!(b, b'%' | b'&' | b'\\' | 0))
    {
        return None;
    }
    std::str::from_utf8(input).ok()
}

/// Separators and dots that compatibility normalisation leaves alone but that lenient servers (IIS, some
/// Java containers, best-fit code-page conversion) turn into their ASCII look-alikes.
fn fold_confusable(c: char) -> char {
    match c {
        '\u{2215}' | '\u{2044}' | '\u{EFC8}' | '\u{F025}' | '\u{29F8}' => '/',
        '\u{2216}' | '\u{29F9}' | '\u{FE68}' | '\u{F05C}' => '\\',
        '\u{2024}' | '\u{F02E}' => '.',
        _ => c,
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn hex4(s: &[u8]) -> Option<u32> {
    if s.len() < 4 {
        return None;
    }
    s[..4]
        .iter()
        .try_fold(0u32, |acc, &b| Some(acc << 4 | u32::from(hex(b)?)))
}

fn push_char(out: &mut Vec<u8>, c: char) {
    let mut buf = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}

/// One round of percent-decoding: `%XX`, and `%uXXXX` as IIS does. `plus_as_space` is for form and query
/// syntax. `None` if there was nothing to decode, so the common case allocates nothing.
#[must_use]
pub fn percent_decode(input: &[u8], plus_as_space: bool, flags: &mut DecodeFlags) -> Option<Vec<u8>> {
    let first = if plus_as_space {
        memchr::memchr2(b'%', b'+', input)?
    } else {
        memchr::memchr(b'%', input)?
    };
    let mut out = Vec::with_capacity(input.len());
    out.extend_from_slice(&input[..first]);
    let mut i = first;
    let mut changed = false;
    while i < input.len() {
        let b = input[i];
        if b == b'%' {
            if let (Some(h), Some(l)) = (
                input.get(i + 1).and_then(|&c| hex(c)),
                input.get(i + 2).and_then(|&c| hex(c)),
            ) {
                out.push(h << 4 | l);
                i += 3;
                changed = true;
                continue;
            }
            // An escape split by a stray `%` (`%2%f`), as fuzz lists spell separators for decoders that skip
            // it; only a dot or a separator is restored, so text with percent signs is left alone.
            if let (Some(h), Some(b'%'), Some(l)) = (
                input.get(i + 1).and_then(|&c| hex(c)),
                input.get(i + 2),
                input.get(i + 3).and_then(|&c| hex(c)),
            ) && matches!(h << 4 | l, b'.' | b'/' | b'\\')
            {
                out.push(h << 4 | l);
                i += 4;
                changed = true;
                continue;
            }
            if matches!(input.get(i + 1), Some(b'u' | b'U'))
                && let Some(cp) = input.get(i + 2..).and_then(hex4)
            {
                push_char(
                    &mut out,
                    char::from_u32(cp).unwrap_or(char::REPLACEMENT_CHARACTER),
                );
                flags.percent_u = true;
                i += 6;
                changed = true;
                continue;
            }
        } else if b == b'+' && plus_as_space {
            out.push(b' ');
            i += 1;
            changed = true;
            continue;
        }
        out.push(b);
        i += 1;
    }
    changed.then_some(out)
}

/// Folds overlong UTF-8 sequences (2-, 3- and 4-byte forms of code points that need fewer bytes, and the 5-
/// and 6-byte forms of the original UTF-8 that some decoders still accept) to the code point they smuggle.
/// `None` if there was none.
#[must_use]
pub fn fold_overlong(input: &[u8]) -> Option<Vec<u8>> {
    let is_cont = |b: Option<&u8>| b.is_some_and(|&b| b & 0xC0 == 0x80);
    let first = input
        .iter()
        .position(|&b| matches!(b, 0xC0 | 0xC1 | 0xE0 | 0xF0 | 0xF8..=0xFD))?;
    let mut out = Vec::with_capacity(input.len());
    out.extend_from_slice(&input[..first]);
    let mut i = first;
    let mut changed = false;
    while i < input.len() {
        let b = input[i];
        let cp = match b {
            // IIS-era decoders kept only the low six bits of a 2-byte sequence whose lead can never be valid,
            // continuation or not (`%c1%1c` is `\\`, `%c1%af` is `/`): the separators and the dot they smuggle
            // are read that way, anything else strictly.
            0xC0 | 0xC1
                if input
                    .get(i + 1)
                    .is_some_and(|&c| matches!(c & 0x3F, 0x1C | 0x2E | 0x2F)) =>
            {
                Some((
                    2,
                    match input[i + 1] & 0x3F {
                        0x1C => u32::from(b'\\'),
                        low => u32::from(low),
                    },
                ))
            }
            0xC0 | 0xC1 if is_cont(input.get(i + 1)) => {
                Some((2, u32::from(b & 0x1F) << 6 | u32::from(input[i + 1] & 0x3F)))
            }
            0xE0 if input.get(i + 1).is_some_and(|&c| (0x80..0xA0).contains(&c))
                && is_cont(input.get(i + 2)) =>
            {
                Some((
                    3,
                    u32::from(input[i + 1] & 0x3F) << 6 | u32::from(input[i + 2] & 0x3F),
                ))
            }
            0xF0 if input.get(i + 1).is_some_and(|&c| (0x80..0x90).contains(&c))
                && is_cont(input.get(i + 2))
                && is_cont(input.get(i + 3)) =>
            {
                Some((
                    4,
                    u32::from(input[i + 1] & 0x3F) << 12
                        | u32::from(input[i + 2] & 0x3F) << 6
                        | u32::from(input[i + 3] & 0x3F),
                ))
            }
            0xF8..=0xFD => {
                // Never valid since RFC 3629: a 5-byte (F8–FB) or 6-byte (FC–FD) sequence, decoded as the
                // original UTF-8 did.
                let len = if b >= 0xFC { 6 } else { 5 };
                (1..len).all(|k| is_cont(input.get(i + k))).then(|| {
                    let lead = u32::from(b & if len == 6 { 0x01 } else { 0x03 });
                    let cp = input[i + 1..i + len]
                        .iter()
                        .fold(lead, |acc, &c| acc << 6 | u32::from(c & 0x3F));
                    (len, cp)
                })
            }
            _ => None,
        };
        if let Some((len, cp)) = cp {
            push_char(
                &mut out,
                char::from_u32(cp).unwrap_or(char::REPLACEMENT_CHARACTER),
            );
            i += len;
            changed = true;
        } else if matches!(b, 0xC0 | 0xC1) {
            // A lead byte that can never start valid UTF-8, alone: lenient decoders drop it (`%C0.` is `.`).
            i += 1;
            changed = true;
        } else {
            out.push(b);
            i += 1;
        }
    }
    changed.then_some(out)
}

/// Named entities that matter to an attacker: markup, quotes and the separators of URLs and scripts.
const NAMED_ENTITIES: &[(&str, char)] = &[
    ("lt", '<'),
    ("gt", '>'),
    ("amp", '&'),
    ("quot", '"'),
    ("apos", '\''),
    ("nbsp", ' '),
    ("tab", '\t'),
    ("newline", '\n'),
    ("colon", ':'),
    ("semi", ';'),
    ("lpar", '('),
    ("rpar", ')'),
    ("sol", '/'),
    ("bsol", '\\'),
    ("grave", '`'),
    ("equals", '='),
    ("period", '.'),
    ("comma", ','),
    ("excl", '!'),
    ("num", '#'),
    ("dollar", '$'),
    ("percnt", '%'),
    ("plus", '+'),
    ("lsqb", '['),
    ("rsqb", ']'),
    ("lcub", '{'),
    ("rcub", '}'),
    ("verbar", '|'),
    ("ast", '*'),
    ("quest", '?'),
];

/// Decodes HTML character references: numeric (`&#60;`, `&#x3c;`, with or without `;`, any number of
/// leading zeros) and the named ones in [`NAMED_ENTITIES`] (`;` required except for the five XML ones, as
/// browsers do). `None` if there was none.
#[must_use]
pub fn html_entity_decode(input: &[u8]) -> Option<Vec<u8>> {
    let first = memchr::memchr(b'&', input)?;
    let mut out = Vec::with_capacity(input.len());
    out.extend_from_slice(&input[..first]);
    let mut i = first;
    let mut changed = false;
    while i < input.len() {
        if input[i] == b'&'
            && let Some((c, len)) = entity_at(&input[i + 1..])
        {
            push_char(&mut out, c);
            i += 1 + len;
            changed = true;
            continue;
        }
        out.push(input[i]);
        i += 1;
    }
    changed.then_some(out)
}

/// The entity starting right after a `&`, and how many bytes it spans.
fn entity_at(s: &[u8]) -> Option<(char, usize)> {
    if s.first() == Some(&b'#') {
        let (radix, start) = if matches!(s.get(1), Some(b'x' | b'X')) {
            (16, 2)
        } else {
            (10, 1)
        };
        let digits = s[start..]
            .iter()
            .take_while(|b| {
                if radix == 16 {
                    b.is_ascii_hexdigit()
                } else {
                    b.is_ascii_digit()
                }
            })
            .count();
        if digits == 0 {
            return None;
        }
        let mut cp: u32 = 0;
        for &b in &s[start..start + digits] {
            cp = cp.saturating_mul(radix).saturating_add(u32::from(hex(b)?));
        }
        let end = start + digits;
        let len = if s.get(end) == Some(&b';') { end + 1 } else { end };
        return Some((char::from_u32(cp).unwrap_or(char::REPLACEMENT_CHARACTER), len));
    }
    let name_len = s.iter().take(8).take_while(|b| b.is_ascii_alphabetic()).count();
    let name = &s[..name_len];
    let (_, c) = NAMED_ENTITIES
        .iter()
        .find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))?;
    if s.get(name_len) == Some(&b';') {
        Some((*c, name_len + 1))
    } else if matches!(
        name.to_ascii_lowercase().as_slice(),
        b"lt" | b"gt" | b"amp" | b"quot" | b"apos"
    ) {
        Some((*c, name_len))
    } else {
        None
    }
}

/// Decodes JavaScript and C string escapes that hide markup and quotes: `\xHH`, `\uHHHH`, `\u{H…}`. Other
/// backslashes are kept (a Windows path stays a path). `None` if there was none.
#[must_use]
pub fn backslash_decode(input: &[u8]) -> Option<Vec<u8>> {
    let first = memchr::memchr(b'\\', input)?;
    let mut out = Vec::with_capacity(input.len());
    out.extend_from_slice(&input[..first]);
    let mut i = first;
    let mut changed = false;
    while i < input.len() {
        if input[i] == b'\\' {
            match input.get(i + 1) {
                Some(b'x' | b'X') => {
                    if let (Some(h), Some(l)) = (
                        input.get(i + 2).and_then(|&c| hex(c)),
                        input.get(i + 3).and_then(|&c| hex(c)),
                    ) {
                        push_char(&mut out, char::from(h << 4 | l));
                        i += 4;
                        changed = true;
                        continue;
                    }
                }
                Some(b'u') => {
                    if let Some(cp) = input.get(i + 2..).and_then(hex4) {
                        push_char(
                            &mut out,
                            char::from_u32(cp).unwrap_or(char::REPLACEMENT_CHARACTER),
                        );
                        i += 6;
                        changed = true;
                        continue;
                    }
                    if input.get(i + 2) == Some(&b'{') {
                        let digits = input[i + 3..]
                            .iter()
                            .take(6)
                            .take_while(|b| b.is_ascii_hexdigit())
                            .count();
                        if digits > 0 && input.get(i + 3 + digits) == Some(&b'}') {
                            let cp = input[i + 3..i + 3 + digits]
                                .iter()
                                .fold(0u32, |acc, &b| acc << 4 | u32::from(hex(b).unwrap_or(0)));
                            push_char(
                                &mut out,
                                char::from_u32(cp).unwrap_or(char::REPLACEMENT_CHARACTER),
                            );
                            i += 4 + digits;
                            changed = true;
                            continue;
                        }
                    }
                }
                _ => {}
            }
        }
        out.push(input[i]);
        i += 1;
    }
    changed.then_some(out)
}

/// The text inside a value that is entirely base64 (standard or URL-safe alphabet) of printable text with
/// some structure (a space or punctuation), as applications that take base64 parameters read it. Random
/// tokens and binary data decode to unprintable bytes and are left alone.
#[must_use]
pub fn base64_text(raw: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let raw = raw.trim_ascii();
    if raw.len() < 8 || raw.len() > 64 * 1024 {
        return None;
    }
    if !raw
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_'))
    {
        return None;
    }
    // Base64 of text mixes cases; words, ids and hex digests do not.
    if !raw.iter().any(u8::is_ascii_uppercase) || !raw.iter().any(u8::is_ascii_lowercase) {
        return None;
    }
    let engine = if raw.iter().any(|&b| b == b'-' || b == b'_') {
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
    } else {
        &base64::engine::general_purpose::STANDARD_NO_PAD
    };
    let trimmed = raw
        .strip_suffix(b"==")
        .or_else(|| raw.strip_suffix(b"="))
        .unwrap_or(raw);
    let decoded = engine.decode(trimmed).ok()?;
    let printable = decoded
        .iter()
        .all(|&b| (0x20..0x7F).contains(&b) || matches!(b, b'\t' | b'\n' | b'\r'));
    let structured = decoded.iter().any(|&b| !b.is_ascii_alphanumeric());
    (printable && structured).then_some(decoded)
}

/// Folds SQL comments and whitespace runs to one space, keeping the body of `MySQL`'s executable comments
/// (`/*!50000union*/` is `union`): what a SQL parser sees of `un/**/ion`-style obfuscation.
#[must_use]
pub fn fold_sql(lower: &str) -> String {
    let b = lower.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let push_space = |out: &mut Vec<u8>| {
        if out.last().is_some_and(|&c| c != b' ') {
            out.push(b' ');
        }
    };
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            if b.get(i + 2) == Some(&b'!') {
                // Executable comment: drop the marker and its version digits, keep the body.
                i += 3;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                push_space(&mut out);
                continue;
            }
            match memchr::memmem::find(&b[i + 2..], b"*/") {
                Some(end) => i += 2 + end + 2,
                None => i = b.len(),
            }
            push_space(&mut out);
            continue;
        }
        if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            i += 2;
            push_space(&mut out);
            continue;
        }
        if b[i].is_ascii_whitespace() || b[i] == 0x0B {
            push_space(&mut out);
            i += 1;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Normalises a path the way a server resolving it would: `\` is a separator, empty and `.` segments go,
/// `..` pops. Returns the result and whether `..` tried to climb above the root.
#[must_use]
pub fn normalize_path(path: &str) -> (String, bool) {
    let mut segments: Vec<&str> = Vec::new();
    let mut escaped = false;
    for seg in path.split(['/', '\\']) {
        match seg {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    escaped = true;
                }
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() {
        out.push('/');
    }
    (out, escaped)
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;

    fn norm(s: &[u8]) -> String {
        normalize(s, 1 << 20).text
    }

    #[test]
    fn percent_single_double_and_u_forms() {
        assert_eq!(norm(b"%27%20OR%201%3D1"), "' OR 1=1");
        let n = normalize(b"%252e%252e%252fetc", 1024);
        assert_eq!(n.text, "../etc");
        assert!(n.flags.double_encoded);
        let n = normalize(b"%u003cscript%u003e", 1024);
        assert_eq!(n.text, "<script>");
        assert!(n.flags.percent_u);
        // Benign look-alikes: a literal percent stays, one layer of encoding is not "double".
        assert_eq!(norm(b"50% off"), "50% off");
        assert!(
            !normalize(b"https%3A%2F%2Fexample.com%2F", 1024)
                .flags
                .double_encoded
        );
    }

    #[test]
    fn plus_is_space_only_in_form_syntax() {
        let mut f = DecodeFlags::default();
        assert_eq!(percent_decode(b"a+b%2B", true, &mut f).unwrap(), b"a b+");
        assert_eq!(percent_decode(b"a+b%2B", false, &mut f).unwrap(), b"a+b+");
        assert!(percent_decode(b"a+b", false, &mut f).is_none());
    }

    #[test]
    fn overlong_utf8_is_folded_and_flagged() {
        let n = normalize(b"%c0%ae%c0%ae/etc/passwd", 1024);
        assert_eq!(n.text, "../etc/passwd");
        assert!(n.flags.overlong_utf8);
        let n = normalize(&[0xE0, 0x80, 0xAF], 1024);
        assert_eq!(n.text, "/");
        // Real multi-byte text is left alone.
        let n = normalize("café Ünïcode".as_bytes(), 1024);
        assert_eq!(n.text, "café Ünïcode");
        assert!(!n.flags.overlong_utf8);
        // 5- and 6-byte forms, and the IIS reading of invalid 2-byte leads.
        let n = normalize(b"%fc%80%80%80%80%ae%f8%80%80%80%af", 1024);
        assert_eq!(n.text, "./");
        let n = normalize(b"..%c1%1c..%c1%afx", 1024);
        assert_eq!(n.text, "..\\../x");
    }

    #[test]
    fn split_escapes_restore_only_separators() {
        assert_eq!(norm(b"..%2%f..%5%cx%2%e"), "../..\\x.");
        // Any other split escape is text.
        assert_eq!(norm(b"50%4%1"), "50%4%1");
    }

    #[test]
    fn html_entities_numeric_and_named() {
        assert_eq!(
            norm(b"&lt;img src=x onerror=alert(1)&gt;"),
            "<img src=x onerror=alert(1)>"
        );
        assert_eq!(norm(b"&#x6A;&#97;&#0000118;ascript&colon;"), "javascript:");
        assert_eq!(norm(b"&#60"), "<");
        // Benign: an ampersand in prose or a query string is not an entity.
        assert_eq!(norm(b"Tom & Jerry"), "Tom & Jerry");
        assert_eq!(norm(b"AT&T R&D"), "AT&T R&D");
    }

    #[test]
    fn fullwidth_and_compatibility_forms_fold_to_ascii() {
        assert_eq!(norm("＜ｓｃｒｉｐｔ＞".as_bytes()), "<script>");
        assert_eq!(norm("ｓｅｌｅｃｔ".as_bytes()), "select");
        // Benign CJK text survives.
        assert_eq!(norm("你好，世界".as_bytes()), "你好,世界");
    }

    #[test]
    fn null_bytes_are_removed_and_flagged() {
        let n = normalize(b"../../etc/passwd%00.png", 1024);
        assert_eq!(n.text, "../../etc/passwd.png");
        assert!(n.flags.null_byte);
    }

    #[test]
    fn backslash_escapes_but_not_windows_paths() {
        assert_eq!(norm(br"\x3cscript\x3e"), "<script>");
        assert_eq!(norm(br"\u003cimg\u{3e}"), "<img>");
        assert_eq!(norm(br"C:\Users\me\file.txt"), r"C:\Users\me\file.txt");
    }

    #[test]
    fn rounds_are_bounded() {
        // Five layers: decoding stops after MAX_ROUNDS and returns what it has, without looping.
        let mut s = "<".to_owned();
        for _ in 0..5 {
            s = s.bytes().fold(String::new(), |mut acc, b| {
                let _ = write!(acc, "%{b:02X}");
                acc
            });
        }
        let n = normalize(s.as_bytes(), 1 << 20);
        assert!(n.text.starts_with('%'));
        assert!(normalize(&vec![b'%'; 10_000], 1 << 20).text.len() == 10_000);
    }

    #[test]
    fn unchanged_values_are_exactly_what_normalize_returns() {
        for v in [
            &b"plain text, with punctuation: (a) [b] {c} <d> 'e' \"f\" $g #h ;i |j +k ~l"[..],
            b"/etc/passwd?x=1",
            b"MiXeD CaSe\r\nand\tcontrols",
        ] {
            let fast = unchanged_by_normalize(v, 1024).unwrap();
            let n = normalize(v, 1024);
            assert_eq!(fast, n.text);
            assert_eq!(fast.to_ascii_lowercase(), n.lower);
            assert_eq!(n.flags, DecodeFlags::default());
        }
        for v in [
            &b"50%25"[..],
            b"a&lt;b",
            b"\\x3c",
            b"nul\0",
            "caf\u{e9}".as_bytes(),
            b"\xC0\xAE",
        ] {
            assert!(unchanged_by_normalize(v, 1024).is_none(), "{v:?}");
        }
        assert!(unchanged_by_normalize(b"long enough", 4).is_none());
    }

    #[test]
    fn sql_comment_and_whitespace_folding() {
        assert_eq!(fold_sql("un/**/ion\t\n select"), "un ion select");
        assert_eq!(fold_sql("/*!50000union*/ /*!select*/"), "union select ");
        assert_eq!(fold_sql("select your plan"), "select your plan");
    }

    #[test]
    fn path_normalisation() {
        assert_eq!(normalize_path("/a/./b/../c"), ("/a/c".to_owned(), false));
        assert_eq!(
            normalize_path(r"..\..\windows\win.ini"),
            ("/windows/win.ini".to_owned(), true)
        );
        assert_eq!(
            normalize_path("/static//img/../logo.png"),
            ("/static/logo.png".to_owned(), false)
        );
    }
}
