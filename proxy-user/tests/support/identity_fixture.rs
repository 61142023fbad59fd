//! Shared fixture for the identity tests: keys made by the `openssl` CLI, tokens and JWKs made by `PyJWT` through
//! `support/jwt_tool.py`, and a real HTTP(S) server for JWKS URLs. Nothing here is skipped when a tool is missing:
//! the tests fail and say what to install.

#![allow(dead_code, reason = "each test binary uses a different part of the fixture")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test fixture: a panic is the failure report"
)]

use std::{
    convert::Infallible,
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use proxy_user::identity::{ApiKeyConfig, Authenticator, JwtConfig};
use serde_json::{Value, json};

/// Environment variable holding the HMAC secret for the `secret_env` issuers.
pub const SECRET_ENV: &str = "RASP_TEST_JWT_SECRET";
/// Environment variable holding a secret too short for any HS algorithm.
pub const SHORT_SECRET_ENV: &str = "RASP_TEST_JWT_SHORT_SECRET";
pub const ISSUER: &str = "https://auth.example.test";
pub const AUDIENCE: &str = "orders";

pub struct Keys {
    pub dir: tempfile::TempDir,
    /// 64 bytes: long enough for HS512.
    pub secret: String,
}

impl Keys {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI is needed for the identity tests: apt-get install -y openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Key pairs, generated once per test binary: `rsa`, `rsa_other`, `ec256`, `ec384`, `ed` (each `NAME.pem`
/// private and `NAME.pub.pem` public), and a CA-signed TLS certificate for 127.0.0.1.
pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let pairs: [(&str, &[&str]); 5] = [
            ("rsa", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
            (
                "rsa_other",
                &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            ),
            (
                "ec256",
                &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            ),
            (
                "ec384",
                &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
            ),
            ("ed", &["-algorithm", "ED25519"]),
        ];
        for (name, params) in pairs {
            let private = format!("{name}.pem");
            let public = format!("{name}.pub.pem");
            let mut args = vec!["genpkey"];
            args.extend_from_slice(params);
            args.extend_from_slice(&["-out", &private]);
            openssl(&args, d);
            openssl(&["pkey", "-in", &private, "-pubout", "-out", &public], d);
        }
        make_tls_certificates(d);
        let out = Command::new("openssl")
            .args(["rand", "-hex", "32"])
            .output()
            .unwrap();
        let secret = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        assert_eq!(secret.len(), 64);
        // SAFETY: set once, inside this `OnceLock` initialiser, before any test reads it; the tests run no C code
        // that reads the environment concurrently (Rust's own env access is serialised by std).
        unsafe {
            std::env::set_var(SECRET_ENV, &secret);
            std::env::set_var(SHORT_SECRET_ENV, "only-16-bytes!!!");
        }
        Keys { dir, secret }
    })
}

/// A CA (`ca.crt`) and a server certificate it signed for 127.0.0.1 (`tls.crt`, `tls.key`).
fn make_tls_certificates(d: &Path) {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=rasp-proxy test CA",
        ],
        d,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "tls.key",
            "-out",
            "tls.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        d,
    );
    std::fs::write(
        d.join("san.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "tls.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "tls.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
        d,
    );
}

/// The Python tool, started once per test binary and fed one request per line: starting Python (and
/// importing `cryptography`) costs more than everything the tests do with it.
struct Tool {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    _child: Child,
}

fn tool() -> &'static Mutex<Tool> {
    static TOOL: OnceLock<Mutex<Tool>> = OnceLock::new();
    TOOL.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/jwt_tool.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Its errors (a missing PyJWT, a bad request) show in the test output.
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 is needed for the identity tests, with PyJWT: pip install pyjwt cryptography");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Mutex::new(Tool {
            stdin,
            stdout,
            _child: child,
        })
    })
}

/// Runs the Python tool on a batch of requests.
pub fn py(requests: &[Value]) -> Vec<Value> {
    // A test that panicked while holding the lock leaves the tool in a consistent state between lines.
    let mut tool = tool().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    requests
        .iter()
        .map(|request| {
            let mut line = String::new();
            let sent = writeln!(tool.stdin, "{request}").and_then(|()| tool.stdin.flush());
            let answered = sent.and_then(|()| tool.stdout.read_line(&mut line));
            assert!(
                matches!(answered, Ok(n) if n > 0),
                "jwt_tool.py stopped (see its error above; is PyJWT installed? pip install pyjwt cryptography)"
            );
            serde_json::from_str(&line).unwrap()
        })
        .collect()
}

pub fn now() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap()
}

/// Valid claims for [`ISSUER`] and [`AUDIENCE`], ten minutes to live.
pub fn claims() -> Value {
    json!({"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "iat": now(), "exp": now() + 600})
}

/// The private key file (or secret) that signs `alg` in the fixture.
pub fn signing_request(alg: &str, claims: &Value, headers: &Value) -> Value {
    let keys = keys();
    let key_file = match alg {
        "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => "rsa.pem",
        "ES256" => "ec256.pem",
        "ES384" => "ec384.pem",
        "EdDSA" => "ed.pem",
        _ => {
            return json!({"op": "sign", "alg": alg, "secret": keys.secret, "claims": claims, "headers": headers});
        }
    };
    json!({"op": "sign", "alg": alg, "key_file": keys.path(key_file), "claims": claims, "headers": headers})
}

pub fn sign(alg: &str, claims: &Value) -> String {
    sign_with(signing_request(alg, claims, &json!({})))
}

pub fn sign_with(request: Value) -> String {
    py(&[request])[0]["token"].as_str().unwrap().to_owned()
}

/// A public JWK for the fixture key `name` (`rsa`, `ec256`, ...).
pub fn jwk(name: &str, alg: &str, kid: &str) -> Value {
    let file = keys().path(&format!("{name}.pub.pem"));
    py(&[json!({"op": "jwk", "alg": alg, "key_file": file, "kid": kid})])[0]["jwk"].clone()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentitySections {
    #[serde(default)]
    jwt: JwtConfig,
    #[serde(default)]
    api_key: Vec<ApiKeyConfig>,
}

/// Builds an `Authenticator` from the `[jwt]`/`[[api_key]]` TOML of the proxy's config file.
pub fn authenticator(toml_text: &str) -> Result<Authenticator, String> {
    keys();
    let sections: IdentitySections = toml::from_str(toml_text).map_err(|e| e.to_string())?;
    Authenticator::from_config(&sections.jwt, &sections.api_key).map_err(|e| e.to_string())
}

pub fn bearer(token: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    h
}

/// A real HTTP (or HTTPS) server answering every request with the current JWKS document.
pub struct JwksServer {
    pub addr: SocketAddr,
    pub doc: Arc<Mutex<String>>,
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    pub async fn start(keys: &[Value], tls: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let doc = Arc::new(Mutex::new(json!({ "keys": keys }).to_string()));
        let hits = Arc::new(AtomicUsize::new(0));
        let acceptor = tls.then(tls_acceptor);
        let (doc2, hits2) = (Arc::clone(&doc), Arc::clone(&hits));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (doc, hits, acceptor) = (Arc::clone(&doc2), Arc::clone(&hits2), acceptor.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |_req: Request<Incoming>| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let body = doc.lock().unwrap().clone();
                        async move {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let builder = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            doc,
            hits,
            task,
        }
    }

    pub fn set_keys(&self, keys: &[Value]) {
        *self.doc.lock().unwrap() = json!({ "keys": keys }).to_string();
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let keys = keys();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(keys.path("tls.crt"))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(keys.path("tls.key")).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}
