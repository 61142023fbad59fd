//! Making sure the pin directory is on a bpffs. Not every host mounts one at `/sys/fs/bpf` (this project's CI
//! does not), so we mount it when it is missing and say so in the log.

use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use crate::Error;

const BPF_FS_MAGIC: u64 = 0xcafe_4a11;
const SYS_FS_BPF: &str = "/sys/fs/bpf";

/// Whether `path` (which must exist) is on a bpffs.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `statfs` is plain data; zeroed is a valid initial value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path, `st` is writable.
    if unsafe { libc::statfs(c.as_ptr(), &raw mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // `f_type` is `i64` with glibc and `u64` with musl (the static image's build), so widen it either way.
    Ok(u64::try_from(st.f_type).is_ok_and(|t| t == BPF_FS_MAGIC))
}

/// Creates `dir` (and parents) on a bpffs, mounting one first if needed: at `/sys/fs/bpf` when `dir` lies
/// under it, otherwise at `dir` itself. Returns the mount point if this call mounted one.
pub fn ensure_dir(dir: &Path) -> Result<Option<PathBuf>, Error> {
    let mount_point = if dir.starts_with(SYS_FS_BPF) {
        PathBuf::from(SYS_FS_BPF)
    } else {
        dir.to_path_buf()
    };
    fs::create_dir_all(&mount_point)
        .map_err(|e| Error::io(format!("creating {}", mount_point.display()), e))?;
    let mounted =
        if is_bpffs(&mount_point).map_err(|e| Error::io(format!("statfs {}", mount_point.display()), e))? {
            None
        } else {
            mount_bpffs(&mount_point)?;
            tracing::warn!(mount_point = %mount_point.display(), "bpffs was not mounted; mounted it");
            Some(mount_point)
        };
    fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    Ok(mounted)
}

fn mount_bpffs(at: &Path) -> Result<(), Error> {
    let target = CString::new(at.as_os_str().as_bytes()).map_err(|e| Error::Other(e.to_string()))?;
    // SAFETY: all pointers are valid NUL-terminated strings; data is NULL.
    let ret = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        return Err(Error::io(
            format!("mounting bpffs at {}", at.display()),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}
