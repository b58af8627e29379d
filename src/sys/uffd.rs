//! `userfaultfd(2)`: the fd, its ioctls and its messages (`<linux/userfaultfd.h>`).

use super::{cvt, io_none, ior, iowr};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `UFFD_API`: the only API version (4.3).
pub const UFFD_API: u64 = 0xAA;
/// ioctl type of the userfaultfd ioctls.
const UFFDIO: u64 = 0xAA;

// ioctl numbers; bit `1 << nr` of `uffdio_api.ioctls` / `uffdio_register.ioctls` says the ioctl is
// available.
/// `_UFFDIO_REGISTER` (4.3).
pub const NR_REGISTER: u64 = 0x00;
/// `_UFFDIO_UNREGISTER` (4.3).
pub const NR_UNREGISTER: u64 = 0x01;
/// `_UFFDIO_WAKE` (4.3).
pub const NR_WAKE: u64 = 0x02;
/// `_UFFDIO_COPY` (4.3).
pub const NR_COPY: u64 = 0x03;
/// `_UFFDIO_WRITEPROTECT` (5.7).
pub const NR_WRITEPROTECT: u64 = 0x06;
/// `_UFFDIO_API` (4.3).
pub const NR_API: u64 = 0x3F;

/// `UFFDIO_API = _IOWR(UFFDIO, _UFFDIO_API, struct uffdio_api)` (4.3).
pub const UFFDIO_API: u64 = iowr::<UffdioApi>(UFFDIO, NR_API);
/// `UFFDIO_REGISTER = _IOWR(UFFDIO, _UFFDIO_REGISTER, struct uffdio_register)` (4.3).
pub const UFFDIO_REGISTER: u64 = iowr::<UffdioRegister>(UFFDIO, NR_REGISTER);
/// `UFFDIO_UNREGISTER = _IOR(UFFDIO, _UFFDIO_UNREGISTER, struct uffdio_range)` (4.3).
pub const UFFDIO_UNREGISTER: u64 = ior::<UffdioRange>(UFFDIO, NR_UNREGISTER);
/// `UFFDIO_WAKE = _IOR(UFFDIO, _UFFDIO_WAKE, struct uffdio_range)` (4.3).
pub const UFFDIO_WAKE: u64 = ior::<UffdioRange>(UFFDIO, NR_WAKE);
/// `UFFDIO_WRITEPROTECT = _IOWR(UFFDIO, _UFFDIO_WRITEPROTECT, struct uffdio_writeprotect)` (5.7).
pub const UFFDIO_WRITEPROTECT: u64 = iowr::<UffdioWriteprotect>(UFFDIO, NR_WRITEPROTECT);
/// `USERFAULTFD_IOC_NEW = _IO(0xAA, 0x00)` on `/dev/userfaultfd` (6.1).
pub const USERFAULTFD_IOC_NEW: u64 = io_none(0xAA, 0x00);

// The values of the kernel headers (asm-generic encoding), checked at compile time.
const _: () = assert!(UFFDIO_API == 0xc018_aa3f);
const _: () = assert!(UFFDIO_REGISTER == 0xc020_aa00);
const _: () = assert!(UFFDIO_UNREGISTER == 0x8010_aa01);
const _: () = assert!(UFFDIO_WAKE == 0x8010_aa02);
const _: () = assert!(UFFDIO_WRITEPROTECT == 0xc018_aa06);
const _: () = assert!(USERFAULTFD_IOC_NEW == 0xaa00);
const _: () = assert!(std::mem::size_of::<UffdMsg>() == 32);

// Flags of userfaultfd(2) itself.
/// `UFFD_USER_MODE_ONLY` (5.11): only faults from user mode are handled; works unprivileged.
pub const UFFD_USER_MODE_ONLY: i32 = 1;

// `uffdio_api.features` bits.
/// `UFFD_FEATURE_PAGEFAULT_FLAG_WP` (5.7): write-protect faults are reported.
pub const FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
/// `UFFD_FEATURE_EVENT_FORK` (4.11).
pub const FEATURE_EVENT_FORK: u64 = 1 << 1;
/// `UFFD_FEATURE_EVENT_REMAP` (4.11).
pub const FEATURE_EVENT_REMAP: u64 = 1 << 2;
/// `UFFD_FEATURE_EVENT_REMOVE` (4.11).
pub const FEATURE_EVENT_REMOVE: u64 = 1 << 3;
/// `UFFD_FEATURE_MISSING_HUGETLBFS` (4.11).
pub const FEATURE_MISSING_HUGETLBFS: u64 = 1 << 4;
/// `UFFD_FEATURE_MISSING_SHMEM` (4.11).
pub const FEATURE_MISSING_SHMEM: u64 = 1 << 5;
/// `UFFD_FEATURE_EVENT_UNMAP` (4.11).
pub const FEATURE_EVENT_UNMAP: u64 = 1 << 6;
/// `UFFD_FEATURE_SIGBUS` (4.14).
pub const FEATURE_SIGBUS: u64 = 1 << 7;
/// `UFFD_FEATURE_THREAD_ID` (4.14).
pub const FEATURE_THREAD_ID: u64 = 1 << 8;
/// `UFFD_FEATURE_MINOR_HUGETLBFS` (5.13).
pub const FEATURE_MINOR_HUGETLBFS: u64 = 1 << 9;
/// `UFFD_FEATURE_MINOR_SHMEM` (5.14).
pub const FEATURE_MINOR_SHMEM: u64 = 1 << 10;
/// `UFFD_FEATURE_EXACT_ADDRESS` (5.18).
pub const FEATURE_EXACT_ADDRESS: u64 = 1 << 11;
/// `UFFD_FEATURE_WP_HUGETLBFS_SHMEM` (5.19): write-protect on hugetlbfs and shmem.
pub const FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
/// `UFFD_FEATURE_WP_UNPOPULATED` (6.4): protecting also marks never-touched pages.
pub const FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// `UFFD_FEATURE_POISON` (6.6).
pub const FEATURE_POISON: u64 = 1 << 14;
/// `UFFD_FEATURE_WP_ASYNC` (6.7): the kernel resolves write-protect faults itself.
pub const FEATURE_WP_ASYNC: u64 = 1 << 15;
/// `UFFD_FEATURE_MOVE` (6.8).
pub const FEATURE_MOVE: u64 = 1 << 16;

/// Names of the feature bits, lowest bit first, for printing.
pub const FEATURE_NAMES: [(u64, &str); 17] = [
    (FEATURE_PAGEFAULT_FLAG_WP, "PAGEFAULT_FLAG_WP"),
    (FEATURE_EVENT_FORK, "EVENT_FORK"),
    (FEATURE_EVENT_REMAP, "EVENT_REMAP"),
    (FEATURE_EVENT_REMOVE, "EVENT_REMOVE"),
    (FEATURE_MISSING_HUGETLBFS, "MISSING_HUGETLBFS"),
    (FEATURE_MISSING_SHMEM, "MISSING_SHMEM"),
    (FEATURE_EVENT_UNMAP, "EVENT_UNMAP"),
    (FEATURE_SIGBUS, "SIGBUS"),
    (FEATURE_THREAD_ID, "THREAD_ID"),
    (FEATURE_MINOR_HUGETLBFS, "MINOR_HUGETLBFS"),
    (FEATURE_MINOR_SHMEM, "MINOR_SHMEM"),
    (FEATURE_EXACT_ADDRESS, "EXACT_ADDRESS"),
    (FEATURE_WP_HUGETLBFS_SHMEM, "WP_HUGETLBFS_SHMEM"),
    (FEATURE_WP_UNPOPULATED, "WP_UNPOPULATED"),
    (FEATURE_POISON, "POISON"),
    (FEATURE_WP_ASYNC, "WP_ASYNC"),
    (FEATURE_MOVE, "MOVE"),
];

// `uffdio_register.mode`.
/// `UFFDIO_REGISTER_MODE_MISSING` (4.3).
pub const REGISTER_MODE_MISSING: u64 = 1 << 0;
/// `UFFDIO_REGISTER_MODE_WP` (5.7).
pub const REGISTER_MODE_WP: u64 = 1 << 1;

// `uffdio_writeprotect.mode`.
/// `UFFDIO_WRITEPROTECT_MODE_WP` (5.7): set protection; without it, clear it (and wake).
pub const WRITEPROTECT_MODE_WP: u64 = 1 << 0;
/// `UFFDIO_WRITEPROTECT_MODE_DONTWAKE` (5.7): clear protection without waking waiters.
pub const WRITEPROTECT_MODE_DONTWAKE: u64 = 1 << 1;

// `uffd_msg.event`.
/// `UFFD_EVENT_PAGEFAULT` (4.3).
pub const EVENT_PAGEFAULT: u8 = 0x12;
/// `UFFD_EVENT_FORK` (4.11).
pub const EVENT_FORK: u8 = 0x13;
/// `UFFD_EVENT_REMAP` (4.11).
pub const EVENT_REMAP: u8 = 0x14;
/// `UFFD_EVENT_REMOVE` (4.11).
pub const EVENT_REMOVE: u8 = 0x15;
/// `UFFD_EVENT_UNMAP` (4.11).
pub const EVENT_UNMAP: u8 = 0x16;

// `uffd_msg.arg.pagefault.flags`.
/// `UFFD_PAGEFAULT_FLAG_WRITE` (4.3).
pub const PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
/// `UFFD_PAGEFAULT_FLAG_WP` (5.7): the fault is a write-protect fault.
pub const PAGEFAULT_FLAG_WP: u64 = 1 << 1;

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UffdioRange {
    pub start: u64,
    pub len: u64,
}

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UffdioApi {
    pub api: u64,
    pub features: u64,
    pub ioctls: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UffdioRegister {
    pub range: UffdioRange,
    pub mode: u64,
    pub ioctls: u64,
}

/// `struct uffdio_writeprotect`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UffdioWriteprotect {
    pub range: UffdioRange,
    pub mode: u64,
}

/// `struct uffd_msg` (32 bytes, packed in C; every field here is naturally aligned, so `repr(C)`
/// gives the same layout). The `arg` union is kept as three `u64` and decoded by the accessors.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UffdMsg {
    pub event: u8,
    pub reserved1: u8,
    pub reserved2: u16,
    pub reserved3: u32,
    pub arg: [u64; 3],
}

impl UffdMsg {
    /// `arg.pagefault.flags` (valid when `event == EVENT_PAGEFAULT`).
    pub fn pagefault_flags(&self) -> u64 {
        self.arg[0]
    }
    /// `arg.pagefault.address` (valid when `event == EVENT_PAGEFAULT`).
    pub fn pagefault_address(&self) -> u64 {
        self.arg[1]
    }
    /// `arg.remap.{from, to, len}` (valid when `event == EVENT_REMAP`).
    pub fn remap(&self) -> (u64, u64, u64) {
        (self.arg[0], self.arg[1], self.arg[2])
    }
    /// `arg.remove.{start, end}` (valid when `event == EVENT_REMOVE` or `EVENT_UNMAP`).
    pub fn remove(&self) -> (u64, u64) {
        (self.arg[0], self.arg[1])
    }
}

const _: () = assert!(std::mem::size_of::<UffdMsg>() == 32);
const _: () = assert!(std::mem::size_of::<UffdioApi>() == 24);
const _: () = assert!(std::mem::size_of::<UffdioRegister>() == 32);
const _: () = assert!(std::mem::size_of::<UffdioWriteprotect>() == 24);

/// `userfaultfd(flags)` via the system call (4.3). `flags`: `O_CLOEXEC`, `O_NONBLOCK`,
/// [`UFFD_USER_MODE_ONLY`].
pub fn userfaultfd(flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: the userfaultfd system call takes one integer and returns a new fd or -1.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_userfaultfd, flags as libc::c_long) })?;
    // SAFETY: on success the kernel returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A new userfaultfd from `/dev/userfaultfd` with `USERFAULTFD_IOC_NEW` (6.1). Needs read-write
/// access to the device node; `flags` as for [`userfaultfd`].
pub fn userfaultfd_from_dev(flags: i32) -> io::Result<OwnedFd> {
    const DEV: &CStr = c"/dev/userfaultfd";
    // SAFETY: `DEV` is a NUL-terminated path; open returns a new fd or -1.
    let dev = cvt(unsafe { libc::open(DEV.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) } as _)?;
    // SAFETY: `dev` is a fresh fd we own from here on (closed on drop).
    let dev = unsafe { OwnedFd::from_raw_fd(dev as i32) };
    // SAFETY: USERFAULTFD_IOC_NEW takes its flags by value and returns a new fd or -1.
    let fd = cvt(unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            USERFAULTFD_IOC_NEW as _,
            flags as libc::c_long,
        )
    } as _)?;
    // SAFETY: on success the kernel returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `UFFDIO_API`: enables `features` on the fd (once per fd) and returns what the kernel answered
/// (all supported features when `features == 0`, and the available ioctls).
pub fn api(fd: BorrowedFd<'_>, features: u64) -> io::Result<UffdioApi> {
    let mut arg = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: `arg` is a valid, exclusively borrowed `uffdio_api` the ioctl reads and writes.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API as _, &mut arg) } as _)?;
    Ok(arg)
}

/// `UFFDIO_REGISTER` of `[start, start + len)` with `mode`; returns the ioctls available on it.
pub fn register(fd: BorrowedFd<'_>, start: usize, len: usize, mode: u64) -> io::Result<u64> {
    let mut arg = UffdioRegister {
        range: UffdioRange {
            start: start as u64,
            len: len as u64,
        },
        mode,
        ioctls: 0,
    };
    // SAFETY: `arg` is a valid, exclusively borrowed `uffdio_register`.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_REGISTER as _, &mut arg) } as _)?;
    Ok(arg.ioctls)
}

/// `UFFDIO_UNREGISTER` of `[start, start + len)`. Clears protection and wakes waiters.
pub fn unregister(fd: BorrowedFd<'_>, start: usize, len: usize) -> io::Result<()> {
    let mut arg = UffdioRange {
        start: start as u64,
        len: len as u64,
    };
    // SAFETY: `arg` is a valid `uffdio_range`.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_UNREGISTER as _, &mut arg) } as _)?;
    Ok(())
}

/// `UFFDIO_WRITEPROTECT` of `[start, start + len)` with `mode` ([`WRITEPROTECT_MODE_WP`] to
/// protect; `0` to un-protect and wake; `WRITEPROTECT_MODE_DONTWAKE` to un-protect silently).
pub fn writeprotect(fd: BorrowedFd<'_>, start: usize, len: usize, mode: u64) -> io::Result<()> {
    let mut arg = UffdioWriteprotect {
        range: UffdioRange {
            start: start as u64,
            len: len as u64,
        },
        mode,
    };
    // SAFETY: `arg` is a valid, exclusively borrowed `uffdio_writeprotect`.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_WRITEPROTECT as _, &mut arg) } as _)?;
    Ok(())
}

/// `UFFDIO_WAKE` of `[start, start + len)`.
pub fn wake(fd: BorrowedFd<'_>, start: usize, len: usize) -> io::Result<()> {
    let mut arg = UffdioRange {
        start: start as u64,
        len: len as u64,
    };
    // SAFETY: `arg` is a valid `uffdio_range`.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_WAKE as _, &mut arg) } as _)?;
    Ok(())
}

/// Reads whole `uffd_msg`s into `buf`; returns how many. `EAGAIN` when none is pending (the fd is
/// non-blocking).
pub fn read_msgs(fd: BorrowedFd<'_>, buf: &mut [UffdMsg]) -> io::Result<usize> {
    let bytes = std::mem::size_of_val(buf);
    // SAFETY: `buf` is an exclusively borrowed slice of `bytes` bytes; `UffdMsg` is plain old
    // data for which any bit pattern is valid.
    let n = cvt(unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), bytes) } as _)?;
    Ok(n as usize / std::mem::size_of::<UffdMsg>())
}
