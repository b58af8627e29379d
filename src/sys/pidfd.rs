//! Process file descriptors: `pidfd_open(2)` (5.3), `pidfd_getfd(2)` (5.6),
//! `pidfd_send_signal(2)` (5.1), and `poll(2)` on a pidfd (readable once the process exited).

use super::cvt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `pidfd_open(pid, 0)`: a close-on-exec fd that refers to the process `pid` (not to whatever
/// later reuses the number).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_long, 0) })?;
    // SAFETY: on success the kernel returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `pidfd_getfd(pidfd, target_fd, 0)`: a close-on-exec duplicate, in this process, of the open
/// file the process behind `pidfd` has as `target_fd`. Needs `PTRACE_MODE_ATTACH_REALCREDS`.
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, target_fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd takes three integers and returns a new fd or -1.
    let fd = cvt(unsafe {
        libc::syscall(
            libc::SYS_pidfd_getfd,
            pidfd.as_raw_fd() as libc::c_long,
            target_fd as libc::c_long,
            0 as libc::c_long,
        )
    })?;
    // SAFETY: on success the kernel returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `pidfd_send_signal(pidfd, signal, NULL, 0)`.
pub fn send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with a NULL siginfo takes only integers.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd() as libc::c_long,
            signal as libc::c_long,
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_long,
        )
    })?;
    Ok(())
}

/// Whether the process behind `pidfd` has exited (the pidfd polls readable), without waiting.
pub fn has_exited(pidfd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one exclusively borrowed pollfd; timeout 0 never blocks.
    let n = cvt(unsafe { libc::poll(&mut pfd, 1, 0) } as libc::c_long)?;
    Ok(n > 0 && pfd.revents & (libc::POLLIN | libc::POLLHUP) != 0)
}
