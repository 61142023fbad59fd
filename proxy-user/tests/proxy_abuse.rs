//! Bad input: slowloris, oversized and too many headers, malformed request lines, connection floods from one
//! source, and closing every connection of a banned source. The proxy keeps serving others throughout.

mod proxy_support;

use std::time::{Duration, Instant};

use proxy_support::{TestProxy, Upstream, get, raw};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

async fn proxy(extra: &str, up: &Upstream) -> TestProxy {
    TestProxy::start(&format!(
        "{extra}\n[[upstream]]\nname = \"a\"\nendpoints = [\"{}\"]\n[[route]]\npath_prefix = \"/\"\nupstream = \"a\"\n",
        up.addr
    ))
    .await
}

#[tokio::test]
async fn slowloris_is_cut_at_the_header_timeout_while_others_are_served() {
    let up = Upstream::start("a").await;
    let p = proxy("[timeouts]\nheader_read = \"700ms\"", &up).await;
    let started = Instant::now();
    let mut slow = TcpStream::connect(p.http).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let drip = tokio::spawn(async move {
        // One header byte every 100 ms: the head never completes.
        for _ in 0..40 {
            if slow.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
        (Instant::now(), buf)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (s, _, _) = get(&p.url("/while-slow")).await;
    assert_eq!(s, 200, "another client is served during the slow one");
    let (closed_at, answer) = drip.await.unwrap();
    let took = closed_at - started;
    assert!(took < Duration::from_millis(2500), "cut after {took:?}");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

#[tokio::test]
async fn oversized_and_too_many_headers_get_431() {
    let up = Upstream::start("a").await;
    let p = proxy("[limits]\nmax_header_bytes = 8192\nmax_headers = 20", &up).await;
    let big = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let answer = raw(p.http, big.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.80}");
    let many = (0..30).fold(String::new(), |acc, i| acc + &format!("x-h{i}: v\r\n"));
    let answer = raw(
        p.http,
        format!("GET / HTTP/1.1\r\nhost: x\r\n{many}\r\n").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.80}");
    let (s, _, _) = get(&p.url("/still-fine")).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn malformed_request_lines_get_400() {
    let up = Upstream::start("a").await;
    let p = proxy("", &up).await;
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /a b c HTTP/1.1\r\nhost: x\r\n\r\n",
        b"GET / HTTP/9.9\r\nhost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nbad header line\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
    ] {
        let answer = raw(p.http, bad, Duration::from_secs(5)).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 400") || answer.starts_with("HTTP/1.1 505"),
            "{:?} -> {answer:.80}",
            String::from_utf8_lossy(bad)
        );
        assert!(!answer.contains("200 OK"));
    }
    let answer = raw(
        p.http,
        b"GET / HTTP/1.1\r\nbad header line\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:.80}");
    let (s, _, _) = get(&p.url("/")).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn connections_per_source_are_capped_and_close_source_cuts_them() {
    let up = Upstream::start("a").await;
    let p = proxy("[limits]\nmax_connections_per_source = 3", &up).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(p.http).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(s);
    }
    let mut fourth = TcpStream::connect(p.http).await.unwrap();
    let _ = fourth.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), fourth.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(buf.is_empty(), "the fourth connection is closed unanswered");

    let closed = p.running().proxy.close_source("127.0.0.1".parse().unwrap());
    assert_eq!(closed, 3);
    for mut s in held {
        let mut rest = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
        assert!(r.is_ok(), "close_source closed the connection");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (s, _, _) = get(&p.url("/after")).await;
    assert_eq!(s, 200, "after the close, the source may connect again");
}
