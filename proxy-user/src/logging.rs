//! Log set-up: JSON lines through `tracing`. Three streams by target: `access` (one line per request),
//! `security` (one line per [`SecurityEvent`]) and everything else (the daemon's own diagnostics). The
//! security stream can go to its own file so a SIEM can tail it alone.

use std::{
    fs::OpenOptions,
    io::{BufWriter, Write},
    path::Path,
    sync::{Arc, Condvar, Mutex, PoisonError},
    time::Duration,
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
    let access = fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_writer(access_writer)
        .with_filter(filter::filter_fn(|m| m.target() == ACCESS));
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
        .with(access)
        .with(security)
        .try_init()
        .map_err(|e| Error::Other(format!("installing the log subscriber: {e}")))?;
    Ok(LogGuard {
        _access: access_guard,
        _security: security_guard,
    })
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

/// A `MakeWriter` whose lines go to an in-memory queue drained by one thread. The queue lock is held only for a
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

impl Write for BatchWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let (lock, cv) = &*self.shared;
        let mut q = lock.lock().unwrap_or_else(PoisonError::into_inner);
        if q.buf.len() + data.len() > BATCH_CAP {
            q.dropped += 1;
            return Ok(data.len());
        }
        q.buf.extend_from_slice(data);
        if q.buf.len() >= BATCH_BYTES {
            cv.notify_one();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = Self;

    fn make_writer(&'a self) -> Self {
        self.clone()
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
