//! Shared by the `proxy_*` integration tests: a real upstream HTTP server, a proxy started in-process on
//! ephemeral ports, test certificates made at test time, and small clients.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers; each test uses a subset"
)]

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use proxy_user::proxy::{RunningProxy, start};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

type Body = BoxBody<Bytes, hyper::Error>;

/// A real HTTP/1.1 upstream. Endpoints:
/// - `/echo-body`: streams the request body back;
/// - `/bytes/N`: N bytes of a known pattern, streamed;
/// - `/sleep/MS`: answers after MS milliseconds;
/// - `/ws`: a minimal upgrade handshake, then echoes bytes on the upgraded connection;
/// - anything else: JSON with the upstream's name, method, path and request headers.
pub struct Upstream {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let svc = service_fn(move |req| upstream_handle(name, req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Self { addr, task }
    }
}

pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| u8::try_from(i % 251).unwrap()).collect()
}

async fn upstream_handle(
    name: &'static str,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/echo-body" {
        return Ok(Response::new(req.into_body().boxed()));
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap_or(0);
        return Ok(Response::new(
            Full::new(Bytes::from(pattern(n)))
                .map_err(|never| match never {})
                .boxed(),
        ));
    }
    if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    if path == "/ws" {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on_upgrade.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", "test-accept")
            .body(Full::new(Bytes::new()).map_err(|never| match never {}).boxed())
            .unwrap();
        return Ok(resp);
    }
    // A repeated header's values joined, as a list header reads: a second copy is seen, not overwritten.
    let mut headers = serde_json::Map::new();
    for name in req.headers().keys() {
        let values: Vec<&str> = req
            .headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("<bin>"))
            .collect();
        headers.insert(name.as_str().to_owned(), values.join(", ").into());
    }
    let body = serde_json::json!({
        "upstream": name,
        "method": req.method().as_str(),
        "path": req.uri().to_string(),
        "headers": headers,
    });
    let resp = Response::builder()
        .header("content-type", "application/json")
        .header("connection", "keep-alive, x-upstream-hop")
        .header("x-upstream-hop", "must-not-reach-client")
        .body(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap();
    Ok(resp)
}

/// A proxy running in this process, with its config in a temp dir.
pub struct TestProxy {
    pub dir: tempfile::TempDir,
    pub running: Option<RunningProxy>,
    pub http: SocketAddr,
}

impl TestProxy {
    /// Starts a proxy with `body` as the config after a plain listener and an admin listener on port 0.
    pub async fn start(body: &str) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), body).await
    }

    pub async fn start_in(dir: tempfile::TempDir, body: &str) -> Self {
        let path = dir.path().join("rasp-proxy.toml");
        std::fs::write(&path, with_listeners(body)).unwrap();
        let running = start(&path, None).await.unwrap();
        let http = running.listeners[0];
        Self {
            dir,
            running: Some(running),
            http,
        }
    }

    pub fn running(&self) -> &RunningProxy {
        self.running.as_ref().unwrap()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("rasp-proxy.toml")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running().admin)
    }
}

pub fn with_listeners(body: &str) -> String {
    format!("[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\n\n{body}")
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// One request; returns status, headers and the whole body.
pub async fn send(req: Request<Full<Bytes>>) -> (StatusCode, http::HeaderMap, Bytes) {
    let resp = tokio::time::timeout(Duration::from_secs(20), client().request(req))
        .await
        .unwrap()
        .unwrap();
    let (parts, body) = resp.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

pub async fn get(url: &str) -> (StatusCode, http::HeaderMap, Bytes) {
    send(Request::get(url).body(Full::new(Bytes::new())).unwrap()).await
}

pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// Writes raw bytes on a fresh connection and reads the answer until the server closes or `wait` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A test PKI: one CA and leaf certificates signed by it.
pub struct Pki {
    pub ca_pem: String,
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
}

impl Pki {
    pub fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "rasp-proxy test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            ca_pem: cert.pem(),
            params,
            key,
        }
    }

    /// Writes `NAME.crt` and `NAME.key` for `names` into `dir`; returns the two paths.
    pub fn leaf(&self, dir: &Path, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        let key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let (c, k) = (dir.join(format!("{file}.crt")), dir.join(format!("{file}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let p = dir.join("ca.pem");
        std::fs::write(&p, &self.ca_pem).unwrap();
        p
    }

    /// A rustls client trusting only this CA, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::{CertificateDer, pem::PemObject as _};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// Connects with TLS to `addr` asking for `server_name`; returns the stream and the peer's leaf certificate.
pub async fn tls_connect(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    server_name: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap()
}
