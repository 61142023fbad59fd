//! The client side of an HTTP/1.1 connection, for the requests almost every API call is: HTTP/1.1, no body
//! (or `Content-Length: 0`), no upgrade, no `Expect`. It parses the head with `httparse`, runs the same
//! [`pipeline::handle`] as every other request, and writes the response itself, inside the connection's own
//! task.
//!
//! Why not hyper's server for these too: its HTTP/1 dispatcher was the largest single cost of a proxied request
//! (about 14k of 31.6k instructions, `cargo xtask bench proxy-instructions`), most of it in generic state
//! machinery a body-less request never needs.
//!
//! Everything else is hyper's: the first head this module does not serve (a body, an upgrade, HTTP/1.0, the
//! h2c preface, a malformed or oversized head) hands the connection over with the bytes already read, and hyper
//! serves it from that head on, with its own limits and error answers. So every 400, 431 and 505 comes from one
//! place, and this module never guesses at a message it does not fully understand.

use std::{
    cell::RefCell,
    io,
    pin::Pin,
    sync::Arc,
    task::Poll,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::{Bytes, BytesMut};
use http::Method;
use http_body::{Body as _, Frame};
use http_body_util::{BodyExt as _, Empty};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    time::Instant,
};

use super::{
    body::{BoxError, ProxyBody},
    generation::Generation,
    h1::{self, RequestHead, ResponseFraming},
    pipeline::{self, Answer, ConnInfo},
    timer::Timer,
};

/// How the fast path left a connection.
pub enum Served<I> {
    /// Closed: by the client, a timeout, the connection registry, shutdown, or a response that could not be
    /// framed for reuse.
    Closed,
    /// A request this module does not serve is at the front of `unread`: hyper takes the connection from there.
    Handoff { io: I, unread: Bytes },
}

/// Spare room made before each read of a request head.
const READ_RESERVE: usize = 4096;
/// Response bytes gathered before a write, so a head and a small body leave in one `write`.
const WRITE_GATHER: usize = 16 * 1024;
/// The response buffer's first size: a typical API answer's head and body.
const OUT_INITIAL: usize = 1024;
/// How long a closing connection may take to say goodbye (TLS `close_notify`, the FIN).
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves requests on `io` until it closes or a request needs hyper. `accepted` starts the first head's
/// `header_read` clock.
pub async fn serve<I>(
    generation: &Generation,
    mut io: I,
    conn: &Arc<ConnInfo>,
    accepted: Instant,
) -> Served<I>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let limits = generation.limits();
    let (max_headers, max_head) = (limits.max_headers, limits.max_header_bytes);
    let (header_read, idle) = (generation.timeouts().header_read, generation.timeouts().idle);
    let mut buf = BytesMut::with_capacity(READ_RESERVE);
    // Grows to what the connection's responses need (at most twice `WRITE_GATHER`) and is reused: an idle
    // keep-alive connection should not hold 16 KiB it has never needed.
    let mut out = BytesMut::with_capacity(OUT_INITIAL);
    let mut timer = Timer::new(accepted + header_read);
    // The first head is on the `header_read` clock from accept; later ones from their first partial read.
    let mut head_clock = true;
    let way_out = &conn.registration.closer;
    let closed = way_out.closed();
    let drain = way_out.draining();
    tokio::pin!(closed, drain);
    // Each `select!` below polls its main future first, as most are ready at once. A close that lands while
    // they are is seen here, between requests.
    while !way_out.is_closed() {
        let simple = loop {
            let parsed = if buf.is_empty() {
                RequestHead::Partial
            } else {
                h1::parse_simple_request(&mut buf, max_headers, max_head)
            };
            match parsed {
                RequestHead::Simple(simple) => break simple,
                RequestHead::Other => {
                    return Served::Handoff {
                        io,
                        unread: buf.freeze(),
                    };
                }
                RequestHead::Partial if buf.is_empty() => {
                    if way_out.is_draining() {
                        close(io).await;
                        return Served::Closed;
                    }
                }
                // Only a head that arrives in pieces pays for moving the timer: the slow-header defence.
                RequestHead::Partial if !head_clock => {
                    head_clock = true;
                    timer.set(Instant::now() + header_read);
                }
                RequestHead::Partial => {}
            }
            if buf.capacity() - buf.len() < READ_RESERVE / 4 {
                buf.reserve(READ_RESERVE);
            }
            tokio::select! {
                biased;
                read = io.read_buf(&mut buf) => match read {
                    Ok(0) => return Served::Closed,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(peer = %conn.peer, error = %e, "client connection failed");
                        return Served::Closed;
                    }
                },
                () = &mut closed => return Served::Closed,
                // Wakes the wait above so that an idle connection closes; a head in progress is finished first.
                () = &mut drain, if !way_out.is_draining() => {}
                () = timer.expired() => {
                    tracing::debug!(
                        peer = %conn.peer, partial_head = !buf.is_empty(),
                        "closing the connection: header read or idle timeout"
                    );
                    return Served::Closed;
                }
            }
        };
        let head_only = simple.request.method() == Method::HEAD;
        let request = simple.request.map(|()| Empty::<Bytes>::new());
        let answer = tokio::select! {
            biased;
            answer = pipeline::handle(conn.clone(), request) => answer,
            () = &mut closed => return Served::Closed,
        };
        let keep_alive = simple.keep_alive && !way_out.is_draining();
        let written = tokio::select! {
            biased;
            written = write_response(&mut io, &mut out, answer, head_only, keep_alive, &mut timer, idle) => written,
            () = &mut closed => return Served::Closed,
        };
        match written {
            Ok(true) => head_clock = false,
            Ok(false) => {
                close(io).await;
                return Served::Closed;
            }
            Err(e) => {
                tracing::debug!(peer = %conn.peer, error = %e, "response not delivered; closing the connection");
                return Served::Closed;
            }
        }
    }
    Served::Closed
}

/// Says goodbye (TLS `close_notify`, the FIN) within [`CLOSE_GRACE`].
async fn close(mut io: impl AsyncWrite + Unpin) {
    let _ = tokio::time::timeout(CLOSE_GRACE, io.shutdown()).await;
}

/// Writes one response. `Ok(true)`: the connection may carry another request. Each write, and each wait for
/// the next body frame, may take up to `idle`.
async fn write_response<I: AsyncWrite + Unpin>(
    io: &mut I,
    out: &mut BytesMut,
    answer: Answer,
    head_only: bool,
    keep_alive: bool,
    timer: &mut Timer,
    idle: Duration,
) -> io::Result<bool> {
    let (parts, mut body) = answer.response.into_parts();
    let status = parts.status;
    let framing = if h1::is_bodiless(head_only, status) {
        ResponseFraming::Bodiless
    } else if body.is_end_stream() {
        ResponseFraming::Length(0)
    } else {
        body.size_hint()
            .exact()
            .map_or(ResponseFraming::Chunked, ResponseFraming::Length)
    };
    out.clear();
    DATE.with_borrow_mut(|date| {
        let headers = h1::ResponseHeaders {
            map: &parts.headers,
            extra: Some((&answer.request_id.0, &answer.request_id.1)),
            raw: answer.raw_headers.as_ref(),
        };
        h1::encode_response_head(out, status, &headers, framing, keep_alive, date.now());
    });
    drop(parts);
    let mut w = Writer { io, out, timer, idle };
    let complete = match framing {
        // One poll lets a finished upstream body hand its connection back to the pool; anything it would have
        // sent is not for the wire.
        ResponseFraming::Bodiless => {
            drop(poll_once(&mut body).await);
            true
        }
        ResponseFraming::Length(declared) => {
            let mut left = declared;
            loop {
                match w.next_data(&mut body).await? {
                    Next::Data(data) => {
                        // Longer than declared: the extra bytes would be read as the next response.
                        let Some(rest) = left.checked_sub(data.len() as u64) else {
                            break false;
                        };
                        left = rest;
                        w.push(&data).await?;
                    }
                    Next::End => break left == 0,
                    Next::Failed => break false,
                }
            }
        }
        ResponseFraming::Chunked => loop {
            match w.next_data(&mut body).await? {
                Next::Data(data) if data.len() <= WRITE_GATHER => {
                    h1::encode_chunk_into(w.out, &data);
                    if w.out.len() >= WRITE_GATHER {
                        w.flush().await?;
                    }
                }
                Next::Data(data) => {
                    h1::encode_chunk_size(w.out, data.len());
                    w.push(&data).await?;
                    w.out.extend_from_slice(b"\r\n");
                }
                Next::End => {
                    w.out.extend_from_slice(h1::LAST_CHUNK);
                    break true;
                }
                // Ends without the last chunk, so the client sees the body truncated.
                Next::Failed => break false,
            }
        },
    };
    // The body's end writes the access line; the last write is the client's business.
    drop(body);
    w.flush().await?;
    Ok(keep_alive && complete)
}

/// What a response body gave next.
enum Next {
    Data(Bytes),
    End,
    /// The body failed part-way: the response cannot be completed, and the connection not reused.
    Failed,
}

/// A response on its way out: gathered bytes, and the connection's timer bounding every wait by `idle`.
struct Writer<'a, I> {
    io: &'a mut I,
    out: &'a mut BytesMut,
    timer: &'a mut Timer,
    idle: Duration,
}

impl<I: AsyncWrite + Unpin> Writer<'_, I> {
    /// The next data frame of `body` (trailers are dropped; HTTP/1.1 clients rarely read them). What is gathered
    /// is written first if the body has nothing ready.
    async fn next_data(&mut self, body: &mut ProxyBody) -> io::Result<Next> {
        loop {
            let frame = if let Some(frame) = poll_once(body).await {
                frame
            } else {
                self.flush().await?;
                self.timer.set(Instant::now() + self.idle);
                tokio::select! {
                    biased;
                    frame = body.frame() => frame,
                    () = self.timer.expired() => {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "response body stalled for the idle timeout"));
                    }
                }
            };
            match frame.map(|f| f.map(Frame::into_data)) {
                None => return Ok(Next::End),
                Some(Ok(Ok(data))) if data.is_empty() => {}
                Some(Ok(Ok(data))) => return Ok(Next::Data(data)),
                Some(Ok(Err(_trailers))) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "response body failed part-way; closing the connection");
                    return Ok(Next::Failed);
                }
            }
        }
    }

    /// Gathers `data`, or, if it does not fit, writes what is gathered and then `data` itself (no copy).
    async fn push(&mut self, data: &[u8]) -> io::Result<()> {
        if self.out.len() + data.len() <= WRITE_GATHER {
            self.out.extend_from_slice(data);
            return Ok(());
        }
        self.flush().await?;
        self.write(data).await
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        // Taken out for the write and put back, so its capacity is reused.
        let out = std::mem::take(&mut *self.out);
        let written = self.write(&out).await;
        *self.out = out;
        self.out.clear();
        written
    }

    /// Writes and flushes `data` (TLS holds written bytes until flushed); a client that reads nothing for `idle`
    /// is cut. That deadline stays set afterwards, as the idle timeout before the next request.
    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.timer.set(Instant::now() + self.idle);
        let io = &mut *self.io;
        let write = async {
            io.write_all(data).await?;
            io.flush().await
        };
        tokio::select! {
            biased;
            written = write => written,
            () = self.timer.expired() => {
                Err(io::Error::new(io::ErrorKind::TimedOut, "the client read nothing for the idle timeout"))
            }
        }
    }
}

/// `body`'s next frame if it is ready now (`None` if not). The body is polled with the task's real waker, so a
/// later `frame().await` is woken as usual.
fn poll_once(
    body: &mut ProxyBody,
) -> impl Future<Output = Option<Option<Result<Frame<Bytes>, BoxError>>>> + '_ {
    std::future::poll_fn(move |cx| {
        Poll::Ready(match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(frame) => Some(frame),
            Poll::Pending => None,
        })
    })
}

thread_local! {
    static DATE: RefCell<DateCache> = const { RefCell::new(DateCache { second: 0, text: Vec::new() }) };
}

/// The `Date` header value (RFC 9110 §6.6.1), formatted once per second per worker thread.
struct DateCache {
    second: u64,
    text: Vec<u8>,
}

impl DateCache {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text = httpdate::fmt_http_date(now).into_bytes();
        }
        &self.text
    }
}
