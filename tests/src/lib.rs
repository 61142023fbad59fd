//! Harness for the privileged tests: network namespaces joined by veth pairs, an isolated pin directory, real
//! sockets opened inside a namespace, and the `rasp-proxy` binary.
//!
//! Topology of a [`Lab`]: one `host` namespace and N client namespaces. Client `i` (1-based) owns veth `c0` with
//! `198.18.i.2/24` and `2001:db8:i::2/64`; its peer `h{i}` sits in the host namespace with `198.18.i.1` and
//! `2001:db8:i::1`. The XDP program attaches to the `h{i}` ends, so it sees every packet a client sends.
//! Addresses come from the benchmarking (`198.18.0.0/15`) and documentation (`2001:db8::/32`) ranges and exist only
//! inside the namespaces the test made. Everything is removed on drop, also when a test panics.
//!
//! Tests that use this harness panic with a clear message rather than return `Result`, and run serially.
#![expect(
    clippy::missing_panics_doc,
    reason = "test harness: panicking with a message is its error handling"
)]
#![expect(
    clippy::expect_used,
    reason = "test harness: panicking with a message is its error handling"
)]

use std::{
    fmt::Write as _,
    fs::File,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

/// Where the `rasp-proxy` binary under test is: `RASP_PROXY_BIN`, else the workspace's debug build.
#[must_use]
pub fn rasp_proxy_bin() -> PathBuf {
    std::env::var_os("RASP_PROXY_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/rasp-proxy"),
        PathBuf::from,
    )
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// A unique short name for this process and call (interface and namespace names are short).
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}",
        std::process::id() % 100_000,
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command and panics with its output if it fails.
#[expect(
    clippy::must_use_candidate,
    reason = "callers run it for its effect and its panic on failure"
)]
pub fn sh(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    #[must_use]
    pub fn new(prefix: &str) -> Self {
        let name = unique(prefix);
        sh("ip", &["netns", "add", &name]);
        sh("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    /// Runs `ip -n <ns> ARGS`.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        sh("ip", &full);
    }

    /// A command that runs inside this namespace (network only: the mount namespace, and so bpffs, is shared).
    #[must_use]
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs `f` on a thread that has joined this namespace: sockets it opens live in the namespace.
    pub fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: a valid namespace fd; CLONE_NEWNET only changes this thread's network namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
            f()
        })
    }

    /// Runs `f` inside this namespace and waits for it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f)
            .join()
            .expect("thread inside the namespace panicked")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// One client of a [`Lab`].
pub struct Client {
    pub ns: Netns,
    /// Index, 1-based.
    pub index: u8,
    /// The host-side veth name (where XDP attaches).
    pub host_iface: String,
}

impl Client {
    #[must_use]
    pub fn v4(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 18, self.index, 2))
    }

    #[must_use]
    pub fn v6(&self) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, u16::from(self.index), 0, 0, 0, 0, 2))
    }

    /// The host's address on this client's link.
    #[must_use]
    pub fn host_v4(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 18, self.index, 1))
    }

    #[must_use]
    pub fn host_v6(&self) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, u16::from(self.index), 0, 0, 0, 0, 1))
    }
}

/// A host namespace, N clients, and an isolated pin directory.
pub struct Lab {
    pub clients: Vec<Client>,
    pub pins: PinDirGuard,
    // Dropped last: clients' veths go with their namespaces, then the host.
    pub host: Netns,
}

impl Lab {
    #[must_use]
    pub fn new(clients: u8) -> Self {
        Self::with_pins(clients, PinDirGuard::new())
    }

    /// A lab whose pin directory is given (e.g. the one a shipped config names).
    #[must_use]
    pub fn with_pins(clients: u8, pins: PinDirGuard) -> Self {
        let host = Netns::new("rh");
        let mut list = Vec::new();
        for i in 1..=clients {
            let ns = Netns::new("rc");
            let host_iface = format!("h{i}");
            // Created in the host namespace, then the client end moves into the client's.
            host.ip(&[
                "link",
                "add",
                &host_iface,
                "type",
                "veth",
                "peer",
                "name",
                "c0",
                "netns",
                &ns.name,
            ]);
            host.ip(&["addr", "add", &format!("198.18.{i}.1/24"), "dev", &host_iface]);
            host.ip(&[
                "-6",
                "addr",
                "add",
                &format!("2001:db8:{i}::1/64"),
                "dev",
                &host_iface,
                "nodad",
            ]);
            host.ip(&["link", "set", &host_iface, "up"]);
            ns.ip(&["addr", "add", &format!("198.18.{i}.2/24"), "dev", "c0"]);
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("2001:db8:{i}::2/64"),
                "dev",
                "c0",
                "nodad",
            ]);
            ns.ip(&["link", "set", "c0", "up"]);
            list.push(Client {
                ns,
                index: i,
                host_iface,
            });
        }
        Self {
            clients: list,
            pins,
            host,
        }
    }

    /// Runs `rasp-proxy --pin-dir <lab's> ARGS` inside the host namespace.
    #[must_use]
    pub fn cli(&self, args: &[&str]) -> Output {
        self.host
            .command(rasp_proxy_bin())
            .arg("--pin-dir")
            .arg(&self.pins.path)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run rasp-proxy: {e}"))
    }

    /// Like [`Lab::cli`], panicking on failure; returns stdout.
    #[must_use]
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "rasp-proxy {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a `rasp-proxy … --json` command and parses what it printed.
    #[must_use]
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli_ok(args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("rasp-proxy {} printed bad JSON ({e}): {out}", args.join(" ")))
    }

    /// The kernel's ban of `addr`, as `maps dump bans --json` prints it.
    #[must_use]
    pub fn ban_of(&self, addr: &str) -> Option<serde_json::Value> {
        self.cli_json(&["maps", "dump", "bans", "--json"])
            .as_array()?
            .iter()
            .find(|b| b["addr"] == addr)
            .cloned()
    }

    /// One XDP packet counter (`passed`, `dropped_ban`, ...), summed over CPUs.
    #[must_use]
    pub fn stat(&self, name: &str) -> u64 {
        let stats = self.cli_json(&["maps", "dump", "stats", "--json"]);
        stats
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == name))
            .and_then(|s| s["packets"].as_u64())
            .unwrap_or_else(|| panic!("no counter {name} in {stats}"))
    }

    /// The config sections every daemon test shares: XDP on the lab's host veths (plus `xdp_extra` lines), the
    /// admin listener on the host's loopback, one listener on `proxy`, one upstream `app` on `upstream`.
    #[must_use]
    pub fn daemon_config_base(&self, proxy: u16, upstream: u16, xdp_extra: &str) -> String {
        let ifaces: Vec<String> = self
            .clients
            .iter()
            .map(|c| format!("{:?}", c.host_iface))
            .collect();
        format!(
            "[xdp]\ninterfaces = [{ifaces}]\npin_dir = \"{pins}\"\n{xdp_extra}\n\n[admin]\nlisten = \"127.0.0.1:9901\"\n\n\
             [[listener]]\nlisten = \"0.0.0.0:{proxy}\"\n\n[[upstream]]\nname = \"app\"\nendpoints = [\"127.0.0.1:{upstream}\"]\n",
            ifaces = ifaces.join(", "),
            pins = self.pins.path.display(),
        )
    }

    /// Attaches XDP (native mode) to every client's host-side veth.
    pub fn attach_all(&self) {
        for c in &self.clients {
            let _ = self.cli_ok(&["xdp", "attach", "--iface", &c.host_iface]);
        }
    }

    /// Starts an HTTP server in the host namespace on every address, port `port`.
    #[must_use]
    pub fn http_server(&self, port: u16) -> HttpServer {
        HttpServer::start(&self.host, port)
    }
}

/// A pin directory of its own under `/run/rasp-tests`, detached, purged and unmounted on drop.
pub struct PinDirGuard {
    pub path: PathBuf,
}

impl PinDirGuard {
    #[must_use]
    pub fn new() -> Self {
        Self {
            path: PathBuf::from("/run/rasp-tests").join(unique("p")),
        }
    }
}

impl Default for PinDirGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinDirGuard {
    fn drop(&mut self) {
        let _ = Command::new(rasp_proxy_bin())
            .arg("--pin-dir")
            .arg(&self.path)
            .args(["xdp", "detach", "--all", "--purge"])
            .output();
        let _ = Command::new("umount").arg(&self.path).output();
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A tiny real HTTP/1.1 server (one thread per connection), answering `200 hello` to any request.
pub struct HttpServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    pub served: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    #[must_use]
    pub fn start(ns: &Netns, port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let (stop2, served2) = (stop.clone(), served.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns.spawn(move || {
            // A dual-stack socket: IPv4 clients arrive as IPv4-mapped addresses.
            let listener = TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
                .unwrap_or_else(|e| panic!("bind [::]:{port}: {e}"));
            listener.set_nonblocking(true).expect("nonblocking listener");
            let _ = ready_tx.send(());
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let served = served2.clone();
                        thread::spawn(move || {
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                            let mut buf = [0u8; 4096];
                            let mut got = Vec::new();
                            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                                match stream.read(&mut buf) {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => got.extend_from_slice(&buf[..n]),
                                }
                            }
                            let _ = stream.write_all(
                                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                            );
                            served.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("HTTP server did not start");
        Self {
            port,
            stop,
            served,
            thread: Some(thread),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One HTTP GET from inside `ns` to `addr:port`; `Err` with the reason if it fails within `timeout`.
pub fn http_get(ns: &Netns, addr: IpAddr, port: u16, timeout: Duration) -> Result<String, String> {
    http_get_path(ns, addr, port, "/", timeout)
}

/// One HTTP GET of `path` from inside `ns`; the whole response (head and body).
pub fn http_get_path(
    ns: &Netns,
    addr: IpAddr,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<String, String> {
    let path = path.to_owned();
    ns.run(move || {
        let target = SocketAddr::new(addr, port);
        let mut s =
            TcpStream::connect_timeout(&target, timeout).map_err(|e| format!("connect {target}: {e}"))?;
        s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        let mut body = String::new();
        s.read_to_string(&mut body).map_err(|e| format!("read: {e}"))?;
        Ok(body)
    })
}

/// One HTTP/1.1 GET of `path` from inside `ns`; the status code, or `Err` with the reason (a connection that
/// times out is what an XDP drop looks like from the client).
pub fn http_status(
    ns: &Netns,
    addr: IpAddr,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<u16, String> {
    http_status_with(ns, addr, port, path, &[], timeout)
}

/// Like [`http_status`], with extra request headers (e.g. `("authorization", "Bearer …")`).
pub fn http_status_with(
    ns: &Netns,
    addr: IpAddr,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<u16, String> {
    let path = path.to_owned();
    let extra = headers.iter().fold(String::new(), |mut acc, (k, v)| {
        let _ = write!(acc, "{k}: {v}\r\n");
        acc
    });
    ns.run(move || {
        let target = SocketAddr::new(addr, port);
        let mut s =
            TcpStream::connect_timeout(&target, timeout).map_err(|e| format!("connect {target}: {e}"))?;
        s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: api.example.test\r\n{extra}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .map_err(|e| format!("send: {e}"))?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).map_err(|e| format!("read: {e}"))?;
        std::str::from_utf8(&head[9..12])
            .ok()
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| "bad status line".to_owned())
    })
}

/// A `rasp-proxy run` daemon inside a namespace, stopped (SIGTERM, then SIGKILL) on drop; its output goes to a
/// file the test can read.
pub struct Daemon {
    child: std::process::Child,
    pub log: PathBuf,
    pub dir: PathBuf,
}

impl Daemon {
    /// Writes `config` to a temp dir and starts the daemon in `ns`.
    #[must_use]
    pub fn start(ns: &Netns, config: &str) -> Self {
        Self::start_with_env(ns, config, &[])
    }

    /// Like [`Daemon::start`], with extra environment variables for the daemon (secrets named by `secret_env`).
    #[must_use]
    pub fn start_with_env(ns: &Netns, config: &str, env: &[(&str, &str)]) -> Self {
        let dir = std::env::temp_dir().join(unique("rasp-daemon-"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config_path = dir.join("rasp-proxy.toml");
        std::fs::write(&config_path, config).expect("write config");
        let log = dir.join("daemon.log");
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = ns
            .command(rasp_proxy_bin())
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .envs(env.iter().copied())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start rasp-proxy run: {e}"));
        Self { child, log, dir }
    }

    /// Everything the daemon printed so far.
    #[must_use]
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a GET succeeds with `200` within `timeout`.
#[must_use]
pub fn reachable(ns: &Netns, addr: IpAddr, port: u16, timeout: Duration) -> bool {
    http_get(ns, addr, port, timeout).is_ok_and(|b| b.starts_with("HTTP/1.1 200"))
}

/// Sends `count` UDP datagrams of `payload` bytes from inside `ns` to `addr:port`.
pub fn send_udp(ns: &Netns, addr: IpAddr, port: u16, count: usize, payload: usize) {
    ns.run(move || {
        let bind: SocketAddr = if addr.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = UdpSocket::bind(bind).expect("bind UDP");
        let data = vec![0x5a_u8; payload];
        for _ in 0..count {
            // ICMP unreachable answers may turn a later send into ECONNREFUSED on some stacks; the packet
            // still left, so errors are ignored.
            let _ = sock.send_to(&data, (addr, port));
        }
    });
}

/// Polls `check` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}
