//! `cargo xtask build --pgo`: a profile-guided release of `rasp-proxy`.
//!
//! Why: under callgrind's cache model a proxied request missed the instruction cache about 1,400 times against
//! nginx's 800; the code a request runs is spread over a large binary. LLVM's PGO lays the hot paths out
//! together and inlines along them. Three steps; the two builds have their own target directories, so neither
//! invalidates the plain release build's cache:
//! 1. an instrumented build (`-Cprofile-generate`) in `target/pgo-generate`;
//! 2. a training run: that binary proxies a mix of requests to a local nginx, over plain HTTP/1.1, TLS and h2,
//!    on routes with no auth, JWT and API keys, with payload inspection blocking (the risk engine in detect
//!    mode, so nothing gets banned); benign requests with some attacks, not the benchmark's request alone;
//! 3. `llvm-profdata merge` into `target/pgo-generate/{host,TRIPLE}.profdata`, then the release build with
//!    `-Cprofile-use` in `target/pgo`.
//!
//! The profile is made afresh whenever the instrumented binary is rebuilt (a change to the code or its
//! dependencies), so it always describes the code it guides; an unchanged binary reuses the last profile.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    bench_proxy::{
        Guard, free_addr, make_jwt, spawn_rasp, start_upstream, wait_listening, which, wrk_requests,
    },
    release::{Platform, cargo_build},
};

/// Where the profile-guided binary is built.
pub const TARGET_DIR: &str = "target/pgo";
/// The instrumented build, kept apart so that neither build invalidates the other's cache.
const GENERATE_TARGET_DIR: &str = "target/pgo-generate";
/// `llvm-profdata` of the LLVM the stable toolchain is built on (installed with it by `cargo xtask setup`).
const LLVM_PROFDATA: &str = "/usr/lib/llvm-22/bin/llvm-profdata";
/// The API key the training config accepts; its SHA-256 is in [`training_config`].
const TRAINING_API_KEY: &str = "pgo-training-key";
/// `printf %s pgo-training-key | sha256sum`
const TRAINING_API_KEY_SHA256: &str = "f805a0e3b39737f12d47fa4acc60e73ece1f0c57206d70f97da589ebc3d53c92";
/// Length of each `wrk` training load (plain and TLS).
const LOAD: Duration = Duration::from_secs(8);
/// Fewer completed requests per load means the training went wrong.
const MIN_REQUESTS: u64 = 1000;
/// h2 requests made with curl on the TLS listener (ALPN), on one connection.
const H2_REQUESTS: usize = 500;
/// h2c requests (prior knowledge) on the plain listener, a curl each.
const H2C_REQUESTS: usize = 50;

/// Builds `target/pgo/[TRIPLE/]release/rasp-proxy` for `platform` and returns its path. The profile is gathered
/// with that platform's own instrumented binary: symbol names differ between targets, so another target's
/// profile would match nothing.
pub fn build(root: &Path, platform: &Platform<'_>) -> Result<PathBuf> {
    for tool in ["wrk", "nginx", "curl", "openssl", "python3"] {
        which(tool).with_context(|| format!("{tool} not found (cargo xtask setup installs it)"))?;
    }
    check_llvm_versions()?;
    let work = root.join(GENERATE_TARGET_DIR).join("training");
    let raw = work.join("raw");
    let profile = root
        .join(GENERATE_TARGET_DIR)
        .join(format!("{}.profdata", platform.triple.unwrap_or("host")));

    println!("pgo 1/3: instrumented build in {GENERATE_TARGET_DIR}");
    let instrumented = cargo_build(
        root,
        platform,
        GENERATE_TARGET_DIR,
        Some(&format!("-Cprofile-generate={}", raw.display())),
    )?;

    if modified(&profile)? > modified(&instrumented)? {
        println!(
            "pgo 2/3: the instrumented binary is unchanged; reusing {}",
            profile.display()
        );
    } else {
        println!("pgo 2/3: training run");
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(work.join("tmp")).with_context(|| format!("creating {}", work.display()))?;
        train(&instrumented, &work)?;
        // Merged beside and renamed, so a failed merge never leaves a profile that looks newer than the binary.
        let merged = work.join("merged.profdata");
        let status = Command::new(LLVM_PROFDATA)
            .args(["merge", "-o"])
            .arg(&merged)
            .arg(&raw)
            .status()
            .context("running llvm-profdata")?;
        if !status.success() {
            bail!("llvm-profdata merge failed");
        }
        fs::rename(&merged, &profile)
            .with_context(|| format!("moving the profile to {}", profile.display()))?;
    }

    println!("pgo 3/3: release build with the profile in {TARGET_DIR}");
    let bin = cargo_build(
        root,
        platform,
        TARGET_DIR,
        Some(&format!("-Cprofile-use={}", profile.display())),
    )?;
    println!("pgo: {}", bin.display());
    Ok(bin)
}

/// A profile written by one LLVM major version is unreadable to another: say so before a 20-minute build.
fn check_llvm_versions() -> Result<()> {
    let rustc = output(Command::new("rustc").arg("-vV"))?;
    let rustc_llvm = rustc
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc -vV names no LLVM version")?
        .to_owned();
    let profdata = output(Command::new(LLVM_PROFDATA).arg("--version"))
        .with_context(|| format!("{LLVM_PROFDATA} missing: run `cargo xtask setup`"))?;
    let profdata_llvm = profdata
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .and_then(|v| v.split('.').next())
        .unwrap_or_default();
    if rustc_llvm != profdata_llvm {
        bail!(
            "rustc is built on LLVM {rustc_llvm} but {LLVM_PROFDATA} is LLVM {profdata_llvm}: their profile formats \
             differ"
        );
    }
    Ok(())
}

/// A file's modification time; `UNIX_EPOCH` when it does not exist.
fn modified(path: &Path) -> Result<SystemTime> {
    match fs::metadata(path) {
        Ok(meta) => meta
            .modified()
            .with_context(|| format!("reading the time of {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SystemTime::UNIX_EPOCH),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn output(cmd: &mut Command) -> Result<String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs the instrumented binary under the training load and stops it with SIGTERM, which writes the profile.
fn train(bin: &Path, dir: &Path) -> Result<()> {
    let (_upstream, upstream) = start_upstream(dir)?;
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-subj", "/CN=localhost", "-days", "1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running openssl")?;
    if !status.success() {
        bail!("openssl could not make the training certificate");
    }
    let (plain, tls) = (free_addr()?, free_addr()?);
    let config = dir.join("training.toml");
    fs::write(
        &config,
        training_config(plain, tls, upstream, &cert, &key, free_addr()?),
    )?;
    let jwt = make_jwt().context("making the training JWT with PyJWT")?;
    let script = dir.join("mix.lua");
    fs::write(&script, MIX_LUA)?;

    let proxy = Guard(spawn_rasp(bin, &config)?);
    wait_listening(plain)?;
    wait_listening(tls)?;
    for url in [format!("http://{plain}"), format!("https://{tls}")] {
        let out = output(
            Command::new("wrk")
                .args([
                    "-t2",
                    "-c32",
                    "-d",
                    &format!("{}s", LOAD.as_secs()),
                    "--timeout",
                    "5s",
                    "-s",
                ])
                .arg(&script)
                .arg(&url)
                .args(["--", &jwt, TRAINING_API_KEY]),
        )?;
        // A mix that mostly failed would train the error paths instead of the proxy's.
        let requests = wrk_requests(&out).unwrap_or(0);
        if requests < MIN_REQUESTS {
            bail!("training load against {url} completed {requests} requests:\n{out}");
        }
    }
    // h2 over TLS (ALPN) on one connection, and h2c with prior knowledge, one connection per request: curl
    // 7.88 cannot reuse a prior-knowledge connection (it reports a framing error, against nginx as well).
    let tls_url = format!("https://{tls}/orders/7");
    let mut curl = Command::new("curl");
    curl.args(["-sS", "-k", "--http2", "--max-time", "60"]);
    for _ in 0..H2_REQUESTS {
        curl.args(["-o", "/dev/null", &tls_url]);
    }
    output(&mut curl)?;
    let plain_url = format!("http://{plain}/orders/7");
    for _ in 0..H2C_REQUESTS {
        output(Command::new("curl").args([
            "-sS",
            "-o",
            "/dev/null",
            "--max-time",
            "5",
            "--http2-prior-knowledge",
            &plain_url,
        ]))?;
    }
    stop(proxy)
}

/// SIGTERM, then waits: the profile is written as the process exits normally. (The guard's own stop would kill
/// it after 5 s, and the profile with it.)
fn stop(mut proxy: Guard) -> Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &proxy.0.id().to_string()])
        .status()?;
    if !status.success() {
        bail!("could not signal the training proxy");
    }
    let deadline = Instant::now() + Duration::from_mins(1);
    while Instant::now() < deadline {
        if proxy.0.try_wait()?.is_some() {
            // Reaped: the guard must not signal its pid again.
            std::mem::forget(proxy);
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("the training proxy did not exit within 60 s of SIGTERM")
}

fn training_config(
    plain: std::net::SocketAddr,
    tls: std::net::SocketAddr,
    upstream: std::net::SocketAddr,
    cert: &Path,
    key: &Path,
    admin: std::net::SocketAddr,
) -> String {
    format!(
        "[admin]\nlisten = \"{admin}\"\n\
         [[listener]]\nlisten = \"{plain}\"\n\
         [[listener]]\nlisten = \"{tls}\"\ntls = {{ cert = \"{cert}\", key = \"{key}\" }}\n\
         [[upstream]]\nname = \"backend\"\nendpoints = [\"{upstream}\"]\n\
         [[route]]\nname = \"jwt\"\npath_prefix = \"/account\"\nupstream = \"backend\"\nauth = \"jwt\"\n\
         [[route]]\nname = \"keys\"\npath_prefix = \"/partner\"\nupstream = \"backend\"\nauth = \"api_key\"\n\
         [[route]]\nname = \"open\"\npath_prefix = \"/\"\nupstream = \"backend\"\nauth = \"none\"\n\
         [[jwt.issuer]]\nissuer = \"https://bench.example.test\"\naudiences = [\"bench\"]\n\
         algorithms = [\"HS256\"]\nsecret_env = \"RASP_BENCH_JWT_SECRET\"\n\
         [[api_key]]\nidentity = \"partner\"\nsha256 = \"{TRAINING_API_KEY_SHA256}\"\n\
         [inspection]\nmode = \"block\"\n\
         [risk]\nmode = \"detect\"\n",
        cert = cert.display(),
        key = key.display(),
    )
}

/// The training mix, one request after another on each connection: mostly the benign shapes an API sees
/// (reads with and without a query, JSON and form writes, each auth kind), a bad token, and attacks the
/// inspector refuses.
const MIX_LUA: &str = r#"
local mix = {}
local n = 0
function init(args)
  local jwt, key = args[1], args[2]
  local json = { ["Content-Type"] = "application/json" }
  mix = {
    wrk.format("GET", "/orders/42", { ["Accept"] = "application/json" }),
    wrk.format("GET", "/orders?page=2&sort=created_at&limit=50", { ["User-Agent"] = "client/1.0" }),
    wrk.format("GET", "/account/profile", { ["Authorization"] = "Bearer " .. jwt }),
    wrk.format("POST", "/orders", json, '{"item":"book","qty":2,"note":"gift wrap, please"}'),
    wrk.format("GET", "/partner/items/9", { ["X-Api-Key"] = key }),
    wrk.format("GET", "/", nil),
    wrk.format("POST", "/account/settings", { ["Authorization"] = "Bearer " .. jwt,
      ["Content-Type"] = "application/x-www-form-urlencoded" }, "name=alice&lang=en&bio=hello+there"),
    wrk.format("GET", "/orders/42", { ["Cookie"] = "session=abc123; theme=dark" }),
    wrk.format("GET", "/account/profile", { ["Authorization"] = "Bearer not.a.token" }),
    wrk.format("GET", "/search?q=1%27%20OR%20%271%27%3D%271", nil),
    wrk.format("POST", "/orders", json, '{"note":"<script>alert(document.cookie)</script>"}'),
    wrk.format("GET", "/files?name=..%2F..%2Fetc%2Fpasswd", nil),
  }
end
function request()
  n = n % #mix + 1
  return mix[n]
end
"#;
