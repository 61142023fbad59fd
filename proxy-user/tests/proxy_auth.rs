//! Identity through the proxy, end to end: real client, proxy and upstream sockets, tokens from `PyJWT`.
//! 401/403 answers with bodies that leak nothing, the verified subject reaching the upstream, a forged subject
//! header never reaching it, security events in their own stream, JWKS refreshed by the generation's task,
//! and reloads that refuse bad identity config.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a panic is the failure report"
)]

mod proxy_support;

#[path = "support/identity_fixture.rs"]
mod fixture;

use std::{
    io::Write,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use bytes::Bytes;
use fixture::{JwksServer, SECRET_ENV, claims, jwk, keys, now, sign, sign_with, signing_request};
use http::{Request, StatusCode};
use http_body_util::Full;
use proxy_support::{TestProxy, Upstream, get, json, send};
use serde_json::{Value, json};
use sha2::Digest as _;

const API_KEY: &str = "billing-key-0123456789abcdef";

/// Everything written to the `security` log stream by this test binary.
fn security_log() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = Arc::clone(&buf);
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || SharedWriter(Arc::clone(&writer)))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buf
    })
}

struct SharedWriter(Arc<Mutex<Vec<u8>>>);

impl Write for SharedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The security log lines that mention `needle`.
fn security_lines(needle: &str) -> Vec<Value> {
    let log = security_log().lock().unwrap().clone();
    String::from_utf8(log)
        .unwrap()
        .lines()
        .filter(|l| l.contains(needle))
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["target"] == "security")
        .map(|v| serde_json::from_str(v["fields"]["event"].as_str().unwrap()).unwrap())
        .collect()
}

fn config(upstream: &Upstream, issuer_source: &str) -> String {
    let digest = hex::encode(sha2::Sha256::digest(API_KEY.as_bytes()));
    format!(
        r#"
[[upstream]]
name = "orders"
endpoints = ["{}"]

[[route]]
name = "orders"
path_prefix = "/orders"
upstream = "orders"
auth = "jwt_or_api_key"
scopes = ["orders:read"]

[[route]]
name = "admin"
path_prefix = "/admin"
upstream = "orders"
auth = "api_key"

[[route]]
path_prefix = "/"
upstream = "orders"
auth = "none"

[[jwt.issuer]]
issuer = "{}"
audiences = ["{}"]
algorithms = ["HS256", "HS512"]
{issuer_source}

[[api_key]]
identity = "billing"
sha256 = "{digest}"
routes = ["orders"]
"#,
        upstream.addr,
        fixture::ISSUER,
        fixture::AUDIENCE,
    )
}

fn hs_source() -> String {
    keys();
    format!("secret_env = \"{SECRET_ENV}\"")
}

async fn get_with(url: &str, headers: &[(&str, &str)]) -> (StatusCode, http::HeaderMap, Bytes) {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req.body(Full::new(Bytes::new())).unwrap()).await
}

fn scoped_claims() -> Value {
    let mut c = claims();
    c["scope"] = json!("orders:read");
    c
}

/// Checks a refusal: status, a JSON body naming only the class and the request id, and the security event.
fn assert_refused(
    (status, headers, body): &(StatusCode, http::HeaderMap, Bytes),
    expected: StatusCode,
    kind: &str,
    secret: &str,
) {
    assert_eq!(*status, expected, "{}", String::from_utf8_lossy(body));
    let body_json = json(body);
    let class = if expected == StatusCode::FORBIDDEN {
        "forbidden"
    } else {
        "unauthorized"
    };
    assert_eq!(body_json["error"], class);
    let request_id = body_json["request_id"].as_str().unwrap();
    assert_eq!(
        body_json.as_object().unwrap().len(),
        2,
        "body says more than class and id: {body_json}"
    );
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        headers.contains_key("www-authenticate"),
        expected == StatusCode::UNAUTHORIZED
    );
    let events = security_lines(request_id);
    assert_eq!(events.len(), 1, "one security event per refusal, got {events:?}");
    let event = &events[0];
    assert_eq!(event["kind"]["type"], "auth");
    assert_eq!(event["kind"]["detail"], kind);
    assert_eq!(event["request_id"], request_id);
    assert_eq!(event["source"], "127.0.0.1");
    assert_eq!(event["evidence"][0]["rule_id"], format!("auth.{kind}"));
    if !secret.is_empty() {
        let log = String::from_utf8(security_log().lock().unwrap().clone()).unwrap();
        assert!(!log.contains(secret), "the credential reached the security log");
    }
}

#[tokio::test]
async fn jwt_routes_answer_401_and_403_and_forward_the_verified_subject() {
    security_log();
    let upstream = Upstream::start("orders").await;
    let p = TestProxy::start(&config(&upstream, &hs_source())).await;

    // No credentials.
    let r = get_with(&p.url("/orders/1"), &[]).await;
    assert_refused(&r, StatusCode::UNAUTHORIZED, "missing", "");

    // A good token, with a forged subject header that must not survive.
    let token = sign("HS256", &scoped_claims());
    let auth = format!("Bearer {token}");
    let (s, _, body) = get_with(
        &p.url("/orders/1"),
        &[("authorization", &auth), ("x-authenticated-subject", "mallory")],
    )
    .await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["headers"]["x-authenticated-subject"], "alice");

    // Verified but without the route's scope: 403, and the event knows who it was.
    let unscoped = sign("HS512", &claims());
    let r = get_with(
        &p.url("/orders/1"),
        &[("authorization", &format!("Bearer {unscoped}"))],
    )
    .await;
    assert_refused(
        &r,
        StatusCode::FORBIDDEN,
        "missing_scope",
        unscoped.rsplit('.').next().unwrap(),
    );
    let id = json(&r.2)["request_id"].as_str().unwrap().to_owned();
    assert_eq!(security_lines(&id)[0]["identity"]["subject"], "alice");

    // Expired, forged and `none` tokens.
    let mut expired = scoped_claims();
    expired["exp"] = json!(now() - 600);
    let expired = sign("HS256", &expired);
    let r = get_with(
        &p.url("/orders/1"),
        &[("authorization", &format!("Bearer {expired}"))],
    )
    .await;
    assert_refused(
        &r,
        StatusCode::UNAUTHORIZED,
        "expired",
        expired.rsplit('.').next().unwrap(),
    );
    let none = sign_with(json!({"op": "none", "claims": scoped_claims()}));
    let r = get_with(
        &p.url("/orders/1"),
        &[("authorization", &format!("Bearer {none}"))],
    )
    .await;
    assert_refused(&r, StatusCode::UNAUTHORIZED, "algorithm_not_allowed", "");
    let confused = sign_with(json!({
        "op": "hmac_with_public_key", "alg": "HS256", "key_file": keys().path("rsa.pub.pem"),
        "claims": scoped_claims(), "headers": {}
    }));
    let r = get_with(
        &p.url("/orders/1"),
        &[("authorization", &format!("Bearer {confused}"))],
    )
    .await;
    assert_refused(&r, StatusCode::UNAUTHORIZED, "bad_signature", "");

    // Open routes never see a client-chosen subject either.
    let (s, _, body) = get_with(&p.url("/public"), &[("x-authenticated-subject", "root")]).await;
    assert_eq!(s, 200);
    assert!(json(&body)["headers"].get("x-authenticated-subject").is_none());

    let metrics = String::from_utf8(get(&p.admin_url("/metrics")).await.2.to_vec()).unwrap();
    for kind in [
        "missing",
        "missing_scope",
        "expired",
        "algorithm_not_allowed",
        "bad_signature",
    ] {
        assert!(
            metrics.contains(&format!("rasp_proxy_auth_failures_total{{kind=\"{kind}\"}} 1")),
            "{metrics}"
        );
    }
}

#[tokio::test]
async fn api_keys_through_the_proxy() {
    security_log();
    let upstream = Upstream::start("orders").await;
    let p = TestProxy::start(&config(&upstream, &hs_source())).await;
    let (s, _, body) = get_with(
        &p.url("/orders/7"),
        &[("x-api-key", API_KEY), ("x-authenticated-subject", "mallory")],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(json(&body)["headers"]["x-authenticated-subject"], "billing");

    let r = get_with(
        &p.url("/orders/7"),
        &[("x-api-key", "guessed-key-0123456789abcdef")],
    )
    .await;
    assert_refused(
        &r,
        StatusCode::UNAUTHORIZED,
        "unknown_api_key",
        "guessed-key-0123456789abcdef",
    );
    // The key is valid, but only for the `orders` route.
    let r = get_with(&p.url("/admin/users"), &[("x-api-key", API_KEY)]).await;
    assert_refused(&r, StatusCode::FORBIDDEN, "route_not_allowed", API_KEY);
    let id = json(&r.2)["request_id"].as_str().unwrap().to_owned();
    assert_eq!(security_lines(&id)[0]["identity"]["subject"], "billing");
}

#[tokio::test]
async fn jwks_url_is_fetched_by_the_generation_refresh_task() {
    security_log();
    let upstream = Upstream::start("orders").await;
    let idp = JwksServer::start(&[jwk("ed", "EdDSA", "ed-1")], false).await;
    let source = format!("jwks_url = \"http://{}/jwks\"", idp.addr);
    let p =
        TestProxy::start(&config(&upstream, &source).replace(r#"["HS256", "HS512"]"#, r#"["EdDSA"]"#)).await;
    // Fetched at start by the refresh task, before any token arrives.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while idp.hits() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the JWKS was not fetched at start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let token = sign_with(signing_request(
        "EdDSA",
        &scoped_claims(),
        &json!({"kid": "ed-1"}),
    ));
    let (s, _, body) = get_with(
        &p.url("/orders/1"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["headers"]["x-authenticated-subject"], "alice");
    assert_eq!(idp.hits(), 1);
}

#[tokio::test]
async fn reloads_with_bad_identity_config_are_refused() {
    security_log();
    let upstream = Upstream::start("orders").await;
    let p = TestProxy::start(&config(&upstream, &hs_source())).await;
    let good = std::fs::read_to_string(p.config_path()).unwrap();
    let pem = keys().path("rsa.pub.pem");
    for (bad, key) in [
        (
            good.replace(&hs_source(), "public_key_file = \"missing.pem\"")
                .replace("\"HS256\", \"HS512\"", "\"RS256\""),
            "jwt.issuer[0].public_key_file",
        ),
        (
            good.replace(
                &hs_source(),
                &format!("public_key_file = {:?}", pem.to_str().unwrap()),
            ),
            "algorithms",
        ),
        (
            good.replace("routes = [\"orders\"]", "routes = [\"ordres\"]"),
            "api_key[0].routes[0]",
        ),
        (good.replace("\"HS256\", \"HS512\"", "\"none\""), "none"),
    ] {
        std::fs::write(p.config_path(), bad).unwrap();
        let err = p.running().proxy.reload().unwrap_err().to_string();
        assert!(err.contains(key), "{key}: {err}");
        let token = sign("HS256", &scoped_claims());
        let (s, _, _) = get_with(
            &p.url("/orders/1"),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
        assert_eq!(s, 200, "the old generation's authenticator keeps serving");
    }
}
