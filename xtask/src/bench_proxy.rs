//! `cargo xtask bench proxy`: requests/s and p50/p99 latency, with one load tool (`wrk`) against one upstream
//! (an nginx `return 200`), for (a) the upstream directly, (b) rasp-proxy with auth and inspection off,
//! (c) rasp-proxy verifying an HS256 JWT on every request, and (d) nginx as a plain reverse proxy. Loopback
//! only; each load is bounded in time. Needs `wrk`, `nginx` (Debian `nginx-light`), `curl` and, for (c),
//! `python3` with `PyJWT` (an implementation independent of ours makes the token).

use std::{
    fmt::Write as _,
    fs,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::release::{Build, HOST};

/// Length of each measured load.
const DURATION: Duration = Duration::from_secs(10);
/// Unmeasured load first, so connection pools and caches are warm.
const WARMUP: Duration = Duration::from_secs(2);
const CONNECTIONS: u32 = 64;
/// Measured loads per target, interleaved; each column's median is reported. Five, because on a shared 2-CPU
/// machine one round in three or four is disturbed, and a p99 taken from one round moves with it.
const ROUNDS: u32 = 5;
const THREADS: u32 = 2;
pub(crate) const JWT_SECRET: &str = "bench-secret-0123456789abcdef0123456789";

/// One measured row.
struct Row {
    name: &'static str,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// How far this target's own p99 moved between rounds (the interquartile range of the rounds' p99s): the
    /// noise a p99 difference must exceed before it says anything about the proxies.
    p99_spread_ms: f64,
    /// CPU time (user + system) the proxy spent per request: unlike req/s, it does not depend on how busy the
    /// rest of the machine is.
    cpu_us_per_req: Option<f64>,
}

pub fn run(workspace_root: &Path, build: Build) -> Result<()> {
    for tool in ["wrk", "nginx", "curl"] {
        which(tool).with_context(|| format!("{tool} not found: apt-get install -y wrk nginx-light curl"))?;
    }
    let bin = build.binary(workspace_root, &HOST)?;
    let dir = std::env::temp_dir().join(format!("rasp-proxy-bench-{}", std::process::id()));
    fs::create_dir_all(dir.join("tmp")).with_context(|| format!("creating {}", dir.display()))?;
    let result = bench_all(&bin, &dir);
    let _ = fs::remove_dir_all(&dir);
    let rows = result?;
    println!("rasp-proxy build: {}", build.describe());
    print_table(&rows);
    Ok(())
}

/// `cargo xtask bench proxy-instructions`: per proxied request, user-space instructions, instruction- and
/// data-cache misses and branch mispredictions, as callgrind counts them (its cache model: 32 KiB L1s), for
/// rasp-proxy and for nginx proxying the same request to the same upstream. Unlike req/s or CPU time, these
/// barely move with the machine's load, so an A/B of two commits is decided in one run each: counters are zeroed
/// after a warm-up, dumped after a bounded single-connection-thread load, and divided by the requests `wrk`
/// completed. They count no kernel work: use this beside `bench proxy`, not instead of it. rasp-proxy's dump is
/// kept in `target/callgrind-proxy.out` for `callgrind_annotate`.
pub fn run_instructions(workspace_root: &Path, build: Build) -> Result<()> {
    for tool in ["wrk", "nginx", "curl", "valgrind", "callgrind_control"] {
        which(tool)
            .with_context(|| format!("{tool} not found: apt-get install -y wrk nginx-light curl valgrind"))?;
    }
    let bin = build.binary(workspace_root, &HOST)?;
    let dir = std::env::temp_dir().join(format!("rasp-proxy-instructions-{}", std::process::id()));
    fs::create_dir_all(dir.join("tmp")).with_context(|| format!("creating {}", dir.display()))?;
    let keep = workspace_root.join("target/callgrind-proxy.out");
    let result = count_both(&bin, &dir, &keep);
    let _ = fs::remove_dir_all(&dir);
    let (rasp, nginx) = result?;
    println!("rasp-proxy build: {}", build.describe());
    println!(
        "wrk -t1 -c8, 8 s after a 3 s warm-up, under callgrind --cache-sim=yes --branch-sim=yes; per request:"
    );
    println!("| proxy | requests | instructions | I1 misses | D1 misses | branch mispredictions |");
    println!("|---|---|---|---|---|---|");
    for (name, c) in [("rasp-proxy", rasp), ("nginx", nginx)] {
        println!(
            "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            c.requests, c.instructions, c.i1_misses, c.d1_misses, c.mispredictions
        );
    }
    Ok(())
}

/// What callgrind counted, per request.
#[derive(Clone, Copy)]
struct Counts {
    requests: u64,
    instructions: f64,
    i1_misses: f64,
    /// Reads and writes.
    d1_misses: f64,
    /// Conditional and indirect.
    mispredictions: f64,
}

fn count_both(bin: &Path, dir: &Path, keep: &Path) -> Result<(Counts, Counts)> {
    let (_upstream, upstream_addr) = start_upstream(dir)?;
    let listen = free_addr()?;
    let config = rasp_config(dir, "plain", listen, upstream_addr, "none")?;
    let mut rasp = Command::new(bin);
    rasp.args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn");
    let rasp = count_under_callgrind(&rasp, listen, dir, "rasp", Some(keep))?;
    // The same proxy configuration as `bench proxy`'s (d), in one process: callgrind follows no fork.
    let listen = free_addr()?;
    let conf = proxy_nginx_conf(dir, listen, upstream_addr, 1).replacen(
        "daemon off;",
        "daemon off;\nmaster_process off;",
        1,
    );
    let conf_path = dir.join("callgrind-nginx.conf");
    fs::write(&conf_path, conf)?;
    let mut nginx = Command::new("nginx");
    nginx.arg("-c").arg(&conf_path).arg("-p").arg(dir);
    let nginx = count_under_callgrind(&nginx, listen, dir, "nginx", None)?;
    Ok((rasp, nginx))
}

fn count_under_callgrind(
    proxy: &Command,
    listen: SocketAddr,
    dir: &Path,
    name: &str,
    keep: Option<&Path>,
) -> Result<Counts> {
    let out_file = dir.join(format!("{name}.callgrind.out"));
    let proxy = Guard(
        Command::new("valgrind")
            .args(["--tool=callgrind", "--cache-sim=yes", "--branch-sim=yes"])
            .arg(format!("--callgrind-out-file={}", out_file.display()))
            .arg(proxy.get_program())
            .args(proxy.get_args())
            .envs(proxy.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name} under valgrind"))?,
    );
    // Under valgrind a daemon starts some fifty times slower.
    let deadline = Instant::now() + Duration::from_secs(90);
    let url = format!("http://{listen}/");
    while curl_status(&url, "X-Warm: 1")? != "200" {
        if Instant::now() > deadline {
            bail!("{name} under valgrind did not answer within 90 s");
        }
        thread::sleep(Duration::from_millis(500));
    }
    let pid = proxy.0.id().to_string();
    load_single(&url, Duration::from_secs(3))?;
    callgrind_control(&["-z", &pid])?;
    let out = load_single(&url, Duration::from_secs(8))?;
    callgrind_control(&["-d", &pid])?;
    let requests = wrk_requests(&out)
        .filter(|&n| n > 0)
        .with_context(|| format!("no request count in wrk output:\n{out}"))?;
    // The dump after zeroing is `NAME.callgrind.out.N`: its `events:` line names the columns of its `summary:`
    // (or `totals:`) line.
    let prefix = format!("{name}.callgrind.out.");
    let mut dump = None;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&prefix))
        {
            dump = Some(path);
        }
    }
    let dump = dump.context("callgrind wrote no dump after zeroing")?;
    let text = fs::read_to_string(&dump)?;
    let totals = event_totals(&text).with_context(|| format!("no events or totals in {}", dump.display()))?;
    if let Some(keep) = keep {
        fs::copy(&dump, keep).with_context(|| format!("copying the dump to {}", keep.display()))?;
        println!("profile: callgrind_annotate --inclusive=yes {}", keep.display());
    }
    let event = |e: &str| totals.iter().find(|(n, _)| n == e).map_or(0, |&(_, v)| v);
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let per_request = |v: u64| v as f64 / requests as f64;
    let counts = Counts {
        requests,
        instructions: per_request(event("Ir")),
        i1_misses: per_request(event("I1mr")),
        d1_misses: per_request(event("D1mr") + event("D1mw")),
        mispredictions: per_request(event("Bcm") + event("Bim")),
    };
    if counts.instructions == 0.0 {
        bail!("callgrind counted no instructions for {name}");
    }
    Ok(counts)
}

/// The `events:` names paired with the `summary:` (or `totals:`) counts of a callgrind dump.
fn event_totals(dump: &str) -> Option<Vec<(String, u64)>> {
    let names = dump.lines().find_map(|l| l.strip_prefix("events:"))?;
    let totals = dump
        .lines()
        .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))?;
    let counts: Vec<u64> = totals
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    Some(names.split_whitespace().map(str::to_owned).zip(counts).collect())
}

/// The requests a `wrk` run completed (its "N requests in T" line).
pub(crate) fn wrk_requests(out: &str) -> Option<u64> {
    out.lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
}

/// One `wrk` thread on eight connections: the proxy under valgrind is the bottleneck, not the load.
fn load_single(url: &str, duration: Duration) -> Result<String> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            "-c8",
            "-d",
            &format!("{}s", duration.as_secs()),
            "--timeout",
            "10s",
            url,
        ])
        .output()
        .context("running wrk")?;
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn callgrind_control(args: &[&str]) -> Result<()> {
    let status = Command::new("callgrind_control")
        .args(args)
        .stdout(Stdio::null())
        .status()
        .context("running callgrind_control")?;
    if !status.success() {
        bail!("callgrind_control {} failed", args.join(" "));
    }
    // The dump is written by the traced process a moment after the request.
    thread::sleep(Duration::from_secs(1));
    Ok(())
}

/// The upstream every target is measured against: nginx answering `return 200`, listening when this returns.
pub(crate) fn start_upstream(dir: &Path) -> Result<(Guard, SocketAddr)> {
    let addr = free_addr()?;
    let upstream = Guard(spawn_nginx(dir, "upstream", &upstream_nginx_conf(dir, addr))?);
    wait_listening(addr)?;
    Ok((upstream, addr))
}

/// One load target, measured once per round.
struct Target {
    name: &'static str,
    url: String,
    headers: Vec<String>,
    pids: Vec<u32>,
}

fn bench_all(bin: &Path, dir: &Path) -> Result<Vec<Row>> {
    let (_upstream, upstream_addr) = start_upstream(dir)?;
    let mut targets = vec![Target {
        name: "(a) upstream direct",
        url: format!("http://{upstream_addr}/"),
        headers: Vec::new(),
        pids: Vec::new(),
    }];

    let listen = free_addr()?;
    let config = rasp_config(dir, "plain", listen, upstream_addr, "none")?;
    let plain = Guard(spawn_rasp(bin, &config)?);
    wait_listening(listen)?;
    targets.push(Target {
        name: "(b) rasp-proxy, auth+inspect off",
        url: format!("http://{listen}/"),
        headers: Vec::new(),
        pids: vec![plain.0.id()],
    });

    let listen = free_addr()?;
    let config = rasp_config(dir, "jwt", listen, upstream_addr, "jwt")?;
    let jwt = Guard(spawn_rasp(bin, &config)?);
    wait_listening(listen)?;
    let url = format!("http://{listen}/");
    match make_jwt() {
        Err(e) => println!("note: (c) skipped: could not make a JWT with PyJWT: {e:#}"),
        Ok(token) => {
            let header = format!("Authorization: Bearer {token}");
            let code = curl_status(&url, &header)?;
            if code != "200" {
                bail!("(c): a valid JWT got HTTP {code}");
            }
            targets.push(Target {
                name: "(c) rasp-proxy, JWT HS256 on",
                url,
                headers: vec![header],
                pids: vec![jwt.0.id()],
            });
        }
    }

    let listen = free_addr()?;
    let nginx = Guard(spawn_nginx(
        dir,
        "proxy",
        &proxy_nginx_conf(dir, listen, upstream_addr, proxy_workers()),
    )?);
    wait_listening(listen)?;
    targets.push(Target {
        name: "(d) nginx reverse proxy",
        url: format!("http://{listen}/"),
        headers: Vec::new(),
        pids: children_of(nginx.0.id()),
    });

    // Rounds interleave the targets, so a slow spell of this shared machine hits them all alike; each target's
    // medians are reported.
    let mut runs: Vec<Vec<Row>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 1..=ROUNDS {
        for (target, runs) in targets.iter().zip(&mut runs) {
            println!("round {round}/{ROUNDS}: {}: {}", target.name, target.url);
            let headers: Vec<&str> = target.headers.iter().map(String::as_str).collect();
            let row = measure(target.name, &target.url, &headers, &target.pids)?;
            println!(
                "    {:.0} req/s, p99 {:.3} ms, {}",
                row.rps,
                row.p99_ms,
                row.cpu_us_per_req
                    .map_or_else(|| "-".to_owned(), |c| format!("{c:.1} us CPU/req"))
            );
            runs.push(row);
        }
    }
    Ok(runs.iter().filter_map(|r| medians(r)).collect())
}

/// Each column's median over the rounds, taken column by column: a p99 read from the median-req/s round alone
/// is one sample of the noisiest figure, and decided more comparisons than the proxies did.
fn medians(runs: &[Row]) -> Option<Row> {
    let first = runs.first()?;
    let sorted = |column: fn(&Row) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(column).collect();
        values.sort_by(f64::total_cmp);
        values
    };
    let median = |column: fn(&Row) -> f64| {
        let values = sorted(column);
        values[values.len() / 2]
    };
    let p99s = sorted(|r| r.p99_ms);
    Some(Row {
        name: first.name,
        rps: median(|r| r.rps),
        p50_ms: median(|r| r.p50_ms),
        p99_ms: p99s[p99s.len() / 2],
        p99_spread_ms: p99s[p99s.len() * 3 / 4] - p99s[p99s.len() / 4],
        cpu_us_per_req: first
            .cpu_us_per_req
            .is_some()
            .then(|| median(|r| r.cpu_us_per_req.unwrap_or(0.0))),
    })
}

/// Stops the child when the benchmark step is over (or fails). SIGTERM first: nginx's master stops its workers
/// only when it is asked, while SIGKILL would orphan them.
pub(crate) struct Guard(pub(crate) Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn which(tool: &str) -> Result<()> {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()?
        .success();
    if ok { Ok(()) } else { bail!("{tool} missing") }
}

pub(crate) fn free_addr() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

pub(crate) fn wait_listening(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listening on {addr} after 10 s")
}

fn nginx_common(dir: &Path, name: &str, workers: u32) -> String {
    let d = dir.display();
    format!(
        "worker_processes {workers};\ndaemon off;\npid {d}/{name}.pid;\nerror_log {d}/{name}-error.log warn;\n\
         events {{ worker_connections 4096; }}\n"
    )
}

fn temp_paths(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy; fastcgi_temp_path {d}/tmp/fcgi; \
         uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;"
    )
}

fn upstream_nginx_conf(dir: &Path, addr: SocketAddr) -> String {
    format!(
        "{}http {{ access_log off; {} keepalive_requests 100000000;\n\
         server {{ listen {addr}; location / {{ default_type application/json; return 200 '{{\"ok\":true}}'; }} }} }}\n",
        nginx_common(dir, "upstream", 1),
        temp_paths(dir)
    )
}

/// nginx as a production-style reverse proxy: upstream keep-alive (as rasp-proxy pools), buffered access log
/// (as rasp-proxy logs every request), and one worker per CPU (as rasp-proxy runs one worker thread per CPU).
fn proxy_nginx_conf(dir: &Path, listen: SocketAddr, upstream: SocketAddr, workers: u32) -> String {
    format!(
        "{}http {{ access_log {}/nginx-access.log combined buffer=64k; {} keepalive_requests 100000000;\n\
         upstream backend {{ server {upstream}; keepalive 128; }}\n\
         server {{ listen {listen}; location / {{ proxy_pass http://backend; proxy_http_version 1.1; \
         proxy_set_header Connection \"\"; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }} }} }}\n",
        nginx_common(dir, "proxy", workers),
        dir.display(),
        temp_paths(dir)
    )
}

fn spawn_nginx(dir: &Path, name: &str, conf: &str) -> Result<Child> {
    let path = dir.join(format!("{name}-nginx.conf"));
    fs::write(&path, conf)?;
    Command::new("nginx")
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting nginx")
}

fn rasp_config(
    dir: &Path,
    name: &str,
    listen: SocketAddr,
    upstream: SocketAddr,
    auth: &str,
) -> Result<PathBuf> {
    let admin = free_addr()?;
    let mut text = format!(
        "[admin]\nlisten = \"{admin}\"\n[[listener]]\nlisten = \"{listen}\"\n[[upstream]]\nname = \"backend\"\n\
         endpoints = [\"{upstream}\"]\n[[route]]\npath_prefix = \"/\"\nupstream = \"backend\"\nauth = \"{auth}\"\n"
    );
    if auth == "jwt" {
        let _ = write!(
            text,
            "[[jwt.issuer]]\nissuer = \"https://bench.example.test\"\naudiences = [\"bench\"]\n\
             algorithms = [\"HS256\"]\nsecret_env = \"RASP_BENCH_JWT_SECRET\"\n"
        );
    }
    let path: PathBuf = dir.join(format!("rasp-{name}.toml"));
    fs::write(&path, text)?;
    Ok(path)
}

pub(crate) fn spawn_rasp(bin: &Path, config: &Path) -> Result<Child> {
    Command::new(bin)
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("RASP_BENCH_JWT_SECRET", JWT_SECRET)
        .env("RUST_LOG", "warn")
        // The access log is still formatted and written for every request; only the terminal is spared.
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

pub(crate) fn make_jwt() -> Result<String> {
    let script = "import jwt, sys, time\n\
                  print(jwt.encode({'iss': 'https://bench.example.test', 'aud': 'bench', 'sub': 'bench-user', \
                  'exp': int(time.time()) + 3600}, sys.argv[1], algorithm='HS256'))";
    let out = Command::new("python3")
        .args(["-c", script, JWT_SECRET])
        .output()
        .context("running python3")?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn curl_status(url: &str, header: &str) -> Result<String> {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "5",
            "-w",
            "%{http_code}",
            "-H",
            header,
            url,
        ])
        .output()
        .context("running curl")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wrk(url: &str, headers: &[&str], duration: Duration) -> Result<String> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t", &THREADS.to_string(), "-c", &CONNECTIONS.to_string()])
        .args([
            "-d",
            &format!("{}s", duration.as_secs()),
            "--timeout",
            "5s",
            "--latency",
        ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().context("running wrk")?;
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Processes whose parent is `parent` (nginx's workers).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            proc_stat(*pid).is_some_and(|f| f.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent))
        })
        .collect()
}

/// Fields of `/proc/PID/stat` after the command name: index 0 is the state, 1 the parent, 11 utime, 12 stime.
fn proc_stat(pid: u32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// User plus system clock ticks of all threads of `pids`.
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|&p| proc_stat(p))
        .map(|f| {
            f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
                + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        })
        .sum()
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

fn measure(name: &'static str, url: &str, headers: &[&str], pids: &[u32]) -> Result<Row> {
    wrk(url, headers, WARMUP)?;
    let ticks_before = cpu_ticks(pids);
    let out = wrk(url, headers, DURATION)?;
    let ticks = cpu_ticks(pids).saturating_sub(ticks_before);
    if let Some(line) = out
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
    {
        bail!("{name}: load was not clean ({}):\n{out}", line.trim());
    }
    let rps = out
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{out}"))?;
    let percentile = |p: &str| {
        out.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(p))
            .and_then(|v| parse_latency_ms(v.trim()))
            .with_context(|| format!("no {p} latency in wrk output:\n{out}"))
    };
    #[expect(clippy::cast_precision_loss, reason = "tick counts are far below 2^52")]
    let cpu_us_per_req = (!pids.is_empty() && rps > 0.0)
        .then(|| ticks as f64 / clock_ticks_per_second() * 1e6 / (rps * DURATION.as_secs_f64()));
    Ok(Row {
        name,
        rps,
        p50_ms: percentile("50%")?,
        p99_ms: percentile("99%")?,
        p99_spread_ms: 0.0,
        cpu_us_per_req,
    })
}

/// wrk prints `273.00us`, `1.23ms` or `2.01s`.
fn parse_latency_ms(v: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|n| n * scale)
}

fn print_table(rows: &[Row]) {
    let nginx = rows.iter().find(|r| r.name.starts_with("(d)"));
    println!();
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "wrk -t{THREADS} -c{CONNECTIONS} -d{}s, medians of {ROUNDS} interleaved rounds, loopback, {} CPUs, load \
         average {}",
        DURATION.as_secs(),
        num_cpus(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!(
        "workers: rasp-proxy {w} threads, nginx {w} processes; both keep upstream connections alive and buffer \
         their access log",
        w = proxy_workers()
    );
    println!(
        "| {:<34} | {:>10} | {:>9} | {:>9} | {:>14} | {:>9} | {:>18} |",
        "target", "req/s", "p50 ms", "p99 ms", "p99 spread ms", "vs nginx", "proxy CPU us/req"
    );
    println!(
        "|{:-<36}|{:-<12}|{:-<11}|{:-<11}|{:-<16}|{:-<11}|{:-<20}|",
        "", "", "", "", "", "", ""
    );
    for r in rows {
        let ratio = nginx.map_or_else(|| "-".to_owned(), |n| format!("{:.2}x", r.rps / n.rps));
        let cpu = r
            .cpu_us_per_req
            .map_or_else(|| "-".to_owned(), |c| format!("{c:.1}"));
        println!(
            "| {:<34} | {:>10.0} | {:>9.3} | {:>9.3} | {:>14.3} | {:>9} | {:>18} |",
            r.name, r.rps, r.p50_ms, r.p99_ms, r.p99_spread_ms, ratio, cpu
        );
    }
    if let Some(n) = nginx {
        for (prefix, target) in [("(b)", 1.0), ("(c)", 0.9)] {
            if let Some(r) = rows.iter().find(|r| r.name.starts_with(prefix)) {
                // Worse means worse by more than nginx's p99 differs from itself between rounds: compared
                // strictly, nginx would fail against its own second instance half the time.
                let p99_worse = r.p99_ms > n.p99_ms + n.p99_spread_ms;
                let ok = r.rps >= target * n.rps && !p99_worse;
                println!(
                    "{prefix} target >= {target:.1}x nginx req/s at no worse p99: {} ({:.2}x; p99 {:.3} vs {:.3} ms, \
                     {:+.3} ms against nginx's own spread of {:.3} ms between rounds)",
                    if ok { "met" } else { "NOT met" },
                    r.rps / n.rps,
                    r.p99_ms,
                    n.p99_ms,
                    r.p99_ms - n.p99_ms,
                    n.p99_spread_ms
                );
            }
        }
    }
}

/// rasp-proxy starts one worker thread per CPU (`available_parallelism`); nginx gets as many worker processes.
fn proxy_workers() -> u32 {
    u32::try_from(num_cpus()).unwrap_or(u32::MAX)
}

fn num_cpus() -> usize {
    thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_totals_pair_callgrind_columns_with_their_names() {
        let dump = "version: 1\nevents: Ir Dr I1mr Bcm\nfn=(1) main\n0 5 1 0 0\nsummary: 1000 400 12 7\n";
        let totals = event_totals(dump).unwrap();
        assert_eq!(
            totals,
            [
                ("Ir".into(), 1000),
                ("Dr".into(), 400),
                ("I1mr".into(), 12),
                ("Bcm".into(), 7)
            ]
        );
        assert!(event_totals("events: Ir\nsummary: x\n").is_none());
        assert!(event_totals("summary: 5\n").is_none());
    }

    #[test]
    fn wrk_latency_units() {
        assert_eq!(parse_latency_ms("273.00us"), Some(0.273));
        assert_eq!(parse_latency_ms("1.50ms"), Some(1.5));
        assert_eq!(parse_latency_ms("2.00s"), Some(2000.0));
        assert_eq!(parse_latency_ms("fast"), None);
    }

    #[test]
    fn each_column_takes_its_own_median() {
        let row = |rps, p99_ms| Row {
            name: "x",
            rps,
            p50_ms: 1.0,
            p99_ms,
            p99_spread_ms: 0.0,
            cpu_us_per_req: None,
        };
        let m = medians(&[row(10.0, 9.0), row(30.0, 1.0), row(20.0, 5.0)]).unwrap();
        assert_eq!((m.rps, m.p99_ms, m.cpu_us_per_req), (20.0, 5.0, None));
        let rounds: Vec<Row> = [4.0, 1.0, 3.0, 9.0, 2.0]
            .into_iter()
            .map(|p| row(1.0, p))
            .collect();
        let spread = medians(&rounds).unwrap().p99_spread_ms;
        assert!((spread - 2.0).abs() < 1e-9, "p99s 1 [2 3 4] 9: {spread}");
        assert!(medians(&[]).is_none());
    }
}
