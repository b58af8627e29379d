//! Running one system call inside another process with ptrace.
//!
//! The target must create the userfaultfd itself: a userfaultfd acts on the memory of the
//! process that created it. So the tracker makes one thread of the target execute
//! `userfaultfd(2)` (and, on detach, `close(2)`).
//!
//! # How, and why no code is written into the target
//!
//! CRIU's compel writes a `syscall; int3` sequence over the target's code, which forces it to
//! stop *every* thread (another thread could run into the modified bytes). This injector writes
//! no code: it uses instructions already in the target's executable mappings (found by reading
//! `/proc/PID/mem`), points one stopped thread at them, and uses `PTRACE_SYSCALL` to stop the
//! thread at the system call's entry and exit. Only that one thread is touched; the other
//! threads keep running.
//!
//! # Design: a tracer may die at any step (x86_64)
//!
//! The tracker can be killed (`SIGKILL`, out of memory) between any two of its ptrace requests.
//! The kernel then detaches its tracees, and each goes on from exactly the state it is in:
//! whatever registers it holds, from wherever it is stopped. So every state the injector puts
//! the thread in must be one the thread can go on from unharmed, *without* the injector. The
//! injected call therefore runs through a chain that ends in the thread's own state:
//!
//! - `G1`, a `syscall; ret` pair (glibc's `getpid`, `gettid`, ... and the dynamic loader have
//!   them), runs the call;
//! - its `ret` pops `G2`, the address of an `rt_sigreturn` restorer (`mov rax, 15; syscall`:
//!   glibc's and musl's `__restore_rt`, there for every `sigaction`);
//! - `rt_sigreturn` reads a signal frame the injector wrote below the thread's stack (past the
//!   128-byte red zone, where and as large as the kernel would put a signal frame at that
//!   point, memory the ABI already lets signal delivery overwrite): the thread's
//!   registers (with the kernel's restart logic for an interrupted call applied, see below),
//!   its signal mask, and its x87/SSE/AVX state (the `XSAVE` image `NT_X86_XSTATE` gives, with
//!   the software bytes the kernel's own signal frames carry). The frame's `uc_stack` has an
//!   invalid mode, so `rt_sigreturn` leaves the alternate signal stack as it is.
//!
//! The steps, and what a tracer death right before each next request leaves:
//! 1. `PTRACE_SEIZE`, `PTRACE_INTERRUPT`, wait for the stop: nothing changed; the thread
//!    resumes (an interrupted system call restarts, as after any stop).
//! 2. Read the registers, the signal mask and the FPU state: nothing changed.
//! 3. Write the frame below the stack pointer: only memory below the red zone changed, which
//!    the thread does not use (a signal handler could have overwritten it as well).
//! 4. Set the registers: `rip = G1`, `rax = nr`, arguments, `rsp` = the frame (whose first
//!    word is `G2`), `orig_rax = -1` (no restart logic on these registers). Resumed from here,
//!    the thread runs the call, returns into `G2`, and `rt_sigreturn` puts it back exactly as
//!    it was: the call happened (its result unused, e.g. a stray fd, see below) and the thread
//!    goes on. A signal arriving meanwhile is handled on this state and returns to it: the
//!    chain continues.
//! 5. `PTRACE_SYSCALL` to the entry stop, then to the exit stop: the same chain, from the
//!    middle.
//! 6. At the exit stop: read the result, then set the saved registers back in one
//!    `PTRACE_SETREGSET`: before it, the chain finishes as in 4; after it, the thread is as it
//!    was (the frame below the stack is garbage it never reads). The signal mask and the FPU
//!    state were never changed on this path.
//! 7. `PTRACE_DETACH`, re-delivering signals that arrived meanwhile.
//!
//! Nothing else is ever changed: the signal mask is not touched (signals arriving during the
//! injection stop the thread for its tracer, which suppresses them and delivers them again on
//! detach). The one difference a death in 4-6 can make is `rt_sigreturn`'s: a call
//! interrupted with a restart block (`nanosleep`, `clock_nanosleep`, `poll` with a timeout)
//! returns `EINTR` instead of restarting, as if a signal handler had run, which every program
//! that installs one must already handle. The call itself may have run: a userfaultfd created by
//! a killed attach is found and closed by the next one (see the `lock` module).
//!
//! Targets without the two gadgets (a libc other than glibc or musl, a static binary without
//! `sigaction`) are refused before anything changes; so is a thread whose stack pointer leaves
//! no room for the frame in its mapping.
//!
//! **aarch64** still runs the call at a plain `svc #0` and restores the registers at the exit
//! stop: a tracer killed between setting the registers and restoring them leaves the thread
//! running from the instruction after that `svc` with the wrong registers. The same chain
//! (`svc #0; ret` to the vDSO's `__kernel_rt_sigreturn` through `x30`, with an aarch64 signal
//! frame) would close it; it is not done yet.
//!
//! # Interrupted system calls
//!
//! A thread stopped inside a blocking system call (`futex`, `nanosleep`, `read`...) has not yet
//! gone through the kernel's restart logic. On x86_64 that logic runs *after* the stop, on
//! whatever registers the thread then has; the injector therefore applies it to the saved
//! registers itself (back the program counter up by the instruction's length, and put the call
//! number back, or `restart_syscall` for a restart block) and runs the injected call with
//! `orig_rax = -1` so the kernel applies nothing. The thread re-enters its interrupted call after
//! the detach, as after any signal. On aarch64 the kernel applies the restart before the stop;
//! the injector only makes sure the instruction it uses is not the one being restarted, and
//! clears the system call number before detaching.

use super::error::RemoteError;
use crate::sys::proc;
use crate::sys::ptrace::{self, Regs, WaitStatus};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Bytes of executable mappings searched for a system call instruction, at most.
const SEARCH_LIMIT: usize = 64 << 20;
/// Stops handled while waiting for one expected stop before giving up. Each signal that arrives
/// while the thread is on its way to the injected call's stop costs one (the mask is never
/// changed, so signals keep coming); a target flooded with signals faster than a ptrace round
/// trip (under emulation: a `kill` every 50 µs) needs many before one round trip wins.
const MAX_STOPS: usize = 4096;

#[cfg(target_arch = "x86_64")]
mod arch {
    use super::Regs;
    /// x86 instructions have no alignment.
    pub(super) fn aligned(_addr: usize) -> bool {
        true
    }
    /// 64-bit user code segment selector (`__USER_CS`).
    const USER_CS_64: u64 = 0x33;
    const ERESTARTSYS: i64 = -512;
    const ERESTARTNOINTR: i64 = -513;
    const ERESTARTNOHAND: i64 = -514;
    const ERESTART_RESTARTBLOCK: i64 = -516;

    pub(super) fn check_abi(r: &Regs) -> Result<(), String> {
        if r.cs != USER_CS_64 {
            return Err(format!(
                "the thread runs in a non-64-bit code segment (cs {:#x}): 32-bit targets are not supported",
                r.cs
            ));
        }
        Ok(())
    }
    /// The registers to restore: the kernel's restart logic applied (it would otherwise run on
    /// the injected registers), and `orig_rax = -1` so that it does not run again.
    pub(super) fn restorable(saved: &Regs) -> Regs {
        let mut r = *saved;
        if (r.orig_rax as i64) >= 0 {
            match r.rax as i64 {
                ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                    r.rax = r.orig_rax;
                    r.rip -= 2;
                }
                ERESTART_RESTARTBLOCK => {
                    r.rax = libc::SYS_restart_syscall as u64;
                    r.rip -= 2;
                }
                _ => {}
            }
        }
        r.orig_rax = u64::MAX;
        r
    }
    pub(super) fn injected(saved: &Regs, at: u64, nr: i64, args: &[u64; 6]) -> Regs {
        let mut r = *saved;
        r.rip = at;
        r.rax = nr as u64;
        r.orig_rax = u64::MAX;
        r.rdi = args[0];
        r.rsi = args[1];
        r.rdx = args[2];
        r.r10 = args[3];
        r.r8 = args[4];
        r.r9 = args[5];
        r
    }
    pub(super) fn entered(r: &Regs) -> i64 {
        r.orig_rax as i64
    }
    pub(super) fn result(r: &Regs) -> i64 {
        r.rax as i64
    }
    pub(super) fn before_detach(_tid: i32) -> std::io::Result<()> {
        Ok(())
    }

    /// What [`super::find_patterns`] looks for: `syscall; ret`, then the two restorers.
    pub(super) const PATTERNS: &[&[u8]] = &[SYSCALL_RET, RESTORER, RESTORER_SHORT];
    /// What the search lacks, if anything.
    pub(super) fn missing(found: &[Vec<u64>]) -> Option<&'static str> {
        if found[0].is_empty() {
            Some("`syscall; ret` instruction pair")
        } else if found[1].is_empty() && found[2].is_empty() {
            Some("rt_sigreturn restorer (`mov rax, 15; syscall`)")
        } else {
            None
        }
    }

    /// `syscall; ret`: the injected call's instruction. After the call, `ret` pops the address
    /// the injected stack pointer points at: the restorer below.
    pub(super) const SYSCALL_RET: &[u8] = &[0x0f, 0x05, 0xc3];
    /// `mov rax, 15; syscall` (`rt_sigreturn`): glibc's and musl's `__restore_rt`.
    pub(super) const RESTORER: &[u8] = &[0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];
    /// `mov eax, 15; syscall`: the same, shorter encoding.
    pub(super) const RESTORER_SHORT: &[u8] = &[0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];

    /// Bytes below the stack pointer the ABI lets leaf code use without moving it.
    const RED_ZONE: u64 = 128;
    /// `sizeof(struct rt_sigframe)` on x86_64: `pretcode`, `struct ucontext` (304), `siginfo`.
    const SIGFRAME: u64 = 8 + 304 + 128;
    /// `uc_flags`: `UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS`.
    const UC_FLAGS: u64 = 0x1 | 0x2 | 0x4;
    /// `ss_flags` no mode has (neither 0, `SS_ONSTACK` nor `SS_DISABLE`): `rt_sigreturn`'s
    /// `restore_altstack` then fails with `EINVAL`, which it ignores, and the thread's
    /// alternate signal stack stays as it is (its settings cannot be read through ptrace).
    const SS_FLAGS_NO_CHANGE: u32 = 3;
    const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
    const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
    /// Offset of `sw_reserved` (`struct _fpx_sw_bytes`) in the `FXSAVE` area.
    const SW_RESERVED: usize = 464;

    /// A signal frame written below the thread's stack: what `rt_sigreturn` needs to put the
    /// thread back exactly as it was (registers, signal mask, FPU/vector state).
    pub(super) struct Frame {
        /// Its address (the injected stack pointer; the restorer's address is stored here).
        pub at: u64,
        pub bytes: Vec<u8>,
    }

    /// The x87/SSE/AVX state image for the frame: the `XSAVE` image from `NT_X86_XSTATE` with
    /// its software bytes (`struct _fpx_sw_bytes`) filled as the kernel's signal code writes
    /// them, or the 512-byte `FXSAVE` image (`NT_PRFPREG`, restored as such: no magic).
    pub(super) fn fpu_image(mut xsave: Vec<u8>) -> Vec<u8> {
        if xsave.len() >= 576 {
            let bv = u64::from_le_bytes(xsave[512..520].try_into().unwrap_or([0; 8]));
            let size = xstate_size(bv).clamp(576, xsave.len());
            let sw = &mut xsave[SW_RESERVED..512];
            sw.fill(0);
            sw[0..4].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
            sw[4..8].copy_from_slice(&((size + 4) as u32).to_le_bytes());
            sw[8..16].copy_from_slice(&(bv | 0x3).to_le_bytes());
            sw[16..20].copy_from_slice(&(size as u32).to_le_bytes());
            xsave.truncate(size);
            xsave.extend_from_slice(&FP_XSTATE_MAGIC2.to_le_bytes());
        } else {
            xsave.resize(512, 0);
            xsave[SW_RESERVED..512].fill(0);
            xsave.extend_from_slice(&[0; 4]);
        }
        xsave
    }

    /// Bytes of the non-compacted `XSAVE` image that hold the components in `bv` (CPUID leaf
    /// 0xd: each component's offset and size).
    fn xstate_size(bv: u64) -> usize {
        let mut end = 576usize;
        for i in 2..63u32 {
            if bv & (1 << i) != 0 {
                // SAFETY: CPUID is available on every x86_64 CPU; leaf 0xd exists wherever the
                // kernel reports an XSAVE image (it uses the same leaf).
                #[allow(unused_unsafe)] // unsafe before Rust 1.87
                let r = unsafe { std::arch::x86_64::__cpuid_count(0xd, i) };
                end = end.max(r.ebx as usize + r.eax as usize);
            }
        }
        end
    }

    /// Builds the frame below `r.rsp` (past the red zone): `pretcode` = `restorer`, the
    /// `ucontext` with `r` (the registers to go back to), `mask` and a pointer to `fpu`.
    pub(super) fn frame(r: &Regs, mask: u64, fpu: &[u8], restorer: u64) -> Frame {
        // Laid out as the kernel's `get_sigframe` lays out a signal frame at this stack pointer
        // (red zone, 64-aligned FPU image, frame): a thread running on a small alternate
        // signal stack already has room for exactly that (a nested signal takes it).
        let fp_at = (r.rsp - RED_ZONE - fpu.len() as u64) & !63;
        let at = (fp_at - SIGFRAME) & !15;
        let mut b = vec![0u8; (fp_at - at) as usize + fpu.len()];
        let mut put = |off: usize, v: u64| b[off..off + 8].copy_from_slice(&v.to_le_bytes());
        put(0, restorer);
        // struct ucontext at 8: uc_flags, uc_link, uc_stack { ss_sp, ss_flags, ss_size }.
        put(8, UC_FLAGS);
        put(32, SS_FLAGS_NO_CHANGE as u64);
        // struct sigcontext at 48.
        let gp = [
            r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rdi, r.rsi, r.rbp, r.rbx,
            r.rdx, r.rax, r.rcx, r.rsp, r.rip, r.eflags,
        ];
        for (i, v) in gp.iter().enumerate() {
            put(48 + 8 * i, *v);
        }
        // cs, gs, fs, ss (u16 each) at 192.
        let segs =
            (r.cs & 0xffff) | (r.gs & 0xffff) << 16 | (r.fs & 0xffff) << 32 | (r.ss & 0xffff) << 48;
        put(192, segs);
        // err, trapno, oldmask, cr2 stay 0; fpstate at 232.
        put(232, fp_at);
        // uc_sigmask at 304.
        put(304, mask);
        let off = (fp_at - at) as usize;
        b[off..].copy_from_slice(fpu);
        Frame { at, bytes: b }
    }

    /// The registers that run `nr` at `insn` (a `syscall; ret`) on the frame at `frame`.
    pub(super) fn chained(saved: &Regs, insn: u64, frame: u64, nr: i64, args: &[u64; 6]) -> Regs {
        let mut r = injected(saved, insn, nr, args);
        r.rsp = frame;
        r
    }
}

#[cfg(target_arch = "aarch64")]
mod arch {
    use super::Regs;
    /// `svc #0` (d4000001, little endian), 4 bytes, 4-aligned.
    pub(super) const INSN: &[u8] = &[0x01, 0x00, 0x00, 0xd4];
    /// A64 instructions are 4-byte aligned.
    pub(super) fn aligned(addr: usize) -> bool {
        addr % 4 == 0
    }
    /// `PSR_MODE32_BIT`: the thread runs AArch32 code.
    const PSR_MODE32_BIT: u64 = 0x10;

    pub(super) fn pc(r: &Regs) -> u64 {
        r.pc
    }
    pub(super) fn check_abi(r: &Regs) -> Result<(), String> {
        if r.pstate & PSR_MODE32_BIT != 0 {
            return Err("the thread runs AArch32 code: 32-bit targets are not supported".into());
        }
        Ok(())
    }
    /// The kernel applied its restart logic before the stop: the saved registers are final.
    pub(super) fn restorable(saved: &Regs) -> Regs {
        *saved
    }
    pub(super) fn injected(saved: &Regs, at: u64, nr: i64, args: &[u64; 6]) -> Regs {
        let mut r = *saved;
        r.pc = at;
        r.regs[8] = nr as u64;
        r.regs[..6].copy_from_slice(args);
        r
    }
    pub(super) fn entered(r: &Regs) -> i64 {
        r.regs[8] as i64
    }
    pub(super) fn result(r: &Regs) -> i64 {
        r.regs[0] as i64
    }
    /// No system call in progress as far as the signal code is concerned.
    pub(super) fn before_detach(tid: i32) -> std::io::Result<()> {
        crate::sys::ptrace::set_syscall_number(tid, -1)
    }
    /// What [`super::find_patterns`] looks for.
    pub(super) const PATTERNS: &[&[u8]] = &[INSN];
    /// What the search lacks, if anything (3 candidates: one may be at the program counter).
    pub(super) fn missing(found: &[Vec<u64>]) -> Option<&'static str> {
        (found[0].len() < 3).then_some("3 system call instructions")
    }
}

/// Where one ptrace session on one thread stands; what `Drop` must undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Seized, maybe not yet stopped: detach is enough.
    Seized,
    /// Stopped; its registers may have been changed (see `restore_regs`).
    Stopped,
    /// Stopped at the injected call's entry: it must run to its exit before anything else.
    AtEntry,
    /// The thread is gone or released: nothing to undo.
    Done,
}

/// One thread under ptrace. Dropping it restores the thread and detaches, whatever happened.
struct Session {
    pid: i32,
    tid: i32,
    stage: Stage,
    /// Registers to put back (set once they were read).
    restore_regs: Option<Regs>,
    /// Signals that arrived while the thread was ours, delivered again on detach.
    pending: Vec<i32>,
}

impl Session {
    /// The session of a thread just seized (`PTRACE_SEIZE` succeeded).
    fn seized(pid: i32, tid: i32) -> Session {
        Session {
            pid,
            tid,
            stage: Stage::Seized,
            restore_regs: None,
            pending: Vec::new(),
        }
    }

    /// `PTRACE_INTERRUPT`, then waits for the thread's `PTRACE_EVENT_STOP`.
    fn stop(&mut self) -> Result<(), RemoteError> {
        ptrace::interrupt(self.tid).map_err(|e| self.fail("PTRACE_INTERRUPT", e))?;
        self.wait_stopped()
    }

    /// Waits for the `PTRACE_EVENT_STOP` a `PTRACE_INTERRUPT` asked for.
    fn wait_stopped(&mut self) -> Result<(), RemoteError> {
        self.wait_for(
            "PTRACE_EVENT_STOP",
            |_, ev| ev == ptrace::EVENT_STOP,
            ptrace::resume,
        )?;
        self.stage = Stage::Stopped;
        Ok(())
    }

    fn exited(&mut self, during: &'static str) -> RemoteError {
        self.stage = Stage::Done;
        RemoteError::TargetExited {
            pid: self.pid,
            during,
        }
    }

    fn fail(&self, step: &'static str, e: io::Error) -> RemoteError {
        if e.raw_os_error() == Some(libc::ESRCH) {
            return RemoteError::TargetExited {
                pid: self.pid,
                during: step,
            };
        }
        RemoteError::Injection {
            pid: self.pid,
            step,
            detail: e.to_string(),
        }
    }

    /// Waits for the next stop that `accept` takes; signal-delivery stops in between are
    /// suppressed (recorded for the detach) and the thread is resumed with `resume`.
    fn wait_for(
        &mut self,
        what: &'static str,
        accept: impl Fn(i32, i32) -> bool,
        resume: fn(i32, i32) -> io::Result<()>,
    ) -> Result<(), RemoteError> {
        for _ in 0..MAX_STOPS {
            match ptrace::wait(self.tid).map_err(|e| self.fail(what, e))? {
                WaitStatus::Exited(_) | WaitStatus::Signaled(_) => return Err(self.exited(what)),
                WaitStatus::Stopped { signal, event } if accept(signal, event) => return Ok(()),
                WaitStatus::Stopped { signal, event: 0 } => {
                    // A signal-delivery stop (the injector causes none: its system call stops
                    // carry `SIGTRAP | 0x80`): keep the signal for the detach.
                    if !self.pending.contains(&signal) {
                        self.pending.push(signal);
                    }
                    resume(self.tid, 0).map_err(|e| self.fail(what, e))?;
                }
                WaitStatus::Stopped { .. } => {
                    // A group stop (someone sent SIGSTOP): the stop signal was recorded when it
                    // was delivered; keep going.
                    resume(self.tid, 0).map_err(|e| self.fail(what, e))?;
                }
            }
        }
        Err(RemoteError::Injection {
            pid: self.pid,
            step: what,
            detail: format!("no {what} after {MAX_STOPS} stops"),
        })
    }

    /// Undoes everything and detaches. Errors are returned but every step is attempted.
    fn release(&mut self) -> Result<(), RemoteError> {
        let mut first_error = None;
        let mut note = |r: io::Result<()>, step: &'static str| {
            if let Err(e) = r {
                if first_error.is_none() && e.raw_os_error() != Some(libc::ESRCH) {
                    first_error = Some(RemoteError::Injection {
                        pid: self.pid,
                        step,
                        detail: e.to_string(),
                    });
                }
            }
        };
        if self.stage == Stage::Seized {
            // Seized but the stop not seen yet (an error while waiting for it): a tracee can only
            // be detached when stopped. Interrupt it (again; harmless if pending) and wait.
            let stopped = ptrace::interrupt(self.tid).is_ok()
                && match ptrace::wait(self.tid) {
                    Ok(WaitStatus::Stopped { signal, event }) => {
                        if event == 0 && !self.pending.contains(&signal) {
                            self.pending.push(signal);
                        }
                        true
                    }
                    _ => false,
                };
            self.stage = if stopped { Stage::Stopped } else { Stage::Done };
        }
        if self.stage == Stage::AtEntry {
            // Let the injected call finish (its exit stop), so that restoring the registers is
            // not undone by the call's return value.
            note(
                ptrace::resume_to_syscall(self.tid, 0),
                "PTRACE_SYSCALL (cleanup)",
            );
            let mut reached = false;
            for _ in 0..MAX_STOPS {
                match ptrace::wait(self.tid) {
                    Ok(WaitStatus::Stopped { signal, event: 0 })
                        if signal == libc::SIGTRAP | 0x80 =>
                    {
                        reached = true;
                        break;
                    }
                    Ok(WaitStatus::Stopped { signal, event }) => {
                        if event == 0 && !self.pending.contains(&signal) {
                            self.pending.push(signal);
                        }
                        note(
                            ptrace::resume_to_syscall(self.tid, 0),
                            "PTRACE_SYSCALL (cleanup)",
                        );
                    }
                    _ => {
                        self.stage = Stage::Done;
                        break;
                    }
                }
            }
            if self.stage != Stage::Done {
                self.stage = if reached { Stage::Stopped } else { Stage::Done };
            }
        }
        if self.stage == Stage::Stopped {
            if let Some(regs) = self.restore_regs.take() {
                note(
                    ptrace::set_regs(self.tid, &regs),
                    "PTRACE_SETREGSET (restore)",
                );
                note(
                    arch::before_detach(self.tid),
                    "NT_ARM_SYSTEM_CALL (restore)",
                );
            }
        }
        if self.stage != Stage::Done {
            let first = self.pending.first().copied().unwrap_or(0);
            note(ptrace::detach(self.tid, first), "PTRACE_DETACH");
            for &sig in self.pending.iter().skip(1) {
                note(
                    ptrace::tgkill(self.pid, self.tid, sig),
                    "tgkill (re-deliver)",
                );
            }
            self.stage = Stage::Done;
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

/// Every thread of a process held in a ptrace stop, so that its address space cannot change
/// (no thread of it can run `mmap`, `mremap`, `munmap`...). Dropping it lets every thread go,
/// with any signal that arrived meanwhile. Nothing of the threads is changed: no registers, no
/// signal mask; an interrupted system call restarts as after a signal.
///
/// Memory shared by `CLONE_VM` without `CLONE_THREAD` (a `vfork` child before its `exec`) is
/// not covered: such a process is not a thread of `pid`.
pub(crate) struct Freeze {
    threads: Vec<Session>,
}

/// Rounds of listing `/proc/PID/task` before [`freeze`] gives up on threads that keep appearing.
const FREEZE_ROUNDS: usize = 64;

/// Stops every thread of `pid` (`PTRACE_SEIZE` + `PTRACE_INTERRUPT`, each waited for), to a fixed
/// point: a thread that ran while the others were being stopped may have created another, so
/// the thread list is read again until it holds no thread not stopped yet.
///
/// `PTRACE_SEIZE` fails with `EPERM` when another tracer holds a thread (a debugger):
/// [`RemoteError::PtraceRefused`]. Threads that exit meanwhile are skipped; the process
/// exiting is [`RemoteError::TargetExited`].
pub(crate) fn freeze(pid: i32) -> Result<Freeze, RemoteError> {
    let mut f = Freeze {
        threads: Vec::new(),
    };
    // The tids in `f.threads` (a process may have thousands of threads).
    let mut stopped = std::collections::HashSet::new();
    for _ in 0..FREEZE_ROUNDS {
        let tids = proc::threads(pid).map_err(|e| access_error(pid, "read /proc/PID/task", e))?;
        let mut stopped_one = false;
        // Interrupt every new thread first, then wait for each: they stop in parallel.
        let mut interrupted = Vec::new();
        for tid in tids {
            // A zombie (a leader that exited before its threads) cannot stop, nor run.
            if stopped.contains(&tid) || proc::state(pid, Some(tid)) == Some('Z') {
                continue;
            }
            match ptrace::seize(tid, 0) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => continue,
                Err(e) => return Err(access_error(pid, "PTRACE_SEIZE", e)),
            }
            let s = Session::seized(pid, tid);
            match ptrace::interrupt(tid) {
                Ok(()) => interrupted.push(s),
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => return Err(s.fail("PTRACE_INTERRUPT", e)),
            }
        }
        for mut s in interrupted {
            match s.wait_stopped() {
                Ok(()) => {
                    stopped.insert(s.tid);
                    f.threads.push(s);
                    stopped_one = true;
                }
                // This thread exited; the process may live on.
                Err(RemoteError::TargetExited { .. }) if !exiting(pid) => {}
                Err(e) => return Err(e),
            }
        }
        if !stopped_one {
            if f.threads.is_empty() {
                return Err(RemoteError::TargetExited {
                    pid,
                    during: "stop its threads",
                });
            }
            return Ok(f);
        }
    }
    Err(RemoteError::Injection {
        pid,
        step: "stop its threads",
        detail: format!(
            "new threads kept appearing after {FREEZE_ROUNDS} rounds ({} stopped)",
            f.threads.len()
        ),
    })
}

/// Addresses of each of `patterns` in the executable mappings of `pid` (vDSO first, then in
/// address order), at most `want` of each; the search stops once every pattern has `want`.
fn find_patterns(pid: i32, mem: &File, patterns: &[&[u8]], want: usize) -> io::Result<Search> {
    let mut maps: Vec<_> = proc::maps(pid)?
        .into_iter()
        .filter(|m| m.perms[0] == b'r' && m.perms[2] == b'x' && m.path != "[vsyscall]")
        .collect();
    maps.sort_by_key(|m| m.path != "[vdso]");
    let mut found = vec![Vec::new(); patterns.len()];
    let mut searched = 0usize;
    let mappings = maps.len();
    let mut read_error = None;
    let mut buf = vec![0u8; 1 << 20];
    let done = |found: &[Vec<u64>]| found.iter().all(|f| f.len() >= want);
    for m in maps {
        let mut at = m.start;
        while at < m.end && searched < SEARCH_LIMIT {
            let n = (m.end - at).min(buf.len());
            let got = match mem.read_at(&mut buf[..n], at as u64) {
                Ok(got) => got,
                Err(e) => {
                    read_error.get_or_insert(e);
                    break;
                }
            };
            if got == 0 {
                break;
            }
            searched += got;
            for (p, f) in patterns.iter().zip(found.iter_mut()) {
                let mut i = 0;
                while i + p.len() <= got && f.len() < want {
                    if arch::aligned(at + i) && &buf[i..i + p.len()] == *p {
                        f.push((at + i) as u64);
                        i += p.len();
                    } else {
                        i += 1;
                    }
                }
            }
            if done(&found) {
                return Ok(Search {
                    found,
                    mappings,
                    read_error,
                });
            }
            // A pattern split across two reads is simply not found; there are others.
            at += got;
        }
    }
    Ok(Search {
        found,
        mappings,
        read_error,
    })
}

/// What [`find_patterns`] found, and why it may have found too little.
struct Search {
    /// Per pattern, the addresses found.
    found: Vec<Vec<u64>>,
    /// Executable mappings searched.
    mappings: usize,
    /// The first read of `/proc/PID/mem` that failed.
    read_error: Option<io::Error>,
}

/// Whether `pid` is gone or exiting (zombie, or its address space released for good).
///
/// Empty maps alone do not tell: `exec` also releases the old address space, and a read of
/// `/proc/PID/maps` opened before it reads nothing (the mm it holds has no users left). An
/// exiting process becomes a zombie soon after; an exec'd one has maps again. So empty maps
/// are looked at again, up to [`EXIT_SETTLE`], until one of the two shows.
pub(crate) fn exiting(pid: i32) -> bool {
    let started = std::time::Instant::now();
    loop {
        match proc::state(pid, None) {
            None | Some('Z') | Some('X') => return true,
            Some(_) => match proc::maps(pid) {
                Ok(m) if !m.is_empty() => return false,
                // Unreadable: gone, or no longer ours to read (as before this wait).
                Err(_) => return true,
                Ok(_) if started.elapsed() >= EXIT_SETTLE => return true,
                Ok(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
            },
        }
    }
}

/// How long [`exiting`] waits for a process with empty maps to show whether it exits or
/// exec'd. An exiting process closes its files and signals its parent in well under this.
const EXIT_SETTLE: std::time::Duration = std::time::Duration::from_secs(1);

/// Why ptrace of `pid` was refused, as far as `/proc` tells, with what to do.
pub(crate) fn explain_refusal(pid: i32) -> String {
    if let Ok(Some(tracer)) = proc::status_field(pid, "TracerPid") {
        if tracer != "0" {
            return format!("it is already traced by process {tracer} (a debugger, strace, or a checkpoint tool): only one tracer at a time; detach that one first");
        }
    }
    let my_uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| {
                    l.strip_prefix("Uid:")
                        .map(|v| v.split_whitespace().nth(1).map(str::to_string))
                })
                .flatten()
        });
    let target_uid = proc::status_field(pid, "Uid")
        .ok()
        .flatten()
        .and_then(|v| v.split_whitespace().next().map(str::to_string));
    let mut why = String::new();
    if let (Some(me), Some(it)) = (&my_uid, &target_uid) {
        if me != it {
            why = format!("it runs as uid {it} and this process as uid {me}: run as that user, or as root (CAP_SYS_PTRACE). ");
        }
    }
    match proc::yama_ptrace_scope() {
        Some(1) => why.push_str("Yama ptrace_scope is 1 (only ancestors may trace): run as root, have the target call prctl(PR_SET_PTRACER), or set kernel.yama.ptrace_scope=0"),
        Some(2) => why.push_str("Yama ptrace_scope is 2 (only CAP_SYS_PTRACE may trace): run with CAP_SYS_PTRACE"),
        Some(3) => why.push_str("Yama ptrace_scope is 3 (no ptrace at all until reboot)"),
        _ if why.is_empty() => why.push_str("this process lacks the permission (CAP_SYS_PTRACE or the same uid; a non-dumpable target, or one in another user namespace, needs CAP_SYS_PTRACE there)"),
        _ => {}
    }
    why.trim_end().to_string()
}

/// Maps an error from seizing, or from opening the target's `/proc` files, to a typed error.
pub(crate) fn access_error(pid: i32, op: &'static str, e: io::Error) -> RemoteError {
    match e.raw_os_error() {
        Some(libc::ESRCH) | Some(libc::ENOENT) => RemoteError::NoSuchProcess { pid },
        Some(libc::EPERM) | Some(libc::EACCES) => RemoteError::PtraceRefused {
            pid,
            reason: explain_refusal(pid),
            source: e,
        },
        _ => RemoteError::Kernel { pid, op, source: e },
    }
}

/// Runs system call `nr` with `args` in one thread of process `pid`; returns its raw result
/// (`-errno` on failure). See the module docs for how, and what is guaranteed.
pub(crate) fn syscall_in(pid: i32, nr: i64, args: [u64; 6]) -> Result<i64, RemoteError> {
    // Permission problems show up here, typed, before the target is touched.
    drop(
        File::open(format!("/proc/{pid}/mem"))
            .map_err(|e| access_error(pid, "open /proc/PID/mem", e))?,
    );
    // The group leader, unless it already exited (a zombie leader with live threads).
    let tids = proc::threads(pid).map_err(|e| access_error(pid, "read /proc/PID/task", e))?;
    let tid = if proc::state(pid, Some(pid)) == Some('Z') {
        tids.into_iter()
            .find(|&t| t != pid)
            .ok_or(RemoteError::NoSuchProcess { pid })?
    } else {
        pid
    };

    ptrace::seize(tid, ptrace::O_TRACESYSGOOD).map_err(|e| access_error(pid, "PTRACE_SEIZE", e))?;
    let mut s = Session::seized(pid, tid);
    s.stop()?;

    // Search with the thread stopped, in a `/proc/PID/mem` opened now: the file binds the
    // address space at open, and a process spawned a moment ago may still be inside execve
    // (its parent is released before the new program is mapped), so only now is it final.
    let mem = File::options()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .map_err(|e| access_error(pid, "open /proc/PID/mem", e))?;
    let search = find_patterns(pid, &mem, arch::PATTERNS, 4)
        .map_err(|e| access_error(pid, "read /proc/PID/mem", e))?;
    let missing = arch::missing(&search.found);
    if missing.is_some() && exiting(pid) {
        return Err(RemoteError::TargetExited {
            pid,
            during: "find a system call instruction",
        });
    }
    if let Some(what) = missing {
        return Err(RemoteError::Injection {
            pid,
            step: "find a system call instruction",
            detail: format!(
                "found no {what} in {} executable mapping(s){}: the target's libc is not one the injector knows (glibc and musl are); nothing was changed in it",
                search.mappings,
                search
                    .read_error
                    .map(|e| format!(" (reading /proc/PID/mem: {e})"))
                    .unwrap_or_default()
            ),
        });
    }
    let saved = ptrace::get_regs(tid).map_err(|e| s.fail("PTRACE_GETREGSET", e))?;
    arch::check_abi(&saved).map_err(|detail| RemoteError::Injection {
        pid,
        step: "check the thread's ABI",
        detail,
    })?;
    let restorable = arch::restorable(&saved);
    s.restore_regs = Some(restorable);
    let at = prepare(&mut s, &mem, &search.found, &saved, &restorable, nr, &args)?;
    drop(mem);
    ptrace::set_regs(tid, &at).map_err(|e| s.fail("PTRACE_SETREGSET", e))?;
    let syscall_stop = |sig: i32, ev: i32| ev == 0 && sig == libc::SIGTRAP | 0x80;
    ptrace::resume_to_syscall(tid, 0).map_err(|e| s.fail("PTRACE_SYSCALL", e))?;
    s.wait_for(
        "system call entry stop",
        syscall_stop,
        ptrace::resume_to_syscall,
    )?;
    s.stage = Stage::AtEntry;
    let entry = ptrace::get_regs(tid).map_err(|e| s.fail("PTRACE_GETREGSET", e))?;
    if arch::entered(&entry) != nr {
        return Err(RemoteError::Injection {
            pid,
            step: "system call entry stop",
            detail: format!(
                "the thread entered system call {} instead of {nr}",
                arch::entered(&entry)
            ),
        });
    }
    ptrace::resume_to_syscall(tid, 0).map_err(|e| s.fail("PTRACE_SYSCALL", e))?;
    s.wait_for(
        "system call exit stop",
        syscall_stop,
        ptrace::resume_to_syscall,
    )?;
    s.stage = Stage::Stopped;
    let exit = ptrace::get_regs(tid).map_err(|e| s.fail("PTRACE_GETREGSET", e))?;
    let ret = arch::result(&exit);
    s.release()?;
    Ok(ret)
}

/// x86_64: writes the restore frame below the thread's stack pointer and returns the registers
/// that run the call through the `syscall; ret` gadget (see the module docs).
#[cfg(target_arch = "x86_64")]
fn prepare(
    s: &mut Session,
    mem: &File,
    found: &[Vec<u64>],
    _saved: &Regs,
    restorable: &Regs,
    nr: i64,
    args: &[u64; 6],
) -> Result<Regs, RemoteError> {
    let (pid, tid) = (s.pid, s.tid);
    let mask = ptrace::get_sigmask(tid).map_err(|e| s.fail("PTRACE_GETSIGMASK", e))?;
    let mut fpu = vec![0u8; 64 << 10];
    let n = match ptrace::get_regset(tid, ptrace::NT_X86_XSTATE, &mut fpu) {
        Ok(n) => n,
        Err(_) => ptrace::get_regset(tid, ptrace::NT_PRFPREG, &mut fpu)
            .map_err(|e| s.fail("PTRACE_GETREGSET NT_PRFPREG", e))?,
    };
    fpu.truncate(n);
    let image = arch::fpu_image(fpu);
    let restorer = found[1].first().or(found[2].first()).copied().unwrap_or(0);
    let frame = arch::frame(restorable, mask, &image, restorer);
    // The frame must lie in the writable mapping that holds the stack pointer.
    let sp = restorable.rsp as usize;
    let room = proc::maps(pid)
        .map_err(|e| access_error(pid, "read /proc/PID/maps", e))?
        .into_iter()
        .find(|m| m.start < sp && sp <= m.end)
        .filter(|m| m.perms[0] == b'r' && m.perms[1] == b'w' && m.start as u64 <= frame.at);
    if room.is_none() {
        return Err(RemoteError::Injection {
            pid,
            step: "write the restore frame",
            detail: format!(
                "thread {tid}'s stack pointer {sp:#x} has no {} bytes of writable stack below it (a small coroutine stack?); nothing was changed in it",
                sp as u64 - frame.at
            ),
        });
    }
    mem.write_all_at(&frame.bytes, frame.at)
        .map_err(|e| s.fail("write the restore frame", e))?;
    Ok(arch::chained(restorable, found[0][0], frame.at, nr, args))
}

/// aarch64: the call runs at a plain system call instruction (see the module docs: not yet
/// safe against the tracer's death between the register change and their restoration).
#[cfg(target_arch = "aarch64")]
fn prepare(
    s: &mut Session,
    _mem: &File,
    found: &[Vec<u64>],
    saved: &Regs,
    _restorable: &Regs,
    nr: i64,
    args: &[u64; 6],
) -> Result<Regs, RemoteError> {
    // Not the instruction the thread stopped at or right after (aarch64 restart logic compares
    // the program counter with the interrupted call's address).
    let pc = arch::pc(saved);
    let insn_len = arch::INSN.len() as u64;
    let at = found[0]
        .iter()
        .copied()
        .find(|&a| a != pc && a + insn_len != pc)
        .ok_or(RemoteError::Injection {
            pid: s.pid,
            step: "find a system call instruction",
            detail: "every candidate is at the thread's program counter".into(),
        })?;
    Ok(arch::injected(saved, at, nr, args))
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    fn stopped_in(nr: i64, ret: i64) -> Regs {
        // SAFETY: `Regs` is plain old data; all-zero is a valid value.
        let mut r: Regs = unsafe { std::mem::zeroed() };
        r.orig_rax = nr as u64;
        r.rax = ret as u64;
        r.rip = 0x1002;
        r
    }

    #[test]
    fn restart_logic_applied_to_the_saved_registers() {
        // read(2) interrupted: re-executed (the instruction again, with its number).
        let r = arch::restorable(&stopped_in(0, -512));
        assert_eq!((r.rip, r.rax, r.orig_rax), (0x1000, 0, u64::MAX));
        // nanosleep-like restart block: restart_syscall.
        let r = arch::restorable(&stopped_in(230, -516));
        assert_eq!((r.rip, r.rax), (0x1000, libc::SYS_restart_syscall as u64));
        // A finished call, or user mode: untouched but for orig_rax.
        let r = arch::restorable(&stopped_in(1, 5));
        assert_eq!((r.rip, r.rax, r.orig_rax), (0x1002, 5, u64::MAX));
        let r = arch::restorable(&stopped_in(-1, -512));
        assert_eq!((r.rip, r.rax), (0x1002, (-512i64) as u64));
        // The injected registers: orig_rax -1 so no restart logic runs on them.
        let i = arch::injected(&stopped_in(0, -512), 0x5000, 323, &[1, 2, 3, 4, 5, 6]);
        assert_eq!(
            (i.rip, i.rax, i.orig_rax, i.rdi, i.r10, i.r9),
            (0x5000, 323, u64::MAX, 1, 4, 6)
        );
    }
}
