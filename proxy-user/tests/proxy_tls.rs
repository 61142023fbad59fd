//! TLS listeners: HTTP/2 by ALPN (a Rust client and `curl --http2`), HTTP/1.1, SNI certificate choice, and
//! h2c with prior knowledge on a plain listener.

mod proxy_support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy_support::{Pki, TestProxy, Upstream, json, tls_connect};
use rustls::pki_types::{CertificateDer, pem::PemObject as _};

#[expect(clippy::unwrap_used, reason = "test helper: a failure here is a failed test")]
async fn tls_proxy(pki: &Pki, upstream: &Upstream) -> TestProxy {
    let dir = tempfile::tempdir().unwrap();
    pki.leaf(dir.path(), "default", &["localhost"]);
    pki.leaf(dir.path(), "api", &["api.example.test"]);
    // Relative paths are resolved from the config file's directory.
    TestProxy::start_in(
        dir,
        &format!(
            r#"
[[listener]]
listen = "127.0.0.1:0"
tls = {{ cert = "default.crt", key = "default.key", sni = [{{ names = ["api.example.test"], cert = "api.crt", key = "api.key" }}] }}

[[upstream]]
name = "a"
endpoints = ["{}"]
[[route]]
path_prefix = "/"
upstream = "a"
"#,
            upstream.addr
        ),
    )
    .await
}

#[tokio::test]
async fn http2_over_tls_with_a_rust_client() {
    let (pki, up) = (Pki::new(), Upstream::start("a").await);
    let p = tls_proxy(&pki, &up).await;
    let tls_addr = p.running().listeners[1];
    let tls = tls_connect(pki.client_config(&[b"h2", b"http/1.1"]), tls_addr, "localhost").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let req = Request::get(format!("https://localhost/h2/{i}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let j = json(&body);
        assert_eq!(j["path"], format!("/h2/{i}"));
        assert_eq!(j["headers"]["x-forwarded-proto"], "https");
        assert_eq!(id.len(), 20, "{id}");
        assert_eq!(
            j["headers"]["x-request-id"],
            id.as_str(),
            "the upstream and the client see the same id"
        );
        assert_eq!(j["headers"]["host"], "localhost");
    }
}

#[tokio::test]
async fn curl_negotiates_http2_and_http1_over_tls() {
    let (pki, up) = (Pki::new(), Upstream::start("a").await);
    let p = tls_proxy(&pki, &up).await;
    let port = p.running().listeners[1].port();
    let ca = pki.write_ca(p.dir.path());
    for (flag, want) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&ca)
            .args([
                "--resolve",
                &format!("localhost:{port}:127.0.0.1"),
                flag,
                "-o",
                "/dev/null",
            ])
            .args([
                "-w",
                "%{http_version} %{http_code}",
                &format!("https://localhost:{port}/curl"),
            ])
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            stdout,
            format!("{want} 200"),
            "curl {flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test]
async fn sni_picks_the_matching_certificate() {
    let (pki, up) = (Pki::new(), Upstream::start("a").await);
    let p = tls_proxy(&pki, &up).await;
    let addr = p.running().listeners[1];
    let config = pki.client_config(&[b"http/1.1"]);
    for (name, file) in [("api.example.test", "api.crt"), ("localhost", "default.crt")] {
        let tls = tls_connect(config.clone(), addr, name).await;
        let served = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        let expected = CertificateDer::from_pem_file(p.dir.path().join(file)).unwrap();
        assert_eq!(served, expected, "SNI {name}");
    }
    // A name no certificate covers gets the default one, which the client rightly rejects.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("other.example.test").unwrap();
    assert!(
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_on_a_plain_listener() {
    let up = Upstream::start("a").await;
    let p = TestProxy::start(&format!(
        "[[upstream]]\nname = \"a\"\nendpoints = [\"{}\"]\n[[route]]\npath_prefix = \"/\"\nupstream = \"a\"\n",
        up.addr
    ))
    .await;
    let tcp = tokio::net::TcpStream::connect(p.http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{}/h2c", p.http))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(
        (resp.status(), resp.version()),
        (http::StatusCode::OK, http::Version::HTTP_2)
    );
    let j = json(&resp.into_body().collect().await.unwrap().to_bytes());
    assert_eq!(j["headers"]["x-forwarded-proto"], "http");
}
