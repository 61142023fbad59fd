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
    pub forwarded: Forwarded,
    pub framing: Framing,
    /// The upstream may keep the connection open after this response.
    pub keep_alive: bool,
}

/// The headers a response forwards.
#[derive(Debug)]
pub enum Forwarded {
    /// As the upstream wrote them: nothing among them needs removing (the common case).
    Raw(RawHeaders),
    /// As a map, for the response phase to remove what must go. Boxed: the head is returned up through several
    /// futures, and the map would be most of its size.
    Map(Box<HeaderMap>),
}

/// A response that carries no body whatever its head says (RFC 9112 §6.3): to `HEAD`, 1xx, 204, 304.
#[must_use]
pub fn is_bodiless(to_head: bool, status: StatusCode) -> bool {
    to_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
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
    let base = buf.as_ptr() as usize;
    // Filled in place: `collect` would move the 4 KiB array once more.
    let mut spans: SmallVec<[HeaderSpan; MAX_RESPONSE_HEADERS]> = SmallVec::new();
    for h in parsed.headers.iter() {
        spans.push(HeaderSpan::of(base, h));
    }
    let head = &buf[..len];
    let no_body = is_bodiless(*request_method == Method::HEAD, status);
    // What the head says about this hop; which headers go on; and whether they can go on as written.
    let mut hop = HopHeaders::default();
    let mut forward = [false; MAX_RESPONSE_HEADERS];
    for (span, forward) in spans.iter().zip(&mut forward) {
        *forward = hop.read(
            &head[span.name.0..span.name.1],
            &head[span.value.0..span.value.1],
            no_body,
        )?;
    }
    // A 101's `Connection: upgrade` belongs to the tunnel, which needs it as a header.
    let verbatim = hop.verbatim && status != StatusCode::SWITCHING_PROTOCOLS;
    let forwarded = || spans.iter().zip(forward).filter(|(_, f)| *f).map(|(s, _)| s);
    let forwarded = if verbatim {
        let mut lines = BytesMut::with_capacity(
            forwarded()
                .map(|s| s.name.1 - s.name.0 + s.value.1 - s.value.0 + 4)
                .sum(),
        );
        for span in forwarded() {
            put_header_line(
                &mut lines,
                &head[span.name.0..span.name.1],
                &head[span.value.0..span.value.1],
            );
        }
        // Copied out, so the read buffer is never shared (a split would make it so, and cost a reference count
        // per request).
        bytes::Buf::advance(buf, len);
        Forwarded::Raw(RawHeaders {
            lines: lines.freeze(),
            has_date: hop.has_date,
        })
    } else {
        let head = buf.split_to(len).freeze();
        // Room for the request id the pipeline adds, so that adding it never regrows the map.
        let mut headers = HeaderMap::with_capacity(spans.len() + 2);
        for span in forwarded() {
            let name = http::HeaderName::from_bytes(&head[span.name.0..span.name.1])
                .map_err(|_| WireError::BadHeader)?;
            let value = HeaderValue::from_maybe_shared(head.slice(span.value.0..span.value.1))
                .map_err(|_| WireError::BadHeader)?;
            headers.append(name, value);
        }
        Forwarded::Map(Box::new(headers))
    };
    let framing = if no_body {
        Framing::Empty
    } else if hop.transfer_encoding {
        Framing::Chunked(ChunkedDecoder::default())
    } else {
        match hop.lengths.value {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    let (close, keep_alive) = (hop.close, hop.keep_alive);
    // HTTP/1.1 persists unless told to close; HTTP/1.0 only when told to keep alive.
    let persistent = !close && (version == Version::HTTP_11 || keep_alive);
    Ok(Some(ResponseHead {
        status,
        version,
        forwarded,
        keep_alive: persistent && framing != Framing::UntilClose,
        framing,
    }))
}

/// Where one header's name and value sit in the head.
struct HeaderSpan {
    name: (usize, usize),
    value: (usize, usize),
}

impl HeaderSpan {
    /// The offsets of httparse's slices into the buffer at `base`: they outlive the borrow of the buffer, so the
    /// head can be split off and its names and values taken as slices of it (as hyper does: no copy per header).
    fn of(base: usize, h: &httparse::Header<'_>) -> Self {
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        Self {
            name: (name, name + h.name.len()),
            value: (value, value + h.value.len()),
        }
    }
}

/// The classic hop-by-hop set (RFC 9110 §7.6.1 and its predecessors). A `static`, not a `const`: a `const` array
/// of names is built and dropped again at every use. The response phase removes these from a header map; the
/// wire parser tells them apart in raw heads; both through [`hop_by_hop_index`].
pub static HOP_BY_HOP: [http::HeaderName; 9] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    http::HeaderName::from_static("keep-alive"),
    http::HeaderName::from_static("proxy-connection"),
];
/// Where `Connection`, `Upgrade` and `Transfer-Encoding` sit in [`HOP_BY_HOP`].
pub const HOP_CONNECTION: usize = 0;
pub const HOP_UPGRADE: usize = 4;
const HOP_TRANSFER_ENCODING: usize = 3;

/// Where `name` (in any case) sits in [`HOP_BY_HOP`]. By length first: most names are told apart without
/// comparing a byte.
#[must_use]
#[inline]
pub fn hop_by_hop_index(name: &[u8]) -> Option<usize> {
    let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
    let i = match name.len() {
        2 if is(b"te") => 1,
        7 if is(b"trailer") => 2,
        7 if is(b"upgrade") => HOP_UPGRADE,
        10 if is(b"connection") => HOP_CONNECTION,
        10 if is(b"keep-alive") => 7,
        16 if is(b"proxy-connection") => 8,
        17 if is(b"transfer-encoding") => HOP_TRANSFER_ENCODING,
        18 if is(b"proxy-authenticate") => 6,
        19 if is(b"proxy-authorization") => 5,
        _ => return None,
    };
    debug_assert!(is(HOP_BY_HOP[i].as_str().as_bytes()));
    Some(i)
}

/// The tokens of a comma-separated header value (`Connection`, `Upgrade`...), trimmed.
pub fn list_tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// The hop-by-hop part of a response head, read header by header.
#[expect(
    clippy::struct_excessive_bools,
    reason = "independent facts read off one head, not states"
)]
struct HopHeaders {
    lengths: LengthHeaders,
    transfer_encoding: bool,
    close: bool,
    keep_alive: bool,
    has_date: bool,
    /// Every forwarded header can go on as written: none of them is hop-by-hop.
    verbatim: bool,
}

impl Default for HopHeaders {
    fn default() -> Self {
        Self {
            lengths: LengthHeaders::default(),
            transfer_encoding: false,
            close: false,
            keep_alive: false,
            has_date: false,
            verbatim: true,
        }
    }
}

impl HopHeaders {
    /// Takes in one header; returns whether it is forwarded. The framing headers are this hop's (whoever sends
    /// the body on frames it anew), except the length a body-less answer to `HEAD` reports.
    fn read(&mut self, name: &[u8], value: &[u8], no_body: bool) -> Result<bool, WireError> {
        match NameKind::of(name) {
            NameKind::ContentLength => {
                self.lengths.add(value)?;
                Ok(no_body)
            }
            NameKind::TransferEncoding => {
                // Only `chunked`, alone, is framed; anything else would be a guess.
                if self.transfer_encoding || !value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return Err(WireError::UnsupportedTransferCoding);
                }
                self.transfer_encoding = true;
                // RFC 9112 §6.3: with both, `Transfer-Encoding` wins and the length is not forwarded either.
                Ok(false)
            }
            NameKind::Connection => {
                let mut names_others = false;
                for token in list_tokens(value) {
                    let is_close = token.eq_ignore_ascii_case(b"close");
                    let is_keep_alive = token.eq_ignore_ascii_case(b"keep-alive");
                    self.close |= is_close;
                    self.keep_alive |= is_keep_alive;
                    names_others |= !(is_close || is_keep_alive);
                }
                // Forwarded (to the response phase, which removes it) only when it names other headers to
                // remove with it, or an upgrade the tunnel needs.
                self.verbatim &= !names_others;
                Ok(names_others)
            }
            NameKind::OtherHopByHop => {
                self.verbatim = false;
                Ok(true)
            }
            NameKind::Date => {
                self.has_date = true;
                Ok(true)
            }
            NameKind::EndToEnd => Ok(true),
        }
    }
}

/// The response header names the wire layer tells apart.
enum NameKind {
    ContentLength,
    TransferEncoding,
    Connection,
    /// The rest of [`HOP_BY_HOP`]: a response carrying one goes through the response phase's removal as a
    /// header map.
    OtherHopByHop,
    Date,
    EndToEnd,
}

impl NameKind {
    fn of(name: &[u8]) -> Self {
        match hop_by_hop_index(name) {
            Some(HOP_CONNECTION) => Self::Connection,
            Some(HOP_TRANSFER_ENCODING) => Self::TransferEncoding,
            Some(_) => Self::OtherHopByHop,
            None if name.eq_ignore_ascii_case(b"content-length") => Self::ContentLength,
            None if name.eq_ignore_ascii_case(b"date") => Self::Date,
            None => Self::EndToEnd,
        }
    }
}

/// Response headers forwarded as the upstream wrote them, one `name: value` line each (CRLF included), for a
/// response with no hop-by-hop header left to remove. Building a header map only to write it out again was the
/// largest single cost of a proxied request; a writer that needs a map (hyper's) gets one from
/// [`materialize`].
#[derive(Debug, Clone)]
pub struct RawHeaders {
    pub lines: Bytes,
    pub has_date: bool,
}

/// Appends `raw`'s headers to `headers`.
pub fn materialize(headers: &mut HeaderMap, raw: &RawHeaders) {
    let mut at = 0;
    // Lines this module wrote from names and values httparse accepted: a name (no `:` in a token), `: `, a
    // value, CRLF.
    while let Some(end) = memchr::memmem::find(&raw.lines[at..], b"\r\n").map(|e| at + e) {
        let line = &raw.lines[at..end];
        let parsed = memchr::memchr(b':', line).and_then(|colon| {
            let name = http::HeaderName::from_bytes(&line[..colon]).ok()?;
            let value = HeaderValue::from_maybe_shared(raw.lines.slice(at + colon + 2..end)).ok()?;
            Some((name, value))
        });
        if let Some((name, value)) = parsed {
            headers.append(name, value);
        } else {
            tracing::debug!("dropping an unparsable forwarded response header line");
        }
        at = end + 2;
    }
}

/// One `name: value` header line. Names and values cannot hold CR or LF (`http` and httparse refuse them), so a
/// line cannot split the head.
#[inline]
fn put_header_line(out: &mut impl bytes::BufMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
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

/// A header value that cannot split a head (no CR, LF or NUL) by its construction: a `HeaderValue` (checked when
/// it was made) or a value the proxy makes itself from a safe alphabet (a request id's hex digits), which so needs
/// neither a check nor an allocation to become a `HeaderValue` first.
pub trait HeaderText: Sync {
    fn header_bytes(&self) -> &[u8];
}

impl HeaderText for HeaderValue {
    fn header_bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// Headers written after a request's own, by reference: the proxy's forwarding headers. Inserting them into the
/// request's map first cost three hashed inserts (and two reference counts) per request, only for the map to be
/// written out here. The map must not carry these names as well.
pub type Appended<'a> = [(&'a http::HeaderName, &'a dyn HeaderText)];

/// Writes `method target HTTP/1.1`, the headers, `appended`, and the framing header `body` calls for (any framing
/// header among `headers` is dropped first: the framing is this function's to decide). Header names and values
/// cannot hold CR or LF (`http` refuses them), so nothing here can split the head.
pub fn encode_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    appended: &Appended<'_>,
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
        put_header_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    for (name, value) in appended {
        put_header_line(out, name.as_str().as_bytes(), value.header_bytes());
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
            for token in list_tokens(value) {
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
        spans.push(HeaderSpan::of(base, h));
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

/// Room left in a request's header map for what the pipeline adds (the verified subject; `Connection` and
/// `Upgrade` for a tunnel), so that adding them never regrows it. The forwarding headers and the request id are
/// not added to the map but written after it (see [`Appended`]).
const ADDED_REQUEST_HEADERS: usize = 2;

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

/// A response's headers as the front writes them, in this order.
#[derive(Clone, Copy)]
pub struct ResponseHeaders<'a> {
    pub map: &'a HeaderMap,
    /// One header the proxy adds last (the request id).
    pub extra: Option<(&'a http::HeaderName, &'a dyn HeaderText)>,
    /// The upstream's own, as it wrote them.
    pub raw: Option<&'a RawHeaders>,
}

/// Writes a response's status line, its headers, the framing header `framing` calls for (any framing header in
/// the map is dropped unless the response is bodiless), a `date` if it has none, and `connection: close` unless
/// `keep_alive`.
pub fn encode_response_head(
    out: &mut BytesMut,
    status: StatusCode,
    headers: &ResponseHeaders<'_>,
    framing: ResponseFraming,
    keep_alive: bool,
    date: &[u8],
) {
    let ResponseHeaders {
        map: headers,
        extra,
        raw,
    } = *headers;
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
        put_header_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some((name, value)) = extra {
        put_header_line(out, name.as_str().as_bytes(), value.header_bytes());
    }
    if let Some(raw) = raw {
        out.extend_from_slice(&raw.lines);
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
    if !raw.is_some_and(|r| r.has_date) && !headers.contains_key(header::DATE) {
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
        assert!(
            matches!(h.forwarded, Forwarded::Raw(r) if r.lines.is_empty()),
            "neither framing header is forwarded"
        );
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
        assert!(matches!(h.forwarded, Forwarded::Raw(r) if r.lines == "X-A: b\r\n"));
        assert_eq!(&buf[..], b"hiNEXT");
    }

    /// The forwarded headers of `raw`, through [`materialize`] when they came as lines.
    fn forwarded(raw: &str, method: &Method) -> (HeaderMap, bool) {
        match head(raw, method).unwrap().unwrap().forwarded {
            Forwarded::Raw(raw) => {
                let mut map = HeaderMap::new();
                materialize(&mut map, &raw);
                (map, true)
            }
            Forwarded::Map(map) => (*map, false),
        }
    }

    #[test]
    fn headers_pass_as_written_unless_something_must_be_removed() {
        let get = Method::GET;
        let (h, verbatim) = forwarded(
            "HTTP/1.1 200 OK\r\nServer: up\r\nContent-Length: 2\r\nConnection: keep-alive\r\nDate: d\r\n\
             Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nhi",
            &get,
        );
        assert!(verbatim);
        assert_eq!(h.len(), 4, "{h:?}");
        assert_eq!(h["server"], "up");
        assert_eq!(h["date"], "d");
        assert_eq!(h.get_all("set-cookie").iter().count(), 2);
        // A body-less answer keeps the length it reports.
        let (h, verbatim) = forwarded("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", &Method::HEAD);
        assert!(verbatim);
        assert_eq!(h["content-length"], "7");
        // What the response phase must remove comes as a map, with what names it.
        for raw in [
            "HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nProxy-Authorization: Basic eA==\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        ] {
            let h = head(raw, &get).unwrap().unwrap();
            assert!(
                matches!(h.forwarded, Forwarded::Map(m) if !m.is_empty()),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn verbatim_heads_are_written_as_they_came() {
        let h = head(
            "HTTP/1.1 404 Not Found\r\nX-A: 1\r\nDate: d\r\nContent-Length: 3\r\n\r\n",
            &Method::GET,
        )
        .unwrap()
        .unwrap();
        let Forwarded::Raw(raw) = &h.forwarded else {
            panic!("a head with nothing to remove comes verbatim")
        };
        let mut out = BytesMut::new();
        encode_response_head(
            &mut out,
            h.status,
            &ResponseHeaders {
                map: &HeaderMap::new(),
                extra: None,
                raw: Some(raw),
            },
            ResponseFraming::Length(3),
            true,
            b"NOW",
        );
        assert_eq!(
            &out[..],
            b"HTTP/1.1 404 Not Found\r\nX-A: 1\r\nDate: d\r\ncontent-length: 3\r\n\r\n"
        );
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
        encode_request_head(&mut out, method, target, headers, &[], body);
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
        let headers = ResponseHeaders {
            map: &map,
            extra: None,
            raw: None,
        };
        encode_response_head(&mut out, StatusCode::OK, &headers, framing, keep_alive, b"DATE");
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
