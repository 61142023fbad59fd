//! The HTTP/1.1 wire format the proxy speaks itself. Upstream: the request head it writes, the response head it
//! parses (with `httparse`, the parser hyper uses) and the response body's framing (RFC 9112 §6), including
//! chunked decoding. Client side (`front.rs`): the simple request heads it serves and the response heads it
//! writes.
//!
//! Why not hyper's client connection: it runs as a task of its own, so every request crosses tasks twice (a
//! channel to it, a oneshot back) and every body frame once more; this client works inside the request's own
//! future. That halves the instructions the upstream side of a proxied request costs (see `cargo xtask bench
//! proxy-instructions`).
//!
//! Anything this module cannot frame exactly (a transfer coding other than `chunked`, conflicting
//! `Content-Length`s) is an error, never a guess: a guessed framing is how a connection desynchronises.

use bytes::{Buf as _, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use smallvec::SmallVec;

/// A response head larger than this is refused (hyper's client allowed ~400 KiB; no sane upstream needs that).
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Trailer section and chunk-extension bytes tolerated per chunked body; they are read and dropped.
const MAX_CHUNK_OVERHEAD: usize = 16 * 1024;

/// A malformed or unframeable upstream message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("response head: {0}")]
    Head(httparse::Error),
    #[error("response head longer than {MAX_RESPONSE_HEAD} bytes")]
    HeadTooLarge,
    #[error("response head has more than {MAX_RESPONSE_HEADERS} headers")]
    TooManyHeaders,
    #[error("invalid header in the response head")]
    BadHeader,
    #[error("unusable Content-Length")]
    BadContentLength,
    #[error("transfer coding other than `chunked`")]
    UnsupportedTransferCoding,
    #[error("malformed chunked body")]
    BadChunk,
    #[error("connection closed before the message was complete")]
    Truncated,
}

/// How a response body is delimited (RFC 9112 §6.3), decided from its head and the request it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// No body: `HEAD`, 1xx, 204, 304 (and `Content-Length: 0`).
    Empty,
    /// This many bytes remain.
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Until the upstream closes the connection (which then cannot be reused).
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The upstream may keep the connection open after this response.
    pub keep_alive: bool,
}

/// Parses one response head off the front of `buf`. `Ok(None)`: not complete yet (read more). Interim 1xx
/// responses other than 101 are returned too; the caller skips them.
pub fn parse_response_head(
    buf: &mut BytesMut,
    request_method: &Method,
) -> Result<Option<ResponseHead>, WireError> {
    // Uninitialised slots: zeroing 128 of them cost more than the parse itself.
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_RESPONSE_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_RESPONSE_HEAD => {
            return Err(WireError::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(WireError::TooManyHeaders),
        Err(e) => return Err(WireError::Head(e)),
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(WireError::Head(httparse::Error::Status))?;
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // httparse's slices borrow `buf`; their offsets outlive that borrow, so the head can be split off and its
    // values kept as slices of it (as hyper keeps them: no copy per header).
    let base = buf.as_ptr() as usize;
    // Filled in place: `collect` would move the 4 KiB array once more.
    let mut spans: SmallVec<[HeaderSpan; MAX_RESPONSE_HEADERS]> = SmallVec::new();
    for h in parsed.headers.iter() {
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        spans.push(HeaderSpan {
            name: (name, name + h.name.len()),
            value: (value, value + h.value.len()),
        });
    }
    let head = buf.split_to(len).freeze();
    // Room for the request id the pipeline adds, so that adding it never regrows the map.
    let mut headers = HeaderMap::with_capacity(spans.len() + 2);
    let mut lengths = LengthHeaders::default();
    let mut transfer_encoding = false;
    let mut close = false;
    let mut keep_alive = false;
    for span in &spans {
        let name = http::HeaderName::from_bytes(&head[span.name.0..span.name.1])
            .map_err(|_| WireError::BadHeader)?;
        let value = HeaderValue::from_maybe_shared(head.slice(span.value.0..span.value.1))
            .map_err(|_| WireError::BadHeader)?;
        if name == header::CONTENT_LENGTH {
            lengths.add(value.as_bytes())?;
        } else if name == header::TRANSFER_ENCODING {
            // Only `chunked`, alone, is framed; anything else would be a guess.
            if transfer_encoding || !value.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(WireError::UnsupportedTransferCoding);
            }
            transfer_encoding = true;
            // The framing is this hop's: whoever sends the body on decides its own.
            continue;
        } else if name == header::CONNECTION {
            let mut names_others = false;
            for token in value.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                let is_close = token.eq_ignore_ascii_case(b"close");
                let is_keep_alive = token.eq_ignore_ascii_case(b"keep-alive");
                close |= is_close;
                keep_alive |= is_keep_alive;
                names_others |= !(is_close || is_keep_alive);
            }
            // Only about this hop, and never forwarded: kept only when it names other headers the response
            // phase must remove with it (or an upgrade the tunnel needs).
            if !names_others {
                continue;
            }
        }
        headers.append(name, value);
    }
    let no_body = *request_method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::Empty
    } else if transfer_encoding {
        // RFC 9112 §6.3: with both, `Transfer-Encoding` wins and the length must not be forwarded.
        headers.remove(header::CONTENT_LENGTH);
        Framing::Chunked(ChunkedDecoder::default())
    } else {
        match lengths.value {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    // HTTP/1.1 persists unless told to close; HTTP/1.0 only when told to keep alive.
    let persistent = !close && (version == Version::HTTP_11 || keep_alive);
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        keep_alive: persistent && framing != Framing::UntilClose,
        framing,
    }))
}

/// Where one header's name and value sit in the head.
struct HeaderSpan {
    name: (usize, usize),
    value: (usize, usize),
}

/// Headers a response head may carry (hyper's client allowed 100); httparse's slots for them live on the stack.
pub const MAX_RESPONSE_HEADERS: usize = 128;

/// Every `Content-Length` of a message must agree (RFC 9112 §6.3 item 5); a list of equal values counts as one.
#[derive(Default)]
struct LengthHeaders {
    value: Option<u64>,
}

impl LengthHeaders {
    fn add(&mut self, raw: &[u8]) -> Result<(), WireError> {
        for part in raw.split(|&b| b == b',') {
            let n = parse_decimal(part.trim_ascii()).ok_or(WireError::BadContentLength)?;
            if self.value.is_some_and(|v| v != n) {
                return Err(WireError::BadContentLength);
            }
            self.value = Some(n);
        }
        Ok(())
    }
}

/// Digits only (no sign, no spaces, no empty string), at most 19 of them (no overflow).
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// How the request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEncoding {
    None,
    Length(u64),
    Chunked,
}

/// Writes `method target HTTP/1.1`, the headers, and the framing header `body` calls for (any framing header
/// among `headers` is dropped first: the framing is this function's to decide). Header names and values cannot
/// hold CR or LF (`http` refuses them), so nothing here can split the head.
pub fn encode_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    body: BodyEncoding,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match body {
        // A body-less POST/PUT/PATCH still says so: some servers wait for a length otherwise.
        BodyEncoding::None if matches!(*method, Method::POST | Method::PUT | Method::PATCH) => {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        BodyEncoding::None => {}
        BodyEncoding::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        BodyEncoding::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// One chunk of a chunked body carrying `data` (not empty: an empty chunk would end the body).
#[must_use]
pub fn encode_chunk(data: &[u8]) -> Bytes {
    let mut chunk = BytesMut::with_capacity(data.len() + 20);
    encode_chunk_into(&mut chunk, data);
    chunk.freeze()
}

/// The end of a chunked body without trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Incremental decoder of a chunked body (RFC 9112 §7.1). Chunk extensions and trailers are read and dropped,
/// within [`MAX_CHUNK_OVERHEAD`] bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// Size digits seen (state `Size`) or data bytes left (state `Data`).
    size: u64,
    digits: u8,
    overhead: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    /// After the size: optional whitespace and extensions, up to CR.
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line, or of the final empty line.
    TrailerStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
}

/// One step of decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// The buffer holds no complete next step: read more.
    NeedMore,
    /// The body is over; what follows in the buffer belongs to the next message.
    Done,
}

impl ChunkedDecoder {
    /// Decodes from the front of `buf`, consuming what it uses.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, WireError> {
        loop {
            if self.state == ChunkState::Done {
                return Ok(Decoded::Done);
            }
            if self.state == ChunkState::Data {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = usize::try_from(self.size).unwrap_or(usize::MAX).min(buf.len());
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = ChunkState::DataCr;
                }
                return Ok(Decoded::Data(buf.split_to(n).freeze()));
            }
            let Some(&b) = buf.first() else {
                return Ok(Decoded::NeedMore);
            };
            buf.advance(1);
            self.step(b)?;
        }
    }

    /// Whether the body has ended.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    fn step(&mut self, b: u8) -> Result<(), WireError> {
        use ChunkState as S;
        self.state = match (self.state, b) {
            (S::Size, _) if b.is_ascii_hexdigit() => {
                if self.digits >= 15 {
                    return Err(WireError::BadChunk);
                }
                self.digits += 1;
                self.size = self.size * 16 + u64::from(hex_value(b));
                S::Size
            }
            (S::Size, b';' | b' ' | b'\t') if self.digits > 0 => self.overhead(S::Extension)?,
            (S::Size, b'\r') if self.digits > 0 => S::SizeLf,
            (S::Extension, b'\r') => S::SizeLf,
            // Extensions are quoted-string or token text: no controls besides HTAB.
            (S::Extension, _) if b == b'\t' || !b.is_ascii_control() => self.overhead(S::Extension)?,
            (S::SizeLf, b'\n') => {
                self.digits = 0;
                if self.size == 0 { S::TrailerStart } else { S::Data }
            }
            (S::DataCr, b'\r') => S::DataLf,
            (S::DataLf, b'\n') => S::Size,
            (S::TrailerStart, b'\r') => S::FinalLf,
            (S::TrailerStart | S::TrailerLine, _) if b == b'\t' || !b.is_ascii_control() => {
                self.overhead(S::TrailerLine)?
            }
            (S::TrailerLine, b'\r') => S::TrailerLf,
            (S::TrailerLf, b'\n') => S::TrailerStart,
            (S::FinalLf, b'\n') => S::Done,
            _ => return Err(WireError::BadChunk),
        };
        Ok(())
    }

    fn overhead(&mut self, next: ChunkState) -> Result<ChunkState, WireError> {
        self.overhead += 1;
        if self.overhead > MAX_CHUNK_OVERHEAD {
            return Err(WireError::BadChunk);
        }
        Ok(next)
    }
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// A request head the client-facing fast path serves itself (see `front.rs`).
#[derive(Debug)]
pub struct SimpleRequest {
    pub request: http::Request<()>,
    /// No `Connection: close` from the client.
    pub keep_alive: bool,
}

/// What the front of a client connection's buffer holds.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "made once per request and matched at once; boxing would add an allocation per request"
)]
pub enum RequestHead {
    /// Not a whole head yet, and not over the size limit: read more.
    Partial,
    /// An HTTP/1.1 request without a body, upgrade or expectation, split off the buffer.
    Simple(SimpleRequest),
    /// Anything else (another version, a body, an upgrade, `Expect`, a target not in origin form, too many or
    /// too large headers, a malformed head). The buffer is left untouched, for hyper to read from its start:
    /// everything rare, and every error answer, stays hyper's.
    Other,
}

/// Request headers the fast path parses on the stack; a head with more goes to hyper, which applies the
/// configured `max_headers` (its own default is this same 100).
pub const MAX_SIMPLE_REQUEST_HEADERS: usize = 100;

/// Parses the request head at the front of `buf` if the fast path may serve it. `max_headers` and `max_head`
/// are the configured limits; a head over either is [`RequestHead::Other`], so hyper answers 431.
pub fn parse_simple_request(buf: &mut BytesMut, max_headers: usize, max_head: usize) -> RequestHead {
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_SIMPLE_REQUEST_HEADERS];
    let slots = &mut slots[..max_headers.min(MAX_SIMPLE_REQUEST_HEADERS)];
    let mut parsed = httparse::Request::new(&mut []);
    let len =
        match httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut parsed, buf, slots) {
            Ok(httparse::Status::Complete(len)) if len <= max_head => len,
            Ok(httparse::Status::Partial) if buf.len() < max_head => return RequestHead::Partial,
            _ => return RequestHead::Other,
        };
    let (Some(method), Some(path), Some(1)) = (parsed.method, parsed.path, parsed.version) else {
        return RequestHead::Other;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return RequestHead::Other;
    };
    if method == Method::CONNECT || !path.starts_with('/') {
        return RequestHead::Other;
    }
    let base = buf.as_ptr() as usize;
    let path_span = (
        path.as_ptr() as usize - base,
        path.as_ptr() as usize - base + path.len(),
    );
    // Spans on the stack, uninitialised until pushed: this runs for every request, and heap vectors were a
    // tenth of its cost.
    let mut spans: SmallVec<[HeaderSpan; MAX_SIMPLE_REQUEST_HEADERS]> = SmallVec::new();
    let mut keep_alive = true;
    for h in parsed.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value.trim_ascii();
        let refused = if name.eq_ignore_ascii_case(b"content-length") {
            // Only an explicit empty body is served here; any other length means a body to stream.
            value != b"0"
        } else if name.eq_ignore_ascii_case(b"connection") {
            let mut upgrade = false;
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                keep_alive &= !token.eq_ignore_ascii_case(b"close");
                upgrade |= token.eq_ignore_ascii_case(b"upgrade");
            }
            upgrade
        } else {
            name.eq_ignore_ascii_case(b"transfer-encoding")
                || name.eq_ignore_ascii_case(b"upgrade")
                || name.eq_ignore_ascii_case(b"expect")
        };
        if refused {
            return RequestHead::Other;
        }
        let name_at = h.name.as_ptr() as usize - base;
        let value_at = h.value.as_ptr() as usize - base;
        spans.push(HeaderSpan {
            name: (name_at, name_at + h.name.len()),
            value: (value_at, value_at + h.value.len()),
        });
    }
    let head = buf.split_to(len).freeze();
    let Some((uri, headers)) = request_parts(&head, path_span, &spans) else {
        // Rare (the `http` crate refuses what httparse let through): hyper gets the head back, as it came.
        let mut whole = BytesMut::with_capacity(head.len() + buf.len());
        whole.extend_from_slice(&head);
        whole.extend_from_slice(buf);
        *buf = whole;
        return RequestHead::Other;
    };
    let mut request = http::Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    RequestHead::Simple(SimpleRequest { request, keep_alive })
}

/// Room left in a request's header map for what the pipeline adds (forwarding headers, the request id, the
/// subject), so that adding them never regrows it.
const ADDED_REQUEST_HEADERS: usize = 6;

/// The target and headers of a split-off request head, as slices of it (no copies).
fn request_parts(head: &Bytes, path: (usize, usize), spans: &[HeaderSpan]) -> Option<(http::Uri, HeaderMap)> {
    let uri = http::Uri::from_maybe_shared(head.slice(path.0..path.1)).ok()?;
    let mut headers = HeaderMap::with_capacity(spans.len() + ADDED_REQUEST_HEADERS);
    for span in spans {
        let name = http::HeaderName::from_bytes(&head[span.name.0..span.name.1]).ok()?;
        let value = HeaderValue::from_maybe_shared(head.slice(span.value.0..span.value.1)).ok()?;
        headers.append(name, value);
    }
    Some((uri, headers))
}

/// How the fast path frames a response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFraming {
    /// No body on the wire (`HEAD`, 1xx, 204, 304): the head's own `Content-Length`, if any, is kept.
    Bodiless,
    Length(u64),
    Chunked,
}

/// Writes a response's status line and headers, with the framing header `framing` calls for (any framing
/// header among `headers` is dropped unless the response is bodiless), a `date` if it has none, and
/// `connection: close` unless `keep_alive`.
pub fn encode_response_head(
    out: &mut BytesMut,
    status: StatusCode,
    headers: &HeaderMap,
    framing: ResponseFraming,
    keep_alive: bool,
    date: &[u8],
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if (name == header::CONTENT_LENGTH && framing != ResponseFraming::Bodiless)
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        ResponseFraming::Bodiless => {}
        ResponseFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        ResponseFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends one chunk of a chunked body carrying `data` (not empty: an empty chunk would end the body).
pub fn encode_chunk_into(out: &mut BytesMut, data: &[u8]) {
    debug_assert!(!data.is_empty());
    encode_chunk_size(out, data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends a chunk's size line; the caller sends `len` data bytes and a CRLF after it.
pub fn encode_chunk_size(out: &mut BytesMut, len: usize) {
    let mut digits = [0u8; 16];
    let mut n = len;
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str, method: &Method) -> Result<Option<ResponseHead>, WireError> {
        parse_response_head(&mut BytesMut::from(raw), method)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let get = Method::GET;
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", &get)
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(5), true));
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            &get,
        )
        .unwrap()
        .unwrap();
        assert!(matches!(h.framing, Framing::Chunked(_)));
        assert!(!h.headers.contains_key(header::CONTENT_LENGTH));
        let h = head("HTTP/1.1 200 OK\r\n\r\n", &get).unwrap().unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", &Method::HEAD)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Empty);
        let h = head("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", &get)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Empty);
        let h = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\nConnection: close\r\n\r\n",
            &get,
        )
        .unwrap()
        .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(7), false));
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", &get)
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = head(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
            &get,
        )
        .unwrap()
        .unwrap();
        assert!(h.keep_alive);
    }

    #[test]
    fn unframeable_heads_are_errors_not_guesses() {
        let get = Method::GET;
        for raw in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
        ] {
            assert!(head(raw, &get).is_err(), "{raw:?}");
        }
        assert!(matches!(head("HTTP/1.1 200 OK\r\nX: y\r\n", &get), Ok(None)));
        let big = format!("HTTP/1.1 200 OK\r\nX: {}\r\n", "a".repeat(MAX_RESPONSE_HEAD));
        assert_eq!(head(&big, &get).err(), Some(WireError::HeadTooLarge));
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_RESPONSE_HEADERS + 1)
        );
        assert_eq!(head(&many, &get).err(), Some(WireError::TooManyHeaders));
    }

    #[test]
    fn the_head_leaves_the_body_in_the_buffer() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nhiNEXT");
        let h = parse_response_head(&mut buf, &Method::GET).unwrap().unwrap();
        assert_eq!(h.headers["x-a"], "b");
        assert_eq!(&buf[..], b"hiNEXT");
    }

    fn decode_all(input: &[&[u8]]) -> Result<(Vec<u8>, Vec<u8>), WireError> {
        let mut dec = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for (i, piece) in input.iter().enumerate() {
            buf.extend_from_slice(piece);
            loop {
                match dec.decode(&mut buf)? {
                    Decoded::Data(d) => out.extend_from_slice(&d),
                    Decoded::NeedMore => break,
                    Decoded::Done => {
                        let mut rest = buf.to_vec();
                        rest.extend(input[i + 1..].iter().copied().flatten());
                        return Ok((out, rest));
                    }
                }
            }
        }
        Err(WireError::Truncated)
    }

    #[test]
    fn chunked_decodes_across_any_split() {
        let wire: &[u8] = b"5;ext=\"a b\"\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        for split in 0..wire.len() {
            let (a, b) = wire.split_at(split);
            let (body, rest) = decode_all(&[a, b]).unwrap();
            assert_eq!(body, b"hello0123456789", "split at {split}");
            assert_eq!(rest, b"NEXT");
        }
        let bytewise: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(decode_all(&bytewise).unwrap().0, b"hello0123456789");
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for wire in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloX\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"1000000000000000\r\n",
            b"0\r\nX: 1\n\r\n",
        ] {
            assert!(
                decode_all(&[wire]).is_err_and(|e| e == WireError::BadChunk),
                "{wire:?}"
            );
        }
        assert_eq!(decode_all(&[b"5\r\nhel"]), Err(WireError::Truncated));
    }

    fn encoded(method: &Method, target: &str, headers: &HeaderMap, body: BodyEncoding) -> String {
        let mut out = Vec::new();
        encode_request_head(&mut out, method, target, headers, body);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn request_heads_carry_exactly_one_framing() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("a"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("9"));
        assert_eq!(
            encoded(&Method::POST, "/x?y", &headers, BodyEncoding::Chunked),
            "POST /x?y HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let none = HeaderMap::new();
        assert_eq!(
            encoded(&Method::POST, "/", &none, BodyEncoding::None),
            "POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
        );
        assert_eq!(
            encoded(&Method::GET, "/", &none, BodyEncoding::Length(12)),
            "GET / HTTP/1.1\r\ncontent-length: 12\r\n\r\n"
        );
        assert_eq!(&encode_chunk(b"hello, world")[..], b"c\r\nhello, world\r\n");
    }

    fn simple(raw: &str) -> (RequestHead, BytesMut) {
        let mut buf = BytesMut::from(raw);
        let parsed = parse_simple_request(&mut buf, 100, 16 * 1024);
        (parsed, buf)
    }

    #[test]
    fn simple_requests_are_split_off_with_their_headers() {
        let (parsed, rest) =
            simple("GET /a?b=1 HTTP/1.1\r\nHost: t\r\nX-One: 1\r\nContent-Length: 0\r\n\r\nGET /next");
        let RequestHead::Simple(s) = parsed else {
            panic!("{parsed:?}");
        };
        assert_eq!(s.request.method(), Method::GET);
        assert_eq!(s.request.uri(), "/a?b=1");
        assert_eq!(s.request.headers()["host"], "t");
        assert_eq!(s.request.headers()["x-one"], "1");
        assert!(s.keep_alive);
        assert_eq!(&rest[..], b"GET /next", "the next request stays in the buffer");
        let (parsed, _) = simple("HEAD / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n");
        assert!(matches!(
            parsed,
            RequestHead::Simple(SimpleRequest {
                keep_alive: false,
                ..
            })
        ));
    }

    #[test]
    fn anything_but_a_simple_request_is_left_whole_for_hyper() {
        for raw in [
            "GET / HTTP/1.0\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            "GET /ws HTTP/1.1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nupgrade: h2c\r\n\r\n",
            "PUT / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 0\r\n\r\n",
            "CONNECT host:443 HTTP/1.1\r\n\r\n",
            "GET http://t/abs HTTP/1.1\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1\r\nbad header\r\n\r\n",
            "GARBAGE\r\n\r\n",
        ] {
            let (parsed, rest) = simple(raw);
            assert!(matches!(parsed, RequestHead::Other), "{raw:?}: {parsed:?}");
            assert_eq!(&rest[..], raw.as_bytes(), "{raw:?}: the buffer is untouched");
        }
    }

    #[test]
    fn limits_hand_over_and_partial_heads_wait() {
        let (parsed, _) = simple("GET / HTTP/1.1\r\nhost: t\r\n");
        assert!(matches!(parsed, RequestHead::Partial));
        let many = (0..5).fold(String::new(), |acc, i| acc + &format!("x-{i}: v\r\n"));
        let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
        let mut buf = BytesMut::from(raw.as_str());
        assert!(matches!(
            parse_simple_request(&mut buf, 4, 16 * 1024),
            RequestHead::Other
        ));
        assert!(matches!(
            parse_simple_request(&mut buf, 5, 16 * 1024),
            RequestHead::Simple(_)
        ));
        let mut long = BytesMut::from(format!("GET / HTTP/1.1\r\nx-big: {}", "a".repeat(200)).as_str());
        assert!(matches!(
            parse_simple_request(&mut long, 100, 128),
            RequestHead::Other
        ));
        let mut long =
            BytesMut::from(format!("GET / HTTP/1.1\r\nx-big: {}\r\n\r\n", "a".repeat(200)).as_str());
        assert!(matches!(
            parse_simple_request(&mut long, 100, 128),
            RequestHead::Other
        ));
    }

    fn response_head(headers: &[(&str, &str)], framing: ResponseFraming, keep_alive: bool) -> String {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut out = BytesMut::new();
        encode_response_head(&mut out, StatusCode::OK, &map, framing, keep_alive, b"DATE");
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn response_heads_carry_exactly_one_framing() {
        let h = response_head(
            &[
                ("content-length", "99"),
                ("transfer-encoding", "chunked"),
                ("x-a", "1"),
            ],
            ResponseFraming::Length(3),
            true,
        );
        assert_eq!(
            h,
            "HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 3\r\ndate: DATE\r\n\r\n"
        );
        let h = response_head(&[("date", "then")], ResponseFraming::Chunked, false);
        assert_eq!(
            h,
            "HTTP/1.1 200 OK\r\ndate: then\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        // A `HEAD` answer keeps the length of the body it does not carry.
        let h = response_head(&[("content-length", "99")], ResponseFraming::Bodiless, true);
        assert_eq!(h, "HTTP/1.1 200 OK\r\ncontent-length: 99\r\ndate: DATE\r\n\r\n");
    }

    #[test]
    fn chunk_sizes_are_hex() {
        let mut out = BytesMut::new();
        encode_chunk_into(&mut out, &[7u8; 0x1a2]);
        assert_eq!(&out[..5], b"1a2\r\n");
        assert_eq!(&out[out.len() - 2..], b"\r\n");
        assert_eq!(out.len(), 5 + 0x1a2 + 2);
    }
}
