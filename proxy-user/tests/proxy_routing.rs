//! Through the proxy to real upstreams: routing, round-robin, ejection, headers, streaming, WebSocket, and
//! the error answers (502, 504, 413).

mod proxy_support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use proxy_support::{TestProxy, Upstream, get, json, pattern, raw, send};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

#[tokio::test]
async fn routes_by_host_longest_prefix_and_method() {
    let (up_a, up_b, up_c) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    );
    let p = TestProxy::start(&format!(
        r#"
[[upstream]]
name = "a"
endpoints = ["{}"]
[[upstream]]
name = "b"
endpoints = ["{}"]
[[upstream]]
name = "c"
endpoints = ["{}"]

[[route]]
path_prefix = "/"
upstream = "a"
[[route]]
name = "orders"
path_prefix = "/orders"
upstream = "b"
methods = ["GET"]
[[route]]
host = "admin.example.test"
path_prefix = "/"
upstream = "c"
"#,
        up_a.addr, up_b.addr, up_c.addr
    ))
    .await;
    let upstream_of = |body: &[u8]| json(body)["upstream"].as_str().unwrap().to_owned();
    let (s, _, body) = get(&p.url("/orders/42?x=1")).await;
    assert_eq!(s, 200);
    assert_eq!(upstream_of(&body), "b");
    assert_eq!(json(&body)["path"], "/orders/42?x=1");
    let (_, _, body) = get(&p.url("/ordersx")).await;
    assert_eq!(upstream_of(&body), "a");
    let (s, _, body) = send(
        Request::post(p.url("/orders/1"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(json(&body)["error"], "method_not_allowed");
    let req = Request::get(p.url("/orders"))
        .header("host", "Admin.Example.Test:8080")
        .body(Full::default())
        .unwrap();
    let (_, _, body) = send(req).await;
    assert_eq!(upstream_of(&body), "c");
}

#[tokio::test]
async fn no_route_is_404_and_auth_routes_refuse_until_identity_is_wired() {
    let a = Upstream::start("a").await;
    let p = TestProxy::start(&format!(
        "[[upstream]]\nname = \"a\"\nendpoints = [\"{}\"]\n[[route]]\npath_prefix = \"/api\"\nupstream = \"a\"\nauth = \"jwt\"\n",
        a.addr
    ))
    .await;
    let (s, _, body) = get(&p.url("/nothing")).await;
    assert_eq!(s, 404);
    assert_eq!(json(&body)["error"], "not_found");
    let (s, h, _) = get(&p.url("/api/x")).await;
    assert_eq!(s, 401);
    assert_eq!(h["www-authenticate"], "Bearer");
}

#[tokio::test]
async fn round_robin_then_ejection_of_a_dead_endpoint() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    // A port that was just free: connections to it are refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = TestProxy::start(&format!(
        r#"
[[upstream]]
name = "pool"
endpoints = ["{}", "{}", "{dead}"]
eject_after_failures = 1
eject_cooldown = "1h"
[[route]]
path_prefix = "/"
upstream = "pool"
"#,
        a.addr, b.addr
    ))
    .await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (s, _, body) = get(&p.url("/")).await;
        seen.push(if s == 502 {
            "dead".to_owned()
        } else {
            json(&body)["upstream"].as_str().unwrap().to_owned()
        });
    }
    seen.sort();
    assert_eq!(
        seen,
        ["a", "b", "dead"],
        "one pass of round-robin visits each endpoint once"
    );
    for _ in 0..10 {
        let (s, _, _) = get(&p.url("/")).await;
        assert_eq!(s, 200, "the dead endpoint is ejected for the cool-down");
    }
    let metrics = get(&p.admin_url("/metrics")).await.2;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("rasp_proxy_upstream_errors_total{upstream=\"pool\",kind=\"connect\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_upstream_is_504() {
    let slow = Upstream::start("slow").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = TestProxy::start(&format!(
        r#"
[timeouts]
upstream_response = "300ms"
[[upstream]]
name = "dead"
endpoints = ["{dead}"]
[[upstream]]
name = "slow"
endpoints = ["{}"]
[[route]]
path_prefix = "/dead"
upstream = "dead"
[[route]]
path_prefix = "/sleep"
upstream = "slow"
"#,
        slow.addr
    ))
    .await;
    let (s, h, body) = get(&p.url("/dead")).await;
    assert_eq!(s, 502);
    let j = json(&body);
    assert_eq!(j["error"], "bad_gateway");
    assert_eq!(j["request_id"], h["x-request-id"].to_str().unwrap());
    assert!(
        !String::from_utf8_lossy(&body).contains("127.0.0.1"),
        "error bodies leak no addresses"
    );
    let (s, _, body) = get(&p.url("/sleep/2000")).await;
    assert_eq!(s, 504);
    assert_eq!(json(&body)["error"], "gateway_timeout");
    let (s, _, _) = get(&p.url("/sleep/10")).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn forwarding_headers_set_and_hop_by_hop_and_forged_subject_removed() {
    let a = Upstream::start("a").await;
    let p = TestProxy::start(&format!(
        "[[upstream]]\nname = \"a\"\nendpoints = [\"{}\"]\n[[route]]\npath_prefix = \"/\"\nupstream = \"a\"\n",
        a.addr
    ))
    .await;
    let req = Request::get(p.url("/h"))
        .header("x-authenticated-subject", "admin")
        .header("x-forwarded-for", "198.51.100.9")
        .header("x-forwarded-proto", "https")
        .header("x-request-id", "client-chosen")
        .header("connection", "x-private-hop")
        .header("x-private-hop", "1")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-app", "kept")
        .body(Full::default())
        .unwrap();
    let (s, resp_headers, body) = send(req).await;
    assert_eq!(s, 200);
    let h = &json(&body)["headers"];
    assert!(h.get("x-authenticated-subject").is_none(), "{h}");
    assert!(
        h.get("x-private-hop").is_none() && h.get("proxy-authorization").is_none(),
        "{h}"
    );
    assert_eq!(h["x-app"], "kept");
    assert_eq!(
        h["x-forwarded-for"], "127.0.0.1",
        "an untrusted client's X-Forwarded-For is replaced"
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    let id = resp_headers["x-request-id"].to_str().unwrap();
    assert_ne!(id, "client-chosen");
    assert_eq!(
        h["x-request-id"], id,
        "the upstream and the client see the same id"
    );
    assert!(
        !resp_headers.contains_key("x-upstream-hop"),
        "response hop-by-hop headers are removed"
    );
}

#[tokio::test]
async fn a_trusted_proxys_forwarded_for_is_extended() {
    let a = Upstream::start("a").await;
    let p = TestProxy::start(&format!(
        "[forwarding]\ntrusted_proxies = [\"127.0.0.0/8\"]\n[[upstream]]\nname = \"a\"\nendpoints = [\"{}\"]\n[[route]]\npath_prefix = \"/\"\nupstream = \"a\"\n",
        a.addr
    ))
    .await;
    let req = Request::get(p.url("/h"))
        .header("x-forwarded-for", "198.51.100.9")
        .body(Full::default())
        .unwrap();
    let (s, _, body) = send(req).await;
    assert_eq!(s, 200);
    assert_eq!(
        json(&body)["headers"]["x-forwarded-for"],
        "198.51.100.9, 127.0.0.1"
    );
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    let a = Upstream::start("a").await;
    let p = TestProxy::start(&format!(
        "[limits]\nmax_body_bytes = 67108864\n[[upstream]]\nname = \"a\"\nendpoints = [\"{}\"]\n[[route]]\npath_prefix = \"/\"\nupstream = \"a\"\n",
        a.addr
    ))
    .await;
    let big = pattern(32 * 1024 * 1024);
    let (s, _, body) = send(
        Request::post(p.url("/echo-body"))
            .body(Full::new(Bytes::from(big.clone())))
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        body.len() == big.len() && body[..] == big[..],
        "upload echoed intact"
    );
    let (s, _, body) = get(&p.url("/bytes/20000000")).await;
    assert_eq!(s, 200);
    assert_eq!(&body[..], &pattern(20_000_000)[..]);
}

#[tokio::test]
async fn body_over_the_limit_is_413_whether_declared_or_chunked() {
    let a = Upstream::start("a").await;
    let p = TestProxy::start(&format!(
        "[limits]\nmax_body_bytes = 1000\n[[upstream]]\nname = \"a\"\nendpoints = [\"{}\"]\n[[route]]\npath_prefix = \"/\"\nupstream = \"a\"\n",
        a.addr
    ))
    .await;
    let (s, _, _) = send(
        Request::post(p.url("/echo-body"))
            .body(Full::new(Bytes::from(vec![b'x'; 1001])))
            .unwrap(),
    )
    .await;
    assert_eq!(s, 413);
    let chunk = format!("7d0\r\n{}\r\n0\r\n\r\n", "y".repeat(2000));
    let req = format!(
        "POST /echo-body HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{chunk}"
    );
    let answer = raw(p.http, req.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let (s, _, body) = send(
        Request::post(p.url("/echo-body"))
            .body(Full::new(Bytes::from(vec![b'x'; 1000])))
            .unwrap(),
    )
    .await;
    assert_eq!((s, body.len()), (StatusCode::OK, 1000));
}

#[tokio::test]
async fn websocket_upgrade_passes_through() {
    let a = Upstream::start("a").await;
    let p = TestProxy::start(&format!(
        "[[upstream]]\nname = \"a\"\nendpoints = [\"{}\"]\n[[route]]\npath_prefix = \"/\"\nupstream = \"a\"\n",
        a.addr
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(p.http).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("upgrade: websocket") && head.contains("sec-websocket-accept: test-accept"),
        "{head}"
    );
    for msg in [&b"hello over the tunnel"[..], &b"second frame"[..]] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
    // The tunnel stays in the connection registry: banning the source cuts it.
    assert_eq!(p.running().proxy.close_source("127.0.0.1".parse().unwrap()), 1);
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
    assert!(r.is_ok_and(|r| r.is_ok()), "the tunnel was closed");
}

#[tokio::test]
async fn with_inspection_on_a_bounded_prefix_is_buffered_and_the_body_still_arrives_intact() {
    let a = Upstream::start("a").await;
    let p = TestProxy::start(&format!(
        "[limits]\ninspect_body_bytes = 1024\n[inspection]\nmode = \"detect\"\n[[upstream]]\nname = \"a\"\nendpoints = [\"{}\"]\n[[route]]\npath_prefix = \"/\"\nupstream = \"a\"\n",
        a.addr
    ))
    .await;
    for size in [0, 10, 1024, 1025, 5 * 1024 * 1024] {
        let body = pattern(size);
        let (s, _, echoed) = send(
            Request::post(p.url("/echo-body"))
                .body(Full::new(Bytes::from(body.clone())))
                .unwrap(),
        )
        .await;
        assert_eq!(s, 200);
        assert!(echoed[..] == body[..], "size {size}: body changed in transit");
    }
}
