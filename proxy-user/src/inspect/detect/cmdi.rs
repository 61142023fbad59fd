//! OS command injection: a shell tokenizer. A finding needs a shell metacharacter that ends or nests a
//! command (`;`, `|`, `&&`, `||`, newline, `` ` ``, `$(`) followed by a word that, once shell quoting is
//! removed (`c'a't`, `c\at`, `$@`, `${IFS}`), names a command. A lone `;` or `|` in prose, or a command name
//! without a separator before it, is not enough.

use std::sync::LazyLock;

use rustc_hash::FxHashSet;

use super::{Classes, Needles, Value, excerpt, find_any, needles};
use crate::{
    event::{AttackCategory, Severity},
    inspect::{Rule, Sink, extract::FieldKind},
};

const CHAINED: Rule = Rule {
    id: "cmdi.chained_command",
    category: AttackCategory::Cmdi,
    severity: Severity::Critical,
    paranoia: 1,
};
const SUBSTITUTION: Rule = Rule {
    id: "cmdi.substitution",
    category: AttackCategory::Cmdi,
    severity: Severity::Critical,
    paranoia: 1,
};
const SHELL_PATH: Rule = Rule {
    id: "cmdi.shell_invocation",
    category: AttackCategory::Cmdi,
    severity: Severity::Critical,
    paranoia: 1,
};
const DIRECT: Rule = Rule {
    id: "cmdi.direct_command",
    category: AttackCategory::Cmdi,
    severity: Severity::Critical,
    paranoia: 1,
};
const SHELLSHOCK: Rule = Rule {
    id: "cmdi.shellshock",
    category: AttackCategory::Cmdi,
    severity: Severity::Critical,
    paranoia: 1,
};

/// Commands an attacker runs first: recon, download, shells, timing probes. Unix and Windows.
const COMMANDS: &[&str] = &[
    "cat",
    "printf",
    "ls",
    "id",
    "whoami",
    "uname",
    "pwd",
    "wget",
    "curl",
    "nc",
    "ncat",
    "netcat",
    "bash",
    "sh",
    "zsh",
    "ksh",
    "csh",
    "tcsh",
    "dash",
    "python",
    "python2",
    "python3",
    "perl",
    "ruby",
    "php",
    "ping",
    "nslookup",
    "dig",
    "host",
    "sleep",
    "echo",
    "rm",
    "chmod",
    "chown",
    "touch",
    "mkdir",
    "cp",
    "mv",
    "ifconfig",
    "ipconfig",
    "netstat",
    "ps",
    "kill",
    "killall",
    "env",
    "printenv",
    "head",
    "tail",
    "more",
    "less",
    "type",
    "dir",
    "net",
    "systeminfo",
    "tasklist",
    "hostname",
    "ver",
    "find",
    "grep",
    "awk",
    "sed",
    "base64",
    "xxd",
    "telnet",
    "ssh",
    "scp",
    "ftp",
    "tftp",
    "crontab",
    "useradd",
    "passwd",
    "sudo",
    "su",
    "nohup",
    "timeout",
    "expr",
    "eval",
    "exec",
    "busybox",
    "powershell",
    "pwsh",
    "cmd",
    "certutil",
    "bitsadmin",
    "reg",
    "wmic",
    "nmap",
    "sort",
    "uniq",
    "wc",
    "od",
    "strings",
    "tac",
    "nl",
    "rev",
    "awk",
    "gawk",
    "lua",
    "node",
    "java",
    "gcc",
    "cc",
    "socat",
    "openssl",
    "tar",
    "zip",
    "unzip",
    "gzip",
    "dd",
    "mkfifo",
    "mknod",
    "xterm",
    "sysctl",
    "export",
    "unset",
    "set",
    "source",
    "systemctl",
    "service",
    "shutdown",
    "reboot",
    "halt",
    "init",
    "last",
    "w",
    "who",
    "groups",
    "lsof",
    "uptime",
    "df",
    "du",
    "mount",
    "fdisk",
    "ifup",
    "route",
    "arp",
    "traceroute",
    "tracert",
    "pathping",
    "getmac",
    "net1",
    "query",
    "quser",
    "runas",
    "schtasks",
    "sc",
    "taskkill",
    "del",
    "copy",
    "move",
    "ren",
    "rmdir",
    "md",
    "start",
    "call",
    "findstr",
    "icacls",
    "cacls",
    "attrib",
    "regsvr32",
    "rundll32",
    "mshta",
    "cscript",
    "wscript",
    "msiexec",
    "vssadmin",
    "wevtutil",
    "nltest",
    "dsquery",
    "bcdedit",
    "phpinfo",
    "system",
    "passthru",
    "shell_exec",
    "popen",
    "proc_open",
    "file",
    "stat",
    "getent",
    "ldd",
    "strace",
    "ltrace",
    "gdb",
    "cut",
    "tr",
    "paste",
    "diff",
    "cmp",
    "chattr",
    "lsattr",
    "history",
    "alias",
    "xargs",
    "yes",
    "seq",
    "true",
    "false",
    "test",
    "ulimit",
    "at",
    "batch",
    "watch",
    "screen",
    "tmux",
    "vi",
    "vim",
    "nano",
    "ed",
    "ex",
    "sh.exe",
    "cmd.exe",
    "powershell.exe",
    "whoami.exe",
];

/// Commands that are also everyday words; after `;` or `&` (prose punctuation) they need an argument that
/// looks like one (`-x`, a path, a host) to count.
const WORDLIKE: &[&str] = &[
    "printf", "more", "type", "find", "set", "start", "call", "host", "file", "last", "w", "who", "at",
    "batch", "yes", "true", "false", "test", "sort", "copy", "move", "query", "source", "export", "watch",
    "history", "alias", "sh", "su", "id", "cc", "ed", "ex", "tr", "cut", "net", "dir", "md", "ren", "del",
    "sc", "init", "halt", "route", "df", "du", "wc", "od", "nl", "rev", "ver", "reg", "less", "head", "tail",
    "echo", "sleep", "env", "ping", "kill", "system", "stat", "diff", "cmp", "paste", "seq", "screen", "vi",
    "java", "node", "mount",
];

/// Reconnaissance and administration commands that are no word of any natural language: a value that starts
/// with one is a command line, whatever follows.
const UNMISTAKABLE: &[&str] = &[
    "whoami",
    "uname",
    "ifconfig",
    "ipconfig",
    "netstat",
    "netsh",
    "systeminfo",
    "tasklist",
    "nslookup",
    "getmac",
    "certutil",
    "bitsadmin",
    "wmic",
    "icacls",
    "vssadmin",
    "wevtutil",
    "nltest",
    "dsquery",
    "bcdedit",
    "schtasks",
    "taskkill",
    "regsvr32",
    "rundll32",
    "mshta",
    "msiexec",
    "printenv",
    "getent",
    "busybox",
    "mkfifo",
    "sysctl",
    "useradd",
    "whoami.exe",
    "cmd.exe",
    "powershell.exe",
];

/// Wordlike commands that are still the whole attack when they stand alone between separators
/// (`;id;`, `|dir|`): none of them ends a sentence.
const ALONE: &[&str] = &["id", "dir", "ver", "env", "ls", "pwd", "uname", "whoami", "set"];

// Looked up for the first word of most text values: a fast hash, since the keys are our own constants.
static COMMAND_SET: LazyLock<FxHashSet<&'static str>> = LazyLock::new(|| COMMANDS.iter().copied().collect());
static WORDLIKE_SET: LazyLock<FxHashSet<&'static str>> = LazyLock::new(|| WORDLIKE.iter().copied().collect());
static UNMISTAKABLE_SET: LazyLock<FxHashSet<&'static str>> =
    LazyLock::new(|| UNMISTAKABLE.iter().copied().collect());

/// Classes that end or nest a command: without one (or an escaped line break), no command is chained.
pub(super) const SEPARATORS: u32 =
    Classes::SEMI | Classes::PIPE | Classes::AMP | Classes::NEWLINE | Classes::BACKTICK | Classes::DOLLAR;

/// Commands that look another one up (`which nc`): commands of their own only with a command after them.
const LOOKUPS: &[&str] = &["which", "where"];

/// Whether `\\n` or `\\r` occurs as text: a line break to whatever unescapes the value before a shell sees it.
/// One `memchr` per backslash; a backslash is a `SLASH` class byte, so most values skip even that.
pub(super) fn has_escaped_line_break(v: &Value<'_>) -> bool {
    let b = v.lower.as_bytes();
    v.classes.any(Classes::SLASH)
        && memchr::memchr_iter(b'\\', b).any(|i| matches!(b.get(i + 1), Some(b'n' | b'r')))
}

/// A one-word Bloom filter per ASCII initial over the words of [`COMMANDS`], [`UNMISTAKABLE`] and
/// `which`/`where` (see [`shape_bit`]): most words of text fail this two-load test and are never hashed.
/// Sound by construction: it is built from the very lists the sets are.
static SHAPES_BY_INITIAL: LazyLock<[u64; 128]> = LazyLock::new(|| {
    let mut t = [0u64; 128];
    for w in COMMANDS.iter().chain(UNMISTAKABLE).chain(LOOKUPS) {
        if let Some(&first) = w.as_bytes().first()
            && let Some(shapes) = t.get_mut(usize::from(first))
        {
            *shapes |= shape_bit(w.as_bytes());
        }
    }
    t
});

/// A word's length, second and last byte folded into one of 64 bits.
fn shape_bit(word: &[u8]) -> u64 {
    let second = word.get(1).copied().unwrap_or(0);
    let last = word.last().copied().unwrap_or(0);
    let h = word.len() ^ usize::from(second) << 2 ^ usize::from(last) << 4;
    1 << ((h ^ h >> 6) & 63)
}

/// False only when `word` is in none of [`COMMAND_SET`], [`UNMISTAKABLE_SET`], `which` and `where`.
fn may_be_listed(word: &[u8]) -> bool {
    word.first()
        .and_then(|&b| SHAPES_BY_INITIAL.get(usize::from(b)))
        .is_some_and(|shapes| shapes & shape_bit(word) != 0)
}

#[expect(
    clippy::many_single_char_names,
    reason = "a byte scanner: s, i, b are the idiom"
)]
pub(super) fn scan(v: &Value<'_>, sink: &mut Sink<'_>) {
    let c = v.classes;
    // Shellshock: a function definition is the whole value of a header or variable bash imports.
    if c.any(Classes::PAREN) && c.any(Classes::BRACE) && v.lower.trim_start().starts_with("() {") {
        sink.report(&SHELLSHOCK, v.location, excerpt(v.text, 0));
    }
    if c.any(Classes::SLASH) {
        shell_path(v, sink);
    }
    // A parameter's name (`uname` for a user name) is not run; a "name" with spaces is a value that lost its
    // key when `&&` split a form body.
    if v.kind != FieldKind::Name || v.classes.any(Classes::SPACE) {
        direct_command(v, sink);
    }
    // A literal `\n` is a line break to whatever unescapes the value before it reaches a shell (JSON, C,
    // `echo -e`). Rewritten in place, as a newline and a space, so offsets still match `v.text`.
    let escaped_break = has_escaped_line_break(v);
    if !escaped_break && !c.any(SEPARATORS) {
        return;
    }
    let unescaped;
    let s = if escaped_break {
        unescaped = v.lower.replace("\\n", "\n ").replace("\\r", "\r ");
        unescaped.as_bytes()
    } else {
        v.lower.as_bytes()
    };
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        let (sep_len, strong, rule) = match b {
            b'`' => (1, true, &SUBSTITUTION),
            b'$' if s.get(i + 1) == Some(&b'(') => (2, true, &SUBSTITUTION),
            b'|' if s.get(i + 1) == Some(&b'|') => (2, true, &CHAINED),
            b'&' if s.get(i + 1) == Some(&b'&') => (2, true, &CHAINED),
            b'|' => (1, true, &CHAINED),
            b';' | b'&' | b'\n' | b'\r' => (1, false, &CHAINED),
            _ => {
                i += 1;
                continue;
            }
        };
        let sep_at = i;
        i += sep_len;
        if let Some((word, arg)) = next_word(&s[i..])
            && (COMMAND_SET.contains(word.as_str()) || UNMISTAKABLE_SET.contains(word.as_str()))
        {
            let wordlike = WORDLIKE_SET.contains(word.as_str());
            let looks_like_args = arg.first().is_some_and(|&a| {
                matches!(a, b'-' | b'/' | b'$' | b'\\' | b'`' | b'>' | b'<' | b'\'' | b'"')
                    || a.is_ascii_digit()
            }) || (arg.is_empty() && !wordlike);
            let line_break = matches!(b, b'\n' | b'\r');
            // `;id;`, `a);id|`, `\nid\n`: a bare command closed by another separator or the value's end, after a
            // separator that opens the value or follows punctuation (`name;id` is a field list).
            let alone = ALONE.contains(&word.as_str())
                && arg.iter().all(|&a| {
                    matches!(
                        a,
                        b';' | b'|' | b'&' | b'`' | b'\n' | b'\r' | b'#' | b'\'' | b'"' | b')'
                    )
                })
                && (!arg.is_empty()
                    || sep_at == 0
                    || !s[sep_at - 1].is_ascii_alphanumeric()
                    || sink.level() >= 2);
            let counts = alone
                || strong_args(arg)
                || command_line(&s[i..])
                || if strong {
                    !wordlike || looks_like_args || arg.is_empty()
                } else if line_break {
                    !wordlike && looks_like_args
                } else {
                    looks_like_args || !wordlike && arg.first().is_some_and(|&a| a != b'=')
                };
            if counts {
                sink.report(rule, v.location, excerpt(v.text, sep_at));
                return;
            }
        }
    }
}

/// The next shell word after a separator with shell quoting removed, and the bytes after it (spaces
/// skipped).
/// A shell word of at most [`Word::CAP`] bytes, on the stack: words are read for every separator in prose.
struct Word {
    buf: [u8; Word::CAP],
    len: usize,
}

impl Word {
    const CAP: usize = 40;

    const fn new() -> Self {
        Self {
            buf: [0; Self::CAP],
            len: 0,
        }
    }

    fn push(&mut self, b: u8) {
        if self.len < Self::CAP {
            self.buf[self.len] = b;
            self.len += 1;
        }
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    const fn len(&self) -> usize {
        self.len
    }

    const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Only ASCII bytes are ever pushed, so this never fails.
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

fn next_word(s: &[u8]) -> Option<(Word, &[u8])> {
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        loop {
            while *i < s.len() && (s[*i].is_ascii_whitespace() || matches!(s[*i], b'{' | b'(' | b'!')) {
                *i += 1;
            }
            if s[*i..].starts_with(b"${ifs}") {
                *i += 6;
            } else if s[*i..].starts_with(b"$ifs") {
                *i += 4;
            } else {
                break;
            }
        }
    };
    skip_ws(&mut i);
    let mut word = Word::new();
    while i < s.len() && word.len() < Word::CAP {
        let b = s[i];
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-') {
            word.push(b);
        } else if b == b'/' {
            // `/usr/bin/id`: keep the last path component.
            word.clear();
        } else if b == b'`' && s.get(i + 1) == Some(&b'`') {
            // An empty substitution inside a word (`wh``oami`) disappears.
            i += 1;
        } else if matches!(b, b'\'' | b'"' | b'\\') {
            // Quoting inside a word (`c'a't`, `c\at`) is removed by the shell.
        } else if b == b'$' && matches!(s.get(i + 1), Some(b'@' | b'*')) {
            i += 1;
        } else {
            break;
        }
        i += 1;
    }
    if word.is_empty() {
        return None;
    }
    let mut j = i;
    skip_ws(&mut j);
    // A command is separated from its arguments: `ps=1` or `cat=x` after a `&` is a parameter, not a command.
    let separated = j > i
        || j >= s.len()
        || matches!(
            s[j],
            b';' | b'|' | b'&' | b'`' | b')' | b'<' | b'>' | b'#' | b'\n' | b'\r'
        );
    if !separated {
        return Some((word, b"="));
    }
    Some((word, &s[j.min(s.len())..]))
}

/// Arguments only a command line has: an option (`-la`, `/all` after a space), an absolute or drive path
/// (`/etc/`, `C:\\`, `%SYSTEMROOT%`), a redirection. (A URL is an argument only for a downloader: stack
/// traces have lines `at https://…`.)
fn strong_args(arg: &[u8]) -> bool {
    let word_char = |i: usize| arg.get(i).is_some_and(u8::is_ascii_alphabetic);
    match arg.first() {
        Some(b'-') => word_char(1),
        Some(b'/') => word_char(1) || arg.len() == 1 || arg.get(1) == Some(&b' '),
        Some(b'%') => {
            arg[1..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                .count()
                >= 3
                && arg[1..]
                    .iter()
                    .find(|b| !(b.is_ascii_alphanumeric() || **b == b'_'))
                    == Some(&b'%')
        }
        Some(b'>' | b'<') => true,
        Some(c) if c.is_ascii_alphabetic() => arg.get(1..3).is_some_and(|t| t == b":\\" || t == b":/"),
        _ => false,
    }
}

/// Commands that fetch a URL given as their first argument.
const DOWNLOADERS: &[&str] = &["curl", "wget", "fetch", "lwp-download", "tftp", "ftp"];

fn is_url(arg: &[u8]) -> bool {
    ["http://", "https://", "ftp://", "tftp://"]
        .iter()
        .any(|p| arg.starts_with(p.as_bytes()))
}

/// A value that is itself a command line (`uname -a`, `type C:\\boot.ini`, `net user x /add`, `sleep 10`):
/// applications that pass a parameter to a shell run it as it is, with no separator needed.
fn direct_command(v: &Value<'_>, sink: &mut Sink<'_>) {
    let s = command_start(v.lower);
    if s.len() <= 512
        && s.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
        && command_line(s.as_bytes())
    {
        sink.report(&DIRECT, v.location, excerpt(v.text, v.text.len() - s.len()));
    }
}

/// Whether `s`, from its first word on, reads as a command line rather than prose.
fn command_line(s: &[u8]) -> bool {
    // Fast path: a first word spelled without shell quoting is looked up as it is, with no copy.
    if !first_word_may_be_command(s) {
        return false;
    }
    let Some((word, arg)) = next_word(s) else {
        return false;
    };
    if arg == b"=" {
        return false;
    }
    let w = word.as_str();
    let rest = || std::str::from_utf8(arg).unwrap_or_default();
    if UNMISTAKABLE_SET.contains(w) {
        true
    } else if COMMAND_SET.contains(w) {
        strong_args(arg)
            || DOWNLOADERS.contains(&w) && is_url(arg)
            || ALONE.contains(&w) && !WORDLIKE_SET.contains(w) && arg.is_empty()
            || match w {
                // A time probe: `sleep 10` and nothing else.
                "sleep" | "timeout" => {
                    !arg.is_empty() && arg.iter().all(|b| b.is_ascii_digit() || b.is_ascii_whitespace())
                }
                "net" => {
                    let mut words = rest().split_ascii_whitespace();
                    let sub = words.next().unwrap_or_default();
                    matches!(
                        sub,
                        "user"
                            | "localgroup"
                            | "group"
                            | "view"
                            | "share"
                            | "use"
                            | "accounts"
                            | "session"
                            | "config"
                    ) && (words.clone().next().is_none() || rest().contains(" /"))
                }
                "reg" => {
                    let r = rest();
                    ["add ", "query ", "delete ", "export ", "save "]
                        .iter()
                        .any(|p| r.starts_with(p))
                        && r.contains("hk")
                }
                _ => false,
            }
    } else if LOOKUPS.contains(&w) {
        // `which nc`: looking for a tool before using it.
        next_word(arg).is_some_and(|(tool, after)| {
            COMMAND_SET.contains(tool.as_str()) && !WORDLIKE_SET.contains(tool.as_str()) && after.is_empty()
        })
    } else {
        false
    }
}

/// Whether a value made only of plain characters (see `detect::is_plain`) is nevertheless a command:
/// `whoami` needs no punctuation.
/// Whether a value could be a command line for [`direct_command`]: its first word, past whitespace and
/// quotes, is a command, or is spelled with shell quoting that only the full reading can undo. The
/// prefilter's condition for running this detector on values without separators.
pub(super) fn may_start_command(lower: &str) -> bool {
    let s = command_start(lower);
    s.as_bytes().first().is_some_and(u8::is_ascii_alphabetic) && first_word_may_be_command(s.as_bytes())
}

/// Where a value's command line would start: past whitespace and the quote that broke out of a string.
fn command_start(lower: &str) -> &str {
    lower.trim_start_matches(|c: char| c.is_ascii_whitespace() || matches!(c, '\'' | '"' | '`'))
}

/// The fast reading of a first word: `false` only when the word has no shell quoting and is no command.
fn first_word_may_be_command(s: &[u8]) -> bool {
    let lead = s
        .iter()
        .take_while(|b| b.is_ascii_whitespace() || matches!(b, b'{' | b'(' | b'!'))
        .count();
    let s_word = &s[lead..];
    let plain_len = s_word
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        .count();
    let quoted = matches!(
        s_word.get(plain_len),
        Some(b'\'' | b'"' | b'\\' | b'`' | b'$' | b'/')
    );
    quoted
        || may_be_listed(&s_word[..plain_len])
            && std::str::from_utf8(&s_word[..plain_len]).is_ok_and(|w| {
                COMMAND_SET.contains(w) || UNMISTAKABLE_SET.contains(w) || LOOKUPS.contains(&w)
            })
}

pub(super) fn is_bare_command(raw: &[u8]) -> bool {
    let mut lower = [0u8; 12];
    let Some(buf) = lower.get_mut(..raw.len()) else {
        return false;
    };
    raw.len() >= 4 && raw.iter().all(u8::is_ascii_alphabetic) && {
        buf.copy_from_slice(raw);
        buf.make_ascii_lowercase();
        may_be_listed(buf) && std::str::from_utf8(buf).is_ok_and(|w| UNMISTAKABLE_SET.contains(w))
    }
}

/// A shell or interpreter invoked by absolute path: `/bin/sh -c`, `/usr/bin/id`, `cmd.exe /c`.
fn shell_path(v: &Value<'_>, sink: &mut Sink<'_>) {
    const NEEDLES: &[&str] = &[
        "/bin/sh",
        "/bin/bash",
        "/bin/zsh",
        "/bin/dash",
        "/bin/ksh",
        "/bin/busybox",
        "/bin/nc",
        "/bin/cat",
        "/bin/id",
        "/bin/ls",
        "/usr/bin/id",
        "/usr/bin/whoami",
        "/usr/bin/wget",
        "/usr/bin/curl",
        "/bin/ping",
        "/usr/bin/python",
        "/usr/bin/perl",
        "/bin/uname",
        "/usr/bin/nc",
        "cmd.exe /c",
        "cmd /c",
        "cmd.exe/c",
        "powershell -",
        "powershell.exe",
        "/dev/tcp/",
        "/dev/udp/",
    ];
    static AUTOMATON: Needles = Needles::new(|| needles(NEEDLES));
    if let Some((at, _)) = find_any(&AUTOMATON, v.lower) {
        sink.report(&SHELL_PATH, v.location, excerpt(v.text, at));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shape_filter_passes_every_listed_word() {
        for w in COMMANDS.iter().chain(UNMISTAKABLE).chain(LOOKUPS) {
            assert!(may_be_listed(w.as_bytes()), "{w}");
        }
        // And it is a filter: most ordinary words are turned away before any hashing.
        let prose = [
            "product",
            "number",
            "comfortable",
            "durable",
            "running",
            "available",
            "several",
            "colours",
            "ships",
            "days",
            "the",
            "and",
            "customer",
            "order",
            "address",
            "description",
        ];
        let passed = prose.iter().filter(|w| may_be_listed(w.as_bytes())).count();
        assert!(
            passed * 2 < prose.len(),
            "{passed} of {} prose words pass",
            prose.len()
        );
        assert!(!may_be_listed(b""));
    }
}
