//! The kernel ABI, and nothing else.
//!
//! This is the only module that calls `libc::syscall` or `libc::ioctl`. It holds the raw
//! `#[repr(C)]` structs of `<linux/userfaultfd.h>` and `<linux/fs.h>` (`PAGEMAP_SCAN`), their
//! constants, and one thin, typed wrapper per system call or ioctl. The wrappers translate
//! `-1/errno` into [`std::io::Error`] and do no policy: what an errno *means* for the library is
//! decided one layer up.
//!
//! Constants are defined here rather than taken from the host's headers (Debian's are 6.1, which
//! lacks `WP_ASYNC` and `PAGEMAP_SCAN`); each carries the kernel version that introduced it.
//! Values were checked against `include/uapi/linux/userfaultfd.h` and `fs.h` and against the
//! measurements in `KERNEL-FACTS.md`.
//!
//! Safety model: every wrapper here is a safe function. None of them can break Rust's memory
//! safety: they pass the kernel pointers to properly sized, exclusively borrowed buffers, and
//! changing the write-protection of an address range never makes a Rust reference dangle (a
//! protected write either completes or waits for the monitor; it never observes different bytes).

pub mod maps;
pub mod mem;
pub mod pagemap;
pub mod pidfd;
pub mod proc;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub mod ptrace;
pub mod uffd;

use std::io;

/// Turns a `-1`-on-error return into `io::Result`, reading `errno` immediately.
pub(crate) fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The `_IOC` encoding of `<asm-generic/ioctl.h>` (x86, arm64, riscv: 2 direction bits, 14 size bits).
pub(crate) const fn ioc(dir: u64, ty: u64, nr: u64, size: u64) -> u64 {
    (dir << 30) | (size << 16) | (ty << 8) | nr
}
pub(crate) const IOC_NONE: u64 = 0;
pub(crate) const IOC_WRITE: u64 = 1;
pub(crate) const IOC_READ: u64 = 2;

/// `uname(2)` release string, e.g. `"6.18.44-fc-v595"`.
pub fn kernel_release() -> io::Result<String> {
    // SAFETY: `utsname` is plain old data; all-zero is a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid, exclusively borrowed `utsname` the kernel fills in.
    cvt(unsafe { libc::uname(&mut uts) } as libc::c_long)?;
    // SAFETY: the kernel NUL-terminates `release` within its fixed-size array.
    let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) };
    Ok(release.to_string_lossy().into_owned())
}

/// The page size of this process (`sysconf(_SC_PAGESIZE)`).
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ps = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if ps <= 0 {
        4096
    } else {
        ps as usize
    }
}

/// `getpid(2)`.
pub fn getpid() -> u32 {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() as u32 }
}
