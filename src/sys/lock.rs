//! `flock(2)`: advisory whole-file locks that die with their holder (the lock belongs to the
//! open file description; the kernel releases it when the last fd to it closes, which process
//! death does).

use super::cvt;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `flock(LOCK_EX | LOCK_NB)`: `Ok(true)` if this file description now holds the exclusive
/// lock, `Ok(false)` if another holds it.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock takes an fd (borrowed from `file`, open for the call) and flags.
    match cvt(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } as _) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(e),
    }
}
