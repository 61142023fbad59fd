//! The daemon's config file: TOML parsed once into typed values. Serde rejects unknown keys, bad addresses and
//! bad durations with the line and key; [`Config::load`] then checks what serde cannot see (unknown upstream
//! names, missing files, duplicate names) and names the key in the same way (`route[2].upstream`).

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer};

use crate::{
    Error,
    addr::Cidr,
    cli::DEFAULT_PIN_DIR,
    identity::config::{ApiKeyConfig, AuthMode, JwtConfig},
};

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub xdp: XdpConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub jwt: JwtConfig,
    #[serde(default)]
    pub api_key: Vec<ApiKeyConfig>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub forwarding: ForwardingConfig,
    /// `[inspection]`: the payload inspector's policy (see `crate::inspect::Policy`); absent, nothing is
    /// inspected and no body is buffered.
    #[serde(default)]
    pub inspection: Option<crate::inspect::Policy>,
    /// `[risk]`: the self-protection loop (scores, bans, identity blocks). Defaults apply when absent.
    #[serde(default)]
    pub risk: crate::risk::RiskConfig,
}

/// `[xdp]`: where the kernel data plane attaches and what it is told. The daemon's integrator hands these to
/// the XDP loader; the proxy itself only parses them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdpConfig {
    /// Interfaces to attach to; empty means L7 only.
    #[serde(default)]
    pub interfaces: Vec<String>,
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    #[serde(default, deserialize_with = "deserialize_cidrs")]
    pub allowlist: Vec<Cidr>,
    #[serde(default, deserialize_with = "deserialize_cidrs")]
    pub blocklist: Vec<Cidr>,
    /// Packets per second per source above which the kernel drops; `None` leaves rate limiting off.
    #[serde(default)]
    pub rate_limit_pps: Option<u32>,
    /// `native` (in the driver) or `skb` (generic, for drivers without XDP support).
    #[serde(default)]
    pub mode: crate::xdp::AttachMode,
}

impl Default for XdpConfig {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            pin_dir: default_pin_dir(),
            allowlist: Vec::new(),
            blocklist: Vec::new(),
            rate_limit_pps: None,
            mode: crate::xdp::AttachMode::Native,
        }
    }
}

fn default_pin_dir() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_DIR)
}

fn deserialize_cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|s| s.parse::<Cidr>().map_err(serde::de::Error::custom))
        .collect()
}

/// `[admin]`: metrics, health and the admin API. Loopback by default because reload is unauthenticated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
        }
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}

/// One `[[listener]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub listen: SocketAddr,
    /// Present: TLS (HTTP/1.1 and HTTP/2 by ALPN). Absent: plain HTTP/1.1 and h2c with prior knowledge.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// A listener's certificates: the default one, and extra ones picked by SNI.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Extra certificates; each is served to clients whose SNI matches one of its names.
    #[serde(default)]
    pub sni: Vec<SniCertConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniCertConfig {
    /// Server names (exact, lower case) this certificate answers for.
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One `[[upstream]]`: a named set of equivalent endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    pub endpoints: Vec<SocketAddr>,
    /// Consecutive transport failures (refused, reset, timed out) after which an endpoint is ejected.
    #[serde(default = "default_eject_after")]
    pub eject_after_failures: u32,
    /// How long an ejected endpoint stays out of the rotation.
    #[serde(default = "default_eject_cooldown", with = "humantime_serde")]
    pub eject_cooldown: Duration,
}

fn default_eject_after() -> u32 {
    3
}

fn default_eject_cooldown() -> Duration {
    Duration::from_secs(10)
}

/// One `[[route]]`. The most specific match wins: host, then longest `path_prefix`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Shown in logs, metrics and events; defaults to the path prefix.
    #[serde(default)]
    pub name: Option<String>,
    /// Exact `Host` (without port) this route answers; absent means any host.
    #[serde(default)]
    pub host: Option<String>,
    pub path_prefix: String,
    pub upstream: String,
    #[serde(default)]
    pub auth: AuthMode,
    /// Allowed methods; empty means all.
    #[serde(default, deserialize_with = "deserialize_methods")]
    pub methods: Vec<http::Method>,
    /// Scopes a caller must hold (JWT `scope`/`scp`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// This route's changes to `[inspection]` (threshold, exclusions for fields that legitimately carry code).
    #[serde(default)]
    pub inspection: Option<crate::inspect::PolicyOverride>,
    /// How much this route's security events weigh in the risk engine (e.g. 2.0 for an admin route).
    #[serde(default = "default_sensitivity")]
    pub sensitivity: f64,
}

fn default_sensitivity() -> f64 {
    1.0
}

impl RouteConfig {
    /// The label used in logs and metrics.
    #[must_use]
    pub fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.path_prefix)
    }
}

fn deserialize_methods<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<http::Method>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|m| {
            http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| serde::de::Error::custom(format!("invalid HTTP method {m:?}")))
        })
        .collect()
}

/// `[forwarding]`: which peers' forwarding headers are believed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardingConfig {
    /// Peers (load balancers, CDNs) whose `X-Forwarded-For` is kept and appended to. From any other peer the
    /// header is replaced by the peer's address: a client cannot make the upstream believe it is someone else.
    #[serde(default)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// `[limits]`: what one client may send. Defaults are close to nginx's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Bytes of request line plus headers (HTTP/1 read buffer, HTTP/2 header list); larger gets 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Request body bytes; larger gets 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Open connections one source address may hold; more are closed at accept.
    #[serde(default = "default_max_connections_per_source")]
    pub max_connections_per_source: u32,
    /// Body bytes buffered for the inspector; the rest streams past it.
    #[serde(default = "default_inspect_body_bytes")]
    pub inspect_body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            max_body_bytes: default_max_body_bytes(),
            max_connections_per_source: default_max_connections_per_source(),
            inspect_body_bytes: default_inspect_body_bytes(),
        }
    }
}

fn default_max_header_bytes() -> usize {
    16 * 1024
}
fn default_max_headers() -> usize {
    100
}
fn default_max_body_bytes() -> u64 {
    10 * 1024 * 1024
}
fn default_max_connections_per_source() -> u32 {
    256
}
fn default_inspect_body_bytes() -> usize {
    64 * 1024
}

/// `[timeouts]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Time for a client to send a complete request head (slowloris guard).
    #[serde(default = "default_header_read", with = "humantime_serde")]
    pub header_read: Duration,
    /// A connection with no traffic for this long is closed (after its in-flight requests finish). On HTTP/1.1
    /// a response that the client stops reading, or whose body the upstream stops sending, for this long is
    /// cut as well.
    #[serde(default = "default_idle", with = "humantime_serde")]
    pub idle: Duration,
    #[serde(default = "default_upstream_connect", with = "humantime_serde")]
    pub upstream_connect: Duration,
    /// Time from sending the request upstream to its response head; beyond it the client gets 504.
    #[serde(default = "default_upstream_response", with = "humantime_serde")]
    pub upstream_response: Duration,
    /// On SIGTERM, in-flight requests get this long to finish.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            header_read: default_header_read(),
            idle: default_idle(),
            upstream_connect: default_upstream_connect(),
            upstream_response: default_upstream_response(),
            shutdown_grace: default_shutdown_grace(),
        }
    }
}

fn default_header_read() -> Duration {
    Duration::from_secs(10)
}
fn default_idle() -> Duration {
    Duration::from_mins(1)
}
fn default_upstream_connect() -> Duration {
    Duration::from_secs(5)
}
fn default_upstream_response() -> Duration {
    Duration::from_secs(30)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}

/// `[log]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// File (appended to) for the `security` stream; absent means stdout alongside the access log.
    #[serde(default)]
    pub security_file: Option<PathBuf>,
    /// Header carrying the request id to the upstream and back to the client.
    #[serde(default = "default_request_id_header")]
    pub request_id_header: Option<String>,
}

#[expect(clippy::unnecessary_wraps, reason = "serde default must match the field type")]
fn default_request_id_header() -> Option<String> {
    Some("x-request-id".to_owned())
}

impl LogConfig {
    #[must_use]
    pub fn request_id_header(&self) -> &str {
        self.request_id_header.as_deref().unwrap_or("x-request-id")
    }
}

impl Config {
    /// Reads, parses and checks a config file. Relative paths inside it are taken from the file's directory.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading config {}", path.display()), e))?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::parse(&text, base).map_err(|e| match e {
            Error::Config(msg) => Error::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Parses config text; `base` resolves relative file paths.
    pub fn parse(text: &str, base: &Path) -> Result<Self, Error> {
        let mut config: Self = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        config.resolve_paths(base);
        config.check()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for l in &mut self.listeners {
            if let Some(tls) = &mut l.tls {
                fix(&mut tls.cert);
                fix(&mut tls.key);
                for s in &mut tls.sni {
                    fix(&mut s.cert);
                    fix(&mut s.key);
                }
            }
        }
        if let Some(p) = &mut self.log.security_file {
            fix(p);
        }
        for i in &mut self.jwt.issuer {
            for p in [&mut i.public_key_file, &mut i.jwks_file, &mut i.jwks_ca_file]
                .into_iter()
                .flatten()
            {
                fix(p);
            }
        }
    }

    fn check(&self) -> Result<(), Error> {
        let bad = |key: String, msg: String| Err(Error::Config(format!("{key}: {msg}")));
        if self.listeners.is_empty() {
            return bad("listener".into(), "at least one [[listener]] is required".into());
        }
        let mut seen = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            // Port 0 (any free port, for tests) may repeat.
            if l.listen.port() != 0 && !seen.insert(l.listen) {
                return bad(
                    format!("listener[{i}].listen"),
                    format!("{} is listed twice", l.listen),
                );
            }
            if let Some(tls) = &l.tls {
                let files = std::iter::once((format!("listener[{i}].tls"), &tls.cert, &tls.key)).chain(
                    tls.sni
                        .iter()
                        .enumerate()
                        .map(|(j, s)| (format!("listener[{i}].tls.sni[{j}]"), &s.cert, &s.key)),
                );
                for (key, cert, key_file) in files {
                    for (what, p) in [("cert", cert), ("key", key_file)] {
                        if !p.is_file() {
                            return bad(format!("{key}.{what}"), format!("file {} not found", p.display()));
                        }
                    }
                }
            }
        }
        let mut names = HashSet::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            if !names.insert(u.name.as_str()) {
                return bad(
                    format!("upstream[{i}].name"),
                    format!("upstream {:?} is defined twice", u.name),
                );
            }
            if u.endpoints.is_empty() {
                return bad(
                    format!("upstream[{i}].endpoints"),
                    "at least one endpoint is required".into(),
                );
            }
            if u.eject_after_failures == 0 {
                return bad(
                    format!("upstream[{i}].eject_after_failures"),
                    "must be at least 1".into(),
                );
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            if !names.contains(r.upstream.as_str()) {
                return bad(
                    format!("route[{i}].upstream"),
                    format!("no [[upstream]] is named {:?}", r.upstream),
                );
            }
            if !r.path_prefix.starts_with('/') {
                return bad(
                    format!("route[{i}].path_prefix"),
                    format!("{:?} must start with '/'", r.path_prefix),
                );
            }
        }
        if self.limits.max_header_bytes < 8192 {
            return bad("limits.max_header_bytes".into(), "must be at least 8192".into());
        }
        if let Some(h) = &self.log.request_id_header
            && http::HeaderName::from_bytes(h.as_bytes()).is_err()
        {
            return bad(
                "log.request_id_header".into(),
                format!("{h:?} is not a valid header name"),
            );
        }
        if http::HeaderName::from_bytes(self.jwt.subject_header.as_bytes()).is_err() {
            return bad(
                "jwt.subject_header".into(),
                format!("{:?} is not a valid header name", self.jwt.subject_header),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICKSTART: &str = r#"
[xdp]
interfaces = ["eth0"]            # where the XDP program attaches; empty = L7 only
pin_dir = "/sys/fs/bpf/rasp-proxy"

[admin]
listen = "127.0.0.1:9901"        # /metrics, /healthz, /readyz, admin API; loopback by default

[[listener]]
listen = "0.0.0.0:8080"

[[listener]]
listen = "0.0.0.0:8443"
tls = { cert = "tls/server.crt", key = "tls/server.key" }

[[upstream]]
name = "orders"
endpoints = ["127.0.0.1:9001", "127.0.0.1:9002"]

[[route]]
path_prefix = "/orders"
upstream = "orders"
auth = "jwt"                     # none | jwt | api_key | jwt_or_api_key
methods = ["GET", "POST"]

[[route]]
path_prefix = "/"
upstream = "orders"
auth = "none"

[[jwt.issuer]]
issuer = "https://auth.example.test"
audiences = ["orders"]
algorithms = ["HS256"]
secret_env = "JWT_SECRET"        # alternatives: public_key_file, jwks_file, jwks_url
"#;

    fn with_tls_files() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tls")).unwrap();
        std::fs::write(dir.path().join("tls/server.crt"), "x").unwrap();
        std::fs::write(dir.path().join("tls/server.key"), "x").unwrap();
        dir
    }

    #[test]
    fn quickstart_parses_as_written() {
        let dir = with_tls_files();
        let c = Config::parse(QUICKSTART, dir.path()).unwrap();
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(c.routes[0].auth, AuthMode::Jwt);
        assert_eq!(c.routes[0].methods, vec![http::Method::GET, http::Method::POST]);
        assert_eq!(
            c.jwt.issuer[0].algorithms,
            vec![crate::identity::config::Algorithm::HS256]
        );
        assert_eq!(
            c.listeners[1].tls.as_ref().unwrap().cert,
            dir.path().join("tls/server.crt")
        );
        assert_eq!(c.limits.max_body_bytes, 10 * 1024 * 1024);
        assert!(c.inspection.is_none());
    }

    #[test]
    fn errors_name_the_key() {
        let dir = with_tls_files();
        let err = |text: &str| Config::parse(text, dir.path()).unwrap_err().to_string();
        let e = err(&QUICKSTART.replace("pin_dir", "pin_dri"));
        assert!(e.contains("pin_dri"), "{e}");
        let e = err(&QUICKSTART.replace(
            "upstream = \"orders\"\nauth = \"none\"",
            "upstream = \"nope\"\nauth = \"none\"",
        ));
        assert!(e.contains("route[1].upstream") && e.contains("nope"), "{e}");
        let e = err(&QUICKSTART.replace("127.0.0.1:9002", "127.0.0.1:99999"));
        assert!(e.contains("endpoints"), "{e}");
        let e = err(&QUICKSTART.replace("tls/server.key", "tls/missing.key"));
        assert!(
            e.contains("listener[1].tls.key") && e.contains("missing.key"),
            "{e}"
        );
        let e = err(&format!("{QUICKSTART}\n[timeouts]\nidle = \"ten seconds\"\n"));
        assert!(e.contains("idle"), "{e}");
        let e = err(&QUICKSTART.replace("auth = \"none\"", "auth = \"nobody\""));
        assert!(e.contains("auth"), "{e}");
        let e = err(&QUICKSTART.replace(
            "pin_dir = \"/sys/fs/bpf/rasp-proxy\"",
            "blocklist = [\"10.0.0.0/33\"]",
        ));
        assert!(e.contains("blocklist"), "{e}");
    }

    #[test]
    fn xdp_lists_and_inspection_parse() {
        let dir = with_tls_files();
        let text = QUICKSTART.replace(
            "pin_dir = \"/sys/fs/bpf/rasp-proxy\"",
            "allowlist = [\"10.0.0.0/8\"]\nblocklist = [\"192.0.2.7\"]\nrate_limit_pps = 5000",
        ) + "\n[inspection]\nmode = \"block\"\n";
        let c = Config::parse(&text, dir.path()).unwrap();
        assert_eq!(c.xdp.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
        assert_eq!(c.xdp.allowlist[0].to_string(), "10.0.0.0/8");
        assert_eq!(c.xdp.blocklist[0].to_string(), "192.0.2.7/32");
        assert_eq!(c.xdp.rate_limit_pps, Some(5000));
        assert!(c.inspection.is_some());
        assert_eq!(c.risk.mode, crate::risk::Mode::Block);
    }
}
