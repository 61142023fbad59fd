//! The self-protection loop against abuse other than injection, end to end in network namespaces: token
//! tampering, an identity abusing a valid token from two addresses, path scanning, request rates far above a
//! route's learned normal, a UDP flood against the kernel rate limit, and bans surviving a daemon restart.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use rasp_tests::{Client, Daemon, Lab, eventually, http_status, http_status_with, reachable, send_udp};

const PROXY: u16 = 8080;
const UPSTREAM: u16 = 9001;
const TIMEOUT: Duration = Duration::from_millis(700);
const SQLI: &str = "/search?q=1%27%20OR%20%271%27%3D%271";
const SECRET_ENV: &str = "RASP_TEST_JWT_SECRET";
const SECRET: &str = "e2e-test-secret-0123456789abcdef";
const ISSUER: &str = "https://issuer.example.test";
const AUDIENCE: &str = "orders-api";

/// The parts every config shares: XDP on the lab's host veths, one upstream, the admin listener.
fn base(lab: &Lab, xdp_extra: &str) -> String {
    lab.daemon_config_base(PROXY, UPSTREAM, xdp_extra) + "\n[inspection]\nmode = \"block\"\n"
}

const CATCH_ALL: &str = r#"
[[route]]
path_prefix = "/"
upstream = "app"
"#;

/// A JWT route under `/api` (HS256, secret from the environment) and an open route for everything else.
fn jwt_routes() -> String {
    format!(
        r#"
[jwt]
[[jwt.issuer]]
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
algorithms = ["HS256"]
secret_env = "{SECRET_ENV}"

[[route]]
path_prefix = "/api"
upstream = "app"
auth = "jwt"

[[route]]
path_prefix = "/"
upstream = "app"
"#
    )
}

/// Starts the daemon and waits until the first client is served on `health`.
fn start(lab: &Lab, config: &str, health: &str, headers: &[(&str, &str)]) -> Daemon {
    let daemon = Daemon::start_with_env(&lab.host, config, &[(SECRET_ENV, SECRET)]);
    let client = &lab.clients[0];
    let up = eventually(Duration::from_secs(10), || {
        http_status_with(&client.ns, client.host_v4(), PROXY, health, headers, TIMEOUT) == Ok(200)
    });
    assert!(up, "the proxy did not come up:\n{}", daemon.output());
    daemon
}

/// HS256 tokens made with `PyJWT`: signed with `key`, or with `alg: none` when `key` is `None`.
fn token(subject: &str, key: Option<&str>) -> String {
    let script = r#"
import sys, time, jwt
sub, key = sys.argv[1], sys.argv[2]
claims = {"iss": sys.argv[3], "aud": sys.argv[4], "sub": sub, "iat": int(time.time()), "exp": int(time.time()) + 600}
if key == "":
    print(jwt.encode(claims, None, algorithm="none"))
else:
    print(jwt.encode(claims, key, algorithm="HS256"))
"#;
    let out = Command::new("python3")
        .args(["-c", script, subject, key.unwrap_or(""), ISSUER, AUDIENCE])
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3: {e}"));
    assert!(
        out.status.success(),
        "PyJWT failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn get(c: &Client, path: &str) -> Result<u16, String> {
    http_status(&c.ns, c.host_v4(), PROXY, path, TIMEOUT)
}

fn get_auth(c: &Client, path: &str, token: &str) -> Result<u16, String> {
    let bearer = format!("Bearer {token}");
    http_status_with(
        &c.ns,
        c.host_v4(),
        PROXY,
        path,
        &[("authorization", &bearer)],
        TIMEOUT,
    )
}

#[test]
fn token_tampering_gets_401s_then_a_kernel_ban() {
    let lab = Lab::new(2);
    let _upstream = lab.http_server(UPSTREAM);
    let config = format!("{}{}", base(&lab, ""), jwt_routes());
    let valid = token("alice", Some(SECRET));
    let daemon = start(&lab, &config, "/", &[]);
    let (client, attacker) = (&lab.clients[0], &lab.clients[1]);

    // The secret reached the daemon: a valid token is served, from either address.
    assert_eq!(
        get_auth(client, "/api/orders", &valid),
        Ok(200),
        "{}",
        daemon.output()
    );
    assert_eq!(get_auth(attacker, "/api/orders", &valid), Ok(200));

    let forged = token("admin", Some("not-the-secret"));
    let unsigned = token("admin", None);
    let mut statuses = Vec::new();
    for i in 0..10 {
        let t = if i % 2 == 0 { &forged } else { &unsigned };
        match get_auth(attacker, "/api/orders", t) {
            Ok(s) => statuses.push(s),
            Err(_) => break,
        }
    }
    assert!(
        !statuses.is_empty() && statuses.iter().all(|&s| s == 401),
        "tampered tokens get 401: {statuses:?}"
    );
    assert!(statuses.len() < 10, "the tamperer must be cut off: {statuses:?}");
    let ban = lab
        .ban_of(&attacker.v4().to_string())
        .unwrap_or_else(|| panic!("no kernel ban:\n{}", daemon.output()));
    assert_eq!(ban["reason"], "auth_abuse", "{ban}");
    let note = ban["note"].as_str().unwrap_or("");
    assert!(
        note.contains("bad_signature") && note.contains("algorithm_not_allowed"),
        "the note names both kinds of tampering: {ban}"
    );
    assert!(
        get_auth(attacker, "/api/orders", &valid).is_err(),
        "even a valid token no longer gets through: the kernel drops the source"
    );
    assert_eq!(
        get_auth(client, "/api/orders", &valid),
        Ok(200),
        "the client is still served"
    );
}

#[test]
fn an_identity_abusing_a_valid_token_from_two_addresses_is_blocked_on_both() {
    let lab = Lab::new(2);
    let _upstream = lab.http_server(UPSTREAM);
    // Sources are never banned here, so the identity block is what shows.
    let config = format!(
        "{}{}\n[risk]\nban_threshold = 10000.0\nidentity_block_threshold = 20.0\n",
        base(&lab, ""),
        jwt_routes()
    );
    let valid = token("mallory", Some(SECRET));
    let daemon = start(&lab, &config, "/", &[]);
    let (a, b) = (&lab.clients[0], &lab.clients[1]);
    for c in [a, b] {
        assert_eq!(get_auth(c, "/api/orders", &valid), Ok(200), "{}", daemon.output());
    }

    let attack = format!("/api{SQLI}");
    let mut blocked = false;
    for i in 0..24 {
        let c = if i % 2 == 0 { a } else { b };
        assert_eq!(get_auth(c, &attack, &valid), Ok(403), "attacks are refused");
        if i % 2 == 1 && get_auth(a, "/api/orders", &valid) == Ok(403) {
            blocked = true;
            break;
        }
    }
    assert!(blocked, "the identity was never blocked:\n{}", daemon.output());
    for c in [a, b] {
        assert_eq!(
            get_auth(c, "/api/orders", &valid),
            Ok(403),
            "a clean request with the abused token is refused from {}",
            c.v4()
        );
        assert_eq!(get(c, "/"), Ok(200), "{} itself is not banned", c.v4());
        assert!(lab.ban_of(&c.v4().to_string()).is_none(), "no kernel ban");
    }
    let other = token("bob", Some(SECRET));
    assert_eq!(
        get_auth(b, "/api/orders", &other),
        Ok(200),
        "another identity is served"
    );
    // The access log names the verdict for both addresses; the block has one forensic record.
    let refused_at = |c: &Client| {
        let source = format!("\"source\":\"{}\"", c.v4());
        daemon
            .output()
            .lines()
            .any(|l| l.contains("\"verdict\":\"block_identity\"") && l.contains(&source))
    };
    let logged = eventually(Duration::from_secs(2), || refused_at(a) && refused_at(b));
    assert!(
        logged,
        "block_identity verdicts from both addresses:\n{}",
        daemon.output()
    );
    let records = daemon
        .output()
        .lines()
        .filter(|l| l.contains("\"action\":\"identity_block\""))
        .count();
    assert_eq!(records, 1, "one forensic record:\n{}", daemon.output());
}

#[test]
fn a_path_scanner_is_banned_and_a_client_with_a_few_404s_is_not() {
    let lab = Lab::new(2);
    let _upstream = lab.http_server(UPSTREAM);
    // Only `/app` has a route: everything else is the proxy's own 404.
    let config = format!(
        "{}\n[[route]]\npath_prefix = \"/app\"\nupstream = \"app\"\n",
        base(&lab, "")
    );
    let daemon = start(&lab, &config, "/app/health", &[]);
    let (client, scanner) = (&lab.clients[0], &lab.clients[1]);

    for path in ["/favicon.ico", "/robots.txt", "/old-page"] {
        assert_eq!(get(client, path), Ok(404));
    }
    let mut statuses = Vec::new();
    for i in 0..60 {
        match get(scanner, &format!("/probe-{i}/.env")) {
            Ok(s) => statuses.push(s),
            Err(_) => break,
        }
    }
    assert!(
        !statuses.is_empty() && statuses.iter().all(|&s| s == 404),
        "unrouted paths are 404: {statuses:?}"
    );
    assert!(
        statuses.len() < 60,
        "the scanner must be cut off: {} answers\n{}",
        statuses.len(),
        daemon.output()
    );
    let ban = lab
        .ban_of(&scanner.v4().to_string())
        .expect("the scanner is banned");
    assert_eq!(ban["reason"], "scanning", "{ban}");
    assert!(
        !reachable(&scanner.ns, scanner.host_v4(), UPSTREAM, TIMEOUT),
        "dropped"
    );

    assert!(
        lab.ban_of(&client.v4().to_string()).is_none(),
        "a few 404s ban nobody"
    );
    assert_eq!(get(client, "/app/x"), Ok(200), "the client is still served");
}

#[test]
fn a_source_far_above_the_learned_rate_gets_429_then_a_ban_while_a_steady_client_does_not() {
    let lab = Lab::new(2);
    let _upstream = lab.http_server(UPSTREAM);
    // 200 ms samples, enforced after 10: the route learns about one request per sample from the steady client.
    let config = format!(
        "{}{CATCH_ALL}\n[risk]\nrate_bucket = \"200ms\"\nrate_min_samples = 10\nrate_min_rps = 10.0\n",
        base(&lab, "")
    );
    let daemon = start(&lab, &config, "/", &[]);
    let (client, attacker) = (&lab.clients[0], &lab.clients[1]);
    let steady = |count: usize| -> Vec<Result<u16, String>> {
        (0..count)
            .map(|_| {
                let r = get(client, "/orders");
                thread::sleep(Duration::from_millis(250));
                r
            })
            .collect()
    };

    // Learning: 14 samples of one request.
    let learned = steady(14);
    assert!(learned.iter().all(|r| *r == Ok(200)), "{learned:?}");

    let (steady_results, attack) = thread::scope(|s| {
        let steady_thread = s.spawn(|| steady(12));
        let deadline = Instant::now() + Duration::from_secs(8);
        let mut attack = Vec::new();
        while attack.len() < 400 && Instant::now() < deadline {
            match get(attacker, "/orders") {
                Ok(st) => attack.push(st),
                Err(_) => break,
            }
        }
        (steady_thread.join().expect("steady client"), attack)
    });
    assert!(
        attack.contains(&429),
        "the flood is refused with 429: {attack:?}\n{}",
        daemon.output()
    );
    assert!(
        attack.len() < 400,
        "the attacker must be banned: {} answers",
        attack.len()
    );
    let ban = lab
        .ban_of(&attacker.v4().to_string())
        .expect("the attacker is banned");
    assert_eq!(ban["reason"], "rate_abuse", "{ban}");
    assert!(get(attacker, "/orders").is_err(), "dropped in the kernel");

    assert!(
        steady_results.iter().all(|r| *r == Ok(200)),
        "the steady client is never refused: {steady_results:?}"
    );
    assert!(lab.ban_of(&client.v4().to_string()).is_none());
}

#[test]
fn a_udp_flood_trips_the_kernel_rate_limit_while_the_proxy_serves_the_other_client() {
    let lab = Lab::new(2);
    let _upstream = lab.http_server(UPSTREAM);
    let config = format!("{}{CATCH_ALL}", base(&lab, "rate_limit_pps = 1000"));
    let _daemon = start(&lab, &config, "/", &[]);
    let (client, flooder) = (&lab.clients[0], &lab.clients[1]);
    assert_eq!(lab.stat("dropped_rate_limit"), 0, "nothing limited yet");

    send_udp(&flooder.ns, flooder.host_v4(), 5353, 20_000, 64);
    let dropped = lab.stat("dropped_rate_limit");
    assert!(
        dropped > 1000,
        "the kernel rate limit dropped the flood: {dropped}"
    );
    for _ in 0..5 {
        assert_eq!(get(client, "/"), Ok(200), "the other client is served");
    }
}

#[test]
fn a_restarted_daemon_keeps_active_bans_their_remaining_ttl_and_the_strikes() {
    let lab = Lab::new(2);
    let _upstream = lab.http_server(UPSTREAM);
    let config = format!(
        "{}{CATCH_ALL}\n[risk]\nban_ttls = [\"10s\", \"40s\"]\n",
        base(&lab, "")
    );
    let daemon = start(&lab, &config, "/", &[]);
    let (client, attacker) = (&lab.clients[0], &lab.clients[1]);
    let addr = attacker.v4().to_string();
    let attack = || {
        for _ in 0..10 {
            if get(attacker, SQLI).is_err() {
                break;
            }
        }
    };

    attack();
    let before = lab
        .ban_of(&addr)
        .unwrap_or_else(|| panic!("no ban:\n{}", daemon.output()));
    let remaining_before = before["remaining"].as_f64().expect("remaining");
    let at = Instant::now();
    drop(daemon);
    // Long enough that a reset TTL would stand out from a continued one.
    thread::sleep(Duration::from_secs(3));

    let daemon = start(&lab, &config, "/", &[]);
    assert!(get(attacker, "/").is_err(), "the attacker is still dropped");
    let after = lab.ban_of(&addr).expect("the ban survived the restart");
    let remaining_after = after["remaining"].as_f64().expect("remaining");
    let expected = remaining_before - at.elapsed().as_secs_f64();
    assert!(
        (remaining_after - expected).abs() < 1.5,
        "the TTL continues, not reset: before {remaining_before}, after {remaining_after}, expected ~{expected}"
    );
    assert_eq!(after["reason"], before["reason"]);
    assert_eq!(after["strikes"], 1);

    // The restarted daemon still knows the repeat offender: its next ban is the longer one.
    let back = eventually(Duration::from_secs(10), || {
        reachable(&attacker.ns, attacker.host_v4(), UPSTREAM, TIMEOUT)
    });
    assert!(back, "the first ban expires");
    attack();
    let second = lab
        .ban_of(&addr)
        .unwrap_or_else(|| panic!("no second ban:\n{}", daemon.output()));
    assert_eq!(second["strikes"], 2, "{second}");
    assert!(
        second["remaining"].as_f64().unwrap_or(0.0) > 30.0,
        "the second ban uses the second TTL: {second}"
    );
    assert_eq!(get(client, "/"), Ok(200), "the client is served throughout");
}
