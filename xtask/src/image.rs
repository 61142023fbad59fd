//! `cargo xtask image`: the container image. Builds the XDP object and a static, profile-guided `rasp-proxy`
//! (`x86_64-unknown-linux-musl`, see `pgo.rs`; `--no-pgo` for the plain release build) that embeds it, stages
//! a build context holding only that binary and the example config, builds `Containerfile` with podman, then
//! checks that the binary in the image starts.

use std::{
    fs,
    path::Path,
    process::{Command, Output},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::release::{Build, Platform};

const TARGET: &str = "x86_64-unknown-linux-musl";
/// Where the proxy-user build script finds the XDP object to embed.
const EBPF_OBJECT: &str = "target/bpfel-unknown-none/release/proxy-ebpf";
/// Path of the example config inside the image (see `Containerfile`).
const IMAGE_CONFIG: &str = "/etc/rasp-proxy/config.toml";

/// The tag `cargo xtask image` builds, and the one the Kubernetes manifests name.
fn image_tag() -> String {
    format!("localhost/rasp-proxy:{}", env!("CARGO_PKG_VERSION"))
}

/// `check_capabilities`: also run the data-plane commands in the image under the `DaemonSet`'s security settings
/// (root, network namespaces, a veth pair and a private bpffs; see [`check_capabilities`]).
pub fn build(root: &Path, check_capabilities: bool, build: Build) -> Result<()> {
    require_tools()?;
    super::build_ebpf(root)?;
    let object = root.join(EBPF_OBJECT);
    let object_len = fs::metadata(&object)
        .with_context(|| format!("reading {}", object.display()))?
        .len();
    ensure!(object_len > 0, "{} is empty", object.display());
    super::run(Command::new("rustup").args(["target", "add", TARGET]))?;
    let platform = Platform {
        triple: Some(TARGET),
        // ring compiles C; musl-gcc (from musl-tools) is the C compiler for this target.
        env: &[("CC_x86_64_unknown_linux_musl", "musl-gcc")],
    };
    let binary = build
        .binary(root, &platform)
        .context("building the static rasp-proxy")?;
    let bytes = fs::read(&binary).with_context(|| format!("reading {}", binary.display()))?;
    ensure!(
        is_static_elf(&bytes)?,
        "{} is dynamically linked (it has a PT_INTERP header); a FROM scratch image cannot run it",
        binary.display()
    );

    let context = root.join("target/image/context");
    if context.exists() {
        fs::remove_dir_all(&context).with_context(|| format!("clearing {}", context.display()))?;
    }
    fs::create_dir_all(&context).with_context(|| format!("creating {}", context.display()))?;
    copy(&binary, &context.join("rasp-proxy"))?;
    copy(&root.join("deploy/config.toml"), &context.join("config.toml"))?;

    let tag = image_tag();
    super::run(
        Command::new("podman")
            .arg("build")
            .arg("--file")
            .arg(root.join("Containerfile"))
            .args(["--tag", &tag])
            .arg(&context),
    )
    .context("podman build")?;
    println!(
        "image: built {tag} (static {TARGET} binary, {} bytes, XDP object {object_len} bytes embedded)",
        bytes.len()
    );

    check_extracted(&tag, &bytes, &context)?;
    let runtime = check_in_container(&tag)?;
    if check_capabilities {
        self::check_capabilities(root, &tag, runtime)?;
    }
    Ok(())
}

/// Fails early, naming the package, when a tool the build needs is missing.
fn require_tools() -> Result<()> {
    for (tool, package) in [("podman", "podman"), ("musl-gcc", "musl-tools")] {
        let found = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        ensure!(found, "`{tool}` not found: apt-get install -y {package}");
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

/// The binary in the image is the one just built, and it runs: copied out with `podman create` + `podman cp`,
/// compared byte for byte, and started on this host.
fn check_extracted(tag: &str, built: &[u8], context: &Path) -> Result<()> {
    let created = output(Command::new("podman").args(["create", tag]))?;
    let id = created.trim().to_owned();
    let extracted = context.join("extracted-rasp-proxy");
    let copied = output(
        Command::new("podman")
            .args(["cp", &format!("{id}:/usr/local/bin/rasp-proxy")])
            .arg(&extracted),
    );
    let removed = output(Command::new("podman").args(["rm", &id]));
    copied?;
    removed?;
    let bytes = fs::read(&extracted).with_context(|| format!("reading {}", extracted.display()))?;
    ensure!(
        bytes == built,
        "the binary in {tag} differs from the one just built"
    );
    let version = output(Command::new(&extracted).arg("--version"))?;
    let checked = output(
        Command::new(&extracted)
            .arg("check")
            .arg("--config")
            .arg(context.join("config.toml")),
    )?;
    println!(
        "image: extracted binary matches the build; `--version`: {}; `check`: {}",
        version.trim(),
        checked.trim()
    );
    Ok(())
}

/// `podman run` of the image itself: `--version`, then `check --config` on the example config it carries. No
/// network, read-only root, every capability dropped: the check needs nothing.
///
/// Two settings make it run on hosts like this project's CI, where root lacks `CAP_SYS_RESOURCE` and the cgroup
/// layout is hybrid: explicit low ulimits (podman otherwise raises `RLIMIT_NOFILE`/`RLIMIT_NPROC` above the hard
/// limit, which fails with EPERM), and runc when crun refuses the cgroup layout.
fn check_in_container(tag: &str) -> Result<Option<&'static str>> {
    let run = |runtime: Option<&str>, args: &[&str]| {
        let mut cmd = Command::new("podman");
        if let Some(r) = runtime {
            cmd.args(["--runtime", r]);
        }
        cmd.args(["run", "--rm", "--network=none", "--read-only", "--cap-drop=all"])
            .args(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", tag])
            .args(args);
        output(&mut cmd)
    };
    let runtime = match run(None, &["--version"]) {
        Ok(_) => None,
        Err(default_err) => {
            let has_runc = Command::new("runc")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            if !has_runc {
                return Err(default_err.context(
                    "`podman run` failed with the default runtime and runc is not installed \
                     (the image was checked by extraction above)",
                ));
            }
            eprintln!(
                "image: `podman run` with the default runtime failed ({default_err:#}); retrying with runc"
            );
            Some("runc")
        }
    };
    let version = run(runtime, &["--version"])
        .context("`podman run` of the image (the image itself was checked by extraction above)")?;
    let expected = format!("rasp-proxy {}", env!("CARGO_PKG_VERSION"));
    ensure!(
        version.trim() == expected,
        "`podman run {tag} --version` printed {:?}, expected {expected:?}",
        version.trim()
    );
    let checked = run(runtime, &["check", "--config", IMAGE_CONFIG])?;
    ensure!(
        checked.trim() == format!("{IMAGE_CONFIG}: ok"),
        "`podman run {tag} check --config {IMAGE_CONFIG}` printed {:?}",
        checked.trim()
    );
    println!(
        "image: `podman run{}` {tag}: `--version` -> {}; `check --config {IMAGE_CONFIG}` -> {}",
        runtime.map_or(String::new(), |r| format!(" --runtime {r}")),
        version.trim(),
        checked.trim()
    );
    Ok(runtime)
}

/// The capabilities the `DaemonSet` and the systemd unit grant (a proxy-user test keeps the manifests equal to it).
const CAPABILITIES: &str = "bpf,net_admin,perfmon";
const CAPS_NETNS: &str = "rasp-image-caps";

/// One run of the image under a given security setting, and what it must do.
struct CapsCase {
    what: &'static str,
    user: &'static str,
    caps: &'static str,
    seccomp_unconfined: bool,
    pin_dir: &'static str,
    args: &'static [&'static str],
    /// `Some(text)`: must succeed and print `text`; `None`: must fail.
    expect: Option<&'static str>,
}

/// Runs the XDP and map commands in the image the way the `DaemonSet` runs them (uid 0, every capability dropped
/// but `CAP_BPF`, `CAP_NET_ADMIN` and `CAP_PERFMON`, read-only root, no-new-privileges, seccomp unconfined), on a veth
/// in a network namespace of its own with a private bpffs, and checks that each capability is needed, that the
/// default seccomp profile and a non-root uid do not work, and that the program stays attached after every
/// container has exited. Needs root; cleans up after itself.
fn check_capabilities(root: &Path, tag: &str, runtime: Option<&str>) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "--check-capabilities needs root (netns, veth, bpffs)"
    );
    let bpffs = root.join("target/image/bpffs");
    let _scratch = CapsScratch::create(&bpffs)?;
    for case in &caps_cases() {
        run_caps_case(case, tag, runtime, &bpffs)?;
    }
    daemon_drains_and_leaves_xdp(root, tag, runtime, &bpffs)?;
    let link = output(Command::new("ip").args(["-n", CAPS_NETNS, "-d", "link", "show", "rpcaps0"]))?;
    ensure!(
        link.contains("prog/xdp"),
        "no XDP program on rpcaps0 after the containers exited:\n{link}"
    );
    println!("caps: ok      the XDP program stays attached with no container running (pinned link)");
    Ok(())
}

/// What each setting must allow or refuse. Attaching needs all three capabilities; writing a ban needs `CAP_BPF`
/// alone (plus the pins, which only uid 0 can open); the runtime's default seccomp profile blocks bpf(2).
#[expect(
    clippy::too_many_lines,
    reason = "one table of cases; rustfmt spreads each over several lines"
)]
fn caps_cases() -> [CapsCase; 10] {
    const MAIN: &str = "/sys/fs/bpf/rasp-proxy";
    const OTHER: &str = "/sys/fs/bpf/other";
    const ROOT: &str = "0:0";
    let case = |what, user, caps, seccomp_unconfined, pin_dir, args, expect| CapsCase {
        what,
        user,
        caps,
        seccomp_unconfined,
        pin_dir,
        args,
        expect,
    };
    let attach: &'static [&'static str] = &["xdp", "attach", "--iface", "rpcaps0", "--mode", "native"];
    let attach_other: &'static [&'static str] = &["xdp", "attach", "--iface", "rpcaps1"];
    [
        case(
            "attach",
            ROOT,
            CAPABILITIES,
            true,
            MAIN,
            attach,
            Some("attached to rpcaps0"),
        ),
        case(
            "ban",
            ROOT,
            CAPABILITIES,
            true,
            MAIN,
            &["ban", "192.0.2.1", "--ttl", "1m"],
            Some("banned 192.0.2.1"),
        ),
        case(
            "re-attach (the next pod)",
            ROOT,
            CAPABILITIES,
            true,
            MAIN,
            attach,
            Some("replaced in the pinned link"),
        ),
        case(
            "dump",
            ROOT,
            CAPABILITIES,
            true,
            MAIN,
            &["maps", "dump", "bans", "--json"],
            Some("192.0.2.1"),
        ),
        case(
            "ban with CAP_BPF only",
            ROOT,
            "bpf",
            true,
            MAIN,
            &["ban", "192.0.2.2", "--ttl", "1m"],
            Some("banned"),
        ),
        case(
            "attach without CAP_PERFMON",
            ROOT,
            "bpf,net_admin",
            true,
            OTHER,
            attach_other,
            None,
        ),
        case(
            "attach without CAP_NET_ADMIN",
            ROOT,
            "bpf,perfmon",
            true,
            OTHER,
            attach_other,
            None,
        ),
        case(
            "attach without CAP_BPF",
            ROOT,
            "net_admin,perfmon",
            true,
            OTHER,
            attach_other,
            None,
        ),
        case(
            "dump, default seccomp profile",
            ROOT,
            CAPABILITIES,
            false,
            MAIN,
            &["maps", "dump", "bans"],
            None,
        ),
        case(
            "dump as uid 65532",
            "65532:65532",
            CAPABILITIES,
            true,
            MAIN,
            &["maps", "dump", "bans"],
            None,
        ),
    ]
}

fn run_caps_case(case: &CapsCase, tag: &str, runtime: Option<&str>, bpffs: &Path) -> Result<()> {
    let mut cmd = Command::new("podman");
    if let Some(r) = runtime {
        cmd.args(["--runtime", r]);
    }
    cmd.args([
        "run",
        "--rm",
        "--read-only",
        "--cap-drop=all",
        "--security-opt",
        "no-new-privileges",
    ])
    .args(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"])
    .arg(format!("--network=ns:/run/netns/{CAPS_NETNS}"))
    .args(["--user", case.user, "--cap-add", case.caps, "--env"])
    .arg(format!("RASP_PIN_DIR={}", case.pin_dir))
    .arg("--volume")
    .arg(format!("{}:/sys/fs/bpf", bpffs.display()));
    if case.seccomp_unconfined {
        cmd.args(["--security-opt", "seccomp=unconfined"]);
    }
    cmd.arg(tag).args(case.args);
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let first = text.lines().next().unwrap_or("").trim();
    match case.expect {
        Some(needle) => ensure!(
            out.status.success() && text.contains(needle),
            "{}: expected success printing {needle:?}, got {}: {text}",
            case.what,
            out.status
        ),
        None => ensure!(
            !out.status.success(),
            "{}: expected a refusal, but it succeeded: {text}",
            case.what
        ),
    }
    let verdict = if out.status.success() {
        "ok     "
    } else {
        "refused"
    };
    println!(
        "caps: {verdict} {:<42} uid {:<11} +{:<21} {first}",
        case.what, case.user, case.caps
    );
    Ok(())
}

const CAPS_DAEMON: &str = "rasp-image-caps-daemon";

/// The pod's main container: `rasp-proxy run` with the example config under the same settings, stopped the way
/// the kubelet stops it (SIGTERM). It must drain and exit 0, and leave the XDP program attached.
fn daemon_drains_and_leaves_xdp(root: &Path, tag: &str, runtime: Option<&str>, bpffs: &Path) -> Result<()> {
    // The example config attaches to the node's `eth0`; in the check's namespace the interface is `rpcaps0`.
    let example =
        fs::read_to_string(root.join("deploy/config.toml")).context("reading deploy/config.toml")?;
    let adapted = example.replace("interfaces = [\"eth0\"]", "interfaces = [\"rpcaps0\"]");
    ensure!(
        adapted != example,
        "deploy/config.toml no longer attaches to eth0: update the capability check"
    );
    let check_config = bpffs.with_extension("config.toml");
    fs::write(&check_config, adapted).with_context(|| format!("writing {}", check_config.display()))?;
    let podman = || {
        let mut cmd = Command::new("podman");
        if let Some(r) = runtime {
            cmd.args(["--runtime", r]);
        }
        cmd
    };
    output(
        podman()
            .args([
                "run",
                "--detach",
                "--name",
                CAPS_DAEMON,
                "--read-only",
                "--cap-drop=all",
            ])
            .args([
                "--security-opt",
                "no-new-privileges",
                "--security-opt",
                "seccomp=unconfined",
            ])
            .args(["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"])
            .arg(format!("--network=ns:/run/netns/{CAPS_NETNS}"))
            .args(["--user", "0:0", "--cap-add", CAPABILITIES, "--volume"])
            .arg(format!("{}:/sys/fs/bpf", bpffs.display()))
            .arg("--volume")
            .arg(format!(
                "{}:/etc/rasp-proxy/check.toml:ro",
                check_config.display()
            ))
            .args([tag, "run", "--config", "/etc/rasp-proxy/check.toml"]),
    )?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !output(podman().args(["logs", CAPS_DAEMON]))?.contains("admin listening") {
        ensure!(
            std::time::Instant::now() < deadline,
            "`rasp-proxy run` in the image did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    output(podman().args(["stop", "--time", "40", CAPS_DAEMON]))?;
    let code = output(podman().args(["inspect", "--format", "{{.State.ExitCode}}", CAPS_DAEMON]))?;
    let logs = output(podman().args(["logs", CAPS_DAEMON]))?;
    output(podman().args(["rm", CAPS_DAEMON]))?;
    ensure!(
        code.trim() == "0" && logs.contains("draining") && logs.contains("\"stopped\""),
        "`rasp-proxy run` did not drain and exit 0 on SIGTERM (exit code {}):\n{logs}",
        code.trim()
    );
    println!("caps: ok      `rasp-proxy run` in the image: started, SIGTERM, drained, exit code 0");
    Ok(())
}

/// The network namespace, veth pair and bpffs mount of [`check_capabilities`], removed on drop.
struct CapsScratch {
    bpffs: std::path::PathBuf,
}

impl CapsScratch {
    fn create(bpffs: &Path) -> Result<Self> {
        // Left over from an interrupted run: start clean.
        let _ = Command::new("podman")
            .args(["rm", "--force", CAPS_DAEMON])
            .output();
        let _ = Command::new("umount").arg(bpffs).output();
        let _ = Command::new("ip").args(["netns", "del", CAPS_NETNS]).output();
        fs::create_dir_all(bpffs).with_context(|| format!("creating {}", bpffs.display()))?;
        let scratch = Self {
            bpffs: bpffs.to_owned(),
        };
        super::run(Command::new("ip").args(["netns", "add", CAPS_NETNS]))?;
        super::run(Command::new("ip").args([
            "-n", CAPS_NETNS, "link", "add", "rpcaps0", "type", "veth", "peer", "name", "rpcaps1",
        ]))?;
        for dev in ["rpcaps0", "rpcaps1"] {
            super::run(Command::new("ip").args(["-n", CAPS_NETNS, "link", "set", dev, "up"]))?;
        }
        super::run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(bpffs))?;
        Ok(scratch)
    }
}

impl Drop for CapsScratch {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair, which detaches the program; unmounting the private bpffs
        // frees the pins and with them the maps.
        let _ = Command::new("podman")
            .args(["rm", "--force", CAPS_DAEMON])
            .output();
        let _ = Command::new("ip").args(["netns", "del", CAPS_NETNS]).status();
        let _ = Command::new("umount").arg(&self.bpffs).status();
    }
}

/// Runs a command and returns its stdout; a failure carries the command and its stderr.
fn output(cmd: &mut Command) -> Result<String> {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!(
            "{cmd:?} failed ({status}): {}",
            String::from_utf8_lossy(&stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// Whether an `x86_64` ELF file has no `PT_INTERP` program header, i.e. needs no dynamic loader.
fn is_static_elf(bytes: &[u8]) -> Result<bool> {
    const PT_INTERP: u32 = 3;
    let read =
        |at: usize, len: usize| -> Result<&[u8]> { bytes.get(at..at + len).context("truncated ELF file") };
    ensure!(read(0, 5)? == b"\x7fELF\x02", "not a 64-bit ELF file");
    let u16_at = |at| -> Result<usize> { Ok(usize::from(u16::from_le_bytes(read(at, 2)?.try_into()?))) };
    let phoff = usize::try_from(u64::from_le_bytes(read(0x20, 8)?.try_into()?))?;
    let (phentsize, phnum) = (u16_at(0x36)?, u16_at(0x38)?);
    for i in 0..phnum {
        let p_type = u32::from_le_bytes(read(phoff + i * phentsize, 4)?.try_into()?);
        if p_type == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}
