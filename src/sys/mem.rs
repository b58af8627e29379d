//! Memory-management calls the library needs besides userfaultfd: `madvise`, `mmap`, `poll`,
//! `eventfd`.

use super::cvt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `MADV_POPULATE_READ` (5.14): fault pages in for reading, without writing them.
pub const MADV_POPULATE_READ: i32 = 22;
/// `MADV_POPULATE_WRITE` (5.14).
pub const MADV_POPULATE_WRITE: i32 = 23;
/// `MADV_NOHUGEPAGE` (2.6.38).
pub const MADV_NOHUGEPAGE: i32 = libc::MADV_NOHUGEPAGE;
/// `MADV_UNMERGEABLE` (2.6.32): take the range out of KSM and un-merge its merged pages.
pub const MADV_UNMERGEABLE: i32 = libc::MADV_UNMERGEABLE;
/// `MADV_GUARD_INSTALL` (6.13): turn the pages into guard pages (their contents are zapped and
/// any access raises `SIGSEGV`); no userfaultfd event is sent.
pub const MADV_GUARD_INSTALL: i32 = 102;
/// `MADV_GUARD_REMOVE` (6.13): remove guard pages (they read as zero, or as the file, afterwards).
pub const MADV_GUARD_REMOVE: i32 = 103;

/// `madvise(addr, len, advice)` for advice that never changes what memory reads as: faulting
/// pages in (`MADV_POPULATE_READ`/`_WRITE`), THP policy (`MADV_NOHUGEPAGE`), KSM
/// (`MADV_UNMERGEABLE`). Any other value is refused with `EINVAL` before the system call:
/// destructive advice goes through the `unsafe` [`madvise_destructive`] (the split of memmap2's
/// `Advice` / `UncheckedAdvice`).
pub fn madvise(addr: usize, len: usize, advice: i32) -> io::Result<()> {
    if !matches!(
        advice,
        MADV_POPULATE_READ | MADV_POPULATE_WRITE | MADV_NOHUGEPAGE | MADV_UNMERGEABLE
    ) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: the advice values allowed above only fault pages in or change THP/KSM policy; they
    // neither unmap nor change the contents of memory, so no Rust reference is affected. The
    // kernel validates the range (unmapped parts give ENOMEM).
    cvt(unsafe { libc::madvise(addr as *mut libc::c_void, len, advice) } as _)?;
    Ok(())
}

/// `madvise(addr, len, advice)` with any advice, including those that change the contents of
/// memory (`MADV_DONTNEED`, `MADV_REMOVE`, `MADV_FREE`, `MADV_GUARD_INSTALL`, ...).
///
/// # Safety
///
/// The caller must own `[addr, addr + len)` exclusively for this call: no Rust reference (shared
/// or mutable) into it may be alive, and nothing may rely on its contents afterwards, because
/// destructive advice zeroes or unmaps pages under any such reference (e.g. a `NonZeroU8` would
/// then hold 0).
pub unsafe fn madvise_destructive(addr: usize, len: usize, advice: i32) -> io::Result<()> {
    // SAFETY: the caller guarantees exclusive ownership of the range (see `# Safety`); the
    // kernel validates the range itself.
    cvt(unsafe { libc::madvise(addr as *mut libc::c_void, len, advice) } as _)?;
    Ok(())
}

/// An anonymous private read-write mapping of `len` bytes, owned (unmapped on drop).
#[derive(Debug)]
pub struct AnonMapping {
    addr: usize,
    len: usize,
}

impl AnonMapping {
    /// `mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE, -1, 0)`.
    pub fn new(len: usize) -> io::Result<AnonMapping> {
        // SAFETY: a fresh anonymous mapping at an address the kernel chooses aliases nothing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(AnonMapping {
            addr: p as usize,
            len,
        })
    }
    /// Start address.
    pub fn addr(&self) -> usize {
        self.addr
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the length is zero.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for AnonMapping {
    fn drop(&mut self) {
        // SAFETY: we own this mapping; no reference into it outlives `self`.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// `eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)`.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes two integers and returns a new fd or -1.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) } as _)?;
    // SAFETY: a fresh fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Adds 1 to an eventfd's counter.
pub fn eventfd_signal(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live `u64`.
    cvt(unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) } as _)?;
    Ok(())
}

/// Reads (and so resets) an eventfd's counter; `Ok(0)` if it was zero.
pub fn eventfd_drain(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live, exclusively borrowed `u64`.
    match cvt(unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) } as _) {
        Ok(_) => Ok(v),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        Err(e) => Err(e),
    }
}

/// `poll` on two fds for `POLLIN`; returns which are readable (`[a, b]`). `EINTR` is retried.
pub fn poll_in2(a: BorrowedFd<'_>, b: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<[bool; 2]> {
    let mut fds = [
        libc::pollfd {
            fd: a.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two `pollfd` for the duration of the call.
        match cvt(unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) } as _) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    let ready = |r: i16| r & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0;
    Ok([ready(fds[0].revents), ready(fds[1].revents)])
}

/// Faults in `[addr, addr + len)` for reading, one byte per page, through
/// `process_vm_readv(2)` on this process (the kernel's page-fault path, not ours: an address that
/// is not mapped or not readable gives `EFAULT`/`ENOMEM` instead of `SIGSEGV`). The fallback of
/// `MADV_POPULATE_READ` on kernels before 5.14.
pub fn populate_read_by_copy(addr: usize, len: usize, page_size: usize) -> io::Result<()> {
    const IOV: usize = 1024;
    let mut sink = [0u8; IOV];
    let mut remote = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; IOV];
    let pages = len / page_size;
    let mut done = 0;
    while done < pages {
        let n = (pages - done).min(IOV);
        for (i, iov) in remote[..n].iter_mut().enumerate() {
            iov.iov_base = (addr + (done + i) * page_size) as *mut libc::c_void;
            iov.iov_len = 1;
        }
        let local = libc::iovec {
            iov_base: sink.as_mut_ptr().cast(),
            iov_len: n,
        };
        // SAFETY: `local` describes `n` bytes of `sink`, exclusively borrowed; the remote iovecs
        // are only read by the kernel, which validates them against our address space.
        let got = cvt(unsafe {
            libc::process_vm_readv(libc::getpid(), &local, 1, remote.as_ptr(), n as _, 0)
        } as _)?;
        if got as usize != n {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
        done += n;
    }
    Ok(())
}

/// Copies `buf.len()` bytes of this process's memory at `addr` into `buf` with
/// `process_vm_readv(2)`. Memory that is unmapped (or unmapped concurrently) gives `EFAULT`
/// instead of a `SIGSEGV`, and the copy is made by the kernel, not through a Rust reference to
/// memory that other threads may be writing.
pub fn read_own_memory(addr: usize, buf: &mut [u8]) -> io::Result<()> {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` describes `buf`, exclusively borrowed for the call; `remote` is only read
    // and is validated by the kernel against our address space.
    let got =
        cvt(unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) } as _)?;
    if got as usize != buf.len() {
        return Err(io::Error::from_raw_os_error(libc::EFAULT));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The safe `madvise` refuses advice that would change what memory reads as.
    #[test]
    fn safe_madvise_refuses_destructive_advice() {
        let ps = crate::sys::page_size();
        let m = AnonMapping::new(ps).unwrap();
        let mut one = [7u8];
        // SAFETY: writing one byte of our own fresh mapping.
        unsafe { (m.addr() as *mut u8).write_volatile(7) };
        for advice in [
            libc::MADV_DONTNEED,
            libc::MADV_REMOVE,
            libc::MADV_FREE,
            MADV_GUARD_INSTALL,
        ] {
            let e = madvise(m.addr(), ps, advice).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "advice {advice}");
        }
        read_own_memory(m.addr(), &mut one).unwrap();
        assert_eq!(one, [7], "the memory kept its contents");
        // Non-destructive advice passes; MADV_POPULATE_READ where the kernel has it (5.14+).
        madvise(m.addr(), ps, MADV_NOHUGEPAGE).unwrap();
        match madvise(m.addr(), ps, MADV_POPULATE_READ) {
            Err(e)
                if e.raw_os_error() == Some(libc::EINVAL)
                    && !crate::Capabilities::probe().madv_populate_read => {}
            r => r.unwrap(),
        }
        // SAFETY: our own mapping, no reference into it.
        unsafe { madvise_destructive(m.addr(), ps, libc::MADV_DONTNEED) }.unwrap();
        read_own_memory(m.addr(), &mut one).unwrap();
        assert_eq!(one, [0]);
    }
}
