//! The client side of HTTP/1.1, over raw sockets: pipelining, `HEAD`, `Connection: close`, chunked answers to
//! bodies of unknown length, the idle timeout, and the hand-over to hyper in the middle of a connection (a
//! request with a body after simple ones).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod proxy_support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use proxy_support::{TestProxy, Upstream, pattern};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

async fn proxy(extra: &str, upstream: SocketAddr) -> TestProxy {
    TestProxy::start(&format!(
        "{extra}\n[[upstream]]\nname = \"a\"\nendpoints = [\"{upstream}\"]\n[[route]]\npath_prefix = \"/\"\n\
         upstream = \"a\"\n"
    ))
    .await
}

/// Everything the proxy sends on one connection until it closes it (bounded by `wait`).
async fn exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(wait, s.read_to_end(&mut out))
        .await
        .expect("the proxy did not close the connection")
        .unwrap();
    out
}

/// One parsed response off the front of `wire`: status, lowercase headers, body (framed by `Content-Length` or
/// chunked, or none for `head_only`), and the rest of `wire`.
struct Parsed<'a> {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    rest: &'a [u8],
}

impl Parsed<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_response(wire: &[u8], head_only: bool) -> Parsed<'_> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut head = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(len) = head.parse(wire).unwrap() else {
        panic!("incomplete head: {}", String::from_utf8_lossy(wire));
    };
    let status = head.code.unwrap();
    let headers: Vec<(String, String)> = head
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let mut rest = &wire[len..];
    let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if head_only {
    } else if let Some(n) = find("content-length") {
        let n: usize = n.parse().unwrap();
        body.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    } else if find("transfer-encoding").as_deref() == Some("chunked") {
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16).unwrap();
            rest = &rest[line_end + 2..];
            if size == 0 {
                assert_eq!(&rest[..2], b"\r\n", "no trailers expected");
                rest = &rest[2..];
                break;
            }
            body.extend_from_slice(&rest[..size]);
            assert_eq!(&rest[size..size + 2], b"\r\n");
            rest = &rest[size + 2..];
        }
    } else {
        panic!("response without framing: {headers:?}");
    }
    Parsed {
        status,
        headers,
        body,
        rest,
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let up = Upstream::start("a").await;
    let p = proxy("", up.addr).await;
    let wire = exchange(
        p.http,
        b"GET /first HTTP/1.1\r\nhost: t\r\n\r\nGET /second HTTP/1.1\r\nhost: t\r\n\r\n\
          GET /third HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let mut rest = &wire[..];
    for path in ["/first", "/second", "/third"] {
        let r = parse_response(rest, false);
        assert_eq!(r.status, 200);
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["path"], path);
        assert!(r.header("date").is_some(), "every response is dated");
        assert!(r.header("x-request-id").is_some());
        assert_eq!(r.header("x-upstream-hop"), None, "hop-by-hop headers stay behind");
        rest = r.rest;
    }
    assert!(rest.is_empty(), "nothing after the last response");
}

#[tokio::test]
async fn a_request_with_a_body_after_simple_ones_is_served_on_the_same_connection() {
    let up = Upstream::start("a").await;
    let p = proxy("", up.addr).await;
    let wire = exchange(
        p.http,
        b"GET /before HTTP/1.1\r\nhost: t\r\n\r\n\
          POST /echo-body HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\n\r\nhello\
          GET /after HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let first = parse_response(&wire, false);
    assert_eq!(first.status, 200);
    let second = parse_response(first.rest, false);
    assert_eq!(second.status, 200);
    assert_eq!(second.body, b"hello");
    let third = parse_response(second.rest, false);
    assert_eq!(third.status, 200);
    let body: serde_json::Value = serde_json::from_slice(&third.body).unwrap();
    assert_eq!(body["path"], "/after");
}

#[tokio::test]
async fn head_keeps_the_length_sends_no_body_and_the_connection_goes_on() {
    let up = Upstream::start("a").await;
    let p = proxy("", up.addr).await;
    let wire = exchange(
        p.http,
        b"HEAD /bytes/100 HTTP/1.1\r\nhost: t\r\n\r\nGET /bytes/3 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let head = parse_response(&wire, true);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("100"));
    let get = parse_response(head.rest, false);
    assert_eq!(get.status, 200);
    assert_eq!(get.body, pattern(3));
    assert!(get.rest.is_empty());
}

#[tokio::test]
async fn connection_close_is_answered_in_kind_and_the_connection_ends() {
    let up = Upstream::start("a").await;
    let p = proxy("", up.addr).await;
    let wire = exchange(
        p.http,
        b"GET /bytes/10 HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let r = parse_response(&wire, false);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.body, pattern(10));
    assert!(r.rest.is_empty());
}

/// An upstream that answers every head with `resp` verbatim and then closes.
fn raw_upstream(listener: TcpListener, resp: &'static [u8]) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = tcp.write_all(resp).await;
            });
        }
    })
}

#[tokio::test]
async fn a_body_of_unknown_length_is_sent_chunked_and_the_connection_stays_usable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // No length, no chunking: the body runs until the upstream closes.
    let task = raw_upstream(
        listener,
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nuntil the end",
    );
    let p = proxy("", addr).await;
    let wire = exchange(
        p.http,
        b"GET /a HTTP/1.1\r\nhost: t\r\n\r\nGET /b HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let first = parse_response(&wire, false);
    assert_eq!(first.header("transfer-encoding"), Some("chunked"));
    assert_eq!(first.body, b"until the end");
    let second = parse_response(first.rest, false);
    assert_eq!(second.body, b"until the end");
    assert!(second.rest.is_empty());
    task.abort();
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let up = Upstream::start("a").await;
    let p = proxy("[timeouts]\nidle = \"600ms\"", up.addr).await;
    let mut s = TcpStream::connect(p.http).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await.unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let started = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("an idle connection stays open past the idle timeout")
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400),
        "closed after only {waited:?}"
    );
}

#[tokio::test]
async fn http_1_0_and_bodies_are_still_served_by_hyper() {
    let up = Upstream::start("a").await;
    let p = proxy("", up.addr).await;
    let wire = exchange(
        p.http,
        b"GET /old HTTP/1.0\r\nhost: t\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let r = parse_response(&wire, false);
    assert_eq!(r.status, 200);
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["path"], "/old");
    let wire = exchange(
        p.http,
        b"POST /echo-body HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
          3\r\nabc\r\n0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let r = parse_response(&wire, false);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"abc");
}
