//! Path traversal and local file inclusion: `..` segments (after every decoding, so `%2e%2e%2f`,
//! `..%c0%af`, `....//` and `..\` are all seen), absolute paths to well-known sensitive files, and PHP stream
//! wrappers that read files (`php://filter`). One `../` in a value is common in legitimate relative links, so
//! alone it scores below the default threshold.

use super::{Classes, Needles, Value, excerpt, find_any, needles, run_start};
use crate::{
    event::{AttackCategory, Severity},
    inspect::{Rule, Sink, decode::normalize_path, extract::FieldKind},
};

const DOT_DOT: Rule = Rule {
    id: "traversal.dot_dot",
    category: AttackCategory::Traversal,
    severity: Severity::Warning,
    paranoia: 1,
};
const DEEP: Rule = Rule {
    id: "traversal.deep",
    category: AttackCategory::Traversal,
    severity: Severity::Critical,
    paranoia: 1,
};
const SENSITIVE_FILE: Rule = Rule {
    id: "traversal.sensitive_file",
    category: AttackCategory::Traversal,
    severity: Severity::Critical,
    paranoia: 1,
};
const WRAPPER: Rule = Rule {
    id: "traversal.stream_wrapper",
    category: AttackCategory::Traversal,
    severity: Severity::Critical,
    paranoia: 1,
};
const OBFUSCATED: Rule = Rule {
    id: "traversal.obfuscated_path",
    category: AttackCategory::Traversal,
    severity: Severity::Critical,
    paranoia: 1,
};
const PATH_ESCAPE: Rule = Rule {
    id: "traversal.path_escape",
    category: AttackCategory::Traversal,
    severity: Severity::Critical,
    paranoia: 1,
};

/// Files read to prove a traversal: system accounts, process environment, Windows system files, app secrets.
const SENSITIVE: &[&str] = &[
    "etc/passwd",
    "etc/shadow",
    "etc/group",
    "etc/hosts",
    "etc/issue",
    "etc/motd",
    "etc/hostname",
    "etc/crontab",
    "etc/sudoers",
    "etc/mysql",
    "etc/httpd",
    "etc/apache",
    "etc/nginx",
    "etc/ssh",
    "etc/fstab",
    "etc/profile",
    "etc/resolv.conf",
    "etc/security",
    "etc/master.passwd",
    "proc/self",
    "proc/version",
    "proc/cpuinfo",
    "proc/net",
    "proc/mounts",
    "win.ini",
    "boot.ini",
    "system.ini",
    "windows/system32",
    "winnt/system32",
    "system32/drivers",
    "web-inf/web.xml",
    "web-inf/",
    "meta-inf/",
    ".htaccess",
    ".htpasswd",
    ".bash_history",
    ".ssh/id_rsa",
    ".ssh/authorized_keys",
    "id_rsa",
    ".git/config",
    ".git/head",
    ".svn/entries",
    "wp-config.php",
    "var/log/",
    "var/www/",
    "usr/local/",
    "boot/grub",
    "inetpub/",
    "autoexec.bat",
    "config.sys",
    "php.ini",
    "my.cnf",
    "httpd.conf",
    "applicationhost.config",
    "web.config",
    "/.env",
    "localstart.asp",
    "sam",
];

/// Sensitive paths that never occur in legitimate parameters, in any context.
const UNMISTAKABLE: &[&str] = &[
    "etc/passwd",
    "etc/shadow",
    "etc/master.passwd",
    "win.ini",
    "boot.ini",
    "proc/self/environ",
    "proc/self/cmdline",
    "web-inf/web.xml",
    ".htpasswd",
    ".htaccess",
    "windows/system32/",
    "system32/drivers/etc",
    "etc/sudoers",
    "ntuser.dat",
    "/c$/",
    "/admin$/",
];

pub(super) fn scan(v: &Value<'_>, sink: &mut Sink<'_>) {
    let c = v.classes;
    // Garbled separators (`%qf`, `0x2f`, undecodable bytes) stand in for `/` and `.`, so a value built only
    // of them and names is still a path.
    if !c.any(Classes::SLASH | Classes::DOT | Classes::COLON)
        && !v.lower.contains(['%', char::REPLACEMENT_CHARACTER])
        && !v.lower.contains("0x")
    {
        return;
    }
    if v.kind == FieldKind::Path {
        let (_, escaped) = normalize_path(v.text);
        if escaped {
            sink.report(&PATH_ESCAPE, v.location, excerpt(v.text, 0));
        }
    }
    let unmangled = unmangle_separators(v.lower, false);
    scan_path_text(v, &unmangled, sink);
    // Garbled escapes read as separators can also eat a name (`%%passwd`): both readings are checked.
    if v.lower.contains(['%', char::REPLACEMENT_CHARACTER]) {
        let garbled = unmangle_separators(v.lower, true);
        if garbled != unmangled {
            scan_path_text(v, &garbled, sink);
        }
    }
}

/// The path rules over one reading of the value (see [`unmangle_separators`]).
fn scan_path_text(v: &Value<'_>, lower: &str, sink: &mut Sink<'_>) {
    let c = v.classes;
    let s = lower.as_bytes();
    let mut hops = 0;
    let mut first = None;
    let mut i = 0;
    while let Some(off) = memchr::memmem::find(&s[i..], b"..") {
        let at = i + off;
        let mut end = at + 2;
        // `....//` and `.../` collapse to `../` in naive filters.
        while s.get(end) == Some(&b'.') {
            end += 1;
        }
        let before_ok = at == 0
            || matches!(
                s[at - 1],
                b'/' | b'\\' | b'=' | b' ' | b'\'' | b'"' | b':' | b';' | b'|' | b'%' | b'?' | b'*'
            );
        let after_sep = matches!(s.get(end), Some(b'/' | b'\\' | b'%'))
            || (end == s.len() && at > 0 && matches!(s[at - 1], b'/' | b'\\'));
        if before_ok && after_sep {
            hops += 1;
            first.get_or_insert(at);
        }
        i = end;
    }
    // Windows separators compare as `/` for the file lists (same byte offsets: one ASCII byte for another).
    let slashed = if v.classes.any(Classes::SLASH) && lower.contains('\\') {
        std::borrow::Cow::Owned(lower.replace('\\', "/"))
    } else {
        std::borrow::Cow::Borrowed(lower)
    };
    let sensitive = find_sensitive(&slashed);
    // Files whose very name is the proof of an attempt: matched wherever they appear, since separators
    // before them may be spelled in ways no decoder knows (`..0x2fetc/passwd`).
    if let Some((at, _)) = find_any(&UNMISTAKABLE_AC, &slashed) {
        sink.report(&SENSITIVE_FILE, v.location, excerpt(lower, at));
    }
    if let Some(at) = first {
        let rule = if hops >= 2 || sensitive.is_some() {
            &DEEP
        } else {
            &DOT_DOT
        };
        // One `../` is a relative link at paranoia 1 and an attempt above it.
        let severity = if sink.level() >= 2 {
            Severity::Critical
        } else {
            rule.severity
        };
        sink.report_as(rule, severity, v.location, excerpt(lower, at));
    }
    // With a traversal present, a sensitive name anywhere (`..\\etc\\issue%00.html`) settles it.
    if first.is_some()
        && sensitive.is_none()
        && SENSITIVE
            .iter()
            .filter(|f| f.len() >= 6)
            .any(|f| slashed.contains(f))
    {
        sink.report(&DEEP, v.location, excerpt(lower, first.unwrap_or(0)));
    }
    if sensitive.is_none()
        && !v.classes.any(Classes::SPACE)
        && let Some(at) = obfuscated_sensitive_path(lower)
    {
        sink.report(&OBFUSCATED, v.location, excerpt(lower, at));
    }
    if let Some(at) = sensitive {
        // An absolute path or one reached by traversal; a file name mentioned in prose (`my.cnf`) is not.
        let start = run_start(lower, at, |ch| {
            ch.is_ascii_alphanumeric() || matches!(ch, b'/' | b'\\' | b'.' | b':' | b'_' | b'-')
        });
        let token = &lower[start..];
        let absolute = token.starts_with('/')
            || token.starts_with('\\')
            || token.get(1..3).is_some_and(|t| t == ":\\" || t == ":/")
            || token.starts_with("file:")
            || first.is_some();
        if absolute {
            sink.report(&SENSITIVE_FILE, v.location, excerpt(lower, at));
        }
    }
    if c.any(Classes::COLON) {
        stream_wrapper(v, lower, sink);
    }
}

/// PHP stream wrappers that read files or run code (`php://filter`, `expect://`).
fn stream_wrapper(v: &Value<'_>, lower: &str, sink: &mut Sink<'_>) {
    const WRAPPERS: &[&str] = &[
        "php://",
        "zip://",
        "phar://",
        "expect://",
        "glob://",
        "data://",
        "compress.zlib://",
        "zlib:",
        "jar:file:",
        "ogg://",
        "ssh2.shell://",
        "ssh2.exec://",
        "rar://",
    ];
    static AUTOMATON: Needles = Needles::new(|| needles(WRAPPERS));
    let Some(ac) = AUTOMATON.as_ref() else { return };
    let b = lower.as_bytes();
    if let Some(m) = ac
        .find_iter(lower)
        .find(|m| m.start() == 0 || !b[m.start() - 1].is_ascii_alphanumeric())
    {
        sink.report(&WRAPPER, v.location, excerpt(lower, m.start()));
    }
}

/// The first of [`SENSITIVE`] that occurs in `lower` as a path, in one pass: preceded by a separator or at
/// the start, and ending at a boundary, so `etc/passwd` matches in `/etc/passwd` but `sam` does not match
/// `sample`.
fn find_sensitive(lower: &str) -> Option<usize> {
    static AUTOMATON: Needles = Needles::new(|| needles(SENSITIVE));
    let b = lower.as_bytes();
    AUTOMATON.as_ref()?.find_overlapping_iter(lower).find_map(|m| {
        let file = SENSITIVE[m.pattern().as_usize()];
        let (at, end) = (m.start(), m.end());
        let first = file.as_bytes()[0];
        let before_ok = at == 0 || matches!(b[at - 1], b'/' | b'\\') || matches!(first, b'/' | b'.');
        let after_ok =
            end >= b.len() || file.ends_with('/') || !(b[end].is_ascii_alphanumeric() || b[end] == b'_');
        (before_ok && after_ok && (file != "sam" || lower[..at].ends_with("config/"))).then_some(at)
    })
}

/// Separators spelled in ways no standard decoder undoes but fuzz lists and lenient parsers use: C-style hex
/// literals (`0x2f`), escapes with non-hex digits that IIS-era decoders still turned into separators
/// (`%c0%qf`, `%c1%pc`: `%qf` survives every decoder as text) and bytes that were not UTF-8 at all. (Escapes
/// split by a stray `%`, `%2%f`, are restored by `decode::percent_decode` for every detector.) Only dots and separators are restored, and only for this detector: a garbled
/// escape or an undecodable byte between `..` and a directory name is a separator to the server it targets.
fn unmangle_separators(lower: &str, garbled: bool) -> std::borrow::Cow<'_, str> {
    if !lower.contains("0x")
        && !lower.contains('%')
        && !lower.contains(char::REPLACEMENT_CHARACTER)
        && !lower.contains("?.")
    {
        return std::borrow::Cow::Borrowed(lower);
    }
    let mut out = lower.to_owned();
    for (from, to) in [("0x2f", "/"), ("0x5c", "\\"), ("0x2e", ".")] {
        if out.contains(from) {
            out = out.replace(from, to);
        }
    }
    if garbled && (out.contains('%') || out.contains(char::REPLACEMENT_CHARACTER)) {
        out = garbled_to_separator(&out);
    }
    if out.contains("?.") {
        out = wildcard_hops(&out);
    }
    std::borrow::Cow::Owned(out)
}

/// `?.` as a whole path segment (`?./?./etc/issue`): the one-character wildcard of DOS and Windows file APIs
/// matches the first dot of `..`, so the segment climbs like `..` does.
fn wildcard_hops(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for at in memchr::memmem::find_iter(b, b"?.") {
        let starts = at == 0 || matches!(b[at - 1], b'/' | b'\\');
        let ends = matches!(b.get(at + 2), Some(b'/' | b'\\'));
        if starts && ends {
            out.push_str(&s[last..at]);
            out.push_str("..");
            last = at + 2;
        }
    }
    out.push_str(&s[last..]);
    out
}

/// Replaces each invalid percent escape (`%` and two alphanumerics that are not a hex pair) and each
/// replacement character (an undecodable byte) with `/`.
fn garbled_to_separator(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.char_indices().peekable();
    let b = s.as_bytes();
    while let Some((i, c)) = chars.next() {
        match c {
            '%' if b.get(i + 1..i + 3).is_some_and(|p| {
                p.iter().all(u8::is_ascii_alphanumeric) && !p.iter().all(u8::is_ascii_hexdigit)
            }) =>
            {
                out.push('/');
                chars.next();
                chars.next();
            }
            char::REPLACEMENT_CHARACTER => out.push('/'),
            _ => out.push(c),
        }
    }
    out
}

/// Directory/file name pairs that make up the paths read to prove a traversal.
static UNMISTAKABLE_AC: Needles = Needles::new(|| needles(UNMISTAKABLE));

const SENSITIVE_PAIRS: &[(&str, &str)] = &[
    ("etc", "passwd"),
    ("etc", "shadow"),
    ("etc", "issue"),
    ("etc", "hosts"),
    ("etc", "group"),
    ("etc", "sudoers"),
    ("etc", "crontab"),
    ("windows", "system32"),
    ("winnt", "system32"),
    ("system32", "drivers"),
    ("boot", "ini"),
    ("win", "ini"),
    ("proc", "self"),
    ("self", "environ"),
];

/// A sensitive path whose separators are garbled beyond any decoder (`etc%bg%qfpasswd`, `etc\x1cissue`):
/// the value, without whitespace, has the path's names in order with a short run of non-alphanumeric bytes
/// between them.
fn obfuscated_sensitive_path(lower: &str) -> Option<usize> {
    let b = lower.as_bytes();
    let mut prev: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_alphanumeric() {
            i += 1;
        }
        if let Some((ps, pe)) = prev {
            let gap = start - pe;
            let (w1, w2) = (&lower[ps..pe], &lower[start..i]);
            let slug = lower[pe..start].bytes().all(|c| c == b'-' || c == b'_');
            if (1..=16).contains(&gap) && !slug && SENSITIVE_PAIRS.iter().any(|(a, c)| *a == w1 && *c == w2) {
                return Some(ps);
            }
        }
        prev = Some((start, i));
    }
    None
}
