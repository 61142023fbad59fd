//! Server-side request forgery and remote file inclusion: URLs in values that point the server at itself,
//! its network or its cloud metadata service, in any spelling of the address (`127.1`, `2130706433`,
//! `0x7f000001`, `0177.0.0.1`, `[::ffff:127.0.0.1]`), and URL schemes no browser-facing API needs
//! (`gopher:`, `dict:`, `file:`, `ldap:`). A URL to a public host in a query string is ordinary and passes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{Classes, Value, excerpt, run_start};
use crate::{
    event::{AttackCategory, Severity},
    inspect::{Rule, Sink, extract::FieldKind},
};

const INTERNAL: Rule = Rule {
    id: "ssrf.internal_address",
    category: AttackCategory::Ssrf,
    severity: Severity::Critical,
    paranoia: 1,
};
const PRIVATE: Rule = Rule {
    id: "ssrf.private_address",
    category: AttackCategory::Ssrf,
    severity: Severity::Error,
    paranoia: 1,
};
const METADATA: Rule = Rule {
    id: "ssrf.cloud_metadata",
    category: AttackCategory::Ssrf,
    severity: Severity::Critical,
    paranoia: 1,
};
const SCHEME: Rule = Rule {
    id: "ssrf.dangerous_scheme",
    category: AttackCategory::Ssrf,
    severity: Severity::Critical,
    paranoia: 1,
};
const RFI: Rule = Rule {
    id: "rfi.remote_include",
    category: AttackCategory::Rfi,
    severity: Severity::Error,
    paranoia: 1,
};

pub(super) fn scan(v: &Value<'_>, sink: &mut Sink<'_>) {
    if !v.classes.any(Classes::COLON) || !v.classes.any(Classes::SLASH) {
        return;
    }
    let s = v.lower;
    let mut from = 0;
    while let Some(at) = find_scheme_separator(s.as_bytes(), from) {
        from = at + 3;
        let scheme_start = run_start(s, at, |c| {
            c.is_ascii_alphanumeric() || matches!(c, b'+' | b'.' | b'-')
        });
        let scheme = &s[scheme_start..at];
        if matches!(
            scheme,
            "gopher"
                | "dict"
                | "ldap"
                | "ldaps"
                | "tftp"
                | "netdoc"
                | "jar"
                | "sftp"
                | "ftps"
                | "telnet"
                | "smb"
        ) {
            sink.report(&SCHEME, v.location, excerpt(v.text, scheme_start));
        }
        let rest = &s[at + 3..];
        let authority = rest
            .split(['/', '?', '#', '\\', ' ', '"', '\'', '<', '>'])
            .next()
            .unwrap_or("");
        let host_port = authority.rsplit('@').next().unwrap_or("");
        let host = if let Some(h) = host_port.strip_prefix('[') {
            h.split(']').next().unwrap_or("")
        } else {
            host_port.split(':').next().unwrap_or("")
        };
        if let Some(rule) = classify_host(host) {
            sink.report(rule, v.location, excerpt(v.text, scheme_start));
        }
        // RFI: a value that *is* a URL to a script or text file ending in `?` (the include trick that cuts
        // off the appended extension), or a script URL followed by a query carrying a command.
        if scheme_start == 0
            && v.kind == FieldKind::Value
            && matches!(scheme, "http" | "https" | "ftp")
            && (s.ends_with('?') || s.ends_with("?%00"))
        {
            sink.report(&RFI, v.location, excerpt(v.text, 0));
        }
    }
}

/// What kind of internal destination `host` names, if any.
fn classify_host(host: &str) -> Option<&'static Rule> {
    if host.is_empty() {
        return None;
    }
    if matches!(
        host,
        "metadata.google.internal" | "metadata" | "instance-data" | "metadata.azure.com"
    ) || host.ends_with(".internal") && host.starts_with("metadata")
    {
        return Some(&METADATA);
    }
    if host == "localhost"
        || host.ends_with(".localhost")
        || host == "localtest.me"
        || host.ends_with(".nip.io") && host.starts_with("127.")
    {
        return Some(&INTERNAL);
    }
    let ip = parse_ipv4_loose(host).map(IpAddr::V4).or_else(|| {
        // An IPv6 address has a colon; a name is not parsed as one.
        host.contains(':')
            .then(|| host.parse::<Ipv6Addr>().ok())
            .flatten()
            .map(IpAddr::V6)
    })?;
    let v4 = match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => {
            if v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
            {
                return Some(&INTERNAL);
            }
            v6.to_ipv4_mapped()?
        }
    };
    if v4 == Ipv4Addr::new(169, 254, 169, 254)
        || v4 == Ipv4Addr::new(100, 100, 100, 200)
        || v4 == Ipv4Addr::new(169, 254, 170, 2)
    {
        return Some(&METADATA);
    }
    if v4.is_loopback() || v4.is_unspecified() || v4.is_link_local() {
        return Some(&INTERNAL);
    }
    if v4.is_private() || v4.octets()[0] == 100 && (64..128).contains(&v4.octets()[1]) {
        return Some(&PRIVATE);
    }
    None
}

/// IPv4 the way `inet_aton` (and so curl and most HTTP clients) reads it: one to four parts, each decimal,
/// octal (`0177`) or hex (`0x7f`), the last part filling the remaining bytes (`127.1`, `2130706433`).
pub(crate) fn parse_ipv4_loose(host: &str) -> Option<Ipv4Addr> {
    // Every form below starts with a digit (or the `+` that `u64::from_str` accepts): a name never does,
    // and is turned away before any splitting.
    if !host
        .as_bytes()
        .first()
        .is_some_and(|&b| b.is_ascii_digit() || b == b'+')
    {
        return None;
    }
    let parts: Vec<&str> = host.trim_end_matches('.').split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut nums = Vec::with_capacity(4);
    for p in &parts {
        let n = if let Some(h) = p.strip_prefix("0x") {
            if h.is_empty() {
                0
            } else {
                u64::from_str_radix(h, 16).ok()?
            }
        } else if p.len() > 1 && p.starts_with('0') {
            u64::from_str_radix(p, 8).ok()?
        } else {
            p.parse::<u64>().ok()?
        };
        nums.push(n);
    }
    let (last, init) = nums.split_last()?;
    let mut addr: u64 = 0;
    for (i, n) in init.iter().enumerate() {
        if *n > 255 {
            return None;
        }
        addr |= n << (24 - 8 * i);
    }
    let bits = 32 - 8 * init.len();
    if *last >= 1u64 << bits {
        return None;
    }
    addr |= last;
    u32::try_from(addr).ok().map(Ipv4Addr::from)
}

/// The first `://` at or after `from`: a `memchr` per `:` instead of a substring searcher per value.
fn find_scheme_separator(s: &[u8], from: usize) -> Option<usize> {
    let rest = s.get(from..)?;
    memchr::memchr_iter(b':', rest)
        .find(|&i| rest.get(i + 1..i + 3) == Some(b"//"))
        .map(|i| from + i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loose_ipv4_spellings() {
        let lo = Some(Ipv4Addr::LOCALHOST);
        assert_eq!(parse_ipv4_loose("127.0.0.1"), lo);
        assert_eq!(parse_ipv4_loose("127.1"), lo);
        assert_eq!(parse_ipv4_loose("2130706433"), lo);
        assert_eq!(parse_ipv4_loose("0x7f000001"), lo);
        assert_eq!(parse_ipv4_loose("0177.0.0.1"), lo);
        assert_eq!(parse_ipv4_loose("0x7f.1"), lo);
        assert_eq!(parse_ipv4_loose("example.com"), None);
        assert_eq!(parse_ipv4_loose("256.1.1.1"), None);
    }

    #[test]
    fn hosts_classified() {
        assert_eq!(
            classify_host("169.254.169.254").map(|r| r.id),
            Some("ssrf.cloud_metadata")
        );
        assert_eq!(
            classify_host("[::1]".trim_matches(['[', ']'])).map(|r| r.id),
            Some("ssrf.internal_address")
        );
        assert_eq!(
            classify_host("::ffff:127.0.0.1").map(|r| r.id),
            Some("ssrf.internal_address")
        );
        assert_eq!(
            classify_host("10.1.2.3").map(|r| r.id),
            Some("ssrf.private_address")
        );
        assert_eq!(classify_host("www.example.com"), None);
        assert_eq!(classify_host("8.8.8.8"), None);
    }
}
