//! Log set-up: JSON lines through `tracing`. Three streams by target: `access` (one line per request),
//! `security` (one line per [`SecurityEvent`]) and everything else (the daemon's own diagnostics). The
//! security stream can go to its own file so a SIEM can tail it alone.

use std::{
    cell::RefCell,
    fs::OpenOptions,
    io::{BufWriter, Write},
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::{Arc, Condvar, Mutex, OnceLock, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};

use tracing_subscriber::{
    EnvFilter, Layer as _, filter, fmt, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

use crate::{Error, event::SecurityEvent};

/// Target of the per-request lines.
pub const ACCESS: &str = "access";
/// Target of security events.
pub const SECURITY: &str = "security";

/// Keeps the log writer threads alive; dropping it flushes what is queued. Hold it until the daemon exits.
#[must_use = "dropping the guard stops the log writers"]
pub struct LogGuard {
    _access: BatchGuard,
    _security: WorkerGuard,
}

/// Installs the global subscriber. `RUST_LOG` filters the diagnostics stream (default `info`); access and
/// security lines are always written.
///
/// Access lines are formatted by [`access`] itself, not through `tracing`: they are the one log line per request,
/// and `tracing`'s JSON formatter (a visitor per field, a `serde_json` call per value) cost more than the rest of
/// the log phase. They keep the shape the formatter gave them: `timestamp`, `level`, the fields, `target`.
///
/// Access and security lines are handed to writer threads, so a request never waits on a `write(2)` to a slow
/// terminal or pipe. Access lines are batched like nginx's `access_log ... buffer=`: written when 64 KiB are
/// queued or every 200 ms; if the sink stalls and the queue reaches its cap, access lines are dropped (and the
/// count reported) rather than slowing the proxy. Security events never drop: they apply back-pressure.
pub fn init(security_file: Option<&Path>) -> Result<LogGuard, Error> {
    let diag_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let is_stream = |t: &str| t == ACCESS || t == SECURITY;
    let (access_writer, access_guard) = BatchWriter::start(Box::new(std::io::stdout()), "access-log")?;
    let diagnostics = fmt::layer()
        .json()
        .flatten_event(true)
        .with_writer(std::io::stdout)
        .with_filter(filter::filter_fn(move |m| !is_stream(m.target())))
        .with_filter(diag_filter);
    let security_base = fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false);
    let security_sink: Box<dyn Write + Send> = match security_file {
        Some(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| Error::io(format!("opening security log {}", path.display()), e))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let (security_writer, security_guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("security-log")
        .finish(BufWriter::new(security_sink));
    let security = security_base
        .with_writer(security_writer)
        .with_filter(filter::filter_fn(|m| m.target() == SECURITY));
    tracing_subscriber::registry()
        .with(diagnostics)
        .with(security)
        .try_init()
        .map_err(|e| Error::Other(format!("installing the log subscriber: {e}")))?;
    // Only the first daemon in a process owns the access stream.
    let _ = ACCESS_SINK.set(access_writer);
    Ok(LogGuard {
        _access: access_guard,
        _security: security_guard,
    })
}

/// Where [`access`] lines go; set by [`init`]. Without it (a library user, a test) they are not written.
static ACCESS_SINK: OnceLock<BatchWriter> = OnceLock::new();

/// What the proxy decided about a request, as the access log names it. A closed set: each name is a JSON string
/// as it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forwarded.
    Allow,
    /// Over a size limit (the declared or the streamed body).
    Limit,
    /// The client's body broke off or was malformed.
    ClientError,
    /// Answered by the proxy for any other failure: no route, no endpoint, an upstream error or timeout.
    Error,
    DenyAuth,
    BlockIdentity,
    BlockRisk,
    BlockRate,
    BlockInspect,
    /// The inspector would have blocked; detect mode let it through.
    DetectInspect,
}

impl Verdict {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Limit => "limit",
            Self::ClientError => "client_error",
            Self::Error => "error",
            Self::DenyAuth => "deny_auth",
            Self::BlockIdentity => "block_identity",
            Self::BlockRisk => "block_risk",
            Self::BlockRate => "block_rate",
            Self::BlockInspect => "block_inspect",
            Self::DetectInspect => "detect_inspect",
        }
    }
}

/// One request, as the access log reports it.
#[derive(Debug)]
pub struct AccessLine<'a> {
    pub request_id: &'a str,
    pub source: IpAddr,
    /// A token (RFC 9110 §9.1): written as it stands.
    pub method: &'a http::Method,
    pub path: &'a str,
    pub identity: Option<&'a str>,
    pub route: &'a str,
    pub upstream: Option<&'a str>,
    pub endpoint: Option<SocketAddr>,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub latency: Duration,
    pub verdict: Verdict,
    pub complete: bool,
}

impl AccessLine<'_> {
    /// Appends the line, newline included. Absent optional fields are left out, as `tracing` leaves out a
    /// `None` field.
    pub fn write_json(&self, at: SystemTime, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"timestamp\":\"");
        push_timestamp(out, at);
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"request_id\":");
        json_str(out, self.request_id);
        out.extend_from_slice(b",\"source\":\"");
        push_ip(out, self.source);
        // Token characters exclude `"`, `\\` and controls.
        out.extend_from_slice(b"\",\"method\":\"");
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.push(b'"');
        out.extend_from_slice(b",\"path\":");
        json_str(out, self.path);
        if let Some(identity) = self.identity {
            out.extend_from_slice(b",\"identity\":");
            json_str(out, identity);
        }
        out.extend_from_slice(b",\"route\":");
        json_str(out, self.route);
        if let Some(upstream) = self.upstream {
            out.extend_from_slice(b",\"upstream\":");
            json_str(out, upstream);
        }
        if let Some(endpoint) = self.endpoint {
            out.extend_from_slice(b",\"endpoint\":\"");
            push_socket_addr(out, endpoint);
            out.push(b'"');
        }
        let mut n = itoa::Buffer::new();
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(n.format(self.status).as_bytes());
        out.extend_from_slice(b",\"bytes_in\":");
        out.extend_from_slice(n.format(self.bytes_in).as_bytes());
        out.extend_from_slice(b",\"bytes_out\":");
        out.extend_from_slice(n.format(self.bytes_out).as_bytes());
        out.extend_from_slice(b",\"latency_ms\":");
        push_millis(out, self.latency);
        out.extend_from_slice(b",\"verdict\":\"");
        out.extend_from_slice(self.verdict.as_str().as_bytes());
        out.push(b'"');
        out.extend_from_slice(if self.complete {
            b",\"complete\":true,\"target\":\"access\"}\n"
        } else {
            b",\"complete\":false,\"target\":\"access\"}\n"
        });
    }
}

thread_local! {
    /// The access line's timestamp up to the whole second (`2026-01-02T03:04:05`), and that second: every
    /// line within one second shares it, so only the microseconds are formatted per line.
    static TIMESTAMP_SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

/// RFC 3339 in UTC with microseconds, as `humantime::format_rfc3339_micros` writes it.
fn push_timestamp(out: &mut Vec<u8>, at: SystemTime) {
    let since_epoch = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let second = since_epoch.as_secs();
    TIMESTAMP_SECOND.with(|cached| {
        let Ok(mut cached) = cached.try_borrow_mut() else {
            // Re-entered (impossible here): format the whole thing the slow way.
            let _ = write!(out, "{}", humantime::format_rfc3339_seconds(at));
            out.pop();
            return;
        };
        if cached.0 != second {
            let mut text = Vec::with_capacity(20);
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(second);
            let _ = write!(text, "{}", humantime::format_rfc3339_seconds(whole));
            // `2026-01-02T03:04:05Z`: keep all but the `Z`.
            if let Some(prefix) = text.get(..19) {
                cached.1.copy_from_slice(prefix);
                cached.0 = second;
            }
        }
        out.extend_from_slice(&cached.1);
    });
    out.push(b'.');
    push_padded(out, since_epoch.subsec_micros(), 6);
    out.push(b'Z');
}

/// `value` in decimal, left-padded with zeros to `width` digits.
fn push_padded(out: &mut Vec<u8>, value: u32, width: usize) {
    let mut n = itoa::Buffer::new();
    let digits = n.format(value).as_bytes();
    out.extend(std::iter::repeat_n(b'0', width.saturating_sub(digits.len())));
    out.extend_from_slice(digits);
}

/// A duration as milliseconds with microsecond precision (`12.345`).
fn push_millis(out: &mut Vec<u8>, d: Duration) {
    let micros = d.as_micros();
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(n.format(micros / 1000).as_bytes());
    out.push(b'.');
    // Below 1000, so it fits.
    push_padded(out, u32::try_from(micros % 1000).unwrap_or(0), 3);
}

/// An address as `Display` writes it; IPv4 (the common case) without the formatting machinery.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// A socket address as `Display` writes it (`[v6]:port` for IPv6).
fn push_socket_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            push_ip(out, IpAddr::V4(*v4.ip()));
            out.push(b':');
            out.extend_from_slice(itoa::Buffer::new().format(v4.port()).as_bytes());
        }
        SocketAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    // Most fields (ids, methods, routes, plain paths) need no escaping: copied as they are.
    // A fold without early exit: the compiler turns it into a vector loop.
    #[expect(
        clippy::needless_bitwise_bool,
        reason = "branch-free on purpose, so that the loop vectorises"
    )]
    let needs_escaping = s
        .bytes()
        .fold(false, |bad, b| bad | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if !needs_escaping {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // A `str` always serialises.
    let _ = serde_json::to_writer(&mut *out, s);
}

thread_local! {
    /// Each thread formats its access lines in its own buffer, so the queue's lock covers only a copy.
    static ACCESS_SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch { buf: Vec::new(), held: false }) };
}

/// A thread's access lines on their way to the queue.
struct Scratch {
    buf: Vec<u8>,
    /// Lines gather here until [`HELD_BYTES`] or the thread's next [`flush_held_lines`] (see [`hold_access_lines`]).
    held: bool,
}

/// Bytes of access lines a holding thread gathers before it takes the queue's lock.
const HELD_BYTES: usize = 16 * 1024;

thread_local! {
    /// A monotonic instant and the wall-clock time then, taken together at most once a second per thread: an
    /// access line's wall time is derived from the request's own end instant, which saves a clock read per line.
    /// Over a second the two clocks drift by far less than the line's microsecond resolution.
    static WALL_BASE: std::cell::Cell<Option<(Instant, SystemTime)>> = const { std::cell::Cell::new(None) };
}

fn wall_time(at: Instant) -> SystemTime {
    WALL_BASE.with(|base| match base.get() {
        Some((mono, wall)) if at >= mono && at - mono < Duration::from_secs(1) => wall + (at - mono),
        _ => {
            let wall = SystemTime::now();
            base.set(Some((at, wall)));
            wall
        }
    })
}

/// Writes one access line (when [`init`] has installed the access stream), stamped with the wall-clock time of
/// the monotonic instant `at` (the request's end).
pub fn access(line: &AccessLine<'_>, at: Instant) {
    let Some(sink) = ACCESS_SINK.get() else {
        return;
    };
    let at = wall_time(at);
    ACCESS_SCRATCH.with(|scratch| {
        // Re-entrancy is impossible (nothing here logs), but a fresh buffer is the safe answer to it anyway.
        let Ok(mut scratch) = scratch.try_borrow_mut() else {
            let mut buf = Vec::new();
            line.write_json(at, &mut buf);
            sink.push(&buf);
            return;
        };
        line.write_json(at, &mut scratch.buf);
        if !scratch.held || scratch.buf.len() >= HELD_BYTES {
            sink.push(&scratch.buf);
            scratch.buf.clear();
        }
    });
}

/// Lets this thread's access lines gather in the thread (up to 16 KiB) before they go to the queue, so a busy
/// worker takes the queue's lock, which every worker shares, once per few dozen requests rather than once per
/// request. The thread must call [`flush_held_lines`] on a short tick, so a line waits at most a tick plus the
/// queue's 200 ms; dropping the guard flushes and ends the holding.
#[must_use = "the lines are held only while the guard lives"]
pub fn hold_access_lines() -> HeldLines {
    ACCESS_SCRATCH.with(|scratch| {
        if let Ok(mut scratch) = scratch.try_borrow_mut() {
            scratch.held = true;
        }
    });
    HeldLines {
        _not_send: std::marker::PhantomData,
    }
}

/// Hands this thread's gathered access lines to the queue.
pub fn flush_held_lines() {
    ACCESS_SCRATCH.with(|scratch| {
        if let (Ok(mut scratch), Some(sink)) = (scratch.try_borrow_mut(), ACCESS_SINK.get())
            && !scratch.buf.is_empty()
        {
            sink.push(&scratch.buf);
            scratch.buf.clear();
        }
    });
}

/// See [`hold_access_lines`]. Tied to its thread.
pub struct HeldLines {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for HeldLines {
    fn drop(&mut self) {
        flush_held_lines();
        ACCESS_SCRATCH.with(|scratch| {
            if let Ok(mut scratch) = scratch.try_borrow_mut() {
                scratch.held = false;
            }
        });
    }
}

/// Writes one security event to the `security` stream.
pub fn security_event(event: &SecurityEvent) {
    let json = serde_json::to_string(event).unwrap_or_else(|e| format!("{{\"unserialisable\":\"{e}\"}}"));
    tracing::warn!(target: SECURITY, event = %json);
}

/// Bytes queued before the writer thread is woken early.
const BATCH_BYTES: usize = 64 * 1024;
/// Longest time an access line waits in the queue.
const BATCH_INTERVAL: Duration = Duration::from_millis(200);
/// Queue cap: beyond it, lines are dropped.
const BATCH_CAP: usize = 8 * 1024 * 1024;

#[derive(Default)]
struct BatchQueue {
    buf: Vec<u8>,
    dropped: u64,
    closed: bool,
}

/// Access lines go to an in-memory queue drained by one thread. The queue lock is held only for a
/// `memcpy`, never across I/O.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<(Mutex<BatchQueue>, Condvar)>,
}

/// Flushes and stops the writer thread when dropped.
pub struct BatchGuard {
    shared: Arc<(Mutex<BatchQueue>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BatchWriter {
    fn start(mut sink: Box<dyn Write + Send>, name: &str) -> Result<(Self, BatchGuard), Error> {
        let shared = Arc::new((Mutex::new(BatchQueue::default()), Condvar::new()));
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let (lock, cv) = &*worker;
                let mut out = Vec::new();
                loop {
                    let (closed, dropped) = {
                        let mut q = lock.lock().unwrap_or_else(PoisonError::into_inner);
                        if q.buf.len() < BATCH_BYTES && !q.closed {
                            q = cv.wait_timeout(q, BATCH_INTERVAL).unwrap_or_else(PoisonError::into_inner).0;
                        }
                        std::mem::swap(&mut q.buf, &mut out);
                        (q.closed, std::mem::take(&mut q.dropped))
                    };
                    if dropped > 0 {
                        let _ = writeln!(out, "{{\"level\":\"WARN\",\"target\":\"access\",\"message\":\"access log queue full\",\"dropped_lines\":{dropped}}}");
                    }
                    if !out.is_empty() {
                        // Nowhere to report a failing log sink but stderr.
                        if let Err(e) = sink.write_all(&out).and_then(|()| sink.flush()) {
                            eprintln!("rasp-proxy: writing the access log failed: {e}");
                        }
                        out.clear();
                    }
                    if closed {
                        return;
                    }
                }
            })
            .map_err(|e| Error::io("starting the access log thread", e))?;
        Ok((
            Self {
                shared: shared.clone(),
            },
            BatchGuard {
                shared,
                thread: Some(thread),
            },
        ))
    }
}

impl BatchWriter {
    /// Queues complete lines.
    fn push(&self, data: &[u8]) {
        let (lock, cv) = &*self.shared;
        let mut q = lock.lock().unwrap_or_else(PoisonError::into_inner);
        if q.buf.len() + data.len() > BATCH_CAP {
            q.dropped += 1;
            return;
        }
        q.buf.extend_from_slice(data);
        if q.buf.len() >= BATCH_BYTES {
            cv.notify_one();
        }
    }
}

impl Drop for BatchGuard {
    fn drop(&mut self) {
        let (lock, cv) = &*self.shared;
        lock.lock().unwrap_or_else(PoisonError::into_inner).closed = true;
        cv.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_time_follows_the_monotonic_clock_and_rebases_each_second() {
        let start = Instant::now();
        let before = SystemTime::now();
        let first = wall_time(start);
        let later = wall_time(start + Duration::from_millis(250));
        assert_eq!(later.duration_since(first).unwrap(), Duration::from_millis(250));
        // Taken afresh, not extrapolated, once the base is a second old (or the instant precedes it).
        let rebased = wall_time(start + Duration::from_secs(5));
        assert!(rebased.duration_since(before).unwrap() < Duration::from_secs(5));
        let earlier = wall_time(start);
        assert!(earlier >= before);
    }

    fn line<'a>(identity: Option<&'a str>, path: &'a str) -> AccessLine<'a> {
        AccessLine {
            request_id: "0000abcd000000000001",
            source: "2001:db8::7".parse().unwrap(),
            method: &http::Method::GET,
            path,
            identity,
            route: "/api",
            upstream: Some("backend"),
            endpoint: Some("[::1]:8080".parse().unwrap()),
            status: 200,
            bytes_in: 3,
            bytes_out: 11,
            latency: Duration::from_micros(250),
            verdict: Verdict::Allow,
            complete: true,
        }
    }

    #[test]
    fn access_line_is_one_json_object_with_every_field() {
        let mut out = Vec::new();
        line(Some("alice \"the\" admin"), "/a\"b\\c\u{1}").write_json(SystemTime::UNIX_EPOCH, &mut out);
        assert_eq!(memchr::memchr_iter(b'\n', &out).count(), 1);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "access");
        assert_eq!(v["request_id"], "0000abcd000000000001");
        assert_eq!(v["source"], "2001:db8::7");
        assert_eq!(v["path"], "/a\"b\\c\u{1}");
        assert_eq!(v["identity"], "alice \"the\" admin");
        assert_eq!(v["endpoint"], "[::1]:8080");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes_in"], 3);
        assert_eq!(v["bytes_out"], 11);
        assert_eq!(v["latency_ms"], 0.25);
        assert_eq!(v["verdict"], "allow");
        assert_eq!(v["complete"], true);
    }

    #[test]
    fn absent_fields_are_left_out() {
        let mut out = Vec::new();
        let mut l = line(None, "/");
        l.upstream = None;
        l.endpoint = None;
        l.write_json(SystemTime::now(), &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let obj = v.as_object().unwrap();
        assert!(
            !obj.contains_key("identity") && !obj.contains_key("upstream") && !obj.contains_key("endpoint")
        );
        assert_eq!(obj.len(), 14, "{v}");
    }

    #[test]
    fn hand_formatting_matches_display_and_humantime() {
        for (secs, nanos) in [
            (0, 0),
            (1_764_000_000, 5_000),
            (1_764_000_000, 999_999_999),
            (1_764_000_001, 1),
        ] {
            let at = SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
            let mut out = Vec::new();
            push_timestamp(&mut out, at);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                humantime::format_rfc3339_micros(at).to_string()
            );
        }
        for addr in [
            "0.0.0.0:0",
            "10.200.3.45:65535",
            "[2001:db8::1]:443",
            "[::ffff:1.2.3.4]:80",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut out = Vec::new();
            push_socket_addr(&mut out, addr);
            assert_eq!(String::from_utf8(out).unwrap(), addr.to_string());
            let mut out = Vec::new();
            push_ip(&mut out, addr.ip());
            assert_eq!(String::from_utf8(out).unwrap(), addr.ip().to_string());
        }
        for (micros, text) in [
            (0, "0.000"),
            (7, "0.007"),
            (12_345, "12.345"),
            (3_000_000, "3000.000"),
        ] {
            let mut out = Vec::new();
            push_millis(&mut out, Duration::from_micros(micros));
            assert_eq!(String::from_utf8(out).unwrap(), text);
        }
    }
}
