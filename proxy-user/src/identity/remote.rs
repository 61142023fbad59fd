//! A JWKS fetched from a URL: cached, refreshed on a timer and on an unknown `kid`, never more often than the
//! configured minimum interval, so tokens with made-up `kid`s cannot turn the proxy into a load generator against
//! the identity provider.

use std::{
    net::IpAddr,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use rustls::{RootCertStore, pki_types::CertificateDer, pki_types::pem::PemObject as _};

use super::{
    config::JwtIssuerConfig,
    keys::{KeySet, MAX_JWKS_BYTES, parse_jwks},
};
use crate::Error;

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

pub(crate) struct RemoteJwks {
    url: Uri,
    client: HttpsClient,
    keys: ArcSwap<KeySet>,
    refresh_every: Duration,
    min_interval: Duration,
    timeout: Duration,
    /// Held for the whole of a fetch, so concurrent triggers share one request; remembers when the last one began.
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RemoteJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteJwks")
            .field("url", &self.url)
            .field("keys", &self.keys.load().len())
            .finish_non_exhaustive()
    }
}

/// Why a refresh did not produce new keys.
#[derive(Debug)]
pub(crate) enum RefreshError {
    /// The last fetch was too recent; the cached keys stand.
    TooSoon,
    Failed(String),
}

impl std::fmt::Display for RefreshError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooSoon => f.write_str("fetched too recently"),
            Self::Failed(why) => f.write_str(why),
        }
    }
}

impl RemoteJwks {
    /// Checks the URL and builds the client; fetches nothing (that needs the runtime, see [`Self::refresh`]).
    pub(crate) fn new(url: &str, cfg: &JwtIssuerConfig, at: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::Config(format!("{at}.jwks_url {url:?}: {why}"));
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if cfg.danger_allow_plain_http_jwks || is_loopback_host(host) => {}
            Some("http") => {
                return Err(bad(
                    "plain http to a non-loopback host lets anyone on the path replace the keys; use https \
                     (or set danger_allow_plain_http_jwks = true)",
                ));
            }
            _ => return Err(bad("scheme must be https (or http to a loopback host)")),
        }
        if cfg.jwks_timeout.is_zero() {
            return Err(Error::Config(format!("{at}.jwks_timeout: must be above zero")));
        }
        if cfg.jwks_min_refresh.is_zero() || cfg.jwks_refresh < cfg.jwks_min_refresh {
            return Err(Error::Config(format!(
                "{at}: jwks_min_refresh must be above zero and no longer than jwks_refresh"
            )));
        }
        let roots = match (&cfg.jwks_ca_file, uri.scheme_str()) {
            (Some(ca), _) => roots_from_file(ca, at)?,
            (None, Some("https")) => native_roots(at)?,
            (None, _) => RootCertStore::empty(),
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(&format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.jwks_timeout));
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .build(connector);
        Ok(Self {
            url: uri,
            client,
            keys: ArcSwap::from_pointee(KeySet::default()),
            refresh_every: cfg.jwks_refresh,
            min_interval: cfg.jwks_min_refresh,
            timeout: cfg.jwks_timeout,
            last_attempt: tokio::sync::Mutex::new(None),
        })
    }

    pub(crate) fn keys(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    pub(crate) fn url(&self) -> &Uri {
        &self.url
    }

    pub(crate) fn refresh_every(&self) -> Duration {
        self.refresh_every
    }

    pub(crate) fn min_interval(&self) -> Duration {
        self.min_interval
    }

    /// Refreshes because a token named a `kid` the cache lacks. Returns whether the set now holds `kid`, which may
    /// be thanks to a fetch another request started while this one waited.
    pub(crate) async fn refresh_for_kid(&self, kid: &str) -> bool {
        let mut last = self.last_attempt.lock().await;
        if self.keys.load().contains_kid(kid) {
            return true;
        }
        if last.is_some_and(|t| t.elapsed() < self.min_interval) {
            tracing::debug!(url = %self.url, "unknown kid; JWKS fetched too recently to refetch");
            return false;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(set) => {
                let found = set.contains_kid(kid);
                self.store(set);
                found
            }
            Err(e) => {
                tracing::warn!(url = %self.url, "JWKS refresh after an unknown kid failed, keeping the cached keys: {e}");
                false
            }
        }
    }

    /// A scheduled or start-up refresh. Honours the minimum interval unless `force`.
    pub(crate) async fn refresh(&self, force: bool) -> Result<(), RefreshError> {
        let mut last = self.last_attempt.lock().await;
        if !force && last.is_some_and(|t| t.elapsed() < self.min_interval) {
            return Err(RefreshError::TooSoon);
        }
        *last = Some(Instant::now());
        let set = self.fetch().await.map_err(RefreshError::Failed)?;
        self.store(set);
        Ok(())
    }

    fn store(&self, set: KeySet) {
        tracing::info!(url = %self.url, keys = set.len(), "JWKS loaded");
        self.keys.store(Arc::new(set));
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let request = Request::get(self.url.clone())
            .header(header::ACCEPT, "application/jwk-set+json, application/json")
            .header(
                header::USER_AGENT,
                concat!("rasp-proxy/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| format!("building the request: {e}"))?;
        let body = tokio::time::timeout(self.timeout, async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("request failed: {e:#}"))?;
            if response.status() != StatusCode::OK {
                return Err(format!("answered {}", response.status()));
            }
            Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
                .map_err(|e| format!("reading the body: {e}"))
        })
        .await
        .map_err(|_| {
            format!(
                "no complete answer within {}",
                humantime::format_duration(self.timeout)
            )
        })??;
        parse_jwks(&body, &self.url.to_string())
    }
}

fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn roots_from_file(path: &Path, at: &str) -> Result<RootCertStore, Error> {
    let what = format!("{at}.jwks_ca_file {}", path.display());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| Error::Config(format!("{what}: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Config(format!("{what}: {e}")))?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(Error::Config(format!("{what}: no usable CA certificate")));
    }
    Ok(roots)
}

fn native_roots(at: &str) -> Result<RootCertStore, Error> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(Error::Config(format!(
            "{at}.jwks_url: no system CA certificates found (install ca-certificates, or set jwks_ca_file)"
        )));
    }
    Ok(roots)
}
