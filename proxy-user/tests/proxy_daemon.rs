//! The `rasp-proxy` binary: `check`, and `run` with its logs, SIGHUP reload and SIGTERM drain.

mod proxy_support;

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use proxy_support::{Pki, Upstream, get};

const BIN: &str = env!("CARGO_BIN_EXE_rasp-proxy");

#[expect(clippy::unwrap_used, reason = "test helper: a failure here is a failed test")]
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn check_accepts_the_quickstart_and_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tls")).unwrap();
    Pki::new().leaf(&dir.path().join("tls"), "server", &["localhost"]);
    let quickstart = r#"
[xdp]
interfaces = ["eth0"]
pin_dir = "/sys/fs/bpf/rasp-proxy"

[admin]
listen = "127.0.0.1:9901"

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
auth = "jwt"
methods = ["GET", "POST"]

[[route]]
path_prefix = "/"
upstream = "orders"
auth = "none"

[[jwt.issuer]]
issuer = "https://auth.example.test"
audiences = ["orders"]
algorithms = ["HS256"]
secret_env = "JWT_SECRET"
"#;
    let path = dir.path().join("rasp-proxy.toml");
    std::fs::write(&path, quickstart).unwrap();
    // `check` loads the HMAC secret too: without it, the issuer could verify nothing.
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&path)
        .env_remove("JWT_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("jwt.issuer[0].secret_env") && err.contains("JWT_SECRET"),
        "{err}"
    );
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&path)
        .env("JWT_SECRET", "0123456789abcdef0123456789abcdef")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    std::fs::write(&path, quickstart.replace("endpoints", "endpoint")).unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("endpoint") && err.contains("rasp-proxy.toml"),
        "{err}"
    );

    // A key file that is not a key is caught by `check`, not at the first TLS handshake.
    std::fs::write(&path, quickstart).unwrap();
    std::fs::write(dir.path().join("tls/server.key"), "not a key").unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(&path)
        .env("JWT_SECRET", "0123456789abcdef0123456789abcdef")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.key"));
}

/// The daemon as a child process, its stdout collected line by line.
struct Daemon {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

#[expect(clippy::unwrap_used, reason = "test helper: a failure here is a failed test")]
impl Daemon {
    fn start(config: &std::path::Path) -> Self {
        let mut child = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, lines }
    }

    fn wait_for(&self, what: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let found = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| what(v));
            if let Some(v) = found {
                return v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "log line not found; got:\n{}",
            self.lines.lock().unwrap().join("\n")
        );
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_logs_502_reloads_on_sighup_and_drains_on_sigterm() {
    let up = Upstream::start("a").await;
    let dead = free_port();
    let (listen, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rasp-proxy.toml");
    let config = format!(
        r#"
[admin]
listen = "{admin}"
[[listener]]
listen = "{listen}"
[timeouts]
shutdown_grace = "5s"
[[upstream]]
name = "dead"
endpoints = ["{dead}"]
[[upstream]]
name = "live"
endpoints = ["{}"]
[[route]]
path_prefix = "/dead"
upstream = "dead"
[[route]]
path_prefix = "/"
upstream = "live"
"#,
        up.addr
    );
    std::fs::write(&path, &config).unwrap();
    let d = Daemon::start(&path);
    d.wait_for(|v| v["message"] == "admin listening");

    let (s, h, _) = get(&format!("http://{listen}/dead/x")).await;
    assert_eq!(s, 502);
    let id = h["x-request-id"].to_str().unwrap().to_owned();
    let warn = d.wait_for(|v| v["request_id"] == id.as_str() && v["level"] == "WARN");
    assert_eq!(warn["upstream"], "dead");
    assert_eq!(warn["kind"], "connect");
    assert!(warn["message"].as_str().unwrap().contains("502"), "{warn}");
    let access = d.wait_for(|v| v["target"] == "access" && v["request_id"] == id.as_str());
    assert_eq!(access["status"], 502);
    assert_eq!(access["source"], "127.0.0.1");
    assert_eq!(access["route"], "/dead");
    assert_eq!(access["upstream"], "dead");

    // A bad config on SIGHUP is refused and logged; the old one keeps serving.
    std::fs::write(
        &path,
        config.replace("upstream = \"live\"", "upstream = \"gone\""),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    let refused = d.wait_for(|v| v["level"] == "ERROR");
    assert!(
        refused["error"].as_str().unwrap().contains("route[1].upstream"),
        "{refused}"
    );
    assert_eq!(get(&format!("http://{listen}/ok")).await.0, 200);

    // SIGTERM while a request is in flight: it completes, then the daemon exits cleanly.
    let slow = tokio::spawn(get_owned(format!("http://{listen}/sleep/700")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    d.signal(libc::SIGTERM);
    let (s, _, _) = slow.await.unwrap();
    assert_eq!(s, 200, "in-flight request drained");
    let mut d = d;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = d.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "daemon did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
}

async fn get_owned(url: String) -> (http::StatusCode, http::HeaderMap, bytes::Bytes) {
    get(&url).await
}
