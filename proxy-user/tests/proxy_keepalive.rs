//! Upstream connection reuse: keep-alive across client connections, and a request that lands on a connection
//! the upstream has just closed is sent again on a fresh one rather than answered with 502. Also the per-worker
//! state a request takes without touching what workers share: request ids.

#![allow(clippy::unwrap_used, reason = "tests")]

mod proxy_support;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use proxy_support::{TestProxy, raw};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
    task::JoinHandle,
};

/// A raw HTTP/1.1 upstream that counts the connections it accepts. With `close_after_each`, it closes every
/// connection right after its first response, without saying so (no `Connection: close`), as an upstream whose
/// keep-alive timer fired would.
struct CountingUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for CountingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CountingUpstream {
    async fn start(close_after_each: bool) -> Self {
        Self::answering(
            close_after_each,
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok",
        )
        .await
    }

    /// An upstream that answers every request with `resp`, verbatim.
    async fn answering(close_after_each: bool, resp: &'static [u8]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // Requests here have no body: a head ends at the blank line.
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            if tcp.write_all(resp).await.is_err() || close_after_each {
                                return;
                            }
                        }
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        Self { addr, accepted, task }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn proxy_to(upstream: &CountingUpstream) -> TestProxy {
    TestProxy::start(&format!(
        "[[upstream]]\nname = \"u\"\nendpoints = [\"{}\"]\n[[route]]\npath_prefix = \"/\"\nupstream = \"u\"\n",
        upstream.addr
    ))
    .await
}

/// One request on its own client connection, so reuse can only come from the proxy's upstream side.
async fn one_request(p: &TestProxy) -> String {
    raw(
        p.http,
        b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await
}

#[tokio::test]
async fn upstream_connections_are_reused_across_client_connections() {
    let upstream = CountingUpstream::start(false).await;
    let p = proxy_to(&upstream).await;
    for i in 0..20 {
        let answer = one_request(&p).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "request {i}: {answer}");
        assert!(answer.ends_with("ok"), "request {i}: {answer}");
    }
    // One connection per worker thread at most: each worker keeps its own.
    let workers = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    assert!(
        upstream.accepted() <= workers,
        "20 sequential requests opened {} upstream connections",
        upstream.accepted()
    );
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_not_a_502() {
    let upstream = CountingUpstream::start(true).await;
    let p = proxy_to(&upstream).await;
    for i in 0..10 {
        let answer = one_request(&p).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "request {i}: {answer}");
        // Give the close time to arrive, as it would between two requests in production.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(upstream.accepted(), 10);
}

#[tokio::test]
async fn interim_answers_are_skipped_and_chunked_bodies_keep_the_connection() {
    let upstream = CountingUpstream::answering(
        false,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
          5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: t\r\n\r\n",
    )
    .await;
    let p = proxy_to(&upstream).await;
    for i in 0..10 {
        let answer = one_request(&p).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "request {i}: {answer}");
        assert!(!answer.contains("100 Continue"), "request {i}: {answer}");
        assert!(
            answer.contains("hello") && answer.contains(" world"),
            "request {i}: {answer}"
        );
    }
    // The chunked body was read to its end each time, so the connection carried the next request.
    let workers = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    assert!(
        upstream.accepted() <= workers,
        "{} upstream connections",
        upstream.accepted()
    );
}

#[tokio::test]
async fn an_unframeable_upstream_answer_is_a_502() {
    for resp in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nok",
        b"HTTP/1.1 2000 OK\r\ncontent-length: 2\r\n\r\nok",
    ] {
        let upstream = CountingUpstream::answering(false, resp).await;
        let p = proxy_to(&upstream).await;
        let answer = one_request(&p).await;
        assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    }
}

#[tokio::test]
async fn request_ids_are_unique_across_connections_and_workers() {
    let upstream = CountingUpstream::start(false).await;
    let p = Arc::new(proxy_to(&upstream).await);
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let p = p.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..50 {
                    let answer = one_request(&p).await;
                    let id = answer
                        .lines()
                        .find_map(|l| l.strip_prefix("x-request-id: "))
                        .unwrap_or_else(|| panic!("no request id in {answer}"))
                        .to_owned();
                    ids.push(id);
                }
                ids
            })
        })
        .collect();
    let mut all = std::collections::HashSet::new();
    for client in clients {
        for id in client.await.unwrap() {
            assert!(
                id.len() == 20 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                "{id}"
            );
            assert!(all.insert(id.clone()), "{id} was handed out twice");
        }
    }
    assert_eq!(all.len(), 200);
}
