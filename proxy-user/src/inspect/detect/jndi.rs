//! JNDI lookups (Log4Shell): `${jndi:ldap://…}`, including the nested-lookup obfuscations Log4j resolves
//! before the `jndi:` prefix is ever visible (`${${lower:j}ndi:…}`, `${${::-j}${::-n}di:…}`,
//! `${${env:NOPE:-j}ndi:…}`). The resolver below evaluates those lookups the way Log4j does, innermost first,
//! in one pass with a stack.

use super::{Classes, Value, excerpt};
use crate::{
    event::{AttackCategory, Severity},
    inspect::{Rule, Sink},
};

const LOOKUP: Rule = Rule {
    id: "jndi.lookup",
    category: AttackCategory::Jndi,
    severity: Severity::Critical,
    paranoia: 1,
};

/// Longest value resolved: nested lookups only get longer when obfuscated, not when legitimate.
const MAX_RESOLVE: usize = 8 * 1024;

pub(super) fn scan(v: &Value<'_>, sink: &mut Sink<'_>) {
    if !v.classes.any(Classes::DOLLAR) || !v.classes.any(Classes::BRACE) || !v.lower.contains("${") {
        return;
    }
    let input = &v.lower[..v.lower.len().min(MAX_RESOLVE)];
    let resolved = resolve(input);
    for proto in [
        "jndi:ldap",
        "jndi:rmi",
        "jndi:dns",
        "jndi:iiop",
        "jndi:corba",
        "jndi:nds",
        "jndi:nis",
        "jndi:http",
        "jndi:ldaps",
        "jndi:",
    ] {
        if let Some(at) = resolved.find(proto) {
            sink.report(&LOOKUP, v.location, excerpt(&resolved, at));
            return;
        }
    }
}

/// Evaluates Log4j lookups innermost first: `${lower:X}`/`${upper:X}` give `X`, anything with a `:-default`
/// gives the default, `${jndi:…}` is kept as the text `jndi:…` (the thing to detect), other lookups give
/// nothing. Linear: each byte is copied into the output at most once per nesting level it closes.
fn resolve(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut stack: Vec<usize> = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && b.get(i + 1) == Some(&b'{') && stack.len() < 64 {
            stack.push(out.len());
            out.push_str("${");
            i += 2;
            continue;
        }
        if b[i] == b'}'
            && let Some(start) = stack.pop()
        {
            let inner = out[start + 2..].to_owned();
            out.truncate(start);
            let replacement = if inner.starts_with("jndi:") {
                inner.as_str()
            } else if let Some(pos) = inner.find(":-") {
                &inner[pos + 2..]
            } else {
                inner
                    .strip_prefix("lower:")
                    .or_else(|| inner.strip_prefix("upper:"))
                    .unwrap_or_default()
            };
            out.push_str(replacement);
            i += 1;
            continue;
        }
        let ch_len = s[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&s[i..i + ch_len]);
        i += ch_len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::resolve;

    #[test]
    fn nested_lookups_resolve_like_log4j() {
        assert!(resolve("${jndi:ldap://x/a}").contains("jndi:ldap://x/a"));
        assert!(resolve("${${lower:j}ndi:ldap://x}").contains("jndi:ldap"));
        assert!(resolve("${${::-j}${::-n}${::-d}${::-i}:rmi://x}").contains("jndi:rmi"));
        assert!(resolve("${${env:nope:-j}ndi${env:nope:-:}ldap://x}").contains("jndi:ldap"));
        // Benign: a shell-style or template variable.
        assert_eq!(resolve("cost is ${price} today"), "cost is  today");
    }
}
