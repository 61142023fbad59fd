//! A config generation: everything the request path reads, built from one [`Config`] and swapped in whole on
//! reload. In-flight requests keep the generation they started with, so a reload never changes a request
//! half-way, and the old generation (with its upstream connection pool) is freed when its last request ends.

use std::{collections::HashMap, sync::Arc, time::Duration};

use http::HeaderName;
use hyper_util::{
    rt::{TokioExecutor, TokioTimer},
    server::conn::auto,
};
use tokio_rustls::TlsAcceptor;

use super::{
    pool::{UpstreamPools, WorkerPool},
    router::Router,
    tls,
    upstream::Upstream,
};
use crate::{
    Error,
    config::{Config, Limits, Timeouts},
    identity::{Authenticator, JwksRefreshTasks},
};

pub struct Generation {
    pub number: u64,
    pub config: Arc<Config>,
    pub router: Router,
    /// One per `[[listener]]`, in file order; `None` for plain listeners.
    pub tls: Vec<Option<TlsAcceptor>>,
    /// Idle upstream connections, one pool per worker thread, so a connection is always driven by the thread
    /// that uses it. Use [`Generation::upstream_pool`].
    pools: UpstreamPools,
    pub server: auto::Builder<TokioExecutor>,
    pub subject_header: HeaderName,
    pub request_id_header: HeaderName,
    /// Built here so a bad key file or issuer refuses the whole reload, like any other config error.
    pub authenticator: Arc<Authenticator>,
    /// This generation's JWKS refresh tasks: they end when the generation is dropped, after its last request.
    _jwks_refresh: Option<JwksRefreshTasks>,
}

impl Generation {
    pub fn build(config: Config, number: u64) -> Result<Self, Error> {
        let upstreams: HashMap<&str, Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|u| (u.name.as_str(), Arc::new(Upstream::new(u))))
            .collect();
        let router = Router::new(&config.routes, config.inspection.as_ref(), |name| {
            upstreams.get(name).cloned()
        })
        .ok_or_else(|| Error::Config("a route names an unknown upstream".into()))?;
        let tls = config
            .listeners
            .iter()
            .map(|l| {
                l.tls
                    .as_ref()
                    .map(|t| tls::server_config(t).map(TlsAcceptor::from))
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        let subject_header = header_name("jwt.subject_header", &config.jwt.subject_header)?;
        let request_id_header = header_name("log.request_id_header", config.log.request_id_header())?;
        let authenticator = Arc::new(Authenticator::from_config(&config.jwt, &config.api_key)?);
        check_api_key_routes(&config)?;
        // `rasp-proxy check` builds a generation outside any runtime: it validates keys and fetches nothing.
        let jwks_refresh = tokio::runtime::Handle::try_current()
            .is_ok()
            .then(|| authenticator.spawn_jwks_refresh());
        Ok(Self {
            number,
            router,
            tls,
            pools: UpstreamPools::new(worker_count(), config.timeouts.upstream_connect),
            server: server_builder(&config.limits, &config.timeouts),
            subject_header,
            request_id_header,
            authenticator,
            _jwks_refresh: jwks_refresh,
            config: Arc::new(config),
        })
    }

    /// The calling worker thread's upstream connections.
    #[must_use]
    pub fn upstream_pool(&self) -> &std::sync::Arc<WorkerPool> {
        self.pools.worker(WORKER_INDEX.with(std::cell::Cell::get))
    }

    #[must_use]
    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    #[must_use]
    pub fn timeouts(&self) -> &Timeouts {
        &self.config.timeouts
    }
}

/// An API key limited to a route that does not exist is a typo that would lock its holder out: refuse it.
fn check_api_key_routes(config: &Config) -> Result<(), Error> {
    for (i, key) in config.api_key.iter().enumerate() {
        for (j, name) in key.routes.iter().enumerate() {
            if !config.routes.iter().any(|r| r.label() == name) {
                return Err(Error::Config(format!(
                    "api_key[{i}].routes[{j}]: no [[route]] is named {name:?} (a route's name, or its \
                     path_prefix when it has none)"
                )));
            }
        }
    }
    Ok(())
}

thread_local! {
    static WORKER_INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the calling thread as proxy worker `index` (see [`Generation::upstream_pool`]).
pub fn set_worker_index(index: usize) {
    WORKER_INDEX.with(|w| w.set(index));
}

fn worker_count() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

fn header_name(key: &str, value: &str) -> Result<HeaderName, Error> {
    HeaderName::from_bytes(value.as_bytes())
        .map_err(|_| Error::Config(format!("{key}: {value:?} is not a valid header name")))
}

/// The header count hyper's HTTP/1 server enforces when it is not given one.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

fn server_builder(limits: &Limits, timeouts: &Timeouts) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    let mut h1 = b.http1();
    h1.timer(TokioTimer::new())
        .header_read_timeout(timeouts.header_read)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    // hyper parses into stack arrays sized for its default; any explicit cap (even that same number) makes it
    // build two heap-sized arrays per request head instead, a few KiB of copying on every request.
    if limits.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        h1.max_headers(limits.max_headers);
    }
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(Some(256))
        .keep_alive_interval(Some(timeouts.idle / 2))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}
