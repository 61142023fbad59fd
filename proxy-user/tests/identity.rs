//! Identity checks against tokens made by an independent implementation (`PyJWT`) with keys made by `openssl`:
//! every algorithm's happy path, every failure kind, JWKS from a file and from a real HTTP(S) server, key
//! rotation, and the attacks an allow-list must stop (`alg: none`, HS/RS key confusion).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests: a panic is the failure report"
)]

#[path = "support/identity_fixture.rs"]
mod fixture;

use std::time::Duration;

use fixture::{
    AUDIENCE, ISSUER, JwksServer, SECRET_ENV, SHORT_SECRET_ENV, authenticator, bearer, claims, jwk, keys,
    now, py, sign, sign_with, signing_request,
};
use http::{HeaderMap, StatusCode};
use proxy_user::{
    event::{AuthFailure, IdentityKind},
    identity::{AuthMode, AuthRejection, Authenticator, RouteAuth, failure_name},
};
use serde_json::{Value, json};
use sha2::Digest as _;

const JWT_ROUTE: RouteAuth<'static> = RouteAuth {
    mode: AuthMode::Jwt,
    route: "/orders",
    scopes: &[],
};

fn issuer_toml(algorithms: &[&str], source: &str) -> String {
    let algorithms: Vec<String> = algorithms.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "[[jwt.issuer]]\nissuer = {ISSUER:?}\naudiences = [{AUDIENCE:?}]\nalgorithms = [{}]\n{source}\n",
        algorithms.join(", ")
    )
}

/// The key source that verifies `alg` in the fixture.
fn source_for(alg: &str) -> String {
    let file = match alg {
        "HS256" | "HS384" | "HS512" => return format!("secret_env = {SECRET_ENV:?}"),
        "ES256" => "ec256.pub.pem",
        "ES384" => "ec384.pub.pem",
        "EdDSA" => "ed.pub.pem",
        _ => "rsa.pub.pem",
    };
    format!("public_key_file = {}", quoted(&keys().path(file)))
}

/// A path as a TOML string.
fn quoted(path: &std::path::Path) -> String {
    format!("{:?}", path.to_str().unwrap())
}

fn auth_for(alg: &str) -> Authenticator {
    authenticator(&issuer_toml(&[alg], &source_for(alg))).unwrap()
}

async fn expect_rejected(
    auth: &Authenticator,
    headers: &HeaderMap,
    route: &RouteAuth<'_>,
    kind: AuthFailure,
) -> AuthRejection {
    let rejection = match auth.authenticate(headers, route).await {
        Ok(identity) => panic!("expected {kind:?}, got accepted as {identity:?}"),
        Err(r) => r,
    };
    assert_eq!(rejection.event_kind, kind, "{rejection:?}");
    let expected_status = match kind {
        AuthFailure::MissingScope | AuthFailure::RouteNotAllowed => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    };
    assert_eq!(rejection.status, expected_status);
    assert_eq!(rejection.evidence.rule_id, format!("auth.{}", failure_name(kind)));
    assert_eq!(
        rejection.evidence.excerpt, "[redacted]",
        "evidence must never carry the credential"
    );
    // The body names the status class only; which check failed stays in the security log.
    let body: Value = serde_json::from_slice(&rejection.json_body()).unwrap();
    let expected_error = if expected_status == StatusCode::FORBIDDEN {
        "forbidden"
    } else {
        "unauthorized"
    };
    assert_eq!(body["error"], expected_error);
    let body_text = String::from_utf8(rejection.json_body().to_vec()).unwrap();
    for word in [
        "kid",
        "issuer",
        "alg",
        "expired",
        "audience",
        "scope",
        "signature",
        "alice",
        "eyJ",
    ] {
        assert!(!body_text.contains(word), "body leaks {word:?}: {body_text}");
    }
    assert_eq!(
        rejection.www_authenticate().is_some(),
        expected_status == StatusCode::UNAUTHORIZED
    );
    rejection
}

async fn expect_alice(auth: &Authenticator, token: &str) {
    let identity = auth
        .authenticate(&bearer(token), &JWT_ROUTE)
        .await
        .unwrap()
        .expect("an identity");
    assert_eq!(&*identity.subject, "alice");
    assert_eq!(identity.kind, IdentityKind::Jwt);
    assert_eq!(identity.issuer.as_deref(), Some(ISSUER));
}

macro_rules! happy_path {
    ($($name:ident: $alg:literal,)*) => {$(
        #[tokio::test]
        async fn $name() {
            let auth = auth_for($alg);
            expect_alice(&auth, &sign($alg, &claims())).await;
        }
    )*};
}

happy_path! {
    verifies_hs256: "HS256",
    verifies_hs384: "HS384",
    verifies_hs512: "HS512",
    verifies_rs256: "RS256",
    verifies_rs384: "RS384",
    verifies_rs512: "RS512",
    verifies_ps256: "PS256",
    verifies_ps384: "PS384",
    verifies_ps512: "PS512",
    verifies_es256: "ES256",
    verifies_es384: "ES384",
    verifies_eddsa: "EdDSA",
}

#[tokio::test]
async fn route_without_auth_returns_no_identity() {
    let auth = auth_for("HS256");
    let route = RouteAuth {
        mode: AuthMode::None,
        route: "/",
        scopes: &[],
    };
    // Even garbage credentials are not looked at on an open route.
    assert_eq!(auth.authenticate(&bearer("garbage"), &route).await, Ok(None));
}

#[tokio::test]
async fn missing_credentials_are_refused() {
    let auth = auth_for("HS256");
    expect_rejected(&auth, &HeaderMap::new(), &JWT_ROUTE, AuthFailure::Missing).await;
    // An API key on a JWT-only route is no JWT.
    let mut headers = HeaderMap::new();
    headers.insert("x-api-key", "k".parse().unwrap());
    expect_rejected(&auth, &headers, &JWT_ROUTE, AuthFailure::Missing).await;
}

#[tokio::test]
async fn malformed_tokens_are_refused() {
    let auth = auth_for("HS256");
    let good = sign("HS256", &claims());
    let (header, rest) = good.split_once('.').unwrap();
    let cases = [
        "abc".to_owned(),
        "a.b".to_owned(),
        format!("{good}.extra"),
        format!("!!!.{rest}"),
        format!("bm90IGpzb24.{rest}"), // header "not json"
        format!("{header}.bm90IGpzb24.c2ln"),
        "x".repeat(20_000),
    ];
    for token in &cases {
        expect_rejected(&auth, &bearer(token), &JWT_ROUTE, AuthFailure::Malformed).await;
    }
    // Other schemes, empty bearer, repeated Authorization headers.
    for value in ["Basic YWxpY2U6cHc=", "Bearer", "Bearer   ", good.as_str()] {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        expect_rejected(&auth, &headers, &JWT_ROUTE, AuthFailure::Malformed).await;
    }
    let mut twice = bearer(&good);
    twice.append(
        http::header::AUTHORIZATION,
        format!("Bearer {good}").parse().unwrap(),
    );
    expect_rejected(&auth, &twice, &JWT_ROUTE, AuthFailure::Malformed).await;
    // A `sub` that cannot be forwarded in a header.
    let mut bad_sub = claims();
    bad_sub["sub"] = json!("alice\r\nx-admin: 1");
    expect_rejected(
        &auth,
        &bearer(&sign("HS256", &bad_sub)),
        &JWT_ROUTE,
        AuthFailure::Malformed,
    )
    .await;
    // No `exp`: tokens that never expire are not accepted.
    let mut no_exp = claims();
    no_exp.as_object_mut().unwrap().remove("exp");
    expect_rejected(
        &auth,
        &bearer(&sign("HS256", &no_exp)),
        &JWT_ROUTE,
        AuthFailure::Malformed,
    )
    .await;
}

#[tokio::test]
async fn bad_signatures_are_refused() {
    let rsa = auth_for("RS256");
    let other_key = json!({
        "op": "sign", "alg": "RS256", "key_file": keys().path("rsa_other.pem"), "claims": claims(), "headers": {}
    });
    expect_rejected(
        &rsa,
        &bearer(&sign_with(other_key)),
        &JWT_ROUTE,
        AuthFailure::BadSignature,
    )
    .await;

    // A good HS256 token whose claims were edited after signing.
    let hs = auth_for("HS256");
    let token = sign("HS256", &claims());
    let parts: Vec<&str> = token.split('.').collect();
    let mut edited = claims();
    edited["sub"] = json!("mallory");
    let edited_payload = base64_url(&serde_json::to_vec(&edited).unwrap());
    let forged = format!("{}.{edited_payload}.{}", parts[0], parts[2]);
    let rejection = expect_rejected(&hs, &bearer(&forged), &JWT_ROUTE, AuthFailure::BadSignature).await;
    assert_eq!(
        rejection.identity, None,
        "an unverified subject is never reported as the identity"
    );
}

fn base64_url(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

#[tokio::test]
async fn algorithms_outside_the_allow_list_are_refused() {
    let auth = auth_for("RS256");
    // Same RSA key, valid signature, but RS384 is not on the list.
    expect_rejected(
        &auth,
        &bearer(&sign("RS384", &claims())),
        &JWT_ROUTE,
        AuthFailure::AlgorithmNotAllowed,
    )
    .await;
    expect_rejected(
        &auth,
        &bearer(&sign("PS256", &claims())),
        &JWT_ROUTE,
        AuthFailure::AlgorithmNotAllowed,
    )
    .await;
    expect_rejected(
        &auth,
        &bearer(&sign("ES256", &claims())),
        &JWT_ROUTE,
        AuthFailure::AlgorithmNotAllowed,
    )
    .await;
    let hs = auth_for("HS256");
    expect_rejected(
        &hs,
        &bearer(&sign("HS512", &claims())),
        &JWT_ROUTE,
        AuthFailure::AlgorithmNotAllowed,
    )
    .await;
}

#[tokio::test]
async fn alg_none_is_never_accepted() {
    for alg in ["HS256", "RS256", "EdDSA"] {
        let auth = auth_for(alg);
        for spelling in ["none", "None", "NONE", "nOnE"] {
            let token = sign_with(json!({"op": "none", "alg": spelling, "claims": claims()}));
            let r = expect_rejected(
                &auth,
                &bearer(&token),
                &JWT_ROUTE,
                AuthFailure::AlgorithmNotAllowed,
            )
            .await;
            assert_eq!(r.identity, None);
        }
    }
    // And `none` cannot even be configured.
    let err = authenticator(&issuer_toml(&["none"], &source_for("HS256"))).unwrap_err();
    assert!(err.contains("none") && err.contains("algorithms"), "{err}");
}

#[tokio::test]
async fn hs_rs_key_confusion_is_refused() {
    // The classic attack: HMAC-sign a token with the issuer's *public* RSA key as the secret and claim HS256.
    let public_pem = keys().path("rsa.pub.pem");
    for alg in ["HS256", "HS384", "HS512"] {
        let token = sign_with(json!({
            "op": "hmac_with_public_key", "alg": alg, "key_file": public_pem, "claims": claims(), "headers": {}
        }));
        let auth = auth_for("RS256");
        expect_rejected(
            &auth,
            &bearer(&token),
            &JWT_ROUTE,
            AuthFailure::AlgorithmNotAllowed,
        )
        .await;
    }
    // The same with a `kid` naming the RSA key in a JWKS.
    let jwks = keys().path("confusion.jwks.json");
    std::fs::write(&jwks, json!({"keys": [jwk("rsa", "RS256", "r1")]}).to_string()).unwrap();
    let auth = authenticator(&issuer_toml(
        &["RS256"],
        &format!("jwks_file = {}", quoted(&jwks)),
    ))
    .unwrap();
    let token = sign_with(json!({
        "op": "hmac_with_public_key", "alg": "HS256", "key_file": public_pem, "claims": claims(),
        "headers": {"kid": "r1"}
    }));
    expect_rejected(
        &auth,
        &bearer(&token),
        &JWT_ROUTE,
        AuthFailure::AlgorithmNotAllowed,
    )
    .await;

    // Config can never pair HS algorithms with a public key, nor an HMAC secret with RS algorithms.
    for (algs, source) in [
        (vec!["RS256", "HS256"], source_for("RS256")),
        (vec!["HS256"], source_for("RS256")),
        (vec!["HS256"], format!("jwks_file = {}", quoted(&jwks))),
        (vec!["HS256", "RS256"], source_for("HS256")),
        (vec!["RS256"], source_for("HS256")),
    ] {
        let err = authenticator(&issuer_toml(&algs, &source)).unwrap_err();
        assert!(
            err.contains("jwt.issuer[0].algorithms"),
            "{algs:?} with {source}: {err}"
        );
    }
}

#[tokio::test]
async fn jsonwebtoken_itself_refuses_confusion_and_none() {
    // The crate under our checks must hold the line on its own too.
    let pem = std::fs::read(keys().path("rsa.pub.pem")).unwrap();
    let rsa_key = jsonwebtoken::DecodingKey::from_rsa_pem(&pem).unwrap();
    let confused = sign_with(json!({
        "op": "hmac_with_public_key", "alg": "HS256", "key_file": keys().path("rsa.pub.pem"), "claims": claims(),
        "headers": {}
    }));
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_audience(&[AUDIENCE]);
    let err = jsonwebtoken::decode::<Value>(&confused, &rsa_key, &validation).unwrap_err();
    assert_eq!(err.kind(), &jsonwebtoken::errors::ErrorKind::InvalidKeyFormat);
    let none = sign_with(json!({"op": "none", "claims": claims()}));
    assert!(jsonwebtoken::decode::<Value>(&none, &rsa_key, &validation).is_err());
    assert!(
        jsonwebtoken::decode_header(&none).is_err(),
        "`none` is not even a parsable algorithm"
    );
}

#[tokio::test]
async fn unknown_kid_is_refused() {
    let jwks = keys().path("kid.jwks.json");
    std::fs::write(&jwks, json!({"keys": [jwk("rsa", "RS256", "r1")]}).to_string()).unwrap();
    let auth = authenticator(&issuer_toml(
        &["RS256"],
        &format!("jwks_file = {}", quoted(&jwks)),
    ))
    .unwrap();
    let ok = sign_with(signing_request("RS256", &claims(), &json!({"kid": "r1"})));
    expect_alice(&auth, &ok).await;
    let unknown = sign_with(signing_request("RS256", &claims(), &json!({"kid": "r9"})));
    expect_rejected(&auth, &bearer(&unknown), &JWT_ROUTE, AuthFailure::UnknownKeyId).await;
}

#[tokio::test]
async fn unknown_issuers_are_refused() {
    let auth = auth_for("HS256");
    let mut other = claims();
    other["iss"] = json!("https://evil.example.test");
    expect_rejected(
        &auth,
        &bearer(&sign("HS256", &other)),
        &JWT_ROUTE,
        AuthFailure::UnknownIssuer,
    )
    .await;
    let mut none = claims();
    none.as_object_mut().unwrap().remove("iss");
    expect_rejected(
        &auth,
        &bearer(&sign("HS256", &none)),
        &JWT_ROUTE,
        AuthFailure::UnknownIssuer,
    )
    .await;
}

#[tokio::test]
async fn issuer_is_chosen_by_iss_and_verified_with_its_own_keys_only() {
    let toml = format!(
        "{}\n[[jwt.issuer]]\nissuer = \"https://other.example.test\"\naudiences = [\"orders\"]\n\
         algorithms = [\"ES256\"]\n{}\n",
        issuer_toml(&["RS256"], &source_for("RS256")),
        source_for("ES256")
    );
    let auth = authenticator(&toml).unwrap();
    expect_alice(&auth, &sign("RS256", &claims())).await;
    let mut other = claims();
    other["iss"] = json!("https://other.example.test");
    let identity = auth
        .authenticate(&bearer(&sign("ES256", &other)), &JWT_ROUTE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(identity.issuer.as_deref(), Some("https://other.example.test"));
    // An RS256 token claiming the ES256 issuer does not get verified with the RS256 issuer's key.
    expect_rejected(
        &auth,
        &bearer(&sign("RS256", &other)),
        &JWT_ROUTE,
        AuthFailure::AlgorithmNotAllowed,
    )
    .await;
}

#[tokio::test]
async fn expired_tokens_are_refused_within_leeway_rules() {
    let auth = auth_for("ES256");
    let mut expired = claims();
    expired["exp"] = json!(now() - 120);
    let r = expect_rejected(
        &auth,
        &bearer(&sign("ES256", &expired)),
        &JWT_ROUTE,
        AuthFailure::Expired,
    )
    .await;
    // The signature was good, so who it was is known.
    assert_eq!(r.identity.map(|i| i.subject).as_deref(), Some("alice"));
    // Ten seconds late passes with the default 30 s leeway, not with none.
    let mut late = claims();
    late["exp"] = json!(now() - 10);
    let late = sign("ES256", &late);
    expect_alice(&auth, &late).await;
    let strict = authenticator(&format!(
        "[jwt]\nleeway = \"0s\"\n{}",
        issuer_toml(&["ES256"], &source_for("ES256"))
    ))
    .unwrap();
    expect_rejected(&strict, &bearer(&late), &JWT_ROUTE, AuthFailure::Expired).await;
}

#[tokio::test]
async fn a_verified_token_is_remembered_but_still_expires() {
    let strict = authenticator(&format!(
        "[jwt]\nleeway = \"0s\"\n{}",
        issuer_toml(&["HS256"], &source_for("HS256"))
    ))
    .unwrap();
    let mut soon = claims();
    soon["exp"] = json!(now() + 2);
    let soon = sign("HS256", &soon);
    // The second check is answered from the verified-token cache; it must say the same.
    expect_alice(&strict, &soon).await;
    expect_alice(&strict, &soon).await;
    tokio::time::sleep(Duration::from_millis(3100)).await;
    expect_rejected(&strict, &bearer(&soon), &JWT_ROUTE, AuthFailure::Expired).await;
    // A token that differs by one byte of its signature is a different token, not a cache hit.
    let genuine = sign("HS256", &claims());
    // A character inside the signature (every one of its bits counts), changed to another base64url one.
    let at = genuine.len() - 10;
    let swapped = if &genuine[at..=at] == "A" { "B" } else { "A" };
    let forged = format!("{}{swapped}{}", &genuine[..at], &genuine[at + 1..]);
    expect_alice(&strict, &genuine).await;
    expect_rejected(&strict, &bearer(&forged), &JWT_ROUTE, AuthFailure::BadSignature).await;
}

#[tokio::test]
async fn tokens_not_yet_valid_are_refused() {
    let auth = auth_for("EdDSA");
    let mut early = claims();
    early["nbf"] = json!(now() + 300);
    expect_rejected(
        &auth,
        &bearer(&sign("EdDSA", &early)),
        &JWT_ROUTE,
        AuthFailure::NotYetValid,
    )
    .await;
    early["nbf"] = json!(now() + 10); // within leeway
    expect_alice(&auth, &sign("EdDSA", &early)).await;
}

#[tokio::test]
async fn wrong_audiences_are_refused() {
    let auth = auth_for("PS256");
    let mut other = claims();
    other["aud"] = json!("billing");
    expect_rejected(
        &auth,
        &bearer(&sign("PS256", &other)),
        &JWT_ROUTE,
        AuthFailure::WrongAudience,
    )
    .await;
    other["aud"] = json!(["billing", "shipping"]);
    expect_rejected(
        &auth,
        &bearer(&sign("PS256", &other)),
        &JWT_ROUTE,
        AuthFailure::WrongAudience,
    )
    .await;
    other.as_object_mut().unwrap().remove("aud");
    expect_rejected(
        &auth,
        &bearer(&sign("PS256", &other)),
        &JWT_ROUTE,
        AuthFailure::WrongAudience,
    )
    .await;
    other["aud"] = json!(["billing", AUDIENCE]);
    expect_alice(&auth, &sign("PS256", &other)).await;
}

#[tokio::test]
async fn missing_scopes_are_forbidden() {
    let auth = auth_for("HS256");
    let needs = ["orders:read".to_owned(), "orders:write".to_owned()];
    let route = RouteAuth {
        mode: AuthMode::Jwt,
        route: "/orders",
        scopes: &needs,
    };
    let with = |field: &str, value: Value| {
        let mut c = claims();
        c[field] = value;
        sign("HS256", &c)
    };
    let r = expect_rejected(
        &auth,
        &bearer(&with("scope", json!("orders:read"))),
        &route,
        AuthFailure::MissingScope,
    )
    .await;
    assert_eq!(r.identity.map(|i| i.subject).as_deref(), Some("alice"));
    expect_rejected(
        &auth,
        &bearer(&sign("HS256", &claims())),
        &route,
        AuthFailure::MissingScope,
    )
    .await;
    // `scope` string, `scp` array or string, `scopes` array all count.
    for token in [
        with("scope", json!("profile orders:write orders:read")),
        with("scp", json!(["orders:read", "orders:write"])),
        with("scp", json!("orders:read orders:write")),
        with("scopes", json!(["orders:write", "orders:read"])),
    ] {
        let identity = auth.authenticate(&bearer(&token), &route).await.unwrap().unwrap();
        assert_eq!(&*identity.subject, "alice");
    }
}

fn api_key_toml(key: &str, identity: &str, routes: &[&str]) -> String {
    let digest = hex::encode(sha2::Sha256::digest(key.as_bytes()));
    let routes: Vec<String> = routes.iter().map(|r| format!("{r:?}")).collect();
    format!(
        "[[api_key]]\nidentity = {identity:?}\nsha256 = {digest:?}\nroutes = [{}]\n",
        routes.join(", ")
    )
}

fn api_key_headers(key: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-api-key", key.parse().unwrap());
    h
}

#[tokio::test]
async fn api_keys_authenticate_by_digest() {
    let toml = format!(
        "{}{}{}",
        issuer_toml(&["HS256"], &source_for("HS256")),
        api_key_toml("billing-key-0123456789", "billing", &["/orders"]),
        api_key_toml("ops-key-0123456789", "ops", &[])
    );
    let auth = authenticator(&toml).unwrap();
    let route = RouteAuth {
        mode: AuthMode::ApiKey,
        route: "/orders",
        scopes: &[],
    };
    let identity = auth
        .authenticate(&api_key_headers("billing-key-0123456789"), &route)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (identity.kind, &*identity.subject, identity.issuer),
        (IdentityKind::ApiKey, "billing", None)
    );
    let mut scheme = HeaderMap::new();
    scheme.insert(
        http::header::AUTHORIZATION,
        "ApiKey ops-key-0123456789".parse().unwrap(),
    );
    assert_eq!(
        &*auth.authenticate(&scheme, &route).await.unwrap().unwrap().subject,
        "ops"
    );

    let either = RouteAuth {
        mode: AuthMode::JwtOrApiKey,
        route: "/orders",
        scopes: &[],
    };
    assert_eq!(
        auth.authenticate(&api_key_headers("ops-key-0123456789"), &either)
            .await
            .unwrap()
            .unwrap()
            .subject
            .as_ref(),
        "ops"
    );
    let token = sign("HS256", &claims());
    assert_eq!(
        auth.authenticate(&bearer(&token), &either)
            .await
            .unwrap()
            .unwrap()
            .subject
            .as_ref(),
        "alice"
    );
    // Two credentials at once are ambiguous.
    let mut both = bearer(&token);
    both.insert("x-api-key", "ops-key-0123456789".parse().unwrap());
    expect_rejected(&auth, &both, &either, AuthFailure::Malformed).await;
    // A JWT on an API-key-only route is no API key.
    expect_rejected(&auth, &bearer(&token), &route, AuthFailure::Missing).await;
    expect_rejected(&auth, &HeaderMap::new(), &route, AuthFailure::Missing).await;
}

#[tokio::test]
async fn unknown_api_keys_are_refused() {
    let auth = authenticator(&api_key_toml("the-real-key-0123456789", "billing", &[])).unwrap();
    let route = RouteAuth {
        mode: AuthMode::ApiKey,
        route: "/orders",
        scopes: &[],
    };
    for guess in [
        "the-real-key-012345678",
        "the-real-key-0123456789x",
        "THE-REAL-KEY-0123456789",
    ] {
        let r = expect_rejected(&auth, &api_key_headers(guess), &route, AuthFailure::UnknownApiKey).await;
        assert_eq!(r.identity, None);
        assert_eq!(r.evidence.location, "header:x-api-key");
    }
    // The digest itself is not the key.
    let digest = hex::encode(sha2::Sha256::digest(b"the-real-key-0123456789"));
    expect_rejected(
        &auth,
        &api_key_headers(&digest),
        &route,
        AuthFailure::UnknownApiKey,
    )
    .await;
}

#[tokio::test]
async fn api_keys_are_limited_to_their_routes() {
    let auth = authenticator(&api_key_toml(
        "billing-key-0123456789",
        "billing",
        &["/orders", "/invoices"],
    ))
    .unwrap();
    let admin = RouteAuth {
        mode: AuthMode::ApiKey,
        route: "/admin",
        scopes: &[],
    };
    let r = expect_rejected(
        &auth,
        &api_key_headers("billing-key-0123456789"),
        &admin,
        AuthFailure::RouteNotAllowed,
    )
    .await;
    assert_eq!(r.identity.map(|i| i.subject).as_deref(), Some("billing"));
    let invoices = RouteAuth {
        mode: AuthMode::ApiKey,
        route: "/invoices",
        scopes: &[],
    };
    assert!(
        auth.authenticate(&api_key_headers("billing-key-0123456789"), &invoices)
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn jwks_file_keys_are_picked_by_kid() {
    let jwks = keys().path("multi.jwks.json");
    let doc = json!({"keys": [
        jwk("rsa", "RS256", "r1"), jwk("ec256", "ES256", "e1"), jwk("ec384", "ES384", "e2"), jwk("ed", "EdDSA", "d1")
    ]});
    std::fs::write(&jwks, doc.to_string()).unwrap();
    let auth = authenticator(&issuer_toml(
        &["RS256", "ES256", "ES384", "EdDSA"],
        &format!("jwks_file = {}", quoted(&jwks)),
    ))
    .unwrap();
    let requests: Vec<Value> = [("RS256", "r1"), ("ES256", "e1"), ("ES384", "e2"), ("EdDSA", "d1")]
        .iter()
        .map(|(alg, kid)| signing_request(alg, &claims(), &json!({ "kid": kid })))
        .collect();
    for answer in py(&requests) {
        expect_alice(&auth, answer["token"].as_str().unwrap()).await;
    }
    // An ES256 token pointing at the RSA key's kid.
    let wrong = sign_with(signing_request("ES256", &claims(), &json!({"kid": "r1"})));
    expect_rejected(
        &auth,
        &bearer(&wrong),
        &JWT_ROUTE,
        AuthFailure::AlgorithmNotAllowed,
    )
    .await;
    // The right kid, signed by a key that is not in the set.
    let forged = sign_with(json!({
        "op": "sign", "alg": "RS256", "key_file": keys().path("rsa_other.pem"), "claims": claims(),
        "headers": {"kid": "r1"}
    }));
    expect_rejected(&auth, &bearer(&forged), &JWT_ROUTE, AuthFailure::BadSignature).await;
}

fn jwks_url_toml(url: &str, extra: &str) -> String {
    issuer_toml(&["RS256", "ES256"], &format!("jwks_url = {url:?}\n{extra}"))
}

#[tokio::test]
async fn jwks_url_is_fetched_cached_and_refreshed_on_rotation() {
    let server = JwksServer::start(&[jwk("rsa", "RS256", "k1")], false).await;
    let url = format!("http://{}/.well-known/jwks.json", server.addr);
    let auth = authenticator(&jwks_url_toml(&url, "jwks_min_refresh = \"200ms\"")).unwrap();
    let [k1, k2] = [("RS256", "k1"), ("ES256", "k2")]
        .map(|(alg, kid)| sign_with(signing_request(alg, &claims(), &json!({ "kid": kid }))));

    expect_alice(&auth, &k1).await;
    assert_eq!(server.hits(), 1, "first token fetches the JWKS");
    expect_alice(&auth, &k1).await;
    assert_eq!(server.hits(), 1, "known kid is served from the cache");

    // Rotation: the provider publishes k2; a token with the new kid triggers one refresh.
    server.set_keys(&[jwk("rsa", "RS256", "k1"), jwk("ec256", "ES256", "k2")]);
    tokio::time::sleep(Duration::from_millis(250)).await;
    expect_alice(&auth, &k2).await;
    assert_eq!(server.hits(), 2);
    expect_alice(&auth, &k1).await;
    assert_eq!(server.hits(), 2);

    // k1 retired: once the cache refreshes, k1 tokens are unknown.
    server.set_keys(&[jwk("ec256", "ES256", "k2")]);
    auth.refresh_jwks_now().await.unwrap();
    assert_eq!(server.hits(), 3);
    expect_rejected(&auth, &bearer(&k1), &JWT_ROUTE, AuthFailure::UnknownKeyId).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_cannot_make_us_hammer_the_jwks_endpoint() {
    let server = JwksServer::start(&[jwk("rsa", "RS256", "k1")], false).await;
    let auth = authenticator(&jwks_url_toml(&format!("http://{}/jwks", server.addr), "")).unwrap();
    let requests: Vec<Value> = (0..20)
        .map(|i| signing_request("RS256", &claims(), &json!({ "kid": format!("made-up-{i}") })))
        .collect();
    let tokens: Vec<String> = py(&requests)
        .iter()
        .map(|a| a["token"].as_str().unwrap().to_owned())
        .collect();
    // All at once, from concurrent tasks: they share one fetch, then the minimum interval holds.
    let auth = std::sync::Arc::new(auth);
    let mut tasks = tokio::task::JoinSet::new();
    for token in tokens {
        let auth = std::sync::Arc::clone(&auth);
        tasks.spawn(async move { auth.authenticate(&bearer(&token), &JWT_ROUTE).await });
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.unwrap().unwrap_err().event_kind, AuthFailure::UnknownKeyId);
    }
    assert_eq!(
        server.hits(),
        1,
        "one fetch per jwks_min_refresh (default 30 s), however many unknown kids"
    );
}

#[tokio::test]
async fn jwks_refresh_task_refreshes_periodically_and_stops_with_its_guard() {
    let server = JwksServer::start(&[jwk("rsa", "RS256", "k1")], false).await;
    let auth = std::sync::Arc::new(
        authenticator(&jwks_url_toml(
            &format!("http://{}/jwks", server.addr),
            "jwks_refresh = \"150ms\"\njwks_min_refresh = \"100ms\"",
        ))
        .unwrap(),
    );
    let guard = auth.spawn_jwks_refresh();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server.hits() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "JWKS refreshed only {} times in 5 s",
            server.hits()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Keys fetched by the task serve tokens without another fetch.
    let before = server.hits();
    expect_alice(
        &auth,
        &sign_with(signing_request("RS256", &claims(), &json!({"kid": "k1"}))),
    )
    .await;
    assert!(server.hits() <= before + 1);
    drop(guard);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stopped_at = server.hits();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        server.hits(),
        stopped_at,
        "refresh task kept running after its guard was dropped"
    );
}

#[tokio::test]
async fn jwks_over_https_with_a_private_ca() {
    let server = JwksServer::start(&[jwk("ec256", "ES256", "e1")], true).await;
    let url = format!("https://127.0.0.1:{}/jwks", server.addr.port());
    let ca = keys().path("ca.crt");
    let auth = authenticator(&jwks_url_toml(&url, &format!("jwks_ca_file = {}", quoted(&ca)))).unwrap();
    auth.refresh_jwks_now().await.unwrap();
    expect_alice(
        &auth,
        &sign_with(signing_request("ES256", &claims(), &json!({"kid": "e1"}))),
    )
    .await;

    // Trusting a different CA (the server's own leaf is not a CA): the TLS handshake fails, no keys.
    let wrong_ca = keys().path("tls.crt");
    let untrusting = authenticator(&jwks_url_toml(
        &url,
        &format!("jwks_ca_file = {}", quoted(&wrong_ca)),
    ))
    .unwrap();
    let err = untrusting.refresh_jwks_now().await.unwrap_err().to_string();
    assert!(err.contains(&url), "{err}");
    let token = sign_with(signing_request("ES256", &claims(), &json!({"kid": "e1"})));
    expect_rejected(
        &untrusting,
        &bearer(&token),
        &JWT_ROUTE,
        AuthFailure::UnknownKeyId,
    )
    .await;
}

#[tokio::test]
async fn jwks_endpoint_down_means_unknown_kid_not_a_crash() {
    // Bind and drop a listener to get a port with nothing behind it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let auth = authenticator(&jwks_url_toml(
        &format!("http://127.0.0.1:{port}/jwks"),
        "jwks_timeout = \"2s\"",
    ))
    .unwrap();
    let err = auth.refresh_jwks_now().await.unwrap_err().to_string();
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    let token = sign_with(signing_request("RS256", &claims(), &json!({"kid": "k1"})));
    expect_rejected(&auth, &bearer(&token), &JWT_ROUTE, AuthFailure::UnknownKeyId).await;
}

#[test]
fn config_errors_name_the_key() {
    let cases = [
        (
            issuer_toml(&["HS256"], &format!("secret_env = {SHORT_SECRET_ENV:?}")),
            "jwt.issuer[0].secret_env",
        ),
        (
            issuer_toml(&["HS256"], "secret_env = \"RASP_TEST_UNSET_VARIABLE\""),
            "RASP_TEST_UNSET_VARIABLE",
        ),
        (
            issuer_toml(&["RS256"], "public_key_file = \"/nonexistent/key.pem\""),
            "jwt.issuer[0].public_key_file",
        ),
        (
            issuer_toml(&["ES256"], &source_for("RS256")),
            "jwt.issuer[0].public_key_file",
        ),
        (
            issuer_toml(
                &["RS256"],
                &format!(
                    "{}\n{}",
                    source_for("RS256"),
                    "jwks_url = \"https://idp.test/jwks\""
                ),
            ),
            "exactly one",
        ),
        (issuer_toml(&["RS256"], ""), "exactly one"),
        (issuer_toml(&[], &source_for("RS256")), "jwt.issuer[0].algorithms"),
        (
            issuer_toml(&["RS256"], "jwks_url = \"http://idp.example.test/jwks\""),
            "danger_allow_plain_http_jwks",
        ),
        (
            issuer_toml(&["RS256"], "jwks_url = \"ftp://127.0.0.1/jwks\""),
            "jwt.issuer[0].jwks_url",
        ),
        (
            format!(
                "{}{}",
                issuer_toml(&["RS256"], &source_for("RS256")),
                issuer_toml(&["RS256"], &source_for("RS256"))
            ),
            "jwt.issuer[1].issuer",
        ),
        (
            "[jwt]\nsubject_header = \"authorization\"\n".to_owned(),
            "jwt.subject_header",
        ),
        (
            "[[api_key]]\nidentity = \"x\"\nsha256 = \"not-hex\"\n".to_owned(),
            "sha256",
        ),
        (
            format!("{}{}", api_key_toml("k", "a", &[]), api_key_toml("k", "b", &[])),
            "api_key[1].sha256",
        ),
        (
            "[[jwt.issuer]]\nissuer = \"x\"\naudiences = [\"a\"]\nalgorithms = [\"RS256\"]\nsecret = \"s\"\n"
                .to_owned(),
            "secret",
        ),
    ];
    for (toml, expected) in cases {
        let err = authenticator(&toml).map(|_| ()).unwrap_err();
        assert!(
            err.contains(expected),
            "config\n{toml}\nerror {err:?} does not name {expected:?}"
        );
    }
    // Plain http to loopback is fine, and so is anything with the danger flag.
    authenticator(&issuer_toml(&["RS256"], "jwks_url = \"http://127.0.0.1:1/jwks\"")).unwrap();
    authenticator(&issuer_toml(
        &["RS256"],
        "jwks_url = \"http://idp.example.test/jwks\"\ndanger_allow_plain_http_jwks = true",
    ))
    .unwrap();
}

#[test]
fn issue_quickstart_sections_parse() {
    let quickstart = format!(
        r#"
[[jwt.issuer]]
issuer = "https://auth.example.test"
audiences = ["orders"]
algorithms = ["HS256"]
secret_env = "{SECRET_ENV}"
"#
    );
    let auth = authenticator(&quickstart).unwrap();
    assert_eq!(auth.subject_header().as_str(), "x-authenticated-subject");
}

#[tokio::test]
async fn rejections_become_security_events_without_the_credential() {
    let auth = auth_for("HS256");
    let mut expired = claims();
    expired["exp"] = json!(now() - 3600);
    let token = sign("HS256", &expired);
    let r = expect_rejected(&auth, &bearer(&token), &JWT_ROUTE, AuthFailure::Expired).await;
    let event = r.to_event(
        "192.0.2.9".parse().unwrap(),
        Some("/orders".into()),
        Some("req-1".into()),
    );
    let text = serde_json::to_string(&event).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["kind"]["type"], "auth");
    assert_eq!(v["kind"]["detail"], "expired");
    assert_eq!(v["identity"]["subject"], "alice");
    assert_eq!(v["evidence"][0]["rule_id"], "auth.expired");
    assert_eq!(v["evidence"][0]["location"], "header:authorization");
    let signature = token.rsplit('.').next().unwrap();
    assert!(
        !text.contains(signature) && !format!("{r:?}").contains(signature),
        "the token leaked: {text}"
    );
    let none = sign_with(json!({"op": "none", "claims": claims()}));
    let r = expect_rejected(
        &auth,
        &bearer(&none),
        &JWT_ROUTE,
        AuthFailure::AlgorithmNotAllowed,
    )
    .await;
    assert_eq!(r.severity(), proxy_user::event::Severity::Critical);
}
