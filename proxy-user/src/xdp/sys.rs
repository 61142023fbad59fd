//! The few bpf(2) and clock calls aya does not expose. Each is a thin, documented wrapper around one syscall.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `CLOCK_MONOTONIC` in ns: the clock of `bpf_ktime_get_ns`, which the kernel compares ban expiries against.
#[must_use]
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// `CLOCK_MONOTONIC_COARSE` in ns: the same clock at the kernel tick's resolution (a few ms), read without the
/// TSC, for a fraction of a precise read's cost. For bookkeeping that needs no better, read per request.
#[must_use]
pub fn monotonic_coarse_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both monotonic clocks above are always supported on Linux.
    unsafe { libc::clock_gettime(clock, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Opens a pinned BPF object (`BPF_OBJ_GET`).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &attr)?;
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Forcibly detaches a BPF link from its hook (`BPF_LINK_DETACH`), even while other processes hold it open.
/// Dropping the last fd would also detach, but a running daemon may still hold one.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct LinkDetachAttr {
        link_fd: u32,
    }
    let attr = LinkDetachAttr {
        link_fd: u32::try_from(link.as_raw_fd()).map_err(io::Error::other)?,
    };
    bpf(BPF_LINK_DETACH, &attr).map(drop)
}

/// What the kernel reports about an XDP link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpLinkInfo {
    pub link_id: u32,
    pub prog_id: u32,
    /// 0 once the interface is gone or the link was detached.
    pub ifindex: u32,
}

/// `BPF_OBJ_GET_INFO_BY_FD` on a link, decoded for XDP links (`struct bpf_link_info`: `type`, `id`, `prog_id`, then an
/// 8-byte-aligned union whose `xdp` member starts with `ifindex`).
pub fn xdp_link_info(link: BorrowedFd<'_>) -> io::Result<XdpLinkInfo> {
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let mut info = [0u32; 32];
    let attr = InfoAttr {
        bpf_fd: u32::try_from(link.as_raw_fd()).map_err(io::Error::other)?,
        info_len: u32::try_from(size_of_val(&info)).map_err(io::Error::other)?,
        info: info.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &attr)?;
    Ok(XdpLinkInfo {
        link_id: info[1],
        prog_id: info[2],
        ifindex: info[4],
    })
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, correctly laid out `union bpf_attr` prefix for `cmd`, and its size is passed;
    // the kernel zero-extends the rest.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_ref(attr), size_of::<T>()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
