//! `cargo xtask image`: the container image. Builds the XDP object and a static `rasp-proxy`
//! (`x86_64-unknown-linux-musl`) that embeds it, stages a build context holding only that binary and the example
//! config, builds `Containerfile` with podman, then checks that the binary in the image starts.

use std::{
    fs,
    path::Path,
    process::{Command, Output},
};

use anyhow::{Context as _, Result, bail, ensure};

const TARGET: &str = "x86_64-unknown-linux-musl";
/// Where the proxy-user build script finds the XDP object to embed.
const EBPF_OBJECT: &str = "target/bpfel-unknown-none/release/proxy-ebpf";
/// Path of the example config inside the image (see `Containerfile`).
const IMAGE_CONFIG: &str = "/etc/rasp-proxy/config.toml";

/// The tag `cargo xtask image` builds, and the one the Kubernetes manifests name.
fn image_tag() -> String {
    format!("localhost/rasp-proxy:{}", env!("CARGO_PKG_VERSION"))
}

pub fn build(root: &Path) -> Result<()> {
    require_tools()?;
    super::build_ebpf(root)?;
    let object = root.join(EBPF_OBJECT);
    let object_len = fs::metadata(&object)
        .with_context(|| format!("reading {}", object.display()))?
        .len();
    ensure!(object_len > 0, "{} is empty", object.display());
    super::run(Command::new("rustup").args(["target", "add", TARGET]))?;
    super::run(
        Command::new("cargo")
            .current_dir(root)
            .args(["build", "--release", "--target", TARGET, "-p", "proxy-user"])
            // ring compiles C; musl-gcc (from musl-tools) is the C compiler for this target.
            .env("CC_x86_64_unknown_linux_musl", "musl-gcc"),
    )
    .context("building the static rasp-proxy")?;
    let binary = root.join("target").join(TARGET).join("release/rasp-proxy");
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
    check_in_container(&tag)
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
fn check_in_container(tag: &str) -> Result<()> {
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
    Ok(())
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
