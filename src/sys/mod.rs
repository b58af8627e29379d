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
//! measurements in `docs/kernel-facts.md` ("ABI constants and layouts").
//!
//! Safety model: a wrapper is a safe function only if no caller can break Rust's memory safety
//! through it: the safe ones pass the kernel pointers to properly sized, exclusively borrowed
//! buffers, or change only the write-protection of an address range (which never makes a Rust
//! reference dangle: a protected write either completes or waits for the monitor; it never
//! observes different bytes), or fault pages in. Fds are created as `OwnedFd` and taken as
//! `BorrowedFd`, so ownership is typed. A wrapper that can change what memory reads as
//! (destructive `madvise`) is an `unsafe fn` whose `# Safety` section says what the caller must
//! own. The module is crate-private (the `testing` feature exposes it, hidden, to this crate's
//! tests, benchmarks and fuzz targets).
//!
//! ioctl numbers are computed from the argument types' sizes ([`iowr`], [`ior`]), and each is
//! checked at compile time against the number the kernel headers give.

pub mod lock;
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

// The `_IOC` encoding of `<asm-generic/ioctl.h>`: 2 direction bits (none 0, write 1, read 2),
// 14 size bits, 8 type bits, 8 number bits. x86, arm64, riscv and loongarch use it; alpha,
// mips, powerpc and sparc encode ioctls differently (3 direction bits, 13 size bits), and this
// crate has never run there: refuse to build rather than issue wrong ioctl numbers.
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64",
    target_arch = "s390x"
)))]
compile_error!(
    "dirtytrack knows the asm-generic ioctl encoding only (x86, arm, aarch64, riscv64, loongarch64, s390x); this architecture encodes ioctl numbers differently"
);

/// `_IOC(dir, ty, nr, size)`.
pub(crate) const fn ioc(dir: u64, ty: u64, nr: u64, size: u64) -> u64 {
    // The size field has 14 bits: a larger argument cannot be encoded.
    assert!(size < (1 << 14));
    (dir << 30) | (size << 16) | (ty << 8) | nr
}
pub(crate) const IOC_NONE: u64 = 0;
pub(crate) const IOC_WRITE: u64 = 1;
pub(crate) const IOC_READ: u64 = 2;

/// `_IO(ty, nr)`: no argument.
pub(crate) const fn io_none(ty: u64, nr: u64) -> u64 {
    ioc(IOC_NONE, ty, nr, 0)
}

/// `_IOR(ty, nr, T)`: the size comes from the argument type itself, so a struct that is
/// defined wrongly cannot silently keep an ioctl number computed for the right one.
pub(crate) const fn ior<T>(ty: u64, nr: u64) -> u64 {
    ioc(IOC_READ, ty, nr, std::mem::size_of::<T>() as u64)
}

/// `_IOWR(ty, nr, T)`, sized by the argument type like [`ior`].
pub(crate) const fn iowr<T>(ty: u64, nr: u64) -> u64 {
    ioc(
        IOC_READ | IOC_WRITE,
        ty,
        nr,
        std::mem::size_of::<T>() as u64,
    )
}

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
