//! `ptrace(2)` and `waitpid(2)` for injecting one system call into another process
//! (`<linux/ptrace.h>`, `<linux/elf.h>`, the architectures' `struct user_pt_regs`).
//!
//! Only what `remote::inject` needs: `PTRACE_SEIZE` (3.4), `PTRACE_INTERRUPT` (3.4),
//! `PTRACE_SYSCALL`, `PTRACE_GETREGSET`/`PTRACE_SETREGSET` with `NT_PRSTATUS` (2.6.34),
//! `PTRACE_GETSIGMASK` (3.11) and `PTRACE_DETACH`. Requests are defined here
//! with their values from `include/uapi/linux/ptrace.h` so that they do not depend on the libc
//! crate's version.
//!
//! None of these wrappers can break this process's memory safety: they only pass the kernel
//! pointers to exclusively borrowed, correctly sized buffers. They change *another* process's
//! registers and signal mask, which its tracer (this process, after `seize`) is allowed to do;
//! restoring them is the caller's job (see `remote::inject`).

use super::cvt;
use std::io;

/// `PTRACE_SYSCALL` (resume, stop at the next system call entry or exit).
const PTRACE_SYSCALL: libc::c_uint = 24;
/// `PTRACE_DETACH`.
const PTRACE_DETACH: libc::c_uint = 17;
/// `PTRACE_CONT`.
const PTRACE_CONT: libc::c_uint = 7;
/// `PTRACE_GETREGSET` (2.6.34).
const PTRACE_GETREGSET: libc::c_uint = 0x4204;
/// `PTRACE_SETREGSET` (2.6.34).
const PTRACE_SETREGSET: libc::c_uint = 0x4205;
/// `PTRACE_SEIZE` (3.4): attach without stopping the tracee.
const PTRACE_SEIZE: libc::c_uint = 0x4206;
/// `PTRACE_INTERRUPT` (3.4): stop a seized tracee (it reports `PTRACE_EVENT_STOP`).
const PTRACE_INTERRUPT: libc::c_uint = 0x4207;
/// `PTRACE_GETSIGMASK` (3.11).
const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;

/// `PTRACE_O_TRACESYSGOOD`: system call stops report `SIGTRAP | 0x80`.
pub const O_TRACESYSGOOD: u64 = 1;
/// `PTRACE_EVENT_STOP` (3.4): the stop `PTRACE_INTERRUPT` or a group stop produces.
pub const EVENT_STOP: i32 = 128;

/// `NT_PRSTATUS`: the general-purpose register set.
const NT_PRSTATUS: libc::c_int = 1;
/// `NT_PRFPREG`: the x87/SSE state in `FXSAVE` format (512 bytes).
#[cfg(target_arch = "x86_64")]
pub const NT_PRFPREG: libc::c_int = 2;
/// `NT_X86_XSTATE`: the extended state in the non-compacted `XSAVE` format.
#[cfg(target_arch = "x86_64")]
pub const NT_X86_XSTATE: libc::c_int = 0x202;

/// Test hook (feature `testing`): the process kills itself with `SIGKILL` just before its
/// `KILL_AT`-th ptrace request (counted from 1 since the hook was set), to prove that a tracer
/// dying at any step leaves its tracee unharmed (tests/remote.rs).
#[cfg(feature = "testing")]
pub mod kill_hook {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static KILL_AT: AtomicUsize = AtomicUsize::new(0);
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    /// Kill this process before its `n`-th ptrace request from now (0: never, only count).
    pub fn set(n: usize) {
        COUNT.store(0, Ordering::SeqCst);
        KILL_AT.store(n, Ordering::SeqCst);
    }
    /// Ptrace requests made since [`set`].
    pub fn count() -> usize {
        COUNT.load(Ordering::SeqCst)
    }
    pub(super) fn before_request() {
        let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
        if KILL_AT.load(Ordering::SeqCst) == n {
            // SAFETY: kill(2) on this process with a valid signal number.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }
}

/// `ptrace(request, tid, addr, data)`, after the test hook.
///
/// # Safety
/// `addr` and `data` must be what `request` expects (see each caller).
unsafe fn request(
    req: libc::c_uint,
    tid: i32,
    addr: usize,
    data: *mut libc::c_void,
) -> libc::c_long {
    #[cfg(feature = "testing")]
    kill_hook::before_request();
    // SAFETY: forwarded from the caller's contract.
    unsafe { libc::ptrace(req, tid, addr, data) }
}

/// The general-purpose registers (`struct user_regs_struct` on x86_64, `struct user_pt_regs` on
/// aarch64), as `PTRACE_GETREGSET NT_PRSTATUS` returns them.
#[cfg(target_arch = "x86_64")]
pub type Regs = libc::user_regs_struct;
/// The general-purpose registers (`struct user_pt_regs`: x0..x30, sp, pc, pstate).
#[cfg(target_arch = "aarch64")]
pub type Regs = libc::user_regs_struct;

/// `PTRACE_SEIZE` the thread `tid` with `options` (`PTRACE_O_*`). The thread keeps running.
pub fn seize(tid: i32, options: u64) -> io::Result<()> {
    // SAFETY: PTRACE_SEIZE takes the options by value in `data`; no pointer is passed.
    cvt(unsafe { request(PTRACE_SEIZE, tid, 0, options as usize as *mut libc::c_void) })?;
    Ok(())
}

/// `PTRACE_INTERRUPT`: asks a seized thread to stop (it reports `PTRACE_EVENT_STOP`).
pub fn interrupt(tid: i32) -> io::Result<()> {
    // SAFETY: no pointers are passed.
    cvt(unsafe { request(PTRACE_INTERRUPT, tid, 0, std::ptr::null_mut()) })?;
    Ok(())
}

/// `PTRACE_SYSCALL`: resumes the stopped thread until the next system call entry or exit,
/// delivering `signal` (0 for none).
pub fn resume_to_syscall(tid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: the signal number is passed by value; no pointers.
    cvt(unsafe { request(PTRACE_SYSCALL, tid, 0, signal as usize as *mut libc::c_void) })?;
    Ok(())
}

/// `PTRACE_CONT`: resumes the stopped thread, delivering `signal` (0 for none).
pub fn resume(tid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: the signal number is passed by value; no pointers.
    cvt(unsafe { request(PTRACE_CONT, tid, 0, signal as usize as *mut libc::c_void) })?;
    Ok(())
}

/// `PTRACE_DETACH`, delivering `signal` (0 for none) as the thread resumes.
pub fn detach(tid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: the signal number is passed by value; no pointers.
    cvt(unsafe { request(PTRACE_DETACH, tid, 0, signal as usize as *mut libc::c_void) })?;
    Ok(())
}

/// `PTRACE_GETREGSET NT_PRSTATUS` of a stopped thread.
pub fn get_regs(tid: i32) -> io::Result<Regs> {
    // SAFETY: `Regs` is plain old data; all-zero is a valid value.
    let mut regs: Regs = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: (&mut regs as *mut Regs).cast(),
        iov_len: std::mem::size_of::<Regs>(),
    };
    // SAFETY: `iov` describes `regs`, an exclusively borrowed buffer of exactly its size; the
    // kernel writes at most `iov_len` bytes and updates `iov_len`.
    cvt(unsafe {
        request(
            PTRACE_GETREGSET,
            tid,
            NT_PRSTATUS as usize,
            (&mut iov as *mut libc::iovec).cast(),
        )
    })?;
    if iov.iov_len != std::mem::size_of::<Regs>() {
        return Err(io::Error::other(format!(
            "PTRACE_GETREGSET returned {} bytes of registers, expected {}",
            iov.iov_len,
            std::mem::size_of::<Regs>()
        )));
    }
    Ok(regs)
}

/// `PTRACE_SETREGSET NT_PRSTATUS` of a stopped thread.
pub fn set_regs(tid: i32, regs: &Regs) -> io::Result<()> {
    let mut copy = *regs;
    let mut iov = libc::iovec {
        iov_base: (&mut copy as *mut Regs).cast(),
        iov_len: std::mem::size_of::<Regs>(),
    };
    // SAFETY: `iov` describes `copy`, a buffer of exactly `Regs`' size that outlives the call;
    // the kernel only reads it.
    cvt(unsafe {
        request(
            PTRACE_SETREGSET,
            tid,
            NT_PRSTATUS as usize,
            (&mut iov as *mut libc::iovec).cast(),
        )
    })?;
    Ok(())
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
/// `PTRACE_GETSIGMASK`: the blocked-signal mask of a stopped thread (bit `n - 1` = signal `n`).
pub fn get_sigmask(tid: i32) -> io::Result<u64> {
    let mut mask: u64 = 0;
    // SAFETY: `addr` is the size of the kernel's sigset (8 bytes) and `data` points to an
    // exclusively borrowed `u64` of that size.
    cvt(unsafe { request(PTRACE_GETSIGMASK, tid, 8, (&mut mask as *mut u64).cast()) })?;
    Ok(mask)
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
/// `PTRACE_GETREGSET` of register set `note` (`NT_*`) into `buf`; returns the bytes the kernel
/// filled (the set's size, at most `buf.len()`).
pub fn get_regset(tid: i32, note: libc::c_int, buf: &mut [u8]) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `iov` describes `buf`, exclusively borrowed; the kernel writes at most `iov_len`
    // bytes and updates `iov_len`.
    cvt(unsafe {
        request(
            PTRACE_GETREGSET,
            tid,
            note as usize,
            (&mut iov as *mut libc::iovec).cast(),
        )
    })?;
    Ok(iov.iov_len)
}

/// What `waitpid` reported about one thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStatus {
    /// Exited with this status.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
    /// Stopped: `signal` is `WSTOPSIG`, `event` is `status >> 16` (`PTRACE_EVENT_*`, 0 for a
    /// signal-delivery stop).
    Stopped {
        /// `WSTOPSIG(status)` (`SIGTRAP | 0x80` for a system call stop with `TRACESYSGOOD`).
        signal: i32,
        /// `status >> 16`.
        event: i32,
    },
}

/// `waitpid(tid, __WALL)`, retried on `EINTR`.
pub fn wait(tid: i32) -> io::Result<WaitStatus> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is an exclusively borrowed int the kernel writes.
        let ret = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        if ret == -1 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        return Ok(if libc::WIFEXITED(status) {
            WaitStatus::Exited(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            WaitStatus::Signaled(libc::WTERMSIG(status))
        } else {
            WaitStatus::Stopped {
                signal: libc::WSTOPSIG(status),
                event: (status >> 16) & 0xffff,
            }
        });
    }
}

/// `NT_ARM_SYSTEM_CALL` (3.19): the system call number the kernel sees for a stopped thread.
#[cfg(target_arch = "aarch64")]
const NT_ARM_SYSTEM_CALL: libc::c_int = 0x404;

/// Sets the system call number of a stopped aarch64 thread (`-1`: not in a system call, so no
/// restart logic runs on its way back to user mode).
#[cfg(target_arch = "aarch64")]
pub fn set_syscall_number(tid: i32, nr: i32) -> io::Result<()> {
    let mut value: libc::c_int = nr;
    let mut iov = libc::iovec {
        iov_base: (&mut value as *mut libc::c_int).cast(),
        iov_len: std::mem::size_of::<libc::c_int>(),
    };
    // SAFETY: `iov` describes `value`, an int that outlives the call; the kernel only reads it.
    cvt(unsafe {
        request(
            PTRACE_SETREGSET,
            tid,
            NT_ARM_SYSTEM_CALL as usize,
            (&mut iov as *mut libc::iovec).cast(),
        )
    })?;
    Ok(())
}

/// `tgkill(tgid, tid, signal)`: sends `signal` to one thread.
pub fn tgkill(tgid: i32, tid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: tgkill takes three integers.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            tgid as libc::c_long,
            tid as libc::c_long,
            signal as libc::c_long,
        )
    })?;
    Ok(())
}
