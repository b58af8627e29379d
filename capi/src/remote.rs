//! Tracking another process (`dt_remote`, the C side of `dirtytrack::remote`): which pages of
//! process PID were written since the last collect, for a checkpointer such as CRIU. Every
//! function taking a `dt_remote *` is here, named `dt_remote_<method>` after the Rust
//! `RemoteTracker` method it calls; `dt_remote_attach` / `dt_remote_adopt` are
//! `RemoteBuilder::attach` / `RemoteBuilder::adopt`, with the builder's options as
//! `dt_remote_flags` bits and the chain state as bytes. A collect becomes a `dt_dirty_set`
//! ([`crate::dirty_set`]) of the pages not known clean.
//!
//! x86_64 and aarch64 only (where the library's system-call injector exists): the module, and
//! with it the `dt_remote_*` symbols, is not built elsewhere.

use crate::args::{copy_counted, copy_string, Out, OutBuf};
use crate::dirty_set::{dirty_set, new_set};
use crate::error::{entry, fail, Failure, Res};
use crate::handles::{free, insert, lookup, Handle};
use crate::message::describe_remote;
use crate::status::status;
use dirtytrack::remote::{Change, Collection, MARK_FD_BASE, REMOTE_UFFD_FLAGS};
use dirtytrack::{Capabilities, RemoteError, RemoteTracker};
use libc::size_t;
use parking_lot::Mutex;
use std::ffi::c_char;
use std::sync::Arc;

/// Lowest fd number of a tracking userfaultfd in a target: a userfaultfd at this number or above
/// is dirtytrack's (how a later run, or a checkpointer's file dumper, recognises it). A caller
/// that creates the userfaultfd in the target itself moves it here with
/// `fcntl(fd, F_DUPFD_CLOEXEC, DT_REMOTE_MARK_FD_BASE)`.
pub const DT_REMOTE_MARK_FD_BASE: i32 = 900;

const _: () = assert!(DT_REMOTE_MARK_FD_BASE == MARK_FD_BASE);

/// Flags of `dt_remote_attach` and `dt_remote_adopt`, OR-ed into an `int32_t` (unknown bits are
/// `DT_ERR_INVALID_ARGUMENT`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum remote_flags {
    /// The caller holds every thread of the target stopped (ptrace stop or cgroup freezer) for
    /// as long as each call on the handle runs (no thread of the target changes its address
    /// space meanwhile): the library never ptraces the target and registers new mappings
    /// directly (CRIU). Only with `dt_remote_adopt`. Without it the library stops the target
    /// itself when it must.
    DT_REMOTE_CALLER_STOPS = 1,
    /// Start a new chain: the first collect reports every mapping whole, even when the target
    /// still holds an earlier tracker's userfaultfd (which is reused).
    DT_REMOTE_FRESH = 2,
    /// Trust write-protection for shared mappings too (default: reported whole every time).
    /// Only correct if nothing else writes the shared objects (no other process, no fork child,
    /// no write(2) to the file).
    DT_REMOTE_TRACK_SHARED = 4,
    /// Accept a kernel whose `PAGEMAP_SCAN` misses discarded pages (`MADV_DONTNEED`; before the
    /// 2026 fixes): such pages are then not reported. Fine for a checkpointer that dumps only the
    /// pages present at the dump (CRIU).
    DT_REMOTE_ACCEPT_MISSED_DISCARDS = 8,
}

/// Every `dt_remote_flags` bit.
const ALL_FLAGS: i32 = remote_flags::DT_REMOTE_CALLER_STOPS as i32
    | remote_flags::DT_REMOTE_FRESH as i32
    | remote_flags::DT_REMOTE_TRACK_SHARED as i32
    | remote_flags::DT_REMOTE_ACCEPT_MISSED_DISCARDS as i32;

/// A tracker of another process (opaque handle). Created by `dt_remote_attach` or
/// `dt_remote_adopt`, freed by `dt_remote_free`, which leaves the tracking in place in the
/// target.
pub struct remote {
    _opaque: [u8; 0],
}

/// Counters of the last `dt_remote_collect` (`dt_remote_collect_stats`), for logs and
/// statistics. All zero before the first successful collect.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct remote_stats {
    /// Bytes in the collect's dirty set (every page not known clean).
    pub dirty_bytes: u64,
    /// Of which pages written since the previous collect in mappings tracked since then.
    pub written_bytes: u64,
    /// Mappings tracked since the previous collect (only their written pages are in the set).
    pub tracked_mappings: u64,
    /// Mappings new since the previous collect (or grown, or backed by another object): in the
    /// set whole (their new part), tracked from now on.
    pub new_mappings: u64,
    /// Mappings whose registration vanished (replaced in place, moved): in the set whole,
    /// registered again.
    pub lost_mappings: u64,
    /// Mappings not tracked by write-protection (shared, hugetlbfs, refused by the kernel): in
    /// the set whole at every collect.
    pub untracked_mappings: u64,
    /// Mappings tracked at the previous collect that are gone (unmapped) or no longer tracked.
    pub gone_mappings: u64,
    /// Fork children of the target (not tracked by this handle).
    pub children: u64,
}

/// A `dt_remote` handle's object: the tracker (until `dt_remote_stop_tracking` consumes it) and
/// the counters of its last collect. Behind a mutex: a collect mutates the tracker.
pub(crate) struct RemoteObj {
    state: Mutex<RemoteState>,
}

struct RemoteState {
    tracker: Option<RemoteTracker>,
    stats: remote_stats,
}

impl Handle for RemoteObj {
    const C_NAME: &'static str = "dt_remote";
}

/// Runs `f` on the tracker behind `r`, serialized with the other calls on it.
fn with_tracker<T>(
    r: *const remote,
    f: impl FnOnce(&mut RemoteTracker, &mut remote_stats) -> Res<T>,
) -> Res<T> {
    let obj: Arc<RemoteObj> = lookup(r)?;
    let mut state = obj.state.lock();
    let RemoteState { tracker, stats } = &mut *state;
    match tracker {
        Some(t) => f(t, stats),
        None => Err(fail(
            status::DT_ERR_INVALID_HANDLE,
            "this dt_remote's tracking was stopped (dt_remote_stop_tracking): only dt_remote_free is left to call on it",
        )),
    }
}

/// The state argument: NULL is none (whatever `len`), anything else `len` bytes.
///
/// # Safety
///
/// `state` is NULL or valid for reads of `len` bytes for the duration of the call.
unsafe fn state_arg<'a>(state: *const u8, len: size_t) -> Option<&'a [u8]> {
    if state.is_null() {
        return None;
    }
    if len == 0 {
        return Some(&[]);
    }
    // SAFETY: non-NULL, valid for `len` bytes (this function's contract); u8 needs no alignment.
    Some(unsafe { std::slice::from_raw_parts(state, len) })
}

/// Checks `flags` and applies them with `state` to a builder for `pid`.
fn builder(pid: i32, flags: i32, state: Option<&[u8]>) -> Res<dirtytrack::remote::RemoteBuilder> {
    if flags & !ALL_FLAGS != 0 {
        return Err(fail(
            status::DT_ERR_INVALID_ARGUMENT,
            format!(
                "flags {flags:#x} has unknown bits {:#x}: use 0 or DT_REMOTE_CALLER_STOPS | DT_REMOTE_FRESH | DT_REMOTE_TRACK_SHARED | DT_REMOTE_ACCEPT_MISSED_DISCARDS",
                flags & !ALL_FLAGS
            ),
        ));
    }
    let has = |f: remote_flags| flags & f as i32 != 0;
    let mut b = RemoteTracker::builder(pid)
        .caller_stops(has(remote_flags::DT_REMOTE_CALLER_STOPS))
        .fresh(has(remote_flags::DT_REMOTE_FRESH))
        .track_shared(has(remote_flags::DT_REMOTE_TRACK_SHARED))
        .accept_missed_discards(has(remote_flags::DT_REMOTE_ACCEPT_MISSED_DISCARDS));
    if let Some(bytes) = state {
        b = b.state(bytes)?;
    }
    Ok(b)
}

/// What `dt_remote_probe` finds: `Ok` with a caveat (empty if none), or the failure and its text.
fn probe() -> Result<String, (Failure, String)> {
    let caps = Capabilities::probe();
    let mut missing = Vec::new();
    if !caps.wp_async() {
        missing.push("UFFD_FEATURE_WP_ASYNC");
    }
    if !caps.pagemap_scan {
        missing.push("PAGEMAP_SCAN");
    }
    if !missing.is_empty() {
        if caps.features == 0 {
            if let Some(why) = &caps.user_mode_only_fd_error {
                let text = format!(
                    "no userfaultfd can be created in this process ({why}), so what the kernel offers is unknown: tracking another process needs UFFD_FEATURE_WP_ASYNC and PAGEMAP_SCAN (Linux 6.7+); allow this process userfaultfds (dt_capabilities_probe_report says what is missing) and probe again"
                );
                return Err((fail(status::DT_ERR_UNSUPPORTED_KERNEL, text.clone()), text));
            }
        }
        let e = RemoteError::KernelTooOld {
            kernel: caps.kernel_release.clone(),
            missing: missing.join(" and "),
        };
        let text = describe_remote(&e, "dt_remote_probe");
        return Err((e.into(), text));
    }
    if caps.scan_reports_discards != Some(true) {
        return Ok(format!(
            "available, but kernel {}'s PAGEMAP_SCAN does not report pages the target discards (MADV_DONTNEED; the 2026 fixes are missing): dt_remote_attach and dt_remote_adopt need DT_REMOTE_ACCEPT_MISSED_DISCARDS here",
            caps.kernel_release
        ));
    }
    Ok(String::new())
}

/// Can this kernel and this process track other processes (`UFFD_FEATURE_WP_ASYNC`,
/// `PAGEMAP_SCAN`, Linux 6.7+)? Returns `DT_OK`, or the code `dt_remote_attach` would fail with
/// (`DT_ERR_UNSUPPORTED_KERNEL`), whose explanation `dt_last_error_message` also gives.
///
/// `why` gets the reason when it is not `DT_OK`; when it is, an empty string, or, on a kernel
/// whose `PAGEMAP_SCAN` misses discarded pages (before the 2026 fixes), a note that
/// `dt_remote_attach` / `dt_remote_adopt` then need `DT_REMOTE_ACCEPT_MISSED_DISCARDS`. The text
/// is NUL-terminated and cut to `cap` (nothing is written when `cap` is 0); `*len_out` (if not
/// NULL) gets the size the whole text needs, with its NUL. A text that is cut does not change
/// the result: the status is the probe's.
///
/// It does not check access to any particular process (ptrace permission, seccomp): attach or
/// adopt says.
///
/// Ownership: `why` stays the caller's. Thread safety: any thread. Cost: as
/// `dt_capabilities_probe` (a few userfaultfds and one page, created and freed).
///
/// # Safety
///
/// `why` must be valid for writes of `cap` bytes (it may be NULL when `cap` is 0); `len_out`
/// must be NULL or valid for a write of a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn dt_remote_probe(
    why: *mut c_char,
    cap: size_t,
    len_out: *mut size_t,
) -> status {
    entry("dt_remote_probe", || {
        // SAFETY: the caller guarantees `why` is valid for `cap` bytes and `len_out` is NULL or
        // valid (this function's contract).
        let (buf, needed) = unsafe {
            (
                OutBuf::new(why, cap, "why")?,
                Out::optional(len_out, "len_out")?,
            )
        };
        match probe() {
            Ok(text) => {
                // Cut to `cap`: the status stays the probe's.
                let _ = copy_string(&text, &buf, needed);
                Ok(())
            }
            Err((failure, text)) => {
                let _ = copy_string(&text, &buf, needed);
                Err(failure)
            }
        }
    })
}

/// The flags to pass to `userfaultfd(2)` when the caller creates the tracking userfaultfd inside
/// the target itself (`O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY`), before moving it to
/// `DT_REMOTE_MARK_FD_BASE` or above and passing it to `dt_remote_adopt`.
///
/// Thread safety: any thread.
///
/// # Safety
///
/// None: it takes no pointer.
#[no_mangle]
pub extern "C" fn dt_remote_uffd_flags() -> i32 {
    REMOTE_UFFD_FLAGS
}

/// Stores in `*fd_out` the fd number of the tracking userfaultfd that process `pid` holds and
/// that `state` (from `dt_remote_save_state` in the chain's previous run) was saved with (same
/// fd number and inode, set up), or -1 if it holds none (the caller then creates one at
/// `DT_REMOTE_MARK_FD_BASE` or above and adopts it, with `DT_REMOTE_FRESH`). Without a state
/// (`state` NULL) it is always -1: a marked userfaultfd found without one may be a copy
/// inherited from the parent, which acts on the parent's memory. Reads `/proc` only; no ptrace.
///
/// Errors: `DT_ERR_NO_SUCH_PROCESS`, `DT_ERR_PTRACE_REFUSED` (`/proc/PID/fd` not readable),
/// `DT_ERR_BAD_STATE`, `DT_ERR_KERNEL`, `DT_ERR_NULL`. On error `*fd_out` is -1.
///
/// Thread safety: any thread.
///
/// # Safety
///
/// `state` must be NULL or valid for reads of `state_len` bytes; `fd_out` must be NULL (an
/// error) or valid for a write of an `int32_t`.
#[no_mangle]
pub unsafe extern "C" fn dt_remote_find_fd(
    pid: i32,
    state: *const u8,
    state_len: size_t,
    fd_out: *mut i32,
) -> status {
    entry("dt_remote_find_fd", || {
        // SAFETY: `fd_out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(fd_out, "fd_out")? };
        out.set(-1);
        if pid <= 0 || !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            return Err(RemoteError::NoSuchProcess { pid }.into());
        }
        // SAFETY: `state` is NULL or valid for `state_len` bytes (this function's contract).
        if let Some(bytes) = unsafe { state_arg(state, state_len) } {
            out.set(RemoteTracker::find_fd(pid, bytes)?.unwrap_or(-1));
        }
        Ok(())
    })
}

/// Lists every fd of process `pid` that is a tracking userfaultfd (its own, and copies inherited
/// from a tracked parent): what a checkpointer must leave out of its dump of the process's
/// files. Copies the first `cap` into `fds` (ascending) and stores how many there are in
/// `*n_out`; if `cap` is smaller, returns `DT_ERR_BUFFER_TOO_SMALL` (call again with `*n_out`).
/// Pass `fds = NULL, cap = 0` to ask the count. Reads `/proc` only; no ptrace.
///
/// Errors: `DT_ERR_BUFFER_TOO_SMALL`, `DT_ERR_NO_SUCH_PROCESS`, `DT_ERR_PTRACE_REFUSED`,
/// `DT_ERR_KERNEL`, `DT_ERR_NULL`.
///
/// Ownership: `fds` stays the caller's. Thread safety: any thread.
///
/// # Safety
///
/// `fds` must be valid for writes of `cap` `int32_t`s (it may be NULL when `cap` is 0); `n_out`
/// must be NULL (an error) or valid for a write of a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn dt_remote_tracking_fds(
    pid: i32,
    fds: *mut i32,
    cap: size_t,
    n_out: *mut size_t,
) -> status {
    entry("dt_remote_tracking_fds", || {
        // SAFETY: forwarded from this function's contract.
        let (count, buf) = unsafe { (Out::new(n_out, "n_out")?, OutBuf::new(fds, cap, "fds")?) };
        count.set(0);
        if pid <= 0 {
            return Err(RemoteError::NoSuchProcess { pid }.into());
        }
        let mut list = RemoteTracker::tracking_fds(pid)?;
        list.sort_unstable();
        copy_counted(list, &buf, &count, "fds")
    })
}

/// The body of `dt_remote_adopt` and `dt_remote_attach`.
///
/// # Safety
///
/// `state` is NULL or valid for reads of `state_len` bytes; `out` is NULL or valid for a write
/// of a `dt_remote *`.
unsafe fn open(
    func: &str,
    pid: i32,
    adopt: Option<i32>,
    flags: i32,
    state: *const u8,
    state_len: size_t,
    out: *mut *mut remote,
) -> status {
    entry(func, || {
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { Out::new(out, "out")? };
        out.set(std::ptr::null_mut());
        // SAFETY: forwarded from this function's contract.
        let b = builder(pid, flags, unsafe { state_arg(state, state_len) })?;
        let tracker = match adopt {
            Some(fd) => b.adopt(fd)?,
            None => b.attach()?,
        };
        out.set(insert(RemoteObj {
            state: Mutex::new(RemoteState {
                tracker: Some(tracker),
                stats: remote_stats::default(),
            }),
        }));
        Ok(())
    })
}

/// Adopts the userfaultfd that process `pid` holds at `target_fd` as its tracking userfaultfd,
/// and stores the new tracker's handle in `*out`. The caller created it in the target
/// (`userfaultfd(dt_remote_uffd_flags())`, moved to `DT_REMOTE_MARK_FD_BASE` or above), or
/// `dt_remote_find_fd` found it. The library takes its own copy (`pidfd_getfd`) and sets it up
/// (`UFFDIO_API`: async write-protect, no events) if it is new; it never injects anything.
///
/// `state` (may be NULL; then `state_len` is ignored) is what `dt_remote_save_state` returned in
/// the previous run of the chain: with it, and the same fd and inode, the first collect reports
/// only what changed since that run's collect; without it, with `DT_REMOTE_FRESH`, or if it does
/// not match, the first collect reports everything whole (`dt_remote_resumed` says which). A
/// userfaultfd already set up is adopted only with the state of its chain: a fork child holds a
/// copy of its parent's, which acts on the parent's memory.
///
/// `flags`: `dt_remote_flags` bits; with `DT_REMOTE_CALLER_STOPS` the library never ptraces the
/// target (the caller holds it stopped during every call on the handle).
///
/// Errors: `DT_ERR_INVALID_ARGUMENT` (unknown flag bits; `pid` is this process),
/// `DT_ERR_NO_SUCH_PROCESS`, `DT_ERR_NOT_A_TRACKING_FD`, `DT_ERR_BAD_STATE`,
/// `DT_ERR_PTRACE_REFUSED`, `DT_ERR_UNSUPPORTED_KERNEL`, `DT_ERR_TARGET_BUSY`,
/// `DT_ERR_TARGET_EXITED`, `DT_ERR_KERNEL`, `DT_ERR_NULL`.
///
/// Ownership: on `DT_OK` the caller owns `*out` (`dt_remote_free`); on error `*out` is NULL.
/// The fd stays the target's. Thread safety: any thread; the handle is then used by one thread
/// at a time (calls on it are serialized).
///
/// # Safety
///
/// `state` must be NULL or valid for reads of `state_len` bytes; `out` must be NULL (an error)
/// or valid for a write of a `dt_remote *`.
#[no_mangle]
pub unsafe extern "C" fn dt_remote_adopt(
    pid: i32,
    target_fd: i32,
    flags: i32,
    state: *const u8,
    state_len: size_t,
    out: *mut *mut remote,
) -> status {
    let adopt = Some(target_fd);
    // SAFETY: same contract.
    unsafe { open("dt_remote_adopt", pid, adopt, flags, state, state_len, out) }
}

/// Like `dt_remote_adopt`, but the library finds the tracking userfaultfd the target holds, or
/// creates one, stopping one thread of the target with ptrace for three injected system calls
/// (the dirtytrack CLI's way; not usable while another tracer, such as CRIU, holds the target:
/// `DT_REMOTE_CALLER_STOPS` is `DT_ERR_INVALID_ARGUMENT` here). Needs ptrace permission over the
/// target.
///
/// Errors: those of `dt_remote_adopt` except `DT_ERR_NOT_A_TRACKING_FD`, and
/// `DT_ERR_SECCOMP_DENIED`, `DT_ERR_PERMISSION` (`userfaultfd(2)` failed in the target).
///
/// Ownership and thread safety: as `dt_remote_adopt`.
///
/// # Safety
///
/// As `dt_remote_adopt`.
#[no_mangle]
pub unsafe extern "C" fn dt_remote_attach(
    pid: i32,
    flags: i32,
    state: *const u8,
    state_len: size_t,
    out: *mut *mut remote,
) -> status {
    // SAFETY: same contract.
    unsafe { open("dt_remote_attach", pid, None, flags, state, state_len, out) }
}

/// Stores in `*out` whether the tracker resumed a chain (the state given matched the userfaultfd
/// the target holds): then the first collect reports only what changed since the previous run's
/// collect; otherwise it reports everything whole.
///
/// Errors: `DT_ERR_NULL`, `DT_ERR_INVALID_HANDLE`. Thread safety: one thread at a time per
/// handle (calls are serialized).
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `bool`.
#[no_mangle]
pub unsafe extern "C" fn dt_remote_resumed(r: *const remote, out: *mut bool) -> status {
    entry("dt_remote_resumed", || {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(false);
        out.set(with_tracker(r, |t, _| Ok(t.resumed()))?);
        Ok(())
    })
}

/// Stores the tracking userfaultfd's number in the target in `*fd_out` and its inode number in
/// `*inode_out` (either may be NULL).
///
/// Errors: `DT_ERR_NULL`, `DT_ERR_INVALID_HANDLE`. Thread safety: as `dt_remote_resumed`.
///
/// # Safety
///
/// `fd_out` and `inode_out` must each be NULL or valid for a write of their type.
#[no_mangle]
pub unsafe extern "C" fn dt_remote_target_fd(
    r: *const remote,
    fd_out: *mut i32,
    inode_out: *mut u64,
) -> status {
    entry("dt_remote_target_fd", || {
        // SAFETY: each is NULL or valid for a write (this function's contract).
        let (fd, inode) = unsafe {
            (
                Out::optional(fd_out, "fd_out")?,
                Out::optional(inode_out, "inode_out")?,
            )
        };
        let (f, i) = with_tracker(r, |t, _| Ok((t.target_fd(), t.uffd_inode())))?;
        if let Some(fd) = fd {
            fd.set(f);
        }
        if let Some(inode) = inode {
            inode.set(i);
        }
        Ok(())
    })
}

/// The counters of a collection whose dirty set holds `set_bytes` bytes.
fn stats_of(c: &Collection, set_bytes: usize) -> remote_stats {
    let n = c.change_counts();
    let written: usize = c
        .mappings
        .iter()
        .filter(|m| m.change == Change::Tracked)
        .map(|m| m.dirty_bytes())
        .sum();
    remote_stats {
        dirty_bytes: set_bytes as u64,
        written_bytes: written as u64,
        tracked_mappings: n.tracked as u64,
        new_mappings: n.new as u64,
        lost_mappings: n.lost as u64,
        untracked_mappings: n.untracked as u64,
        gone_mappings: c.gone.len() as u64,
        children: c.children.len() as u64,
    }
}

/// Harvests: stores in `*out` a new set of every page of the target's current address space
/// that is NOT known clean: pages written since the previous collect (or since adopt/attach on a
/// resumed chain) in tracked mappings, and the whole of every mapping that is new, grown,
/// replaced, shared, untracked or not trackable (code, vDSO, inaccessible). A page outside the
/// set lies in a mapping tracked since the previous collect and was not written since. The
/// written pages are re-armed atomically with the scan, and new mappings are registered (with
/// the target held in a ptrace stop, unless `DT_REMOTE_CALLER_STOPS`). The counters are
/// `dt_remote_collect_stats`.
///
/// Errors: `DT_ERR_TARGET_EXITED`, `DT_ERR_TRACKING_LOST`, `DT_ERR_PTRACE_REFUSED`,
/// `DT_ERR_KERNEL`, `DT_ERR_NULL`, `DT_ERR_INVALID_HANDLE`. On error nothing is known about the
/// interval: take a full dump (the next collect reports everything whole).
///
/// Ownership: on `DT_OK` the caller owns `*out` (`dt_dirty_set_free`); on error `*out` is NULL.
/// Thread safety: as `dt_remote_resumed`.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `dt_dirty_set *`.
#[no_mangle]
pub unsafe extern "C" fn dt_remote_collect(r: *mut remote, out: *mut *mut dirty_set) -> status {
    entry("dt_remote_collect", || {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(std::ptr::null_mut());
        let set = with_tracker(r, |t, stats| {
            let collection = t.collect()?;
            let set = t.not_known_clean(&collection)?;
            *stats = stats_of(&collection, set.len() * set.page_size());
            Ok(set)
        })?;
        out.set(new_set(set));
        Ok(())
    })
}

/// Stores the counters of the last successful `dt_remote_collect` in `*out` (all zero before
/// the first).
///
/// Errors: `DT_ERR_NULL`, `DT_ERR_INVALID_HANDLE`. Ownership: `*out` is a plain struct, the
/// caller's. Thread safety: as `dt_remote_resumed`.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `dt_remote_stats`.
#[no_mangle]
pub unsafe extern "C" fn dt_remote_collect_stats(
    r: *const remote,
    out: *mut remote_stats,
) -> status {
    entry("dt_remote_collect_stats", || {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(remote_stats::default());
        out.set(with_tracker(r, |_, stats| Ok(*stats))?);
        Ok(())
    })
}

/// Writes the tracker's state for the next run of the chain (the userfaultfd's fd and inode,
/// the collect generation, the tracked mappings, a format version) into `buf`: opaque bytes, for
/// the caller to store with this run's dump once it is committed and to pass to the next run's
/// `dt_remote_find_fd` and `dt_remote_adopt` / `dt_remote_attach`. `*len_out` gets its size; if
/// `cap` is smaller, the first `cap` bytes are written and `DT_ERR_BUFFER_TOO_SMALL` is returned
/// (call again with `*len_out` bytes). Pass `buf = NULL, cap = 0` to ask the size.
///
/// Errors: `DT_ERR_BUFFER_TOO_SMALL`, `DT_ERR_NULL`, `DT_ERR_INVALID_HANDLE`.
///
/// Ownership: `buf` stays the caller's. Thread safety: as `dt_remote_resumed`.
///
/// # Safety
///
/// `buf` must be valid for writes of `cap` bytes (it may be NULL when `cap` is 0); `len_out`
/// must be NULL (an error) or valid for a write of a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn dt_remote_save_state(
    r: *const remote,
    buf: *mut u8,
    cap: size_t,
    len_out: *mut size_t,
) -> status {
    entry("dt_remote_save_state", || {
        // SAFETY: forwarded from this function's contract.
        let (len, buf) = unsafe { (Out::new(len_out, "len_out")?, OutBuf::new(buf, cap, "buf")?) };
        len.set(0);
        let bytes = with_tracker(r, |t, _| Ok(t.save_state()))?;
        copy_counted(bytes, &buf, &len, "bytes")
    })
}

/// Removes tracking from the target: unregisters every tracked mapping. With
/// `DT_REMOTE_CALLER_STOPS` the target keeps the userfaultfd (the caller may close it, or keep
/// it hidden); otherwise the library closes it in the target (one more injected system call).
/// Afterwards only `dt_remote_free` may be called on the handle (anything else is
/// `DT_ERR_INVALID_HANDLE`), also when this fails.
///
/// Errors: `DT_ERR_TRACKING_LOST`, `DT_ERR_PTRACE_REFUSED`, `DT_ERR_KERNEL`, `DT_ERR_NULL`,
/// `DT_ERR_INVALID_HANDLE`.
///
/// Thread safety: as `dt_remote_resumed`.
///
/// # Safety
///
/// None: handles are validated, never dereferenced.
#[no_mangle]
pub extern "C" fn dt_remote_stop_tracking(r: *mut remote) -> status {
    entry("dt_remote_stop_tracking", || {
        let obj: Arc<RemoteObj> = lookup(r)?;
        let tracker = obj.state.lock().tracker.take();
        match tracker {
            Some(t) => Ok(t.stop_tracking()?),
            None => Err(fail(
                status::DT_ERR_INVALID_HANDLE,
                "this dt_remote's tracking was stopped already: only dt_remote_free is left to call on it",
            )),
        }
    })
}

/// Frees the handle and closes the library's copy of the userfaultfd; the tracking stays in
/// place in the target (a later `dt_remote_adopt` with the saved state resumes it). NULL is
/// accepted and ignored (`DT_OK`), like `free(NULL)`.
///
/// Errors: `DT_ERR_INVALID_HANDLE` for a handle that is not a live `dt_remote` (a double free is
/// always detected).
///
/// Ownership: the handle is invalid afterwards; dirty sets from its collects stay valid. Thread
/// safety: any thread; a call on the handle running in another thread finishes first.
///
/// # Safety
///
/// None: handles are validated, never dereferenced.
#[no_mangle]
pub extern "C" fn dt_remote_free(r: *mut remote) -> status {
    free::<RemoteObj, _>("dt_remote_free", r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: a NUL-terminated string valid until the next failing call on this thread.
        unsafe { CStr::from_ptr(crate::error::dt_last_error_message()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn flags_and_arguments_are_checked() {
        let mut r: *mut remote = std::ptr::null_mut();
        // SAFETY: valid out-pointer, no state.
        let st = unsafe { dt_remote_attach(1, 0x10, std::ptr::null(), 0, &mut r) };
        assert_eq!(st, status::DT_ERR_INVALID_ARGUMENT);
        assert!(
            last().starts_with("dt_remote_attach: flags 0x10"),
            "{}",
            last()
        );
        assert!(r.is_null());
        // SAFETY: valid out-pointer, no state.
        let st = unsafe { dt_remote_adopt(-5, 900, 0, std::ptr::null(), 0, &mut r) };
        assert_eq!(st, status::DT_ERR_NO_SUCH_PROCESS);
        assert!(
            last().starts_with("dt_remote_adopt: no process -5"),
            "{}",
            last()
        );
        let junk = [1u8, 2, 3];
        // SAFETY: `junk` has 3 bytes.
        let st = unsafe { dt_remote_adopt(1, 900, 0, junk.as_ptr(), 3, &mut r) };
        assert_eq!(st, status::DT_ERR_BAD_STATE);
        assert!(last().contains("dt_remote_save_state"), "{}", last());
        assert_eq!(dt_remote_free(std::ptr::null_mut()), status::DT_OK);
        assert_eq!(
            dt_remote_stop_tracking(std::ptr::null_mut()),
            status::DT_ERR_NULL
        );
    }

    #[test]
    fn every_remote_error_has_a_c_message() {
        use std::io;
        let samples = [
            RemoteError::NoSuchProcess { pid: 7 },
            RemoteError::KernelTooOld {
                kernel: "6.6".into(),
                missing: "a PAGEMAP_SCAN that reports discarded pages (2026 fixes; or pass accept_missed_discards)".into(),
            },
            RemoteError::Usage("process 3: caller_stops needs adopt(fd): x (userfaultfd(2) with flags REMOTE_UFFD_FLAGS, moved to fd 900 or above) and adopt it".into()),
            RemoteError::Usage("process 3 is this process: x; use dirtytrack::Tracker for in-process tracking".into()),
            RemoteError::BadState("too short: the state was not written by this library's save_state (or is damaged); start a new chain (fresh) with a full dump".into()),
            RemoteError::Kernel {
                pid: 3,
                op: "PAGEMAP_SCAN",
                source: io::Error::from_raw_os_error(libc::EINVAL),
            },
        ];
        for e in &samples {
            let text = describe_remote(e, "dt_remote_adopt");
            for rust in [
                "accept_missed_discards",
                "caller_stops",
                "adopt(",
                "REMOTE_UFFD",
                "Tracker",
                "(fresh)",
            ] {
                assert!(!text.contains(rust), "{rust:?} in {text:?}");
            }
        }
    }
}
