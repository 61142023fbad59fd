//! Code and expression injection into the application's own interpreters: PHP code and serialized objects,
//! Java expression languages (`OGNL`, `SpEL`, `EL`) and serialized objects, Node.js prototype pollution and
//! `child_process`, server-side templates, and XML external entities.

use std::sync::LazyLock;

use regex::Regex;

use super::{Classes, Needles, Value, excerpt, needles};
use crate::{
    event::{AttackCategory, Severity},
    inspect::{
        Rule, Sink,
        extract::{Field, FieldKind},
    },
};

const PHP_CODE: Rule = Rule {
    id: "php.code",
    category: AttackCategory::Php,
    severity: Severity::Critical,
    paranoia: 1,
};
const PHP_FUNCTION: Rule = Rule {
    id: "php.dangerous_function",
    category: AttackCategory::Php,
    severity: Severity::Critical,
    paranoia: 1,
};
const PHP_OBJECT: Rule = Rule {
    id: "php.serialized_object",
    category: AttackCategory::Php,
    severity: Severity::Error,
    paranoia: 1,
};
const JAVA_EXPRESSION: Rule = Rule {
    id: "java.expression",
    category: AttackCategory::Java,
    severity: Severity::Critical,
    paranoia: 1,
};
const JAVA_SERIALIZED: Rule = Rule {
    id: "java.serialized_object",
    category: AttackCategory::Java,
    severity: Severity::Critical,
    paranoia: 1,
};
const NODE: Rule = Rule {
    id: "nodejs.injection",
    category: AttackCategory::Nodejs,
    severity: Severity::Critical,
    paranoia: 1,
};
const PROTO: Rule = Rule {
    id: "nodejs.prototype_pollution",
    category: AttackCategory::Nodejs,
    severity: Severity::Critical,
    paranoia: 1,
};
const SSTI: Rule = Rule {
    id: "other.template_injection",
    category: AttackCategory::Other,
    severity: Severity::Critical,
    paranoia: 1,
};
const XXE: Rule = Rule {
    id: "other.xxe",
    category: AttackCategory::Other,
    severity: Severity::Critical,
    paranoia: 1,
};
const UTF7: Rule = Rule {
    id: "other.utf7_markup",
    category: AttackCategory::Other,
    severity: Severity::Error,
    paranoia: 1,
};
const GRAPHQL_INTROSPECTION: Rule = Rule {
    id: "other.graphql_introspection",
    category: AttackCategory::Other,
    severity: Severity::Critical,
    paranoia: 1,
};
const SSI: Rule = Rule {
    id: "other.ssi",
    category: AttackCategory::Other,
    severity: Severity::Critical,
    paranoia: 1,
};

static PHP_FN_RE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"(?-u:\b)(?:system|passthru|shell_exec|exec|phpinfo|base64_decode|assert|eval|proc_open|popen|pcntl_exec|file_put_contents|file_get_contents|fopen|readfile|include|include_once|require|require_once|call_user_func|call_user_func_array|create_function|preg_replace|highlight_file|show_source|php_uname|phpversion|getcwd|scandir|unlink|fwrite|chr)\s*\(\s*(?:['\x22$]|\)|\w+\s*\()|\$_(?:get|post|request|cookie|server|files|env)\s*\[|\{\s*\$\{\s*[a-z_]\w*\s*\(")
        .ok()
});
static PHP_OBJECT_RE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r#"(?-u:\b)[oc]:\d+:"[\w\\]+":\d+:\{"#).ok());
static JAVA_RE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"java\.lang\.(?:runtime|processbuilder|system|class|reflect)|getruntime\s*\(|processbuilder\s*\(|class\.forname\s*\(|#_memberaccess|#context\s*\[|%\{\s*[#(@]|\$\{\s*[#@(]|(?-u:\b)t\s*\(\s*java\.|new\s+java\.|@java\.lang|\.getclass\s*\(\s*\)\s*\.|xwork2\.|ognl\.|\$\{\s*(?:script|spring|applicationscope|pagecontext|facescontext|request\.getsession)|\.exec\s*\(\s*['\x22]|javax\.script|scriptenginemanager|com\.sun\.|org\.apache\.commons\.collections|com\.mchange\.v2|templatesimpl|jdbcrowsetimpl|bsh\.interpreter|groovy\.lang")
        .ok()
});
static NODE_RE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"require\s*\(\s*['\x22`](?:child_process|fs|net|vm|os)['\x22`]\s*\)|child_process|process\.mainmodule|process\.binding|global\.process|(?-u:\b)process\.env(?-u:\b)|module\.constructor|\.constructor\s*\(\s*['\x22`]return|this\.constructor\.constructor|_load\s*\(\s*['\x22]|(?-u:\b)execsync\s*\(|(?-u:\b)spawnsync\s*\(")
        .ok()
});
static PROTO_RE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"__proto__|constructor\s*(?:\.|\[\s*['\x22]?)\s*prototype").ok());
static SSTI_RE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"\$\{\s*\d+\s*[*+]\s*\d+\s*\}|#\{\s*\d+\s*\*\s*\d+\s*\}|<%=?\s*\d+\s*\*\s*\d+\s*%>|\{\{\s*\d+\s*[-+*/%]\s*\d+\s*\}\}|\{\{.*(?:__\s*(?:class|mro|subclasses|globals|builtins|import|base)\s*__|config\.items|self\._|request\.application|lipsum|cycler|joiner|namespace)|\{%\s*(?:import|include|set|for|if|debug|php|exec)(?-u:\b)|<#assign|freemarker\.template|\$\{\s*(?:class|object)\.|#set\s*\(\s*\$|\*\{\s*t\s*\(|\{php\}|\{\$smarty")
        .ok()
});

const ARGUMENT_INJECTION: Rule = Rule {
    id: "cmdi.argument_injection",
    category: AttackCategory::Cmdi,
    severity: Severity::Critical,
    paranoia: 1,
};
const LDAP: Rule = Rule {
    id: "other.ldap_injection",
    category: AttackCategory::Other,
    severity: Severity::Critical,
    paranoia: 1,
};
const MAIL: Rule = Rule {
    id: "other.mail_command_injection",
    category: AttackCategory::Other,
    severity: Severity::Critical,
    paranoia: 1,
};
const NOSQL: Rule = Rule {
    id: "other.nosql_injection",
    category: AttackCategory::Other,
    severity: Severity::Critical,
    paranoia: 1,
};
const YAML: Rule = Rule {
    id: "other.unsafe_deserialization",
    category: AttackCategory::Other,
    severity: Severity::Critical,
    paranoia: 1,
};

/// LDAP filter syntax breaking out of an attribute value: `*)(|(objectclass=*))`, `(&(uid=x)(!(…`,
/// extensible-match rules (`userPassword:2.5.13.18:=`).
static LDAP_RE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"\(\s*[|&!]\s*\(\s*[\w!&|(]|\*\s*\)\s*\(\s*[|&]|\)\s*\(\s*[|&]\s*\(|objectclass\s*=\s*\*|\w:\d+(?:\.\d+){3,}:=").ok()
});
/// A line break followed by an SMTP or IMAP command: the value is being written into a mail session.
static MAIL_RE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"[\r\n]\s*(?:(?:[A-Z]\d{1,4}\s+)?(?:CAPABILITY|FETCH|LOGIN|LOGOUT|SELECT|EXAMINE|APPEND|STORE|UID|LIST|NOOP|AUTHENTICATE)(?-u:\b)|(?:RCPT\s+TO|MAIL\s+FROM)\s*:|(?:QUIT|DATA|HELO|EHLO|RSET|VRFY|EXPN)\s*(?:[\r\n]|$))").ok()
});
/// `MongoDB` query operators and server-side JavaScript.
static NOSQL_RE: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r#"\$(?:where|ne|gt|gte|lt|lte|regex|nin|in|or|and|not|nor|exists|expr|function|accumulator)(?-u:\b)\s*['"]?\s*:|(?-u:\b)db\s*\.\s*\w+\s*\.\s*(?:insert|find|update|remove|drop|aggregate)\w*\s*\(|(?-u:\b)do\s*\{[^}]{0,200}\}\s*while\s*\(|(?-u:\b)sleep\s*\(\s*\d{3,}\s*\)|\[\s*\$(?:ne|gt|regex|where)\s*\]"#).ok()
});

pub(super) fn scan(v: &Value<'_>, sink: &mut Sink<'_>) {
    let c = v.classes;
    let s = v.lower;
    if c.any(Classes::LT) {
        for tag in ["<?php", "<?=", "<? "] {
            if let Some(at) = s.find(tag) {
                sink.report(&PHP_CODE, v.location, excerpt(v.text, at));
            }
        }
        if let Some(at) = s.find("<!--#") {
            let rest = &s[at + 5..];
            if [
                "exec", "include", "echo", "config", "printenv", "fsize", "flastmod", "set",
            ]
            .iter()
            .any(|d| rest.starts_with(d))
            {
                sink.report(&SSI, v.location, excerpt(v.text, at));
            }
        }
        if (s.contains("<!entity") || s.contains("<!doctype") && s.contains("system"))
            && let Some(at) = s.find("<!entity").or_else(|| s.find("<!doctype"))
        {
            sink.report(&XXE, v.location, excerpt(v.text, at));
        }
        if let Some(at) = s.find("<xi:include") {
            sink.report(&XXE, v.location, excerpt(v.text, at));
        }
    }
    if c.any(Classes::PAREN | Classes::DOLLAR) {
        find(&PHP_FN_RE, &PHP_FUNCTION, v, sink);
    }
    if c.any(Classes::COLON) && c.any(Classes::BRACE) && c.any(Classes::QUOTE) {
        find(&PHP_OBJECT_RE, &PHP_OBJECT, v, sink);
    }
    if c.any(Classes::DOT | Classes::HASH | Classes::BRACE) {
        find(&JAVA_RE, &JAVA_EXPRESSION, v, sink);
    }
    if c.any(Classes::DOT | Classes::PAREN) {
        find(&NODE_RE, &NODE, v, sink);
    }
    if c.any(Classes::DOT | Classes::BRACE) || s.contains("__proto__") {
        find(&PROTO_RE, &PROTO, v, sink);
    }
    if c.any(Classes::BRACE | Classes::LT | Classes::HASH) {
        find(&SSTI_RE, &SSTI, v, sink);
    }
    scan_markers(v, sink);
    scan_other_languages(v, sink);
}

/// Server-side code in binary content: PHP or JSP hidden in an image or archive upload.
pub(super) fn scan_code(v: &Value<'_>, sink: &mut Sink<'_>) {
    for tag in ["<?php", "<?=", "<%@", "<%=", "<% "] {
        if let Some(at) = v.lower.find(tag) {
            sink.report(&PHP_CODE, v.location, excerpt(v.text, at));
            return;
        }
    }
}

/// LDAP, mail protocols, `NoSQL`, YAML tags, Drupal render arrays, tool options, `GraphQL` introspection.
fn scan_other_languages(v: &Value<'_>, sink: &mut Sink<'_>) {
    let c = v.classes;
    let s = v.lower;
    if c.any(Classes::PAREN) && c.any(Classes::EQ | Classes::STAR) {
        find(&LDAP_RE, &LDAP, v, sink);
    }
    if c.any(Classes::NEWLINE)
        && !v.location.starts_with("json:")
        && let Some(m) = MAIL_RE.as_ref().and_then(|re| re.find(v.text))
    {
        sink.report(&MAIL, v.location, excerpt(v.text, m.start()));
    }
    if c.any(Classes::DOLLAR | Classes::PAREN | Classes::BRACE) {
        find(&NOSQL_RE, &NOSQL, v, sink);
    }
    // A JSON key that is a query operator: the body becomes a MongoDB query (`{"$ne": null}`).
    if v.kind == FieldKind::Name
        && matches!(
            s,
            "$ne"
                | "$gt"
                | "$gte"
                | "$lt"
                | "$lte"
                | "$regex"
                | "$where"
                | "$nin"
                | "$in"
                | "$or"
                | "$and"
                | "$not"
                | "$nor"
                | "$exists"
                | "$expr"
        )
    {
        sink.report(&NOSQL, v.location, s);
    }
}

/// Literal markers, one pass over the value for all of them: serialized Java objects (hex, base64 `rO0AB`),
/// UTF-7 markup, YAML language tags, Drupal render-array keys, tool options that run commands, `GraphQL`
/// introspection.
const MARKERS: &[(&str, &Rule)] = &[
    ("aced0005", &JAVA_SERIALIZED),
    ("ro0ab", &JAVA_SERIALIZED),
    ("+adw-", &UTF7),
    ("+ad4-", &UTF7),
    ("+aci-", &UTF7),
    ("+acc-", &UTF7),
    ("!!python/", &YAML),
    ("!!java", &YAML),
    ("!!ruby/", &YAML),
    ("!!perl/", &YAML),
    ("!!php/", &YAML),
    ("tag:yaml.org,2002:python", &YAML),
    ("[#post_render]", &PHP_FUNCTION),
    ("[#pre_render]", &PHP_FUNCTION),
    ("[#lazy_builder]", &PHP_FUNCTION),
    ("[#access_callback]", &PHP_FUNCTION),
    ("#post_render[", &PHP_FUNCTION),
    ("#lazy_builder[", &PHP_FUNCTION),
    ("--open-files-in-pager=", &ARGUMENT_INJECTION),
    ("--upload-pack=", &ARGUMENT_INJECTION),
    ("--receive-pack=", &ARGUMENT_INJECTION),
    ("-oproxycommand", &ARGUMENT_INJECTION),
    ("core.sshcommand=", &ARGUMENT_INJECTION),
    ("--exec=", &ARGUMENT_INJECTION),
    ("--checkpoint-action=exec", &ARGUMENT_INJECTION),
    ("__schema", &GRAPHQL_INTROSPECTION),
];

fn scan_markers(v: &Value<'_>, sink: &mut Sink<'_>) {
    static AUTOMATON: Needles =
        Needles::new(|| needles(&MARKERS.iter().map(|(m, _)| *m).collect::<Vec<_>>()));
    let Some(ac) = AUTOMATON.as_ref() else { return };
    for m in ac.find_iter(v.lower) {
        let (marker, rule) = MARKERS[m.pattern().as_usize()];
        let at = m.start();
        // `rO0AB` is case-sensitive base64; `__schema` counts only as a selection (`__schema {`).
        let confirmed = match marker {
            "ro0ab" => v.text.get(at..at + 5) == Some("rO0AB"),
            "__schema" => v.lower[m.end()..].trim_start().starts_with('{'),
            _ => true,
        };
        if confirmed {
            sink.report(rule, v.location, excerpt(v.text, at));
        }
    }
}

fn find(re: &LazyLock<Option<Regex>>, rule: &Rule, v: &Value<'_>, sink: &mut Sink<'_>) {
    if !sink.enabled(rule) {
        return;
    }
    if let Some(m) = re.as_ref().and_then(|re| re.find(v.lower)) {
        sink.report(rule, v.location, excerpt(v.text, m.start()));
    }
}

/// Document-level XML rules: external entities and `XInclude`, in any encoding declaration.
pub(super) fn scan_xml_document(field: &Field<'_>, sink: &mut Sink<'_>) {
    let head = &field.raw[..field.raw.len().min(64 * 1024)];
    let lower = String::from_utf8_lossy(head).to_ascii_lowercase();
    let declares = lower.contains("<!entity") || lower.contains("<!doctype");
    let external = declares && (lower.contains("system") || lower.contains("public"));
    // Schema references the parser may fetch: XInclude, `xs:include`/`xs:import`, `schemaLocation`.
    let fetches = [
        "<xi:include",
        "<xs:include",
        "<xs:import",
        "<xsd:include",
        "<xsd:import",
        "schemalocation=",
    ]
    .iter()
    .any(|t| lower.contains(t));
    if external || fetches || lower.contains("+adwaiq-entity") {
        sink.report(
            &XXE,
            field.location,
            excerpt(&lower, lower.find("<!").unwrap_or(0)),
        );
    }
}
