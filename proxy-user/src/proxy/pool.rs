//! Upstream HTTP/1.1 connections, kept alive per worker thread.
//!
//! Why not hyper-util's pooled `Client`: its pool is one mutex-guarded map shared by every caller, keyed by a
//! scheme+authority it clones per request, with a checkout future, a connect-or-wait race and a "when idle"
//! hand-back per request. A worker here already owns its connections (thread per core), so the pool is a plain
//! LIFO stack per endpoint behind an uncontended lock, and a connection goes back on it exactly when its
//! response body has been read to the end, i.e. when it can carry the next request. Keep-alive, the connect
//! timeout, the retry of a request that never left on a connection the upstream had just closed, and upgrades
//! (WebSocket) behave as they did with the pooled client.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::{
    body::Incoming,
    client::conn::http1::{self, SendRequest},
};
use hyper_util::rt::TokioIo;
use rustc_hash::FxHashMap;
use tokio::net::TcpStream;

use super::body::ProxyBody;

/// Idle connections kept per endpoint and worker, at most.
const MAX_IDLE_PER_ENDPOINT: usize = 512;
/// An idle connection older than this is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_mins(1);
/// Pooled connections tried for one request before a fresh one is opened: each failed try is a connection the
/// upstream closed while it sat idle, and the request was never written to it.
const MAX_STALE_TRIES: usize = 4;

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        endpoint: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {endpoint}: no connection within {timeout:?}")]
    ConnectTimeout { endpoint: SocketAddr, timeout: Duration },
    #[error("HTTP/1.1 handshake with {endpoint}: {source}")]
    Handshake {
        endpoint: SocketAddr,
        source: hyper::Error,
    },
    #[error("exchange with {endpoint}: {source}")]
    Exchange {
        endpoint: SocketAddr,
        source: hyper::Error,
    },
}

impl ExchangeError {
    /// The upstream could not be reached at all (as opposed to failing mid-exchange).
    #[must_use]
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::ConnectTimeout { .. })
    }
}

/// The upstream connections of one config generation: one [`WorkerPool`] per worker thread.
pub struct UpstreamPools {
    workers: Vec<Arc<WorkerPool>>,
}

impl UpstreamPools {
    #[must_use]
    pub fn new(workers: usize, connect_timeout: Duration) -> Self {
        Self {
            workers: (0..workers.max(1))
                .map(|_| {
                    Arc::new(WorkerPool {
                        idle: Mutex::new(FxHashMap::default()),
                        connect_timeout,
                    })
                })
                .collect(),
        }
    }

    /// The pool of worker `index` (any index is valid: it wraps around).
    #[must_use]
    pub fn worker(&self, index: usize) -> &Arc<WorkerPool> {
        &self.workers[index % self.workers.len()]
    }
}

struct Idle {
    sender: SendRequest<ProxyBody>,
    since: Instant,
}

/// One worker's idle upstream connections by endpoint. Only its worker thread takes from it, so its lock is
/// never contended; it is a lock rather than a `RefCell` only because the request futures must be `Send`.
pub struct WorkerPool {
    /// Keyed by configured endpoints only, so a fast unkeyed hash is safe.
    idle: Mutex<FxHashMap<SocketAddr, Vec<Idle>>>,
    connect_timeout: Duration,
}

impl WorkerPool {
    /// Sends `req` (origin-form URI, `Host` set) to `endpoint` on an idle connection or a new one. The
    /// response body hands the connection back to this pool once it has been read to the end.
    pub async fn send(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, ExchangeError> {
        for _ in 0..MAX_STALE_TRIES {
            let Some(mut sender) = self.take_idle(endpoint) else {
                break;
            };
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.wrap(endpoint, sender, resp)),
                Err(mut e) => match e.take_message() {
                    // Never written: the connection was closed under us; try the next one.
                    Some(unsent) => req = unsent,
                    None => {
                        return Err(ExchangeError::Exchange {
                            endpoint,
                            source: e.into_error(),
                        });
                    }
                },
            }
        }
        // Boxed: connecting is the cold path, and its future (TCP connect, handshake) would otherwise make this
        // future, and every future holding it, larger and slower to move on the hot path.
        let mut sender = Box::pin(self.connect(endpoint)).await?;
        let exchange = |source| ExchangeError::Exchange { endpoint, source };
        sender.ready().await.map_err(exchange)?;
        let resp = sender.send_request(req).await.map_err(exchange)?;
        Ok(self.wrap(endpoint, sender, resp))
    }

    fn wrap(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        sender: SendRequest<ProxyBody>,
        resp: Response<Incoming>,
    ) -> Response<UpstreamBody> {
        // After a 101 the connection belongs to the upgraded stream, never to the pool.
        let keep = resp.status() != StatusCode::SWITCHING_PROTOCOLS;
        let home = keep.then(|| Home {
            pool: self.clone(),
            endpoint,
            sender,
        });
        resp.map(|inner| UpstreamBody {
            inner,
            home,
            ended: false,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FxHashMap<SocketAddr, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection to `endpoint` that is still open and young enough.
    fn take_idle(&self, endpoint: SocketAddr) -> Option<SendRequest<ProxyBody>> {
        let mut idle = self.lock();
        let stack = idle.get_mut(&endpoint)?;
        let now = Instant::now();
        while let Some(entry) = stack.pop() {
            if !entry.sender.is_closed() && now.saturating_duration_since(entry.since) < IDLE_TIMEOUT {
                return Some(entry.sender);
            }
        }
        None
    }

    fn put_idle(&self, endpoint: SocketAddr, sender: SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.lock();
        let stack = idle.entry(endpoint).or_default();
        // The oldest sit at the bottom of the stack: close those past their time.
        let expired = stack
            .iter()
            .take_while(|e| now.saturating_duration_since(e.since) >= IDLE_TIMEOUT)
            .count();
        stack.drain(..expired);
        if stack.len() < MAX_IDLE_PER_ENDPOINT {
            stack.push(Idle { sender, since: now });
        }
    }

    /// Idle connections to `endpoint` (for tests and diagnostics).
    #[must_use]
    pub fn idle_count(&self, endpoint: SocketAddr) -> usize {
        self.lock().get(&endpoint).map_or(0, Vec::len)
    }

    async fn connect(&self, endpoint: SocketAddr) -> Result<SendRequest<ProxyBody>, ExchangeError> {
        let timeout = self.connect_timeout;
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(endpoint))
            .await
            .map_err(|_| ExchangeError::ConnectTimeout { endpoint, timeout })?
            .map_err(|source| ExchangeError::Connect { endpoint, source })?;
        // Nagle only delays small requests; a failure here changes nothing that matters.
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|source| ExchangeError::Handshake { endpoint, source })?;
        // The connection's I/O runs as its own task on this worker's single-threaded runtime; it ends when the
        // upstream closes the connection or the last `SendRequest` for it is dropped.
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%endpoint, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// Where a connection goes back once its response has been read.
struct Home {
    pool: Arc<WorkerPool>,
    endpoint: SocketAddr,
    sender: SendRequest<ProxyBody>,
}

/// An upstream response body that returns its connection to the pool when it ends. Dropped before the end, the
/// connection still carries the rest of that response, so it is closed instead.
pub struct UpstreamBody {
    inner: Incoming,
    home: Option<Home>,
    ended: bool,
}

impl UpstreamBody {
    fn release(&mut self) {
        if let Some(home) = self.home.take() {
            home.pool.put_idle(home.endpoint, home.sender);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                self.ended = true;
                self.release();
            }
            Poll::Ready(Some(Err(_))) => self.home = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // hyper's server may stop polling a body whose size hint says it is done (`Content-Length` reached)
        // without asking for the end: that body is complete too.
        if self.ended || self.inner.is_end_stream() {
            self.release();
        }
    }
}
