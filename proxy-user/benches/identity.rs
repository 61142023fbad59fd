//! Cost of one credential check, per algorithm, for the accept path and for the refusals an attacker can
//! make us compute (`alg: none`, bad signatures, unknown API keys). Keys come from the `openssl` CLI; tokens are
//! signed with `jsonwebtoken` (correctness is tested against `PyJWT` in `tests/identity.rs`; here only speed
//! counts). Run with `cargo bench -p proxy-user --bench identity`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "bench set-up: a panic is the report"
)]

use std::{hint::black_box, path::Path, process::Command};

use base64::Engine as _;
use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderMap;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proxy_user::identity::{AuthMode, Authenticator, RouteAuth};
use sha2::Digest as _;

const SECRET_ENV: &str = "RASP_BENCH_JWT_SECRET";
const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn openssl(dir: &Path, args: &[&str]) {
    let ok = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .status()
        .expect("openssl CLI")
        .success();
    assert!(ok, "openssl {args:?}");
}

fn keypair(dir: &Path, name: &str, params: &[&str]) {
    let private = format!("{name}.pem");
    let mut args = vec!["genpkey"];
    args.extend_from_slice(params);
    args.extend_from_slice(&["-out", &private]);
    openssl(dir, &args);
    openssl(
        dir,
        &[
            "pkey",
            "-in",
            &private,
            "-pubout",
            "-out",
            &format!("{name}.pub.pem"),
        ],
    );
}

type PemLoader = fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>;

struct Case {
    alg: Algorithm,
    auth: Authenticator,
    token: String,
    encoding: EncodingKey,
    claims: serde_json::Value,
}

fn case(dir: &Path, alg: Algorithm) -> Case {
    let (source, encoding) = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => (
            format!("secret_env = {SECRET_ENV:?}"),
            EncodingKey::from_secret(SECRET.as_bytes()),
        ),
        _ => {
            let (name, from_pem): (&str, PemLoader) = match alg {
                Algorithm::ES256 => ("ec256", EncodingKey::from_ec_pem),
                Algorithm::ES384 => ("ec384", EncodingKey::from_ec_pem),
                Algorithm::EdDSA => ("ed", EncodingKey::from_ed_pem),
                _ => ("rsa", EncodingKey::from_rsa_pem),
            };
            let public = dir.join(format!("{name}.pub.pem"));
            let private = std::fs::read(dir.join(format!("{name}.pem"))).unwrap();
            (
                format!("public_key_file = {:?}", public.to_str().unwrap()),
                from_pem(&private).unwrap(),
            )
        }
    };
    let toml_text = format!(
        "[[jwt.issuer]]\nissuer = \"https://auth.example.test\"\naudiences = [\"orders\"]\nalgorithms = [\"{alg:?}\"]\n\
         {source}\n"
    );
    let auth = authenticator(&toml_text);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = serde_json::json!({
        "sub": "alice", "iss": "https://auth.example.test", "aud": "orders", "exp": exp, "scope": "orders:read"
    });
    let token = jsonwebtoken::encode(&Header::new(alg), &claims, &encoding).unwrap();
    Case {
        alg,
        auth,
        token,
        encoding,
        claims,
    }
}

#[derive(serde::Deserialize)]
struct Sections {
    #[serde(default)]
    jwt: proxy_user::identity::JwtConfig,
    #[serde(default)]
    api_key: Vec<proxy_user::identity::ApiKeyConfig>,
}

fn authenticator(toml_text: &str) -> Authenticator {
    let s: Sections = toml::from_str(toml_text).unwrap();
    Authenticator::from_config(&s.jwt, &s.api_key).unwrap()
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    h
}

/// Keys for every algorithm, made once per bench binary.
fn key_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        // SAFETY: set before the benches start any other thread.
        unsafe { std::env::set_var(SECRET_ENV, SECRET) };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        keypair(
            d,
            "rsa",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        );
        keypair(
            d,
            "ec256",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        );
        keypair(
            d,
            "ec384",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        );
        keypair(d, "ed", &["-algorithm", "ED25519"]);
        dir
    })
    .path()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().build().unwrap()
}

const SCOPES: &[String] = &[];

fn jwt_route() -> RouteAuth<'static> {
    RouteAuth {
        mode: AuthMode::Jwt,
        route: "/orders",
        scopes: SCOPES,
    }
}

fn bench_jwt_accept(c: &mut Criterion) {
    let rt = runtime();
    let route = jwt_route();
    // The same token on every request, as a client sends it for its lifetime: after the first, a cache hit.
    let mut group = c.benchmark_group("jwt_accept_repeat");
    for alg in [
        Algorithm::HS256,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ] {
        let case = case(key_dir(), alg);
        let headers = bearer(&case.token);
        assert!(
            rt.block_on(case.auth.authenticate(&headers, &route))
                .unwrap()
                .is_some()
        );
        group.bench_function(format!("{:?}", case.alg), |b| {
            b.iter(|| {
                rt.block_on(case.auth.authenticate(black_box(&headers), &route))
                    .is_ok()
            });
        });
    }
    group.finish();
}

/// Tokens never seen before: signature and claims verified every time. More distinct tokens than the
/// verified-token cache holds, cycled, so none is a hit.
fn bench_jwt_first_sight(c: &mut Criterion) {
    const DISTINCT: usize = 40_000;
    let rt = runtime();
    let route = jwt_route();
    let mut group = c.benchmark_group("jwt_accept_first_sight");
    for alg in [Algorithm::HS256, Algorithm::ES256, Algorithm::EdDSA] {
        let case = case(key_dir(), alg);
        let tokens: Vec<HeaderMap> = (0..DISTINCT)
            .map(|i| {
                let mut claims = case.claims.clone();
                claims["jti"] = serde_json::json!(i);
                bearer(&jsonwebtoken::encode(&Header::new(alg), &claims, &case.encoding).unwrap())
            })
            .collect();
        let mut next = 0;
        group.bench_function(format!("{:?}", case.alg), |b| {
            b.iter(|| {
                next = (next + 1) % DISTINCT;
                rt.block_on(case.auth.authenticate(black_box(&tokens[next]), &route))
                    .is_ok()
            });
        });
    }
    group.finish();
}

fn bench_refuse(c: &mut Criterion) {
    let rt = runtime();
    let route = jwt_route();
    let rs = case(key_dir(), Algorithm::RS256);
    let body = rs.token.split('.').nth(1).unwrap();
    let none_header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
    let none = bearer(&format!("{none_header}.{body}."));
    let mut forged_sig = rs.token.clone();
    forged_sig.truncate(forged_sig.len() - 4);
    forged_sig.push_str("AAAA");
    let forged = bearer(&forged_sig);
    assert!(rt.block_on(rs.auth.authenticate(&none, &route)).is_err());
    assert!(rt.block_on(rs.auth.authenticate(&forged, &route)).is_err());
    let mut group = c.benchmark_group("refuse");
    group.bench_function("alg_none", |b| {
        b.iter(|| {
            rt.block_on(rs.auth.authenticate(black_box(&none), &route))
                .is_ok()
        });
    });
    group.bench_function("rs256_bad_signature", |b| {
        b.iter(|| {
            rt.block_on(rs.auth.authenticate(black_box(&forged), &route))
                .is_ok()
        });
    });
    group.finish();
}

/// 100 configured keys: the constant-time scan touches every one.
fn bench_api_keys(c: &mut Criterion) {
    use std::fmt::Write as _;
    let rt = runtime();
    let mut toml_text = String::new();
    for i in 0..100 {
        let digest = hex::encode(sha2::Sha256::digest(
            format!("key-{i:04}-0123456789abcdef").as_bytes(),
        ));
        let _ = write!(
            toml_text,
            "[[api_key]]\nidentity = \"client-{i}\"\nsha256 = \"{digest}\"\n"
        );
    }
    let keys = authenticator(&toml_text);
    let route = RouteAuth {
        mode: AuthMode::ApiKey,
        route: "/orders",
        scopes: SCOPES,
    };
    let mut good = HeaderMap::new();
    good.insert("x-api-key", "key-0099-0123456789abcdef".parse().unwrap());
    let mut bad = HeaderMap::new();
    bad.insert("x-api-key", "key-9999-0123456789abcdef".parse().unwrap());
    assert!(rt.block_on(keys.authenticate(&good, &route)).is_ok());
    assert!(rt.block_on(keys.authenticate(&bad, &route)).is_err());
    let mut group = c.benchmark_group("api_key_100_keys");
    group.bench_function("accept", |b| {
        b.iter(|| rt.block_on(keys.authenticate(black_box(&good), &route)).is_ok());
    });
    group.bench_function("refuse", |b| {
        b.iter(|| rt.block_on(keys.authenticate(black_box(&bad), &route)).is_ok());
    });
    group.finish();
}

criterion_group!(
    benches,
    bench_jwt_accept,
    bench_jwt_first_sight,
    bench_refuse,
    bench_api_keys
);
criterion_main!(benches);
