//! The L7 proxy: listeners, TLS, the request pipeline and the upstream pool.
//!
//! [`Proxy`] holds what outlives a config generation (metrics, the connection registry, the shutdown switch);
//! [`generation::Generation`] holds what a reload replaces. [`start`] binds everything and returns a
//! [`RunningProxy`] handle; [`run`] is the daemon around it (signals, drain).

pub mod body;
pub mod connections;
pub mod generation;
pub mod pipeline;
pub mod router;
pub mod server;
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
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

pub use self::server::{ConnectionVerdict, SourceGate};
use self::{connections::ConnectionRegistry, generation::Generation};
use crate::{Error, config::Config, metrics::Metrics};

/// State shared by every connection, across config generations.
pub struct Proxy {
    config_path: PathBuf,
    pub current: ArcSwap<Generation>,
    pub metrics: Metrics,
    pub connections: Arc<ConnectionRegistry>,
    /// Cancelled on SIGTERM / ctrl-c: listeners stop accepting, connections finish their in-flight requests.
    pub shutdown: CancellationToken,
    pub ready: AtomicBool,
    source_gate: Option<Arc<dyn SourceGate>>,
    request_seq: AtomicU64,
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

    fn next_request_id(&self) -> String {
        let n = self.request_seq.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}{n:012x}", self.request_prefix)
    }
}

/// A started proxy: bound addresses and the handle to stop it.
pub struct RunningProxy {
    pub proxy: Arc<Proxy>,
    /// Bound address of each `[[listener]]`, in file order (useful with port 0).
    pub listeners: Vec<SocketAddr>,
    pub admin: SocketAddr,
    tasks: JoinSet<()>,
}

impl RunningProxy {
    /// Stops accepting, lets in-flight requests finish for up to `grace`, then closes what is left.
    pub async fn shutdown(mut self, grace: Duration) {
        self.proxy.ready.store(false, Ordering::Relaxed);
        self.proxy.shutdown.cancel();
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
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Loads the config, binds the listeners and the admin endpoint, and starts serving.
pub async fn start(
    config_path: &Path,
    source_gate: Option<Arc<dyn SourceGate>>,
) -> Result<RunningProxy, Error> {
    let config = Config::load(config_path)?;
    let generation = Generation::build(config, 1)?;
    let mut bound = Vec::new();
    for (i, l) in generation.config.listeners.iter().enumerate() {
        let listener = TcpListener::bind(l.listen)
            .await
            .map_err(|e| Error::io(format!("binding listener[{i}] on {}", l.listen), e))?;
        bound.push(listener);
    }
    let admin_addr = generation.config.admin.listen;
    let admin = TcpListener::bind(admin_addr)
        .await
        .map_err(|e| Error::io(format!("binding the admin listener on {admin_addr}"), e))?;
    let proxy = Arc::new(Proxy {
        config_path: config_path.to_owned(),
        current: ArcSwap::from_pointee(generation),
        metrics: Metrics::new(),
        connections: Arc::new(ConnectionRegistry::default()),
        shutdown: CancellationToken::new(),
        ready: AtomicBool::new(false),
        source_gate,
        request_seq: AtomicU64::new(0),
        request_prefix: random_u32(),
        reload_lock: Mutex::new(()),
    });
    let mut tasks = JoinSet::new();
    let mut listeners = Vec::new();
    for (i, l) in bound.into_iter().enumerate() {
        let addr = l
            .local_addr()
            .map_err(|e| Error::io("reading a listener's address", e))?;
        tracing::info!(listener = i, %addr, tls = proxy.current.load().tls[i].is_some(), "listening");
        listeners.push(addr);
        tasks.spawn(server::serve_listener(proxy.clone(), i, l));
    }
    let admin_bound = admin
        .local_addr()
        .map_err(|e| Error::io("reading the admin address", e))?;
    tracing::info!(addr = %admin_bound, "admin listening");
    tasks.spawn(crate::admin::serve(proxy.clone(), admin));
    proxy.ready.store(true, Ordering::Relaxed);
    Ok(RunningProxy {
        proxy,
        listeners,
        admin: admin_bound,
        tasks,
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
    loop {
        tokio::select! {
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
