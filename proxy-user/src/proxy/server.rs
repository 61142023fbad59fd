//! Listeners: accept, the connection filter (before TLS), the TLS handshake, and serving one connection with
//! the idle timeout, graceful shutdown and the per-source close switch.

use std::{
    convert::Infallible,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf as _, Bytes};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::Instant,
};

use super::{
    Proxy,
    connections::ConnectionGuard,
    front::{self, Served},
    pipeline::{self, ConnInfo},
};

/// A verdict on a new connection, given before any byte of it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionVerdict {
    Accept,
    /// The source is banned (kernel verdict map or the risk engine).
    Banned,
    /// The source already holds `max_connections_per_source` connections.
    TooManyFromSource,
}

/// Where the kernel's verdict meets the proxy: asked on every accept, before TLS. The daemon's integrator
/// implements it over the XDP ban map (a source XDP missed, e.g. banned a moment ago, is still refused here).
pub trait SourceGate: Send + Sync {
    fn is_banned(&self, source: IpAddr) -> bool;
}

/// The accept loop of `[[listener]]` number `index`, until `proxy.shutdown` fires.
pub async fn serve_listener(proxy: Arc<Proxy>, index: usize, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = proxy.shutdown.cancelled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off a little instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let guard = match connection_filter(&proxy, peer) {
            Ok(guard) => guard,
            Err(verdict) => {
                proxy.metrics.rejected_connections.inc();
                tracing::debug!(%peer, ?verdict, "connection refused");
                continue;
            }
        };
        let proxy = proxy.clone();
        tokio::spawn(async move { serve_connection(proxy, index, tcp, peer, guard).await });
    }
}

/// The connection filter phase.
fn connection_filter(proxy: &Arc<Proxy>, peer: SocketAddr) -> Result<ConnectionGuard, ConnectionVerdict> {
    let source = crate::addr::canonical(peer.ip());
    if proxy.source_gate.as_ref().is_some_and(|g| g.is_banned(source)) {
        return Err(ConnectionVerdict::Banned);
    }
    let max = proxy.current.load().limits().max_connections_per_source;
    proxy
        .connections
        .try_register(source, max)
        .ok_or(ConnectionVerdict::TooManyFromSource)
}

async fn serve_connection(
    proxy: Arc<Proxy>,
    index: usize,
    tcp: TcpStream,
    peer: SocketAddr,
    guard: ConnectionGuard,
) {
    let accepted = Instant::now();
    let generation = proxy.current.load_full();
    // Nagle only delays small responses; a failure here changes nothing that matters.
    let _ = tcp.set_nodelay(true);
    let acceptor = generation.tls.get(index).cloned().flatten();
    let conn = Arc::new(ConnInfo::new(proxy.clone(), peer, acceptor.is_some(), guard));
    let header_read = generation.timeouts().header_read;
    match acceptor {
        None => {
            drive(generation, ClientIo::new(tcp), conn, Front::Http1(accepted)).await;
        }
        Some(acceptor) => {
            let handshake = tokio::select! {
                r = tokio::time::timeout(header_read, acceptor.accept(tcp)) => r,
                () = conn.registration.closer.closed() => return,
            };
            match handshake {
                Ok(Ok(tls)) => {
                    // A client that chose HTTP/2 would only be handed over at its preface.
                    let front = if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        Front::Hyper
                    } else {
                        Front::Http1(accepted)
                    };
                    drive(generation, ClientIo::new(tls), conn, front).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

/// Who serves a connection's first request.
enum Front {
    /// The HTTP/1.1 fast path (`front.rs`), handing over to hyper at the first request it does not serve; the
    /// connection was accepted at this instant.
    Http1(Instant),
    Hyper,
}

async fn drive<I>(
    generation: Arc<super::generation::Generation>,
    io: ClientIo<I>,
    conn: Arc<ConnInfo>,
    front: Front,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = match front {
        Front::Http1(accepted) => match front::serve(&generation, io, &conn, accepted).await {
            Served::Closed => return,
            Served::Handoff { mut io, unread } => {
                io.unread = unread;
                io
            }
        },
        Front::Hyper => io,
    };
    let activity = io.activity.clone();
    let svc_conn = conn.clone();
    let service = service_fn(move |req| {
        let conn = svc_conn.clone();
        async move { Ok::<_, Infallible>(pipeline::handle(conn, req).await.into_response()) }
    });
    let connection = generation
        .server
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let idle = generation.timeouts().idle;
    let mut ticker = tokio::time::interval((idle / 4).max(Duration::from_millis(100)));
    let mut draining = false;
    // The connection is idle from the first tick that saw no I/O since the one before (within one tick).
    let mut seen_ops = activity.ops();
    let mut quiet_since = Instant::now();
    // Made once: a wait registers its task on the first poll only.
    let closed = conn.registration.closer.closed();
    let shutdown = conn.registration.closer.draining();
    tokio::pin!(closed, shutdown);
    loop {
        tokio::select! {
            biased;
            res = connection.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(peer = %conn.peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = &mut closed => {
                tracing::debug!(peer = %conn.peer, "connection closed by the registry");
                return;
            }
            () = &mut shutdown, if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            now = ticker.tick(), if !draining => {
                let ops = activity.ops();
                if ops != seen_ops {
                    seen_ops = ops;
                    quiet_since = now;
                } else if now.saturating_duration_since(quiet_since) >= idle {
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Counts the reads and writes that moved bytes on a connection. The idle check compares counts between ticks
/// instead of stamping every I/O with the time: a clock read per `read`/`write` is a cost every request pays,
/// while the idle timeout only needs a resolution of one tick.
struct Activity {
    ops: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            ops: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        // One writer (the connection's own I/O), so a load and a store suffice; no read-modify-write needed.
        self.ops.store(
            self.ops.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
    }

    fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }
}

/// A client connection's stream (after TLS): it records activity for hyper's idle timeout, and its first reads
/// return `unread`, the bytes the fast path read before handing the connection to hyper.
struct ClientIo<T> {
    inner: T,
    activity: Arc<Activity>,
    unread: Bytes,
}

impl<T> ClientIo<T> {
    fn new(inner: T) -> Self {
        Self {
            inner,
            activity: Arc::new(Activity::new()),
            unread: Bytes::new(),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ClientIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread[..n]);
            self.unread.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ClientIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
