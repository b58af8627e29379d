//! Errors of remote tracking. Each message says what happened and what to do.

use std::io;

/// Everything that can go wrong while tracking another process.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// No process has this pid (or it is a zombie).
    #[error("no process {pid}: check the pid (ps -p {pid}); it may have exited")]
    NoSuchProcess {
        /// The pid asked for.
        pid: i32,
    },

    /// The kernel refused to let this process ptrace (or read the memory of) the target.
    #[error("ptrace of process {pid} refused ({source}): {reason}")]
    PtraceRefused {
        /// The target.
        pid: i32,
        /// What the library found out about why, and what to do.
        reason: String,
        /// The kernel's answer.
        source: io::Error,
    },

    /// The target's seccomp filter denied the injected `userfaultfd(2)`.
    #[error("process {pid} runs under a seccomp filter ({filters} filter(s)) that denies userfaultfd(2) ({source}): it cannot be tracked with userfaultfd; allow userfaultfd in its seccomp profile (e.g. docker/podman --security-opt seccomp=PROFILE), or use soft-dirty tracking (clear_refs) if the kernel has CONFIG_MEM_SOFT_DIRTY")]
    SeccompDenied {
        /// The target.
        pid: i32,
        /// `Seccomp_filters:` from `/proc/PID/status` (0 if unknown).
        filters: u32,
        /// The errno the injected system call returned.
        source: io::Error,
    },

    /// The target could not create a userfaultfd for a reason other than seccomp.
    #[error("userfaultfd(2) failed inside process {pid} ({source}): {hint}")]
    UserfaultfdFailed {
        /// The target.
        pid: i32,
        /// The errno the injected system call returned.
        source: io::Error,
        /// What to do.
        hint: &'static str,
    },

    /// The kernel lacks what remote tracking needs.
    #[error("remote tracking needs {missing} (Linux 6.7+), which kernel {kernel} does not offer: upgrade the kernel, or use soft-dirty (clear_refs) if it has CONFIG_MEM_SOFT_DIRTY")]
    KernelTooOld {
        /// `uname -r`.
        kernel: String,
        /// The missing feature(s).
        missing: String,
    },

    /// The target exited (or was killed) while the library worked on it.
    #[error("process {pid} exited during {during}: nothing more can be tracked; the results of this call are void")]
    TargetExited {
        /// The target.
        pid: i32,
        /// What the library was doing.
        during: &'static str,
    },

    /// The target no longer holds the tracking userfaultfd: it executed a new program or closed
    /// the fd. Every page must be treated as changed.
    #[error("process {pid} no longer holds the tracking userfaultfd (fd {fd}): {reason}. Its whole memory must be treated as changed: take a full dump and attach again")]
    TrackingLost {
        /// The target.
        pid: i32,
        /// The fd number the target had.
        fd: i32,
        /// What the library saw.
        reason: String,
    },

    /// The injected system call could not be run, or the target was in a state the injector does
    /// not handle. The target was restored and released.
    #[error("injecting a system call into process {pid} failed at {step}: {detail}")]
    Injection {
        /// The target.
        pid: i32,
        /// The step (e.g. `"PTRACE_INTERRUPT"`).
        step: &'static str,
        /// What happened.
        detail: String,
    },

    /// A kernel call failed in a way the library has no better name for.
    #[error("{op} on process {pid} failed: {source}")]
    Kernel {
        /// The target.
        pid: i32,
        /// The operation.
        op: &'static str,
        /// The kernel's answer.
        source: io::Error,
    },

    /// Another tracker (another process) tracks this target now: one tracker per target.
    #[error("process {pid} is already tracked by process {holder} (lock {lock}): only one tracker per target; wait for it to finish or stop it (a tracker that died releases the lock by itself: attaching again then takes over its tracking)", lock = lock.display())]
    TargetBusy {
        /// The target.
        pid: i32,
        /// The holder's pid, as it recorded it (`?` if unreadable).
        holder: String,
        /// The lock file.
        lock: std::path::PathBuf,
    },

    /// The fd given to [`RemoteBuilder::adopt`](super::RemoteBuilder::adopt) is not a
    /// userfaultfd this library may use for the target.
    #[error("fd {fd} of process {pid} cannot be adopted as its tracking userfaultfd: {reason}")]
    NotATrackingFd {
        /// The target.
        pid: i32,
        /// The fd number in the target.
        fd: i32,
        /// Why, and what to do.
        reason: String,
    },

    /// A chain state ([`RemoteBuilder::state`](super::RemoteBuilder::state)) that this library
    /// cannot read.
    #[error("unreadable chain state: {0}")]
    BadState(String),

    /// An argument was wrong (an address outside every tracked mapping, ...).
    #[error("{0}")]
    Usage(String),
}
