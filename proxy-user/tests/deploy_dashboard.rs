//! `deploy/grafana/rasp-proxy.json` queries only what a running proxy exports: the test starts `rasp-proxy run`
//! on loopback with an upstream of its own, sends requests that touch every metric family, scrapes `/metrics`,
//! and checks each metric name and each `by (...)` label the dashboard's expressions use.

#![expect(clippy::unwrap_used, reason = "test helpers: a failure here is a failed test")]

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_rasp-proxy");
/// Labels Prometheus adds to every series at scrape time (and the `ServiceMonitor` relabelling).
const TARGET_LABELS: [&str; 3] = ["instance", "job", "node"];

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// An HTTP/1.1 upstream answering `200 ok` to every request, one connection at a time, for the test's life.
fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(64) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    addr
}

/// One HTTP/1.1 exchange over a fresh connection: the status and the body.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.take(4 * 1024 * 1024).read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Ok((status, body))
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every `rasp_proxy_*` sample name in the scrape, with the label names its samples carry.
fn exported(scrape: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..end].to_owned()).or_default();
        if let Some(rest) = line[end..].strip_prefix('{') {
            let inner = &rest[..rest.find('}').unwrap_or(rest.len())];
            labels.extend(
                inner
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, _)| k.trim().to_owned()),
            );
        }
    }
    out
}

/// Every `PromQL` expression in the dashboard: panel targets and templating queries.
fn expressions(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) if s.contains('(') => out.push(s.clone()),
                    _ => expressions(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| expressions(v, out)),
        _ => {}
    }
}

/// Identifiers starting with `rasp_proxy_`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("rasp_proxy_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The label names in every `by (...)` clause.
fn grouping_labels(expr: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("by (") {
        let tail = &rest[at + 4..];
        let end = tail.find(')').unwrap_or(tail.len());
        labels.extend(
            tail[..end]
                .split(',')
                .map(|l| l.trim().to_owned())
                .filter(|l| !l.is_empty()),
        );
        rest = &tail[end..];
    }
    labels
}

/// Starts `rasp-proxy run` on loopback, sends one request per metric family (a proxied answer, a dead upstream,
/// a refused credential, a burst over the route's learned rate) and returns the `/metrics` text. Every family
/// must have a sample: prometheus-client writes only `# HELP`/`# TYPE` for a family nothing has touched.
fn scrape_a_running_proxy() -> String {
    let upstream = start_upstream();
    let dead = free_port();
    let (listen, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[admin]
listen = "{admin}"
[[listener]]
listen = "{listen}"
[[upstream]]
name = "live"
endpoints = ["{upstream}"]
[[upstream]]
name = "dead"
endpoints = ["{dead}"]
[[route]]
name = "api"
path_prefix = "/"
upstream = "live"
[[route]]
name = "down"
path_prefix = "/down"
upstream = "dead"
[[route]]
name = "private"
path_prefix = "/private"
upstream = "live"
auth = "jwt"
# Loopback is never banned, but a rate far above the route's learned normal is still counted as a rate refusal
# (in detect mode the request goes through): a one-second sample teaches the normal (one request), the next
# second's second request is over it.
[risk]
mode = "detect"
rate_bucket = "1s"
rate_min_samples = 1
rate_min_rps = 1.0
rate_factor = 1.0
"#
        ),
    )
    .unwrap();
    let _daemon = Daemon(
        Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !matches!(http_get(admin, "/readyz"), Ok((200, _))) {
        assert!(
            Instant::now() < deadline,
            "rasp-proxy did not become ready on {admin}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(http_get(listen, "/hello").unwrap().0, 200);
    assert_eq!(http_get(listen, "/down/x").unwrap().0, 502);
    assert_eq!(http_get(listen, "/private/x").unwrap().0, 401);
    // A risk action: the "api" route learned one request per second above; three in the next second are over it.
    std::thread::sleep(Duration::from_millis(1100));
    for _ in 0..3 {
        assert_eq!(
            http_get(listen, "/hello").unwrap().0,
            200,
            "detect mode refuses nothing"
        );
    }
    let (status, scrape) = http_get(admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    scrape
}

/// Exported only while the daemon runs with XDP (read from the kernel maps at scrape time), with their labels.
/// `tests/tests/self_protection.rs` checks them against such a daemon (it needs root and network namespaces).
const KERNEL_ONLY: [(&str, &[&str]); 3] = [
    ("rasp_proxy_xdp_packets_total", &["outcome"]),
    ("rasp_proxy_xdp_bytes_total", &["outcome"]),
    ("rasp_proxy_top_source_packets_per_second", &["source"]),
];

#[test]
fn every_metric_the_dashboard_queries_is_exported_by_a_running_proxy() {
    let exported = exported(&scrape_a_running_proxy());

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/rasp-proxy.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    expressions(&dashboard, &mut exprs);
    assert!(
        exprs.len() >= 10,
        "found only {} expressions in {}",
        exprs.len(),
        path.display()
    );
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        if names.is_empty() {
            problems.push(format!("queries no rasp_proxy_ metric: {expr}"));
        }
        let mut available: BTreeSet<String> = TARGET_LABELS.iter().map(|l| (*l).to_owned()).collect();
        for name in &names {
            match (exported.get(name), KERNEL_ONLY.iter().find(|(k, _)| k == name)) {
                (Some(labels), _) => available.extend(labels.iter().cloned()),
                (None, Some((_, labels))) => available.extend(labels.iter().map(|l| (*l).to_owned())),
                (None, None) => problems.push(format!("{name} is not exported (in: {expr})")),
            }
        }
        for label in grouping_labels(expr) {
            if !available.contains(&label) {
                problems.push(format!("label {label:?} is on none of {names:?} (in: {expr})"));
            }
        }
        used.extend(names);
    }
    assert!(
        problems.is_empty(),
        "the dashboard queries what the proxy does not export:\n{}\n\nexported: {:?}",
        problems.join("\n"),
        exported.keys().collect::<Vec<_>>()
    );
    // The panels the dashboard promises: requests and latency by route, refusals, connections, upstreams,
    // self-protection actions, kernel bans in force.
    for needed in [
        "rasp_proxy_requests_total",
        "rasp_proxy_request_duration_seconds_bucket",
        "rasp_proxy_auth_failures_total",
        "rasp_proxy_upstream_errors_total",
        "rasp_proxy_open_connections",
        "rasp_proxy_rejected_connections_total",
        "rasp_proxy_risk_actions_total",
        "rasp_proxy_bans_active",
        "rasp_proxy_xdp_packets_total",
        "rasp_proxy_top_source_packets_per_second",
    ] {
        assert!(used.contains(needed), "the dashboard has no panel on {needed}");
    }
}

#[test]
fn metric_and_label_extraction_reads_promql() {
    let expr = r#"histogram_quantile(0.95, sum by (route, le) (rate(rasp_proxy_request_duration_seconds_bucket{instance=~"$instance"}[5m]))) / sum by (kind) (rasp_proxy_auth_failures_total)"#;
    assert_eq!(
        metric_names(expr).into_iter().collect::<Vec<_>>(),
        [
            "rasp_proxy_auth_failures_total",
            "rasp_proxy_request_duration_seconds_bucket"
        ]
    );
    assert_eq!(
        grouping_labels(expr).into_iter().collect::<Vec<_>>(),
        ["kind", "le", "route"]
    );
    let scrape = "# TYPE x counter\nrasp_proxy_requests_total{route=\"api\",status=\"200\"} 1\nrasp_proxy_open_connections 0\n";
    let exported = exported(scrape);
    assert_eq!(
        exported["rasp_proxy_requests_total"].iter().collect::<Vec<_>>(),
        ["route", "status"]
    );
    assert!(exported["rasp_proxy_open_connections"].is_empty());
}
