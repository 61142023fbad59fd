//! The L7 proxy: listeners, TLS, the request pipeline and the upstream pool.
//!
//! [`Proxy`] holds what outlives a config generation (metrics, the connection registry, the shutdown switch);
//! [`generation::Generation`] holds what a reload replaces. [`start`] binds everything and returns a
//! [`RunningProxy`] handle; [`run`] is the daemon around it (signals, drain).

pub mod body;
pub mod connections;
pub mod front;
pub mod generation;
pub mod h1;
pub mod pipeline;
pub mod pool;
pub mod router;
pub mod server;
pub mod timer;
pub mod tls;
pub mod upstream;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::{
    net::{TcpListener, TcpSocket},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

pub use self::server::{ConnectionVerdict, SourceGate};
use self::{connections::ConnectionRegistry, generation::Generation};
use crate::{
    Error,
    addr::Cidr,
    config::Config,
    metrics::Metrics,
    risk::{RiskEngine, enforce::Enforcer},
};

/// State shared by every connection, across config generations.
pub struct Proxy {
    config_path: PathBuf,
    pub current: ArcSwap<Generation>,
    pub metrics: Metrics,
    pub connections: Arc<ConnectionRegistry>,
    /// Cancelled on SIGTERM / ctrl-c: listeners stop accepting, connections finish their in-flight requests.
    pub shutdown: CancellationToken,
    pub ready: AtomicBool,
    /// The self-protection loop: risk scores, bans into the kernel maps, identity blocks. Outlives reloads
    /// (scores and strikes are not lost to a SIGHUP); `[risk]` changes need a restart.
    pub risk: Arc<Enforcer>,
    source_gate: Option<Arc<dyn SourceGate>>,
    request_seq: AtomicU64,
    /// Tells this proxy's blocks of request ids from another's (see [`Proxy::next_request_id`]).
    instance: u64,
    request_prefix: u32,
    /// Serialises reloads so two SIGHUPs cannot interleave.
    reload_lock: Mutex<()>,
}

impl Proxy {
    /// Reads the config file again and swaps in a new generation. A config that fails to load or build is
    /// refused and logged; the current generation keeps serving. Listener addresses cannot change without a
    /// restart (the sockets are bound once).
    pub fn reload(&self) -> Result<u64, Error> {
        let _serial = self.reload_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let result = self.try_reload();
        match &result {
            Ok(n) => tracing::info!(generation = n, config = %self.config_path.display(), "config reloaded"),
            Err(e) => {
                self.metrics.reloads_failed.inc();
                tracing::error!(error = %e, config = %self.config_path.display(), "config reload refused; the previous config keeps serving");
            }
        }
        result
    }

    fn try_reload(&self) -> Result<u64, Error> {
        let config = Config::load(&self.config_path)?;
        let old = self.current.load();
        let shape = |c: &Config| {
            c.listeners
                .iter()
                .map(|l| (l.listen, l.tls.is_some()))
                .collect::<Vec<_>>()
        };
        if shape(&config) != shape(&old.config) || config.admin.listen != old.config.admin.listen {
            return Err(Error::Config(
                "listener or admin addresses changed: they need a restart; nothing was reloaded".into(),
            ));
        }
        let generation = Generation::build(config, old.number + 1)?;
        let number = generation.number;
        self.current.store(Arc::new(generation));
        Ok(number)
    }

    /// Closes every open connection of `source` (the self-protection loop calls this after a ban).
    pub fn close_source(&self, source: std::net::IpAddr) -> usize {
        self.connections.close_source(source)
    }

    /// `{prefix:08x}{sequence:012x}`, written by hand: `format!` cost more than the rest of the id.
    ///
    /// Each thread takes sequence numbers from the shared counter in blocks of [`ID_BLOCK`]: ids stay unique, and
    /// the counter, a write every worker would contend for, is touched once per block instead of per request.
    fn next_request_id(&self) -> RequestId {
        let owner = self.instance;
        let n = ID_BLOCKS.with(|cell| {
            let (mut from, mut next, mut end) = cell.get();
            if from != owner || next == end {
                from = owner;
                next = self.request_seq.fetch_add(ID_BLOCK, Ordering::Relaxed);
                end = next + ID_BLOCK;
            }
            cell.set((from, next + 1, end));
            next
        });
        RequestId::new(self.request_prefix, n)
    }
}

/// A request's id: twenty lower-case hex digits, so a header value, a JSON string and a log field as it stands,
/// with no check and no allocation (a `HeaderValue` cost both, and a reference count at every clone).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RequestId([u8; 20]);

impl RequestId {
    /// `{prefix:08x}{sequence:012x}`, on the stack. Twelve digits hold the sequence's low 48 bits, which last
    /// 2^48 requests: nine years at a million a second.
    fn new(prefix: u32, sequence: u64) -> Self {
        let mut id = [b'0'; 20];
        let (head, tail) = id.split_at_mut(8);
        // The lengths match (4 bytes to 8 digits, 6 to 12), so neither can fail; the zeros would stand if one did.
        let _ = hex::encode_to_slice(prefix.to_be_bytes(), head);
        let _ = hex::encode_to_slice(&sequence.to_be_bytes()[2..], tail);
        Self(id)
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        // Only `hex::encode_to_slice` writes the bytes.
        std::str::from_utf8(&self.0).unwrap_or("0")
    }

    /// For a writer that takes header maps only (hyper's).
    #[must_use]
    pub fn header_value(&self) -> http::HeaderValue {
        http::HeaderValue::from_bytes(&self.0).unwrap_or_else(|_| http::HeaderValue::from_static("0"))
    }
}

impl h1::HeaderText for RequestId {
    fn header_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Request sequence numbers a thread takes from [`Proxy::request_seq`] at a time.
const ID_BLOCK: u64 = 1024;

thread_local! {
    /// This thread's block of sequence numbers: the proxy it is from (its `instance`), the next, the end.
    static ID_BLOCKS: std::cell::Cell<(u64, u64, u64)> = const { std::cell::Cell::new((0, 0, 0)) };
}

/// Numbers proxies (from 1; 0 is no proxy) within the process.
static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(0);

/// A started proxy: bound addresses and the handle to stop it.
pub struct RunningProxy {
    pub proxy: Arc<Proxy>,
    /// Bound address of each `[[listener]]`, in file order (useful with port 0).
    pub listeners: Vec<SocketAddr>,
    pub admin: SocketAddr,
    tasks: JoinSet<()>,
    workers: Vec<std::thread::JoinHandle<()>>,
    /// Cancelled once draining is over: the workers then drop their runtimes.
    stopped: CancellationToken,
}

impl RunningProxy {
    /// Stops accepting, lets in-flight requests finish for up to `grace`, then closes what is left.
    pub async fn shutdown(mut self, grace: Duration) {
        self.proxy.ready.store(false, Ordering::Relaxed);
        self.proxy.shutdown.cancel();
        self.proxy.connections.drain_all();
        let deadline = tokio::time::Instant::now() + grace;
        while self.proxy.connections.total() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.proxy.connections.total();
        if left > 0 {
            tracing::warn!(
                connections = left,
                "shutdown grace period over; closing the remaining connections"
            );
            self.proxy.connections.close_all();
        }
        self.stopped.cancel();
        let workers = std::mem::take(&mut self.workers);
        let _ = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        })
        .await;
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        // A handle dropped without `shutdown` (a finished test) must not leave worker threads serving.
        self.proxy.shutdown.cancel();
        self.proxy.connections.close_all();
        self.stopped.cancel();
    }
}

/// Loads the config, binds the listeners and the admin endpoint, and starts serving.
///
/// Thread per core, like nginx's workers: each worker thread runs its own single-threaded runtime with its own
/// `SO_REUSEPORT` socket per listener, so a connection, its requests and its upstream connections stay on one
/// thread and never pay for cross-thread wake-ups. The admin endpoint runs on the caller's runtime.
pub async fn start(
    config_path: &Path,
    source_gate: Option<Arc<dyn SourceGate>>,
) -> Result<RunningProxy, Error> {
    let config = Config::load(config_path)?;
    let workers = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let generation = Generation::build(config, 1)?;
    // sockets[w][i]: worker w's socket for listener i.
    let mut sockets: Vec<Vec<TcpSocket>> = (0..workers).map(|_| Vec::new()).collect();
    let mut listeners = Vec::new();
    for (i, l) in generation.config.listeners.iter().enumerate() {
        let mut addr = l.listen;
        for per_worker in &mut sockets {
            let socket = reuseport_socket(addr)
                .map_err(|e| Error::io(format!("binding listener[{i}] on {}", l.listen), e))?;
            // With port 0 the first bind picks the port; the other workers join it.
            addr = socket
                .local_addr()
                .map_err(|e| Error::io("reading a listener's address", e))?;
            per_worker.push(socket);
        }
        tracing::info!(listener = i, %addr, tls = l.tls.is_some(), workers, "listening");
        listeners.push(addr);
    }
    let admin_addr = generation.config.admin.listen;
    let admin = TcpListener::bind(admin_addr)
        .await
        .map_err(|e| Error::io(format!("binding the admin listener on {admin_addr}"), e))?;
    let connections = Arc::new(ConnectionRegistry::default());
    let risk = Arc::new(build_enforcer(&generation.config, connections.clone())?);
    let source_gate = source_gate.or_else(|| Some(risk.clone() as Arc<dyn SourceGate>));
    let proxy = Arc::new(Proxy {
        config_path: config_path.to_owned(),
        current: ArcSwap::from_pointee(generation),
        metrics: Metrics::new(),
        connections,
        shutdown: CancellationToken::new(),
        ready: AtomicBool::new(false),
        risk,
        source_gate,
        request_seq: AtomicU64::new(0),
        instance: NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed) + 1,
        request_prefix: random_u32(),
        reload_lock: Mutex::new(()),
    });
    let stopped = CancellationToken::new();
    let mut handles = Vec::new();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), Error>>();
    for (w, per_worker) in sockets.into_iter().enumerate() {
        let (proxy, stopped, ready) = (proxy.clone(), stopped.clone(), ready_tx.clone());
        let handle = std::thread::Builder::new()
            .name(format!("proxy-worker-{w}"))
            .spawn(move || worker(w, &proxy, per_worker, &stopped, &ready))
            .map_err(|e| Error::io("starting a worker thread", e))?;
        handles.push(handle);
    }
    drop(ready_tx);
    let admin_bound = admin
        .local_addr()
        .map_err(|e| Error::io("reading the admin address", e))?;
    // From here on, dropping `running` (on an error below) stops the workers.
    let mut running = RunningProxy {
        proxy: proxy.clone(),
        listeners,
        admin: admin_bound,
        tasks: JoinSet::new(),
        workers: handles,
        stopped,
    };
    let started = tokio::task::spawn_blocking(move || {
        for _ in 0..workers {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(Error::Other("a worker thread died while starting".into())),
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| Error::Other(format!("waiting for the worker threads: {e}")))?;
    started?;
    tracing::info!(addr = %admin_bound, "admin listening");
    running.tasks.spawn(crate::admin::serve(proxy.clone(), admin));
    proxy.ready.store(true, Ordering::Relaxed);
    Ok(running)
}

fn reuseport_socket(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// One worker thread: a single-threaded runtime serving its share of every listener until `stopped`.
fn worker(
    index: usize,
    proxy: &Arc<Proxy>,
    sockets: Vec<TcpSocket>,
    stopped: &CancellationToken,
    ready: &std::sync::mpsc::Sender<Result<(), Error>>,
) {
    generation::set_worker_index(index);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(Error::io("starting a worker runtime", e)));
            return;
        }
    };
    runtime.block_on(async {
        for (i, socket) in sockets.into_iter().enumerate() {
            match socket.listen(1024) {
                Ok(listener) => {
                    tokio::spawn(server::serve_listener(proxy.clone(), i, listener));
                }
                Err(e) => {
                    let _ = ready.send(Err(Error::io(format!("listening on listener[{i}]"), e)));
                    return;
                }
            }
        }
        let _ = ready.send(Ok(()));
        let _held = crate::logging::hold_access_lines();
        let mut flush = tokio::time::interval(ACCESS_FLUSH);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stopped.cancelled() => break,
                _ = flush.tick() => crate::logging::flush_held_lines(),
            }
        }
    });
}

/// How often a worker hands its gathered access lines to the log queue (see `logging::hold_access_lines`).
const ACCESS_FLUSH: Duration = Duration::from_millis(100);

/// The self-protection loop: the kernel maps when `[xdp]` names interfaces (attached here), and a risk engine
/// that never bans loopback, the proxy's own addresses, its upstreams or the allowlists.
fn build_enforcer(config: &Config, connections: Arc<ConnectionRegistry>) -> Result<Enforcer, Error> {
    config.risk.check().map_err(Error::Config)?;
    let kernel = crate::xdp::daemon::setup(&config.xdp)?;
    let mut protected: Vec<Cidr> = config.xdp.allowlist.clone();
    let host = |ip: std::net::IpAddr| (!ip.is_unspecified()).then(|| Cidr::from(ip));
    protected.extend(config.listeners.iter().filter_map(|l| host(l.listen.ip())));
    protected.extend(
        config
            .upstreams
            .iter()
            .flat_map(|u| u.endpoints.iter())
            .filter_map(|e| host(e.ip())),
    );
    if let Some(maps) = &kernel {
        protected.extend(
            maps.list(crate::xdp::ListKind::Allowlist)?
                .into_iter()
                .map(|e| e.cidr),
        );
    }
    let routes: Vec<String> = config.routes.iter().map(|r| r.label().to_owned()).collect();
    let engine = RiskEngine::new(config.risk.clone(), &routes, protected);
    // A restarted daemon remembers its repeat offenders from the kernel's bans.
    if let Some(maps) = &kernel {
        let now = std::time::Instant::now();
        for ban in maps.bans()? {
            engine.note_strikes(ban.addr, ban.strikes, now);
        }
    }
    tracing::info!(mode = ?config.risk.mode, kernel = kernel.is_some(), "self-protection loop ready");
    let has_kernel = kernel.is_some();
    let enforcer = Enforcer::new(engine, kernel, connections);
    let pins = crate::xdp::PinDir::new(&config.xdp.pin_dir);
    Ok(match crate::xdp::loader::links(&pins)?.first() {
        Some(link) if has_kernel => enforcer.with_kernel_log(link.prog_id),
        _ => enforcer,
    })
}

/// The daemon: starts, reloads on SIGHUP, drains on SIGTERM or ctrl-c.
pub async fn run(config_path: &Path) -> Result<(), Error> {
    let running = start(config_path, None).await?;
    let grace = running.proxy.current.load().timeouts().shutdown_grace;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| Error::io("installing the SIGHUP handler", e))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::io("installing the SIGTERM handler", e))?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                ticks += 1;
                let proxy = running.proxy.clone();
                // Map reads are syscalls; keep them off the reactor threads.
                let _ = tokio::task::spawn_blocking(move || proxy.risk.tick(&proxy.metrics, ticks.is_multiple_of(10), ticks.is_multiple_of(60))).await;
            }
            _ = hup.recv() => {
                let proxy = running.proxy.clone();
                // Reading key files may block; keep it off the reactor threads.
                let _ = tokio::task::spawn_blocking(move || proxy.reload()).await;
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!(grace = %humantime::format_duration(grace), "shutting down: draining in-flight requests");
    running.shutdown(grace).await;
    tracing::info!("stopped");
    Ok(())
}

fn random_u32() -> u32 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    #[expect(clippy::cast_possible_truncation, reason = "any 32 bits of the hash will do")]
    let v = h.finish() as u32;
    v
}

#[cfg(test)]
mod tests {
    use super::RequestId;

    #[test]
    fn request_ids_are_what_format_would_write() {
        for (prefix, sequence) in [
            (0_u32, 0_u64),
            (0xdead_beef, 0xdead_beef),
            (5, 5),
            (u32::MAX, 0xffff_ffff_ffff),
        ] {
            assert_eq!(
                RequestId::new(prefix, sequence).as_str(),
                format!("{prefix:08x}{sequence:012x}")
            );
        }
        assert_eq!(
            RequestId::new(1, 0x1_0000_0000_0005).as_str(),
            "00000001000000000005",
            "the sequence keeps its low 48 bits"
        );
    }
}
