//! Upstream HTTP/1.1 connections, kept alive per worker thread, and the exchange of one request on one.
//!
//! Why not hyper-util's pooled `Client`: its pool is one mutex-guarded map shared by every caller, keyed by a
//! scheme+authority it clones per request, with a checkout future, a connect-or-wait race and a "when idle"
//! hand-back per request. A worker here already owns its connections (thread per core), so the pool is a plain
//! LIFO stack per endpoint behind an uncontended lock, and a connection goes back on it exactly when its
//! response body has been read to the end, i.e. when it can carry the next request.
//!
//! Why not hyper's client connection either: see [`super::h1`]. The exchange runs inside the request's own
//! future, and the response body reads straight from the socket.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll, Waker, ready},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http::{Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use rustc_hash::FxHashMap;
use tokio::{
    io::{AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};

use super::{
    body::{BoxError, ProxyBody},
    h1::{self, BodyEncoding, Decoded, Forwarded, Framing, ResponseHead, WireError},
    timer::Timer,
};

/// Idle connections kept per endpoint and worker, at most.
const MAX_IDLE_PER_ENDPOINT: usize = 512;
/// An idle connection older than this is closed rather than reused.
const IDLE_TIMEOUT_NS: u64 = 60 * 1_000_000_000;
/// Pooled connections tried for one request before a fresh one is opened: each failed try is a connection the
/// upstream closed while it sat idle, and the request was never taken by it.
const MAX_STALE_TRIES: usize = 4;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("connecting to {endpoint}: {source}")]
    Connect { endpoint: SocketAddr, source: io::Error },
    #[error("connecting to {endpoint}: no connection within {timeout:?}")]
    ConnectTimeout { endpoint: SocketAddr, timeout: Duration },
    #[error("exchange with {endpoint}: {source}")]
    Exchange {
        endpoint: SocketAddr,
        source: ExchangeFailure,
    },
}

impl ExchangeError {
    /// The upstream could not be reached at all (as opposed to failing mid-exchange).
    #[must_use]
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::ConnectTimeout { .. })
    }

    /// No response head arrived within the response timeout.
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Self::Exchange {
                source: ExchangeFailure::TimedOut,
                ..
            }
        )
    }
}

/// What went wrong on an open connection.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeFailure {
    #[error("the upstream closed the connection before answering")]
    ClosedBeforeResponse,
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("request body: {0}")]
    RequestBody(#[source] BoxError),
    #[error("no response head within the response timeout")]
    TimedOut,
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

/// An open upstream connection and the bytes read from it but not yet used.
pub struct Conn {
    io: TcpStream,
    buf: BytesMut,
    /// The response deadline of the exchange in progress; taken out while it runs.
    timer: Option<Timer>,
}

struct Idle {
    conn: Conn,
    /// `xdp::sys::monotonic_coarse_ns`: idle ages need no better than its few milliseconds.
    since: u64,
}

/// One worker's idle upstream connections by endpoint. Only its worker thread takes from it, so its lock is
/// never contended; it is a lock rather than a `RefCell` only because the request futures must be `Send`.
pub struct WorkerPool {
    /// Keyed by configured endpoints only, so a fast unkeyed hash is safe.
    idle: Mutex<FxHashMap<SocketAddr, Vec<Idle>>>,
    connect_timeout: Duration,
}

impl WorkerPool {
    /// Sends `parts`, then `appended`, and `body` (`Host` set; it goes out in origin form as HTTP/1.1 whatever its
    /// URI and version) to `endpoint` on an idle connection or a new one, and returns the response once its head has arrived, which
    /// must be by `deadline`. The response body hands the connection back to this pool once it has been read to
    /// the end.
    pub async fn send(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        parts: &http::request::Parts,
        appended: &h1::Appended<'_>,
        body: ProxyBody,
        deadline: tokio::time::Instant,
    ) -> Result<UpstreamResponse, ExchangeError> {
        let encoding = if body.is_end_stream() {
            BodyEncoding::None
        } else {
            body.size_hint()
                .exact()
                .map_or(BodyEncoding::Chunked, BodyEncoding::Length)
        };
        let target = parts
            .uri
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str);
        let mut head = Vec::with_capacity(256 + 64 * (parts.headers.len() + appended.len()));
        h1::encode_request_head(
            &mut head,
            &parts.method,
            target,
            &parts.headers,
            appended,
            encoding,
        );
        let mut tail = (encoding != BodyEncoding::None).then(|| RequestTail::new(body, encoding));
        let mut stale_tries = 0;
        loop {
            let (mut conn, reused) = match self.take_idle(endpoint) {
                Some(conn) => (conn, true),
                // Boxed: connecting is the cold path, and its future would otherwise make this future, and
                // every future holding it, larger and slower to move on the hot path.
                None => (Box::pin(self.connect(endpoint)).await?, false),
            };
            match conn.exchange(&head, &mut tail, &parts.method, deadline).await {
                Ok(head) => return Ok(self.response(endpoint, conn, head, tail)),
                // A connection the upstream closed while it sat idle, and the request can be sent again whole
                // (no body byte was taken yet): try the next one.
                Err(ExchangeFailure::ClosedBeforeResponse)
                    if reused
                        && tail.as_ref().is_none_or(|t| t.sent == 0 && !t.ended)
                        && stale_tries < MAX_STALE_TRIES =>
                {
                    stale_tries += 1;
                }
                Err(source) => return Err(ExchangeError::Exchange { endpoint, source }),
            }
        }
    }

    fn response(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        conn: Conn,
        head: ResponseHead,
        tail: Option<RequestTail>,
    ) -> UpstreamResponse {
        // After a 101 the connection belongs to the upgraded stream, never to the pool.
        let upgraded = head.status == StatusCode::SWITCHING_PROTOCOLS;
        let reusable = head.keep_alive && !upgraded;
        let (map, raw_headers) = match head.forwarded {
            Forwarded::Raw(raw) => (None, Some(raw)),
            Forwarded::Map(map) => (Some(map), None),
        };
        let mut resp = Response::new(Box::new(UpstreamBody {
            conn: Some(conn),
            tail: tail.filter(|t| !t.is_sent()),
            framing: head.framing,
            home: reusable.then(|| (self.clone(), endpoint)),
            raw_headers,
        }));
        *resp.status_mut() = head.status;
        *resp.version_mut() = head.version;
        if let Some(map) = map {
            *resp.headers_mut() = *map;
        }
        resp
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FxHashMap<SocketAddr, Vec<Idle>>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection to `endpoint` that is still open and young enough.
    fn take_idle(&self, endpoint: SocketAddr) -> Option<Conn> {
        let mut idle = self.lock();
        let stack = idle.get_mut(&endpoint)?;
        let now = crate::xdp::sys::monotonic_coarse_ns();
        while let Some(entry) = stack.pop() {
            if now.saturating_sub(entry.since) < IDLE_TIMEOUT_NS && is_quiet(&entry.conn.io) {
                return Some(entry.conn);
            }
        }
        None
    }

    fn put_idle(&self, endpoint: SocketAddr, conn: Conn) {
        let now = crate::xdp::sys::monotonic_coarse_ns();
        let mut idle = self.lock();
        let stack = idle.entry(endpoint).or_default();
        // The oldest sit at the bottom of the stack: close those past their time.
        let expired = stack
            .iter()
            .take_while(|e| now.saturating_sub(e.since) >= IDLE_TIMEOUT_NS)
            .count();
        stack.drain(..expired);
        if stack.len() < MAX_IDLE_PER_ENDPOINT {
            stack.push(Idle { conn, since: now });
        }
    }

    /// Idle connections to `endpoint` (for tests and diagnostics).
    #[must_use]
    pub fn idle_count(&self, endpoint: SocketAddr) -> usize {
        self.lock().get(&endpoint).map_or(0, Vec::len)
    }

    async fn connect(&self, endpoint: SocketAddr) -> Result<Conn, ExchangeError> {
        let timeout = self.connect_timeout;
        let io = tokio::time::timeout(timeout, TcpStream::connect(endpoint))
            .await
            .map_err(|_| ExchangeError::ConnectTimeout { endpoint, timeout })?
            .map_err(|source| ExchangeError::Connect { endpoint, source })?;
        // Nagle only delays small requests; a failure here changes nothing that matters.
        let _ = io.set_nodelay(true);
        Ok(Conn {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            timer: None,
        })
    }
}

/// Whether an idle connection has nothing to say. An idle HTTP/1.1 connection that became readable was closed
/// by the upstream (EOF or reset) or holds bytes no request asked for: either way it must not carry a request.
/// Asks tokio's readiness first, which costs no system call when the socket is quiet.
fn is_quiet(io: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match io.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}

impl Conn {
    /// [`Self::send_and_read_head`] by `deadline`, on the connection's own timer.
    async fn exchange(
        &mut self,
        head: &[u8],
        tail: &mut Option<RequestTail>,
        method: &Method,
        deadline: tokio::time::Instant,
    ) -> Result<ResponseHead, ExchangeFailure> {
        let mut timer = self.timer.take().unwrap_or_else(|| Timer::new(deadline));
        timer.set(deadline);
        let exchanged = tokio::select! {
            biased;
            exchanged = self.send_and_read_head(head, tail, method) => exchanged,
            () = timer.expired() => Err(ExchangeFailure::TimedOut),
        };
        self.timer = Some(timer);
        exchanged
    }

    /// Writes the request head, then sends the body (if any) while the response head is awaited, so an upstream
    /// that answers early (a 413, or an echo that streams back as it reads) is heard. What is left of the body
    /// when the head arrives stays in `tail`, for the response body to finish sending.
    async fn send_and_read_head(
        &mut self,
        head: &[u8],
        tail: &mut Option<RequestTail>,
        method: &Method,
    ) -> Result<ResponseHead, ExchangeFailure> {
        self.io.write_all(head).await.map_err(unanswered)?;
        let mut received = !self.buf.is_empty();
        std::future::poll_fn(|cx| {
            if let Some(t) = tail.as_mut() {
                match t.poll_send(&mut self.io, cx) {
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) | Poll::Pending => {}
                }
            }
            self.poll_head(cx, method, &mut received)
        })
        .await
    }

    /// Reads what the socket has into `buf`; `Ok(0)` is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.buf.reserve(READ_CHUNK);
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Reads until a final response head (interim 1xx other than 101 are skipped).
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        method: &Method,
        received: &mut bool,
    ) -> Poll<Result<ResponseHead, ExchangeFailure>> {
        loop {
            if !self.buf.is_empty() {
                match h1::parse_response_head(&mut self.buf, method)? {
                    Some(head)
                        if head.status.is_informational()
                            && head.status != StatusCode::SWITCHING_PROTOCOLS =>
                    {
                        continue;
                    }
                    Some(head) => return Poll::Ready(Ok(head)),
                    None => {}
                }
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) if !*received => return Poll::Ready(Err(ExchangeFailure::ClosedBeforeResponse)),
                Ok(0) => return Poll::Ready(Err(WireError::Truncated.into())),
                Ok(_) => *received = true,
                Err(e) if !*received && e.kind() == io::ErrorKind::ConnectionReset => {
                    return Poll::Ready(Err(ExchangeFailure::ClosedBeforeResponse));
                }
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }
}

/// A write that fails before any answer means the upstream had closed the connection.
fn unanswered(e: io::Error) -> ExchangeFailure {
    match e.kind() {
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => ExchangeFailure::ClosedBeforeResponse,
        _ => ExchangeFailure::Io(e),
    }
}

/// The part of a request body not yet written, sent by polling alongside the response (like hyper's client,
/// which sends the body and reads the response concurrently).
struct RequestTail {
    body: ProxyBody,
    encoding: BodyEncoding,
    sent: u64,
    /// Encoded bytes of the current frame not yet written.
    pending: Bytes,
    ended: bool,
    /// The upstream stopped reading (it may still answer); nothing more is sent.
    broken: bool,
}

impl RequestTail {
    fn new(body: ProxyBody, encoding: BodyEncoding) -> Self {
        Self {
            body,
            encoding,
            sent: 0,
            pending: Bytes::new(),
            ended: false,
            broken: false,
        }
    }

    /// Whether all of the body went out.
    fn is_sent(&self) -> bool {
        !self.broken && self.is_drained()
    }

    /// Whether there is more to send and the upstream still reads it.
    fn is_sending(&self) -> bool {
        !(self.broken || self.is_drained())
    }

    /// The body ended and its last bytes were written.
    fn is_drained(&self) -> bool {
        self.ended && self.pending.is_empty()
    }

    /// Writes what it can. `Ready(Ok)` once the body is sent or the upstream stopped reading; an error only
    /// for a body the client broke (or that broke its own length).
    fn poll_send(&mut self, io: &mut TcpStream, cx: &mut Context<'_>) -> Poll<Result<(), ExchangeFailure>> {
        loop {
            if self.broken {
                return Poll::Ready(Ok(()));
            }
            while !self.pending.is_empty() {
                match ready!(Pin::new(&mut *io).poll_write(cx, &self.pending)) {
                    Ok(n) if n > 0 => bytes::Buf::advance(&mut self.pending, n),
                    // The upstream may have stopped reading because it has answered: hear it out.
                    _ => {
                        self.broken = true;
                        return Poll::Ready(Ok(()));
                    }
                }
            }
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                None => {
                    self.ended = true;
                    match self.encoding {
                        BodyEncoding::Chunked => self.pending = Bytes::from_static(h1::LAST_CHUNK),
                        BodyEncoding::Length(n) if self.sent != n => {
                            return Poll::Ready(Err(length_mismatch()));
                        }
                        _ => {}
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(ExchangeFailure::RequestBody(e))),
                Some(Ok(frame)) => {
                    // Trailers are not forwarded.
                    let Ok(data) = frame.into_data() else { continue };
                    if data.is_empty() {
                        continue;
                    }
                    self.sent += data.len() as u64;
                    self.pending = match self.encoding {
                        BodyEncoding::Chunked => h1::encode_chunk(&data),
                        BodyEncoding::Length(n) if self.sent > n => {
                            return Poll::Ready(Err(length_mismatch()));
                        }
                        _ => data,
                    };
                }
            }
        }
    }
}

fn length_mismatch() -> ExchangeFailure {
    ExchangeFailure::RequestBody("the request body's length differs from the one it declared".into())
}

/// An upstream's response as the exchange returns it. The body is boxed: the response travels up through
/// several futures' return values, each a copy, and the body is most of its size.
pub type UpstreamResponse = Response<Box<UpstreamBody>>;

/// An upstream response body, read straight from the connection. It returns the connection to the pool when
/// it ends; dropped before the end, the connection still carries the rest of that response, so it is closed.
pub struct UpstreamBody {
    conn: Option<Conn>,
    /// The request body still being sent (an upstream that streams its answer as it reads).
    tail: Option<RequestTail>,
    framing: Framing,
    /// Where the connection goes back, if it may carry another request.
    home: Option<(Arc<WorkerPool>, SocketAddr)>,
    /// The response's headers as the upstream wrote them, when they are not in its header map. Kept here, not
    /// in the response's extensions: those cost three allocations per response.
    raw_headers: Option<h1::RawHeaders>,
}

impl UpstreamBody {
    fn is_complete(&self) -> bool {
        if self.tail.as_ref().is_some_and(RequestTail::is_sending) {
            return false;
        }
        match &self.framing {
            Framing::Empty | Framing::Length(0) => true,
            Framing::Chunked(decoder) => decoder.is_done(),
            Framing::Length(_) | Framing::UntilClose => false,
        }
    }

    /// The body is over: the connection goes home if it may, and holds nothing more.
    fn release(&mut self) {
        let conn = self.conn.take();
        let sent = self.tail.take().is_none_or(|t| t.is_sent());
        if let (Some(conn), Some((pool, endpoint))) = (conn, self.home.take())
            // Bytes after the response are bytes nobody asked for; a request not sent whole desynchronises.
            && conn.buf.is_empty()
            && sent
        {
            pool.put_idle(endpoint, conn);
        }
    }

    fn fail(&mut self, e: impl Into<ExchangeFailure>) -> Poll<Option<Result<Frame<Bytes>, ExchangeFailure>>> {
        self.home = None;
        self.conn = None;
        self.tail = None;
        Poll::Ready(Some(Err(e.into())))
    }

    /// The response's headers still to be written after those in its header map (see [`h1::RawHeaders`]).
    pub fn take_raw_headers(&mut self) -> Option<h1::RawHeaders> {
        self.raw_headers.take()
    }

    /// After a 101: the connection, and what the upstream sent after the head, for the tunnel.
    pub fn into_upgraded(mut self) -> Option<(TcpStream, Bytes)> {
        self.home = None;
        self.conn.take().map(|c| (c.io, c.buf.freeze()))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = ExchangeFailure;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeFailure>>> {
        let this = &mut *self;
        loop {
            if this.is_complete() {
                this.release();
                return Poll::Ready(None);
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if let Some(tail) = this.tail.as_mut()
                && tail.is_sending()
                && let Poll::Ready(Err(e)) = tail.poll_send(&mut conn.io, cx)
            {
                return this.fail(e);
            }
            match &mut this.framing {
                Framing::Length(left) if !conn.buf.is_empty() => {
                    let n = usize::try_from(*left).unwrap_or(usize::MAX).min(conn.buf.len());
                    *left -= n as u64;
                    let data = conn.buf.split_to(n).freeze();
                    if *left == 0 {
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(decoder) => match decoder.decode(&mut conn.buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Done) => continue,
                    Ok(Decoded::NeedMore) => {}
                    Err(e) => return this.fail(e),
                },
                Framing::UntilClose if !conn.buf.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(conn.buf.split().freeze()))));
                }
                _ => {}
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if this.framing == Framing::UntilClose => {
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(WireError::Truncated),
                Ok(_) => {}
                Err(e) => return this.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.is_complete()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ if self.conn.is_none() => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // hyper's server may stop polling a body whose size hint says it is done (`Content-Length` reached)
        // without asking for the end: that body is complete too.
        if self.is_complete() {
            self.release();
        }
    }
}
