//! Tracking another process: which pages of process PID were written since the last collect.
//!
//! This is what CRIU's pre-dump does with soft-dirty (`echo 4 > /proc/PID/clear_refs`, then read
//! `/proc/PID/pagemap`), done with userfaultfd write-protection instead, so it works on kernels
//! and architectures without `CONFIG_MEM_SOFT_DIRTY` and does not reset the whole process.
//!
//! # How
//!
//! 1. **A userfaultfd inside the target.** A userfaultfd acts on the memory of the process that
//!    created it, so the target must create it: the `inject` module makes one of its threads execute
//!    `userfaultfd(O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY)` under ptrace, then moves it to
//!    fd [`MARK_FD_BASE`] or above (`fcntl(F_DUPFD_CLOEXEC)` + `close`), which is how a later
//!    attach recognises it. `pidfd_getfd` gives the tracker its own copy.
//! 2. **Async write-protection, no events.** `UFFDIO_API` asks for `WP_ASYNC` and *no* event
//!    feature: an event (`REMOVE`, `UNMAP`, `REMAP`, `FORK`) blocks the target thread that caused
//!    it until someone reads it, and nobody does between two invocations of a tool. The
//!    registration lives as long as the target holds the fd: the tracker can exit, and the next
//!    attach finds the fd again ([`RemoteTracker::resumed`]), so pre-dumps chain across runs.
//! 3. **Harvest** with `PAGEMAP_SCAN` (`WP_MATCHING | CHECK_WPASYNC`) on `/proc/PID/pagemap`,
//!    mapping by mapping, with the library's scan loop (`backend::async_wp::scan_loop`: every
//!    region the kernel wrote is kept, a failed call marks the rest dirty).
//!
//! # What replaces the events
//!
//! - **Discards** (`MADV_DONTNEED`, `MADV_FREE` + reclaim, guard pages) of private anonymous
//!   memory: `PAGEMAP_SCAN` reports a zapped page as written on kernels with the 2026 fixes
//!   (`Capabilities::scan_reports_discards`); attaching on a kernel without them fails unless the
//!   caller accepts the loss ([`RemoteBuilder::accept_missed_discards`]).
//! - **Mapping changes**: each collect reads `/proc/PID/maps` and compares it with the mappings
//!   tracked so far. Address ranges not tracked before, or now backed by another object, are
//!   reported whole ([`Change::New`]) and registered; tracked ranges no longer mapped are reported
//!   [`Collection::gone`]. A mapping replaced in place (`munmap` + `mmap`, `mremap`, `mmap`
//!   `MAP_FIXED`) has lost its registration, so its scan fails with `EPERM`
//!   (`CHECK_WPASYNC`): it is reported whole ([`Change::Lost`]) and registered again.
//! - **Registration without splitting**: registering part of a mapping splits it, and the target
//!   could then no longer move or grow it with one `mremap` (`EFAULT`). A mapping read from
//!   `/proc/PID/maps` may grow before it is registered, so registration happens with every
//!   thread of the target in a ptrace stop, against maps read again then (`register_while_stopped`).
//! - **exec**: the fd is close-on-exec; the tracker notices the target no longer holds it
//!   ([`RemoteError::TrackingLost`]).
//! - **fork**: children are not tracked (without `EVENT_FORK` the kernel drops the registration
//!   in the child); [`Collection::children`] lists them.
//!
//! # Doing no harm
//!
//! A tracker can die at any moment without hurting the target: the injector's every state is
//! one the target can go on from alone (the design argument is in the `inject` module's
//! source), and every stop (registration, [`RemoteTracker::stop_target`]) is a ptrace stop,
//! which ends with the tracker. One tracker per target is enforced with a lock file that dies
//! with its holder ([`RemoteError::TargetBusy`]); it also records a generation that every
//! collect bumps before re-arming ([`RemoteTracker::generation`]), so that a tool keeping a
//! chain of dumps can tell that a collect's pages went elsewhere, and what a killed attach
//! created, so that the next one closes or adopts it ([`RemoteTracker::notes`]).
//!
//! # What is tracked
//!
//! Every mapping the target could write without changing its protection first: writable ones,
//! and private non-executable read-only ones (`r--p`, which `mprotect` can make writable between
//! two collects). Shared mappings (`MAP_SHARED`, memfd, shmem) are by default reported whole at
//! every collect ([`Change::Untracked`]): other processes, fork children and writes through the
//! file change them without a fault in this process. hugetlbfs mappings too (a discarded huge
//! page reads as clean). Code (`r-xp`), inaccessible (`---p`) and kernel-provided mappings
//! (`[vdso]`, `[vvar]`, `[vsyscall]`) are listed in [`Collection::skipped`].

mod error;
#[cfg(feature = "testing")]
mod image;
mod inject;
mod lock;
mod state;

pub use error::RemoteError;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub use image::{Image, Mismatch};

use crate::backend::async_wp::{scan_loop, ScanError};
use crate::bitmap::Segment;
use crate::probe::Capabilities;
use crate::sys::pagemap::{self, PageRegion, ScanRequest};
use crate::sys::proc::{self, MapsEntry};
use crate::sys::{pidfd, uffd};
use std::fmt;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::MetadataExt;

/// The tracking userfaultfd is moved to this fd number or the lowest free one above it, which is
/// how a later attach tells it from a userfaultfd of the target's own.
pub const MARK_FD_BASE: i32 = 900;

/// `uffdio_api.features` of the remote userfaultfd: async write-protect, no events.
const FEATURES: u64 =
    uffd::FEATURE_PAGEFAULT_FLAG_WP | uffd::FEATURE_WP_ASYNC | uffd::FEATURE_WP_UNPOPULATED;
/// Features that would make the target block on an unread message.
const EVENT_FEATURES: u64 = uffd::FEATURE_EVENT_FORK
    | uffd::FEATURE_EVENT_REMAP
    | uffd::FEATURE_EVENT_REMOVE
    | uffd::FEATURE_EVENT_UNMAP;
/// Anonymous `PROT_NONE` mappings larger than this are not tracked (they are address-space
/// reservations; their few written pages, if any, are not worth the page tables).
const MAX_INACCESSIBLE: usize = 1 << 30;
/// Regions per `PAGEMAP_SCAN` call.
const VEC_LEN: usize = 1024;

/// One mapping of the target, as `/proc/PID/maps` printed it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Mapping {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
    /// `rwxp` / `rwxs`.
    pub perms: String,
    /// File offset of `start`.
    pub offset: u64,
    /// `major:minor` of the backing file's device.
    pub dev: String,
    /// Inode of the backing file (0 for anonymous memory).
    pub inode: u64,
    /// Path or pseudo-path (`[heap]`, `/memfd:x (deleted)`), may be empty.
    pub path: String,
}

impl Mapping {
    /// A mapping with these fields (as a `/proc/PID/maps` line gives them).
    pub fn new(
        start: usize,
        end: usize,
        perms: String,
        offset: u64,
        dev: String,
        inode: u64,
        path: String,
    ) -> Mapping {
        Mapping {
            start,
            end,
            perms,
            offset,
            dev,
            inode,
            path,
        }
    }

    fn from_entry(e: &MapsEntry) -> Mapping {
        Mapping {
            start: e.start,
            end: e.end,
            perms: String::from_utf8_lossy(&e.perms).into_owned(),
            offset: e.offset,
            dev: e.dev.clone(),
            inode: e.inode,
            path: e.path.clone(),
        }
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.end - self.start
    }
    /// Whether the mapping is empty (never, for a parsed mapping).
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
    /// Readable by the target (`r` in its permissions).
    pub fn is_readable(&self) -> bool {
        self.perms.as_bytes().first() == Some(&b'r')
    }
    /// `MAP_SHARED`.
    pub fn is_shared(&self) -> bool {
        self.perms.as_bytes().get(3) == Some(&b's')
    }
    /// Private anonymous memory (`[heap]`, `[stack]`, `MAP_PRIVATE | MAP_ANONYMOUS`): a page
    /// never populated reads as zero.
    pub fn is_private_anonymous(&self) -> bool {
        self.inode == 0 && !self.is_shared()
    }
    /// Whether the bytes at `addr` of `self` and of `other` come from the same object: same
    /// sharing, same backing file at the same offset (anonymous memory: only the sharing).
    fn same_backing_at(&self, other: &Mapping) -> bool {
        if self.is_shared() != other.is_shared()
            || self.inode != other.inode
            || self.dev != other.dev
        {
            return false;
        }
        if self.inode == 0 {
            return true;
        }
        let base = |m: &Mapping| m.offset as i128 - m.start as i128;
        base(self) == base(other) && self.path == other.path
    }
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:x}-{:x} {} {}",
            self.start,
            self.end,
            self.perms,
            if self.path.is_empty() {
                "[anon]"
            } else {
                &self.path
            }
        )
    }
}

/// How a page of a dump compares with the live page at the same address, the rule a dump
/// verifier applies: `dumped` is `None` when no dump holds the page, `Some(None)` when the dump
/// recorded it unreadable; `live` is `None` when it cannot be read now. A page no dump holds is
/// right only in private anonymous memory, where it was never populated and reads as zero.
/// Returns what is wrong, or `None` when the page matches.
pub fn page_mismatch(
    dumped: Option<Option<&[u8]>>,
    live: Option<&[u8]>,
    mapping: &Mapping,
) -> Option<String> {
    Some(match (dumped, live) {
        (None, Some(live)) if mapping.is_private_anonymous() && live.iter().all(|&b| b == 0) => {
            return None
        }
        (None, _) => format!("page of {mapping} missing from the dumps"),
        (Some(Some(img)), Some(live)) if img != live => {
            let first = img.iter().zip(live).position(|(x, y)| x != y).unwrap_or(0);
            format!(
                "differs from the dumps at byte {first} ({:#04x} dumped, {:#04x} live) in {mapping}",
                img[first], live[first]
            )
        }
        (Some(None), Some(_)) => format!("unreadable when dumped, readable now, in {mapping}"),
        (Some(Some(_)), None) => format!("readable when dumped, unreadable now, in {mapping}"),
        _ => return None,
    })
}

/// How a mapping's report came about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// Tracked since the last collect: `dirty` holds exactly the pages written since then.
    Tracked,
    /// Not tracked before (new, grown, or replaced by another object): the new part is reported
    /// whole, and is tracked from now on. `new` holds the address ranges that were new.
    New {
        /// The ranges reported whole.
        new: Vec<Range<usize>>,
    },
    /// Its registration vanished (replaced in place, moved): reported whole, registered again.
    Lost {
        /// What the library saw.
        reason: String,
    },
    /// Not tracked by write-protection; reported whole at every collect.
    Untracked {
        /// Why.
        reason: String,
    },
}

/// One mapping's part of a [`Collection`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MappingReport {
    /// The mapping now.
    pub mapping: Mapping,
    /// How the report came about.
    pub change: Change,
    /// Page runs to copy (written since the last collect, or reported whole), ascending. In
    /// the ranges reported whole ([`MappingReport::whole`]) of private anonymous memory, only
    /// the pages that exist (present or swapped) are listed: the others read as zero.
    pub dirty: Vec<Range<usize>>,
}

impl MappingReport {
    /// The ranges reported whole: what an image held there before is void (the memory may
    /// have been replaced), and in private anonymous memory
    /// ([`Mapping::is_private_anonymous`]) a page of them not in `dirty` reads as zero (it was
    /// never populated). Empty for [`Change::Tracked`].
    pub fn whole(&self) -> Vec<Range<usize>> {
        match &self.change {
            Change::Tracked => Vec::new(),
            Change::New { new } => new.clone(),
            Change::Lost { .. } | Change::Untracked { .. } => {
                std::iter::once(self.mapping.start..self.mapping.end).collect()
            }
        }
    }

    /// Bytes in `dirty`.
    pub fn dirty_bytes(&self) -> usize {
        self.dirty.iter().map(|r| r.end - r.start).sum()
    }
}

/// What one [`RemoteTracker::collect`] found.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Collection {
    /// Every mapping whose contents a dump must hold, ascending, with the pages to copy.
    pub mappings: Vec<MappingReport>,
    /// Ranges tracked at the last collect (as they were then) that `mappings` no longer covers
    /// whole: unmapped, or now skipped (all or part of them).
    pub gone: Vec<Mapping>,
    /// Mappings not dumped at all, and why (code, inaccessible, kernel-provided, refused).
    pub skipped: Vec<(Mapping, String)>,
    /// Child processes of the target. They are **not tracked**.
    pub children: Vec<i32>,
}

impl Collection {
    /// Total bytes to copy.
    pub fn dirty_bytes(&self) -> usize {
        self.mappings.iter().map(|m| m.dirty_bytes()).sum()
    }

    /// How many of [`Collection::mappings`] came about each way.
    pub fn change_counts(&self) -> ChangeCounts {
        let mut n = ChangeCounts::default();
        for m in &self.mappings {
            match m.change {
                Change::Tracked => n.tracked += 1,
                Change::New { .. } => n.new += 1,
                Change::Lost { .. } => n.lost += 1,
                Change::Untracked { .. } => n.untracked += 1,
            }
        }
        n
    }
}

/// Mappings of a [`Collection`] per [`Change`] kind ([`Collection::change_counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChangeCounts {
    /// [`Change::Tracked`].
    pub tracked: usize,
    /// [`Change::New`].
    pub new: usize,
    /// [`Change::Lost`].
    pub lost: usize,
    /// [`Change::Untracked`].
    pub untracked: usize,
}

/// Options for [`RemoteTracker`].
#[derive(Debug, Clone)]
pub struct RemoteBuilder {
    pid: i32,
    track_shared: bool,
    accept_missed_discards: bool,
    hide_features: u64,
    previous: Option<Vec<Mapping>>,
    expect: Option<(i32, u64)>,
    fresh: bool,
    caller_stops: bool,
    /// The collect generation a chain state was saved at.
    generation: Option<u64>,
}

impl RemoteBuilder {
    /// Track shared mappings by write-protection too, instead of reporting them whole at every
    /// collect. Only correct if nothing else writes the shared object (no other process, no fork
    /// child, no `write(2)` to the file, no hole punching): such changes are not seen.
    pub fn track_shared(mut self, yes: bool) -> Self {
        self.track_shared = yes;
        self
    }
    /// Attach even if this kernel's `PAGEMAP_SCAN` does not report discarded anonymous pages
    /// (kernels before the 2026 fixes): pages the target discards with `MADV_DONTNEED` are then
    /// missed (they read back as zero but are not reported).
    pub fn accept_missed_discards(mut self, yes: bool) -> Self {
        self.accept_missed_discards = yes;
        self
    }
    /// Pretend the kernel lacks these `UFFD_FEATURE_*` bits (tests of the error path). Feature
    /// `testing` only.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn hide_features(mut self, mask: u64) -> Self {
        self.hide_features = mask;
        self
    }
    /// The tracked mappings of the previous tracker on this target ([`RemoteTracker::tracked`],
    /// saved by the caller), used when an existing userfaultfd is reused. Without it, the
    /// mappings the kernel shows registered (`uw` in `/proc/PID/smaps`) are used.
    pub fn previous(mut self, tracked: Vec<Mapping>) -> Self {
        self.previous = Some(tracked);
        self
    }
    /// Reuse exactly this userfaultfd (fd number and inode, from [`RemoteTracker::target_fd`]
    /// and [`RemoteTracker::uffd_inode`] of a previous run) if the target still holds it.
    pub fn expect_fd(mut self, fd: i32, inode: u64) -> Self {
        self.expect = Some((fd, inode));
        self
    }
    /// Start a new chain: the first collect reports every mapping whole, even if the target
    /// still holds an earlier tracker's userfaultfd (which is then reused, since memory
    /// registered with it cannot be registered with another).
    pub fn fresh(mut self, yes: bool) -> Self {
        self.fresh = yes;
        self
    }
    /// The caller holds every thread of the target stopped (in its own ptrace stops, or with the
    /// cgroup freezer) while each call on the tracker runs, as a checkpointer such as CRIU does
    /// during a dump: the library then never ptraces the target (a second tracer is refused by
    /// the kernel) and registers new mappings directly. Only with [`RemoteBuilder::adopt`]:
    /// creating or closing a userfaultfd in the target needs a ptrace stop of the library's own.
    pub fn caller_stops(mut self, yes: bool) -> Self {
        self.caller_stops = yes;
        self
    }
    /// Resume the chain whose state [`RemoteTracker::save_state`] returned in its previous run:
    /// the first collect then reports only what changed since that run's collect, if the target
    /// still holds that run's userfaultfd (same fd number and inode) and no collect happened
    /// since that the chain did not record. Otherwise the first collect reports every mapping
    /// whole ([`RemoteTracker::resumed`] says which).
    pub fn state(mut self, bytes: &[u8]) -> Result<Self, RemoteError> {
        let s = state::ChainState::decode(bytes)?;
        self.expect = Some((s.fd, s.inode));
        self.previous = Some(s.tracked);
        self.generation = Some(s.generation);
        Ok(self)
    }
    /// Attaches.
    pub fn attach(self) -> Result<RemoteTracker, RemoteError> {
        if self.caller_stops {
            return Err(RemoteError::Usage(format!(
                "process {}: caller_stops needs adopt(fd): while the caller holds the target stopped, the library cannot inject the system calls that create a userfaultfd; create it in the target yourself (userfaultfd(2) with flags REMOTE_UFFD_FLAGS, moved to fd {MARK_FD_BASE} or above) and adopt it",
                self.pid
            )));
        }
        RemoteTracker::attach_with(self, None)
    }
    /// Attaches through the userfaultfd the target holds at `target_fd`, which the caller created
    /// there (flags [`REMOTE_UFFD_FLAGS`], at fd [`MARK_FD_BASE`] or above, e.g. with its own
    /// system call injection) or which [`RemoteTracker::find_fd`] found. The library takes its
    /// own copy (`pidfd_getfd`) and sets it up if it is new; it never injects anything.
    ///
    /// A userfaultfd that is already set up is adopted only as the one of the chain whose
    /// [`RemoteBuilder::state`] was given ([`RemoteError::NotATrackingFd`] otherwise): a fork
    /// child holds a copy of its parent's, and that copy acts on the *parent's* memory.
    pub fn adopt(self, target_fd: i32) -> Result<RemoteTracker, RemoteError> {
        RemoteTracker::attach_with(self, Some(target_fd))
    }
}

/// The `userfaultfd(2)` flags of a tracking userfaultfd a caller creates in a target for
/// [`RemoteBuilder::adopt`]: close-on-exec, non-blocking, user-mode faults only.
pub const REMOTE_UFFD_FLAGS: i32 = libc::O_CLOEXEC | libc::O_NONBLOCK | uffd::UFFD_USER_MODE_ONLY;

/// Tracks the writes of another process. See the [module docs](self).
///
/// Dropping it (or [`RemoteTracker::detach`]) leaves the tracking in place in the target;
/// [`RemoteTracker::stop_tracking`] removes it.
pub struct RemoteTracker {
    pid: i32,
    pidfd: OwnedFd,
    /// This process's copy of the target's userfaultfd.
    uffd: OwnedFd,
    uffd_ino: u64,
    /// The fd number in the target.
    target_fd: i32,
    pagemap: File,
    mem: File,
    page_size: usize,
    track_shared: bool,
    /// Address ranges registered and armed as of the last collect, ascending, disjoint.
    tracked: Vec<Mapping>,
    resumed: bool,
    /// The target's lock (one tracker per target), and its record of the tracking.
    lock: lock::TargetLock,
    /// What attaching found and did (adopted or closed leftovers), for the user.
    notes: Vec<String>,
    /// The target and its descendants held in ptrace stops by `stop_target` (released by
    /// `continue_target`, by `Drop`, or by the kernel when this process dies).
    frozen: Vec<(i32, inject::Freeze)>,
    /// `stop_target` stopped the target and `continue_target` has not resumed it yet (`Drop`
    /// resumes it).
    stopped: bool,
    /// The caller holds the target stopped during every call ([`RemoteBuilder::caller_stops`]):
    /// never ptrace it.
    caller_stops: bool,
    buf: Vec<PageRegion>,
    buf_used: usize,
    /// Test hook: runs in a collect between the scan and the registration stop.
    #[cfg(feature = "testing")]
    before_stop: Option<Box<dyn FnMut() + Send + Sync>>,
}

impl fmt::Debug for RemoteTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteTracker")
            .field("pid", &self.pid)
            .field("target_fd", &self.target_fd)
            .field("resumed", &self.resumed)
            .field("tracked", &self.tracked.len())
            .finish()
    }
}

fn kernel_err(pid: i32, op: &'static str, e: io::Error) -> RemoteError {
    match e.raw_os_error() {
        Some(libc::ESRCH) => RemoteError::TargetExited { pid, during: op },
        _ => RemoteError::Kernel { pid, op, source: e },
    }
}

/// Why the kernel would not register a mapping.
struct Refusal {
    reason: String,
    /// Whether its contents can still be read and dumped (it is owned by another userfaultfd).
    readable: bool,
}

/// A trackable mapping after [`RemoteTracker::scan_mapping`]; registering its new parts is left.
struct Scanned {
    mapping: Mapping,
    /// Whether parts of it were tracked before (and scanned).
    had_old_parts: bool,
    /// Ranges to register and arm (the whole mapping when its registration was lost).
    new_parts: Vec<Range<usize>>,
    /// Pages found written by the scan.
    seg: Segment,
    /// Why its registration vanished, if it did.
    lost: Option<String>,
}

impl Scanned {
    /// The report of a mapping with nothing new: exactly what the scan found.
    fn report(self, page_size: usize) -> MappingReport {
        MappingReport {
            dirty: runs(&self.seg, page_size),
            mapping: self.mapping,
            change: Change::Tracked,
        }
    }
}

/// One current mapping during a collect.
enum Step {
    /// Settled.
    Done(Mapping, Outcome),
    /// Scanned; its new parts are to be registered.
    Register(Scanned),
}

/// What became of one trackable mapping in a collect.
enum Outcome {
    /// Registered and armed: its report is exact from now on.
    Tracked(MappingReport),
    /// Not trackable: reported whole.
    Whole(MappingReport),
    /// Not trackable nor dumpable.
    Skip(String),
}

impl Outcome {
    /// Reported whole, not tracked, for `reason`.
    fn untracked(mapping: Mapping, reason: String) -> Outcome {
        Outcome::Whole(MappingReport {
            dirty: std::iter::once(mapping.start..mapping.end).collect(),
            mapping,
            change: Change::Untracked { reason },
        })
    }
}

/// What to do with one current mapping.
enum Plan {
    Track,
    Whole(String),
    Skip(String),
}

impl RemoteTracker {
    /// Options for attaching to `pid`.
    pub fn builder(pid: i32) -> RemoteBuilder {
        RemoteBuilder {
            pid,
            track_shared: false,
            accept_missed_discards: false,
            hide_features: 0,
            previous: None,
            expect: None,
            fresh: false,
            caller_stops: false,
            generation: None,
        }
    }

    /// Attaches to `pid` with default options: reuses a tracking userfaultfd the target already
    /// holds, or creates one. Needs ptrace permission over the target.
    pub fn attach(pid: i32) -> Result<RemoteTracker, RemoteError> {
        Self::builder(pid).attach()
    }

    fn attach_with(b: RemoteBuilder, adopt: Option<i32>) -> Result<RemoteTracker, RemoteError> {
        let pid = b.pid;
        if pid <= 0 {
            return Err(RemoteError::NoSuchProcess { pid });
        }
        if pid == std::process::id() as i32 {
            return Err(RemoteError::Usage(format!(
                "process {pid} is this process: a process cannot track itself remotely (it cannot ptrace itself, and stopping it would stop the tracker); use dirtytrack::Tracker for in-process tracking"
            )));
        }
        // The process first: "no such process" is the more useful answer on any kernel.
        let pidfd = pidfd::pidfd_open(pid).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) | Some(libc::EINVAL) => RemoteError::NoSuchProcess { pid },
            _ => RemoteError::Kernel {
                pid,
                op: "pidfd_open",
                source: e,
            },
        })?;
        let caps = Capabilities::probe().without_features(b.hide_features);
        let mut missing = Vec::new();
        if !caps.has(uffd::FEATURE_WP_ASYNC) {
            missing.push("UFFD_FEATURE_WP_ASYNC");
        }
        if !caps.pagemap_scan {
            missing.push("PAGEMAP_SCAN");
        }
        if !missing.is_empty() {
            return Err(RemoteError::KernelTooOld {
                kernel: caps.kernel_release.clone(),
                missing: missing.join(" and "),
            });
        }
        if caps.scan_reports_discards != Some(true) && !b.accept_missed_discards {
            return Err(RemoteError::KernelTooOld {
                kernel: caps.kernel_release.clone(),
                missing: "a PAGEMAP_SCAN that reports discarded pages (2026 fixes \"fix PAGEMAP_SCAN written state for unpopulated ptes\"; or pass accept_missed_discards)".into(),
            });
        }
        // Opening these checks PTRACE_MODE_READ / ATTACH: refusals show up here, typed.
        let pagemap = File::open(format!("/proc/{pid}/pagemap"))
            .map_err(|e| inject::access_error(pid, "open /proc/PID/pagemap", e))?;
        let mem = File::open(format!("/proc/{pid}/mem"))
            .map_err(|e| inject::access_error(pid, "open /proc/PID/mem", e))?;

        // One tracker per target: held until this tracker is dropped (or its process dies).
        let mut lock = lock::TargetLock::acquire(pid)?;
        let mut notes = Vec::new();
        let (target_fd, resumed, api_done) = match adopt {
            Some(fd) => adopted_fd(pid, fd, &b)?,
            None => {
                let fds = inspect_fds(pid, b.expect, &lock.record)?;
                for (fd, why) in &fds.close {
                    let ret =
                        inject::syscall_in(pid, libc::SYS_close, [*fd as u64, 0, 0, 0, 0, 0])?;
                    notes.push(if ret == 0 {
                        format!("closed fd {fd} in the target: {why}")
                    } else {
                        format!(
                            "could not close fd {fd} in the target ({}): {why}",
                            io::Error::from_raw_os_error(-ret as i32)
                        )
                    });
                }
                match fds.found {
                    Some(f) if f.expected => (f.fd, !b.fresh, f.api_done),
                    // Another chain's fd (or no expectation given): reuse it, with its history
                    // only when the caller did not expect a specific one.
                    Some(f) => {
                        notes.push(if f.api_done {
                            format!("adopted the tracking userfaultfd an earlier tracker left in the target (fd {})", f.fd)
                        } else {
                            format!("adopted the userfaultfd an interrupted attach left in the target (fd {}), not set up yet", f.fd)
                        });
                        (
                            f.fd,
                            f.api_done && !b.fresh && b.expect.is_none(),
                            f.api_done,
                        )
                    }
                    None => (create_in_target(pid, &mut lock)?, false, false),
                }
            }
        };
        let uffd =
            pidfd::pidfd_getfd(pidfd.as_fd(), target_fd).map_err(|e| match e.raw_os_error() {
                Some(libc::EPERM) => RemoteError::PtraceRefused {
                    pid,
                    reason: inject::explain_refusal(pid),
                    source: e,
                },
                _ => kernel_err(pid, "pidfd_getfd", e),
            })?;
        let uffd_ino =
            std::fs::File::from(uffd.try_clone().map_err(|e| kernel_err(pid, "dup", e))?)
                .metadata()
                .map(|m| m.ino())
                .map_err(|e| kernel_err(pid, "fstat", e))?;
        // A userfaultfd takes UFFDIO_API once (again: EINVAL); one already set up is reused as
        // it is (a fresh chain then registers everything again, which the same fd allows).
        if !api_done {
            let api =
                uffd::api(uffd.as_fd(), FEATURES).map_err(|e| kernel_err(pid, "UFFDIO_API", e))?;
            if api.features & uffd::FEATURE_WP_ASYNC == 0 {
                return Err(RemoteError::KernelTooOld {
                    kernel: caps.kernel_release,
                    missing: "UFFD_FEATURE_WP_ASYNC".into(),
                });
            }
        }
        // Set up: no leftover of a creation under way any more (closed, adopted, or this one).
        if lock.record.creating.take().is_some() {
            lock.write()
                .map_err(|e| kernel_err(pid, "write the target's lock file", e))?;
        }
        let mut t = RemoteTracker {
            pid,
            pidfd,
            uffd,
            uffd_ino,
            target_fd,
            pagemap,
            mem,
            page_size: crate::page_size(),
            track_shared: b.track_shared,
            tracked: Vec::new(),
            resumed,
            frozen: Vec::new(),
            stopped: false,
            caller_stops: b.caller_stops,
            lock,
            notes,
            #[cfg(feature = "testing")]
            before_stop: None,
            buf: vec![PageRegion::default(); VEC_LEN],
            buf_used: 0,
        };
        if let (true, Some(g)) = (t.resumed, b.generation) {
            // The chain's state was saved at collect generation `g`; a different count on the
            // same userfaultfd means a collect whose pages the chain never recorded.
            if t.lock.record.uffd == uffd_ino && t.lock.record.generation != g {
                t.resumed = false;
                t.notes.push(format!(
                    "collect {} of this userfaultfd happened after the chain's state was saved (at {g}): the chain starts over, every mapping is reported whole",
                    t.lock.record.generation
                ));
            }
        }
        if t.lock.record.uffd != uffd_ino {
            t.lock.record.uffd = uffd_ino;
            t.lock.record.generation = 0;
            t.lock
                .write()
                .map_err(|e| kernel_err(pid, "write the target's lock file", e))?;
        }
        if t.resumed {
            t.tracked = match b.previous {
                Some(p) => p,
                None => registered_now(pid)?,
            };
            // Ascending by start, as collect keeps it (lookups below are by binary search).
            t.tracked.sort_by_key(|m| m.start);
        }
        Ok(t)
    }

    /// Builder-free form of [`RemoteBuilder::track_shared`] etc. is [`RemoteTracker::builder`].
    /// The target's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }
    /// Whether attaching reused a userfaultfd an earlier tracker left in the target (so the
    /// first collect reports only what changed since that tracker's last collect).
    pub fn resumed(&self) -> bool {
        self.resumed
    }
    /// Forgets what the previous tracker of this userfaultfd saw: the next collect reports
    /// every mapping whole (and registers it again, which the same userfaultfd allows), as on
    /// a new chain. For a tool that finds its chain broken after attaching (see
    /// [`RemoteTracker::generation`]).
    pub fn restart_chain(&mut self) {
        self.tracked.clear();
        self.resumed = false;
    }
    /// What attaching found in the target and did about it: leftovers of earlier trackers
    /// adopted, stray userfaultfds of interrupted attaches closed. One sentence each.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }
    /// Collects begun on this tracking userfaultfd, by any tracker, as of the last collect (or
    /// the attach). A tool that saves it with its last committed dump, and finds another
    /// number when it attaches again, knows that some collect's pages went elsewhere (another
    /// tool collected, or a run died between its collect and its dump) and must dump in full.
    pub fn generation(&self) -> u64 {
        self.lock.record.generation
    }
    /// The target's lock file (one tracker per target; see [`RemoteError::TargetBusy`]).
    pub fn lock_path(&self) -> &std::path::Path {
        self.lock.path()
    }
    /// The tracking userfaultfd's number in the target.
    pub fn target_fd(&self) -> i32 {
        self.target_fd
    }
    /// The tracking userfaultfd's inode number (unique per userfaultfd), for
    /// [`RemoteBuilder::expect_fd`].
    pub fn uffd_inode(&self) -> u64 {
        self.uffd_ino
    }
    /// The address ranges tracked as of the last collect (save them for
    /// [`RemoteBuilder::previous`]).
    pub fn tracked(&self) -> &[Mapping] {
        &self.tracked
    }

    /// Reads the target's memory at `addr` (through `/proc/PID/mem`; does not fault pages in
    /// for the target and is not reported as a write).
    pub fn read_memory(&self, addr: usize, buf: &mut [u8]) -> Result<(), RemoteError> {
        self.mem.read_exact_at(buf, addr as u64).map_err(|e| {
            self.exit_or(
                kernel_err(self.pid, "read /proc/PID/mem", e),
                "read /proc/PID/mem",
            )
        })
    }

    /// Reads every dirty page of `c` from the target and hands it to `sink`: `(addr,
    /// Some(bytes))` for bytes read (whole pages, up to 1 MiB at a time), `(addr, None)` for one
    /// page that cannot be read (a guard page, a file page past the end of its file). Pieces come
    /// in address order, except the pages of inaccessible mappings a plain read refused, which
    /// come last: they are read again as the target's ptracer
    /// ([`RemoteTracker::read_pages_as_tracer`], one stop for all of them). An exit or a lost
    /// userfaultfd (exec) fails the whole read: the dump is void.
    pub fn read_dirty<E: From<RemoteError>>(
        &self,
        c: &Collection,
        mut sink: impl FnMut(usize, Option<&[u8]>) -> Result<(), E>,
    ) -> Result<(), E> {
        let ps = self.page_size;
        let mut buf = vec![0u8; 1 << 20];
        let mut refused = Vec::new();
        for m in &c.mappings {
            // Only protection can make a ptracer's read succeed where a plain one failed.
            let retry_as_tracer = !m.mapping.is_readable();
            for r in &m.dirty {
                let mut at = r.start;
                while at < r.end {
                    let n = (r.end - at).min(buf.len());
                    match self.read_memory(at, &mut buf[..n]) {
                        Ok(()) => sink(at, Some(&buf[..n]))?,
                        Err(
                            e @ (RemoteError::TargetExited { .. }
                            | RemoteError::TrackingLost { .. }),
                        ) => return Err(e.into()),
                        // Page by page, to tell readable from unreadable pages.
                        Err(_) => {
                            for p in (at..at + n).step_by(ps) {
                                match self.read_memory(p, &mut buf[..ps]) {
                                    Ok(()) => sink(p, Some(&buf[..ps]))?,
                                    Err(_) if retry_as_tracer => refused.push(p),
                                    Err(_) => sink(p, None)?,
                                }
                            }
                        }
                    }
                    at += n;
                }
            }
        }
        for (p, page) in refused.iter().zip(self.read_pages_as_tracer(&refused)?) {
            sink(*p, page.as_deref())?;
        }
        Ok(())
    }

    /// Reads again, as the target's ptracer, the pages at `addrs` that
    /// [`RemoteTracker::read_memory`] refused: every thread of the target is held in a ptrace
    /// stop by the calling thread while they are read (one stop for all of them).
    ///
    /// Kernels built with `CONFIG_PROC_MEM_FORCE_PTRACE` (Debian's since 6.12) let
    /// `/proc/PID/mem` read through a mapping's protection (`PROT_NONE`) only for the target's
    /// ptracer, so a plain read of such a page fails though its contents are there (and are
    /// tracked). Only pages of mappings without read permission are worth it (see
    /// [`Mapping::is_readable`]). Returns one entry per address: the page, or `None` where it
    /// still cannot be read, or for every address if another tracer (a debugger) holds the
    /// target.
    pub fn read_pages_as_tracer(
        &self,
        addrs: &[usize],
    ) -> Result<Vec<Option<Vec<u8>>>, RemoteError> {
        if addrs.is_empty() {
            return Ok(Vec::new());
        }
        // Already held by `stop_target`: read as it is.
        let _frozen = if self.stopped {
            None
        } else {
            match inject::freeze(self.pid) {
                Ok(f) => Some(f),
                Err(RemoteError::PtraceRefused { .. }) => return Ok(vec![None; addrs.len()]),
                Err(e) => return Err(self.exit_or(e, "read /proc/PID/mem")),
            }
        };
        let ps = self.page_size;
        Ok(addrs
            .iter()
            .map(|&a| {
                let mut page = vec![0u8; ps];
                self.mem
                    .read_exact_at(&mut page, a as u64)
                    .ok()
                    .map(|()| page)
            })
            .collect())
    }

    /// Whether the target has exited (or is exiting: its address space is already released).
    pub fn has_exited(&self) -> bool {
        self.pidfd_exited() || inject::exiting(self.pid)
    }

    /// Whether the pidfd says the target exited (cheap; misses the start of an exit).
    fn pidfd_exited(&self) -> bool {
        pidfd::has_exited(self.pidfd.as_fd()).unwrap_or(true)
    }

    /// Names the cause of a failure: the target exited, or it no longer holds the userfaultfd
    /// (exec: the old address space is gone, so the kernel answers `ESRCH`), or else `e`.
    fn exit_or(&self, e: RemoteError, during: &'static str) -> RemoteError {
        if self.has_exited() {
            return RemoteError::TargetExited {
                pid: self.pid,
                during,
            };
        }
        match self.check_fd() {
            Err(lost) => lost,
            Ok(()) => e,
        }
    }

    /// Stops the target and all its descendants, every thread of each held in a ptrace stop
    /// by the calling thread (`PTRACE_SEIZE` + `PTRACE_INTERRUPT`), until
    /// [`RemoteTracker::continue_target`] (or the tracker is dropped). Descendants are included because fork children can still write
    /// memory they share with the target.
    ///
    /// No signal is sent: the stop ends with this process, also if it is killed (the kernel
    /// releases a dead tracer's tracees), and a target the user stopped (`SIGSTOP`) stays
    /// stopped afterwards. Every later call on this tracker must come from the same thread
    /// (ptrace is per tracer thread). A descendant another tracer holds (a debugger) cannot be
    /// stopped and is left running.
    pub fn stop_target(&mut self) -> Result<(), RemoteError> {
        if self.stopped {
            return Ok(());
        }
        let f = inject::freeze(self.pid).map_err(|e| self.exit_or(e, "stop_target"))?;
        self.frozen.push((self.pid, f));
        self.stopped = true;
        // Descendants, to a fixed point: a child may fork before it is stopped.
        loop {
            let mut new = Vec::new();
            let mut todo = vec![self.pid];
            while let Some(p) = todo.pop() {
                for c in proc::children(p).unwrap_or_default() {
                    todo.push(c);
                    if !self.frozen.iter().any(|(pid, _)| *pid == c) && !new.contains(&c) {
                        new.push(c);
                    }
                }
            }
            if new.is_empty() {
                return Ok(());
            }
            let mut progress = false;
            for c in new {
                // A child that exits meanwhile, or that another tracer holds, is not stopped.
                if let Ok(f) = inject::freeze(c) {
                    self.frozen.push((c, f));
                    progress = true;
                }
            }
            if !progress {
                return Ok(());
            }
        }
    }

    /// Lets the target and the descendants [`RemoteTracker::stop_target`] stopped run again
    /// (a target the user had stopped with `SIGSTOP` stays stopped).
    pub fn continue_target(&mut self) -> Result<(), RemoteError> {
        self.stopped = false;
        // Descendants first, the target last (the reverse of the stop).
        while let Some((_, f)) = self.frozen.pop() {
            drop(f);
        }
        Ok(())
    }

    /// Whether the target still holds our userfaultfd at the same number.
    fn check_fd(&self) -> Result<(), RemoteError> {
        let lost = |reason: String| RemoteError::TrackingLost {
            pid: self.pid,
            fd: self.target_fd,
            reason,
        };
        match std::fs::read_to_string(format!("/proc/{}/fdinfo/{}", self.pid, self.target_fd)) {
            Ok(info) => {
                let ino = info
                    .lines()
                    .find_map(|l| l.strip_prefix("ino:"))
                    .and_then(|v| v.trim().parse::<u64>().ok());
                if ino == Some(self.uffd_ino) {
                    Ok(())
                } else if self.has_exited() {
                    Err(RemoteError::TargetExited {
                        pid: self.pid,
                        during: "collect",
                    })
                } else {
                    Err(lost("the fd now refers to another file (the target closed it and reused the number, or executed a new program)".into()))
                }
            }
            // exit releases the address space before the fd table: an exiting target has
            // empty maps and closed fds before its pidfd polls readable.
            Err(_) if self.has_exited() || inject::exiting(self.pid) => {
                Err(RemoteError::TargetExited {
                    pid: self.pid,
                    during: "collect",
                })
            }
            Err(_) => Err(lost(
                "the fd is closed (the target executed a new program, or closed its fds)".into(),
            )),
        }
    }

    /// Reports what the target wrote since the last collect (the first collect reports every
    /// tracked mapping whole, unless the tracker [resumed](RemoteTracker::resumed)), and re-arms.
    ///
    /// The target keeps running, except when there are new mappings to register: then every
    /// thread of it is held in a ptrace stop for the registration (a few system calls per
    /// mapping; see the module docs for why), and let go before this returns.
    ///
    /// On error nothing is known about this interval: take a full dump after the next
    /// successful collect (or attach again).
    pub fn collect(&mut self) -> Result<Collection, RemoteError> {
        if self.pidfd_exited() {
            return Err(RemoteError::TargetExited {
                pid: self.pid,
                during: "collect",
            });
        }
        self.check_fd()?;
        // Recorded before anything is re-armed: a chain that saved the previous number knows,
        // whatever happens to this collect's result, that its pages went elsewhere.
        self.lock.record.generation += 1;
        self.lock
            .write()
            .map_err(|e| kernel_err(self.pid, "write the target's lock file", e))?;
        let current = proc::maps(self.pid)
            .map_err(|e| self.exit_or(kernel_err(self.pid, "read /proc/PID/maps", e), "collect"))?;
        if current.is_empty() {
            // A live process always has mappings: its address space was released, by exit or
            // by exec (then the fd is gone: `check_fd` says so).
            if self.has_exited() {
                return Err(RemoteError::TargetExited {
                    pid: self.pid,
                    during: "collect",
                });
            }
            self.check_fd()?;
            return Err(kernel_err(
                self.pid,
                "read /proc/PID/maps",
                io::Error::other("the target's address space was empty while it kept running"),
            ));
        }
        // Scan first, with the target running; register what is new afterwards, all at once,
        // with every thread of the target stopped (see `register_while_stopped`).
        let mut steps = Vec::with_capacity(current.len());
        for e in &current {
            let m = Mapping::from_entry(e);
            let step = match self.plan(e, &m) {
                Plan::Skip(why) => Step::Done(m, Outcome::Skip(why)),
                Plan::Whole(why) => Step::Done(m.clone(), Outcome::untracked(m, why)),
                Plan::Track => match self.scan_mapping(&m)? {
                    s if s.new_parts.is_empty() => {
                        Step::Done(m, Outcome::Tracked(s.report(self.page_size)))
                    }
                    s => Step::Register(s),
                },
            };
            steps.push(step);
        }
        let mut out = Collection::default();
        let mut tracked_now = Vec::new();
        for (m, outcome) in self.register_while_stopped(steps)? {
            match outcome {
                Outcome::Skip(why) => out.skipped.push((m, why)),
                Outcome::Whole(report) => out.mappings.push(report),
                Outcome::Tracked(report) => {
                    tracked_now.push(report.mapping.clone());
                    out.mappings.push(report);
                }
            }
        }
        // Tracked ranges no longer wholly covered by the mappings this collect reports (both
        // lists ascending and disjoint: only the reports overlapping `old` are looked at). A
        // mapping reported whole because it changed during the registration stop is still
        // there: its old range is not gone.
        for old in &self.tracked {
            let covered: usize = overlapping(&out.mappings, old.start, old.end)
                .map(|r| old.end.min(r.mapping.end) - old.start.max(r.mapping.start))
                .sum();
            if covered < old.len() {
                out.gone.push(old.clone());
            }
        }
        out.children = proc::children(self.pid).unwrap_or_default();
        if self.pidfd_exited() {
            return Err(RemoteError::TargetExited {
                pid: self.pid,
                during: "collect",
            });
        }
        self.check_fd()?;
        self.tracked = tracked_now;
        Ok(out)
    }

    fn plan(&self, e: &MapsEntry, m: &Mapping) -> Plan {
        let [r, w, x, p] = e.perms;
        if matches!(
            m.path.as_str(),
            "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]" | "[uprobes]"
        ) {
            return Plan::Skip("kernel-provided mapping".into());
        }
        let file = e.inode != 0;
        if w != b'w' {
            if p == b's' {
                return Plan::Skip("read-only shared mapping".into());
            }
            if file && x == b'x' {
                return Plan::Skip("code from a file (not writable)".into());
            }
            if file && r != b'r' {
                return Plan::Skip("inaccessible file mapping (an ELF segment gap)".into());
            }
            if !file && r != b'r' && m.len() > MAX_INACCESSIBLE {
                return Plan::Skip(format!(
                    "inaccessible (PROT_NONE) reservation larger than {} GiB: not tracked (arming it would cost 2 MiB of page tables per GiB in the target)",
                    MAX_INACCESSIBLE >> 30
                ));
            }
        }
        let vma = crate::sys::maps::Vma {
            start: e.start,
            end: e.end,
            perms: e.perms,
            inode: e.inode,
            path: e.path.clone(),
        };
        if crate::sys::maps::looks_hugetlb(&vma) {
            return Plan::Whole(
                "hugetlbfs: a discarded huge page reads as clean to PAGEMAP_SCAN".into(),
            );
        }
        if p == b's' && !self.track_shared {
            return Plan::Whole(
                "shared mapping: other processes, fork children and writes to the file change it without a fault here".into(),
            );
        }
        Plan::Track
    }

    /// Registers and arms `[start, end)`. `Err(reason)` when the kernel refuses this mapping.
    fn arm(&self, start: usize, end: usize) -> Result<Result<(), Refusal>, RemoteError> {
        let fd = self.uffd.as_fd();
        if let Err(e) = uffd::register(fd, start, end - start, uffd::REGISTER_MODE_WP) {
            return match e.raw_os_error() {
                Some(libc::EBUSY) => Ok(Err(Refusal {
                    reason: "registered with another userfaultfd of the target (its own): reported whole at every collect".into(),
                    readable: true,
                })),
                Some(libc::EINVAL) | Some(libc::EPERM) => Ok(Err(Refusal {
                    reason: format!("the kernel refuses to write-protect it ({e}): VM_IO/VM_PFNMAP, MAP_DROPPABLE, or no write access"),
                    readable: false,
                })),
                _ => Err(self.exit_or(kernel_err(self.pid, "UFFDIO_REGISTER", e), "collect")),
            };
        }
        uffd::writeprotect(fd, start, end - start, uffd::WRITEPROTECT_MODE_WP)
            .map_err(|e| self.exit_or(kernel_err(self.pid, "UFFDIO_WRITEPROTECT", e), "collect"))?;
        Ok(Ok(()))
    }

    /// One trackable mapping, first half: scans the parts tracked before, and lists the rest,
    /// to be registered (by [`RemoteTracker::register_while_stopped`]) and reported whole.
    fn scan_mapping(&mut self, m: &Mapping) -> Result<Scanned, RemoteError> {
        let ps = self.page_size;
        // Parts of `m` tracked before with the same backing.
        let old_parts: Vec<Range<usize>> = overlapping(&self.tracked, m.start, m.end)
            .filter(|o| o.same_backing_at(m))
            .map(|o| o.start.max(m.start)..o.end.min(m.end))
            .collect();
        let mut new_parts = Vec::new();
        let mut at = m.start;
        for r in &old_parts {
            if r.start > at {
                new_parts.push(at..r.start);
            }
            at = at.max(r.end);
        }
        if at < m.end {
            new_parts.push(at..m.end);
        }

        let mut seg = Segment::new(m.start, m.len() / ps);
        let mut lost = None;
        for r in &old_parts {
            let pagemap = &self.pagemap;
            let end = r.end;
            let result = scan_loop(
                r.start,
                r.end,
                &mut seg,
                ps,
                &mut self.buf,
                &mut self.buf_used,
                |at, buf| {
                    let req = ScanRequest {
                        flags: pagemap::PM_SCAN_WP_MATCHING | pagemap::PM_SCAN_CHECK_WPASYNC,
                        start: at as u64,
                        end: end as u64,
                        category_mask: pagemap::PAGE_IS_WRITTEN,
                        return_mask: pagemap::PAGE_IS_WRITTEN,
                        ..Default::default()
                    };
                    pagemap::scan(pagemap, &req, buf)
                },
            );
            match result {
                Ok(()) => {}
                // The whole rest of the part is already marked dirty by the loop.
                Err(ScanError::Kernel(e)) if e.raw_os_error() == Some(libc::EPERM) => {
                    lost = Some(format!("its registration vanished at {:#x}..{:#x} (munmap + mmap, mremap, or MAP_FIXED over it): reported whole", r.start, r.end));
                    seg.mark(r.start, r.end, ps);
                }
                Err(ScanError::Kernel(e)) => {
                    return Err(self.exit_or(kernel_err(self.pid, "PAGEMAP_SCAN", e), "collect"))
                }
                Err(ScanError::NoProgress { at, walk_end }) => {
                    return Err(RemoteError::Kernel {
                        pid: self.pid,
                        op: "PAGEMAP_SCAN",
                        source: io::Error::other(format!(
                            "no progress at {at:#x} (walk_end {walk_end:#x})"
                        )),
                    })
                }
            }
        }
        if lost.is_some() {
            // Register again (same uffd: allowed over registered parts) and arm the whole
            // mapping; everything was marked dirty above or when it is armed.
            new_parts = std::iter::once(m.start..m.end).collect();
        }
        Ok(Scanned {
            mapping: m.clone(),
            had_old_parts: !old_parts.is_empty(),
            new_parts,
            seg,
            lost,
        })
    }

    /// Second half: registers and arms the new parts of every [`Step::Register`], with every
    /// thread of the target stopped (only if there is one), and returns every mapping's outcome
    /// in order.
    ///
    /// Registering a range that is not a whole mapping splits the target's mapping, and a split
    /// mapping can no longer be moved or grown with one `mremap` (`EFAULT` in the target). A
    /// mapping read from `/proc/PID/maps` while the target runs may have grown or moved by the
    /// time it is registered; so the target is stopped ([`inject::freeze`]: every thread, in a
    /// ptrace stop it does not see), its maps read again, and only mappings found unchanged are
    /// registered, before it runs again. The others are reported whole and registered at the
    /// next collect.
    fn register_while_stopped(
        &mut self,
        steps: Vec<Step>,
    ) -> Result<Vec<(Mapping, Outcome)>, RemoteError> {
        let mut out = Vec::with_capacity(steps.len());
        if !steps.iter().any(|s| matches!(s, Step::Register(_))) {
            for step in steps {
                if let Step::Done(m, outcome) = step {
                    out.push((m, outcome));
                }
            }
            return Ok(out);
        }
        #[cfg(feature = "testing")]
        if let Some(hook) = self.before_stop.as_mut() {
            hook();
        }
        // Stopped by `stop_target` already, or stopped now; or another tracer (a debugger
        // attached after us) holds a thread, and nothing is registered this time.
        let frozen = if self.stopped || self.caller_stops {
            Ok(None)
        } else {
            match inject::freeze(self.pid) {
                Ok(f) => Ok(Some(f)),
                Err(RemoteError::PtraceRefused { reason, .. }) => Err(reason),
                Err(e) => return Err(self.exit_or(e, "collect")),
            }
        };
        let now = match &frozen {
            Ok(_) => proc::maps(self.pid).map_err(|e| {
                self.exit_or(kernel_err(self.pid, "read /proc/PID/maps", e), "collect")
            })?,
            Err(_) => Vec::new(),
        };
        for step in steps {
            let s = match step {
                Step::Done(m, outcome) => {
                    out.push((m, outcome));
                    continue;
                }
                Step::Register(s) => s,
            };
            let m = s.mapping.clone();
            // `now` is ascending by address (the kernel prints maps in order).
            let unchanged = now
                .binary_search_by_key(&m.start, |e| e.start)
                .ok()
                .map(|i| Mapping::from_entry(&now[i]))
                .is_some_and(|n| n.end == m.end && n.same_backing_at(&m));
            let outcome = match &frozen {
                Err(reason) => Outcome::untracked(m.clone(), format!("not registered: the target could not be stopped for it ({reason}); registered at a later collect")),
                Ok(_) if !unchanged => Outcome::untracked(m.clone(), "changed while being registered: registered at the next collect".into()),
                Ok(_) => {
                    let s = self.recheck_old_parts(s)?;
                    self.arm_scanned(s)?
                }
            };
            out.push((m, outcome));
        }
        drop(frozen);
        Ok(out)
    }

    /// With the target stopped, before its new parts are registered: checks that a mapping
    /// whose old parts were scanned (with the target running) is still the registered one.
    ///
    /// Between the scan and the stop the target may have replaced it with another mapping of
    /// the same bounds (moved one there, or unmapped it and mapped another): the replacement
    /// is not registered (a moved mapping loses its registration, a new one never had it),
    /// so registering only the new parts would split it (`EFAULT` at the target's next
    /// `mremap` of it), and would leave its old parts with the old mapping's scan, not armed
    /// (a page that was data there and is empty now would never be reported). A mapping is
    /// one VMA, registered or not as a whole: one page tells. A replaced one is lost: armed
    /// and reported whole.
    fn recheck_old_parts(&mut self, mut s: Scanned) -> Result<Scanned, RemoteError> {
        if !s.had_old_parts || s.lost.is_some() {
            return Ok(s);
        }
        let m = &s.mapping;
        let req = ScanRequest {
            flags: pagemap::PM_SCAN_CHECK_WPASYNC,
            start: m.start as u64,
            end: (m.start + self.page_size) as u64,
            category_mask: pagemap::PAGE_IS_WRITTEN,
            return_mask: pagemap::PAGE_IS_WRITTEN,
            ..Default::default()
        };
        // The entry it may fill is stale for the next scan loop, which clears what is used.
        self.buf_used = self.buf_used.max(1);
        match pagemap::scan(&self.pagemap, &req, &mut self.buf[..1]).result {
            Ok(()) => Ok(s),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                s.lost = Some(format!("replaced at {:#x}..{:#x} between the scan and the registration stop (by a mapping of the same bounds): reported whole", m.start, m.end));
                s.seg.mark(m.start, m.end, self.page_size);
                s.new_parts = std::iter::once(m.start..m.end).collect();
                Ok(s)
            }
            Err(e) => Err(self.exit_or(kernel_err(self.pid, "PAGEMAP_SCAN", e), "collect")),
        }
    }

    /// Registers and arms the new parts of one scanned mapping (the target is stopped).
    fn arm_scanned(&mut self, s: Scanned) -> Result<Outcome, RemoteError> {
        let ps = self.page_size;
        let Scanned {
            mapping: m,
            had_old_parts,
            new_parts,
            mut seg,
            lost,
        } = s;
        for r in &new_parts {
            // Before arming: `UFFDIO_WRITEPROTECT` puts markers in unpopulated entries, which
            // `PAGEMAP_SCAN` counts as swapped. The target is stopped: nothing it does can
            // populate a page in between.
            let populated_only = m.is_private_anonymous() && lost.is_none();
            if populated_only {
                self.mark_populated(r.start, r.end, &mut seg)?;
            }
            if let Err(refusal) = self.arm(r.start, r.end)? {
                // Contents that were tracked, or that can be read, are reported whole; a mapping
                // the kernel refuses from the start (device memory) is skipped.
                if refusal.readable || had_old_parts {
                    return Ok(Outcome::untracked(m, refusal.reason));
                }
                return Ok(Outcome::Skip(refusal.reason));
            }
            if !populated_only {
                seg.mark(r.start, r.end, ps);
            }
        }
        let change = match lost {
            Some(reason) => Change::Lost { reason },
            None => Change::New { new: new_parts },
        };
        Ok(Outcome::Tracked(MappingReport {
            dirty: runs(&seg, ps),
            mapping: m,
            change,
        }))
    }

    /// Marks in `seg` the pages of `[start, end)` that exist (present or swapped, from
    /// `PAGEMAP_SCAN`): what a report of the range as a whole must copy from private anonymous
    /// memory. A failed scan marks the rest of the range (as if it all existed).
    fn mark_populated(
        &mut self,
        start: usize,
        end: usize,
        seg: &mut Segment,
    ) -> Result<(), RemoteError> {
        let pagemap = &self.pagemap;
        let exists = pagemap::PAGE_IS_PRESENT | pagemap::PAGE_IS_SWAPPED;
        let result = scan_loop(
            start,
            end,
            seg,
            self.page_size,
            &mut self.buf,
            &mut self.buf_used,
            |at, buf| {
                let req = ScanRequest {
                    start: at as u64,
                    end: end as u64,
                    category_anyof_mask: exists,
                    return_mask: exists,
                    ..Default::default()
                };
                pagemap::scan(pagemap, &req, buf)
            },
        );
        match result {
            Ok(()) | Err(ScanError::NoProgress { .. }) => Ok(()),
            Err(ScanError::Kernel(e)) => {
                Err(self.exit_or(kernel_err(self.pid, "PAGEMAP_SCAN", e), "collect"))
            }
        }
    }

    /// Every page of the target that is **not known clean** after collect `c` (this tracker's
    /// last), as a [`DirtySet`](crate::DirtySet): the pages of `c`'s reports (written pages of
    /// tracked mappings; the ranges reported whole, of which only the pages that exist in
    /// private anonymous memory), and the pages that exist (present or swapped) in the mappings
    /// `c` skipped (code, inaccessible, kernel-provided). A page outside it lies in a mapping
    /// tracked since the previous collect and was not written since, or does not exist: what a
    /// checkpointer such as CRIU may take from its previous images (or leave out). Costs what
    /// the populated part of the skipped mappings costs, not what they span (a 16 TiB
    /// reservation is a few page-table walks). On error the chain restarts
    /// ([`RemoteTracker::restart_chain`]): the next collect reports every mapping whole.
    pub fn not_known_clean(&mut self, c: &Collection) -> Result<crate::DirtySet, RemoteError> {
        let ps = self.page_size;
        // One segment per mapping (they are disjoint), its runs marked word by word.
        let mut segments = Vec::with_capacity(c.mappings.len() + c.skipped.len());
        for m in &c.mappings {
            let mut seg = Segment::new(m.mapping.start, m.mapping.len() / ps);
            seg.mark_each(m.dirty.iter().map(|r| (r.start, r.end)), ps);
            segments.push(seg);
        }
        for (m, _) in &c.skipped {
            let mut seg = Segment::new(m.start, m.len() / ps);
            if let Err(e) = self.mark_populated(m.start, m.end, &mut seg) {
                // The pagemap cannot walk some kernel-provided mappings (`[vsyscall]` lies
                // above the user address space: EFAULT): a small one counts whole; a large one
                // cannot be marked whole at a bit a page, so the error stands. The collect has
                // re-armed already: without this answer its pages are unknown, so the next
                // collect reports everything whole (never "clean" by default).
                if m.len() > MAX_INACCESSIBLE || matches!(e, RemoteError::TargetExited { .. }) {
                    self.restart_chain();
                    return Err(e);
                }
                seg.mark(m.start, m.end, ps);
            }
            // Only the runs found go into the set: a skipped reservation of terabytes with a
            // few populated pages must not make every reader of the set walk its whole extent.
            for (a, b) in crate::bitmap::bit_runs(seg.bits.as_raw_slice()) {
                let mut run = Segment::new(m.start + a * ps, b - a);
                run.mark(run.start, run.start + (b - a) * ps, ps);
                segments.push(run);
            }
        }
        Ok(crate::DirtySet::from_segments(ps, segments))
    }

    /// Test hook: `hook` runs in every collect that registers something, after the scan and
    /// before the target is stopped for the registration (to change the target's mappings in
    /// that window on purpose). Feature `testing` only.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn set_before_registration_stop(&mut self, hook: impl FnMut() + Send + Sync + 'static) {
        self.before_stop = Some(Box::new(hook));
    }

    /// The chain's state for the next run ([`RemoteBuilder::state`]): the userfaultfd's fd and
    /// inode, the collect generation, the mappings tracked. Opaque bytes; save them after the
    /// dump of this run's collect is committed.
    pub fn save_state(&self) -> Vec<u8> {
        state::ChainState {
            fd: self.target_fd,
            inode: self.uffd_ino,
            generation: self.lock.record.generation,
            tracked: self.tracked.clone(),
        }
        .encode()
    }

    /// The fd number of the tracking userfaultfd that `state` (from [`RemoteTracker::save_state`]
    /// in the chain's previous run) was saved with, if process `pid` still holds it; `None`
    /// otherwise (the caller then creates a new one and adopts it). Reads `/proc` only.
    pub fn find_fd(pid: i32, state: &[u8]) -> Result<Option<i32>, RemoteError> {
        let s = state::ChainState::decode(state)?;
        let fds = proc::userfaultfds(pid)
            .map_err(|e| inject::access_error(pid, "read /proc/PID/fd", e))?;
        Ok(fds
            .iter()
            .find(|u| u.fd == s.fd && u.ino == s.inode && u.features != 0)
            .map(|u| u.fd))
    }

    /// Every fd of process `pid` that is a tracking userfaultfd (at [`MARK_FD_BASE`] or above),
    /// its own and copies inherited from a tracked parent: what a checkpointer must leave out of
    /// its dump of the process's files. Reads `/proc` only.
    pub fn tracking_fds(pid: i32) -> Result<Vec<i32>, RemoteError> {
        let fds = proc::userfaultfds(pid)
            .map_err(|e| inject::access_error(pid, "read /proc/PID/fd", e))?;
        Ok(fds
            .iter()
            .filter(|u| u.fd >= MARK_FD_BASE && u.features & EVENT_FEATURES == 0)
            .map(|u| u.fd)
            .collect())
    }

    /// Leaves tracking in place in the target (a later attach resumes it) and releases this
    /// tracker. Same as dropping it (which also resumes a target left stopped).
    pub fn detach(self) {}

    /// Removes tracking from the target: unregisters every tracked range and closes the
    /// userfaultfd in the target (one more injected system call).
    pub fn stop_tracking(mut self) -> Result<(), RemoteError> {
        for m in &self.tracked {
            // Ranges unmapped meanwhile give EINVAL; nothing to undo there.
            let _ = uffd::unregister(self.uffd.as_fd(), m.start, m.len());
        }
        if self.has_exited() {
            return Ok(());
        }
        if self.caller_stops {
            // The caller holds the target: it closes the fd itself (or keeps it hidden), and
            // the record says the userfaultfd no longer tracks anything.
            self.lock.record.uffd = 0;
            self.lock.record.generation = 0;
            return self
                .lock
                .write()
                .map_err(|e| kernel_err(self.pid, "write the target's lock file", e));
        }
        self.check_fd()?;
        let ret = inject::syscall_in(
            self.pid,
            libc::SYS_close,
            [self.target_fd as u64, 0, 0, 0, 0, 0],
        )?;
        if ret < 0 {
            return Err(RemoteError::Kernel {
                pid: self.pid,
                op: "close (injected)",
                source: io::Error::from_raw_os_error(-ret as i32),
            });
        }
        self.lock.record.uffd = 0;
        self.lock.record.generation = 0;
        self.lock
            .write()
            .map_err(|e| kernel_err(self.pid, "write the target's lock file", e))
    }
}

impl Drop for RemoteTracker {
    /// Resumes what [`RemoteTracker::stop_target`] stopped; tracking stays in the target.
    fn drop(&mut self) {
        if self.stopped {
            let _ = self.continue_target();
        }
    }
}

/// The mappings of `list` (ascending by start, disjoint) that overlap `[start, end)`.
fn overlapping<T: Span>(list: &[T], start: usize, end: usize) -> impl Iterator<Item = &T> {
    let first = list.partition_point(|m| m.span().end <= start);
    list[first..]
        .iter()
        .take_while(move |m| m.span().start < end)
}

/// An address range of a list kept ascending and disjoint, for [`overlapping`].
trait Span {
    fn span(&self) -> Range<usize>;
}

impl Span for Mapping {
    fn span(&self) -> Range<usize> {
        self.start..self.end
    }
}

impl Span for MappingReport {
    fn span(&self) -> Range<usize> {
        self.mapping.start..self.mapping.end
    }
}

/// The page runs marked in `seg`.
fn runs(seg: &Segment, ps: usize) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for i in seg.bits.iter_ones() {
        let a = seg.start + i * ps;
        match out.last_mut() {
            Some(last) if last.end == a => last.end = a + ps,
            _ => out.push(a..a + ps),
        }
    }
    out
}

/// The userfaultfd to reuse.
struct Found {
    fd: i32,
    /// The one the caller expected (fd number and inode).
    expected: bool,
    /// `UFFDIO_API` was done on it.
    api_done: bool,
}

/// What [`inspect_fds`] decided.
struct Fds {
    found: Option<Found>,
    /// Leftovers of interrupted attaches to close, and why.
    close: Vec<(i32, String)>,
}

/// Looks at the userfaultfds of `pid`: the one to reuse, and the leftovers of an attach killed
/// midway, to close.
///
/// Reused: the expected one (fd number and inode), else one marked as a tracker's (at or above
/// [`MARK_FD_BASE`], async features and no events), else one a killed attach created and never
/// set up (at or above [`MARK_FD_BASE`]). What a killed attach created is known only from the
/// lock's creation record: userfaultfds the target did not hold before it. Of those, the ones
/// never set up and not reused are closed (a copy left at its first number included); a
/// userfaultfd the record does not name is never touched (it may be the target's own, in the
/// middle of its own setup).
/// [`RemoteBuilder::adopt`]: checks the target's fd `fd` and returns (fd, resumed, set up).
fn adopted_fd(pid: i32, fd: i32, b: &RemoteBuilder) -> Result<(i32, bool, bool), RemoteError> {
    let refuse = |reason: String| RemoteError::NotATrackingFd { pid, fd, reason };
    let fds =
        proc::userfaultfds(pid).map_err(|e| inject::access_error(pid, "read /proc/PID/fd", e))?;
    let u = fds
        .iter()
        .find(|u| u.fd == fd)
        .ok_or_else(|| refuse("the target holds no userfaultfd at that fd".into()))?;
    if fd < MARK_FD_BASE {
        return Err(refuse(format!(
            "tracking userfaultfds live at fd {MARK_FD_BASE} or above (how later runs and checkpointers tell them from the target's own): move it there (fcntl F_DUPFD_CLOEXEC, then close)"
        )));
    }
    let api_done = u.features != 0;
    if api_done && u.features & (FEATURES | EVENT_FEATURES) != FEATURES {
        return Err(refuse(format!(
            "it is set up with features {:#x}, not as a tracking userfaultfd: it is the target's own",
            u.features
        )));
    }
    let expected = b.expect == Some((fd, u.ino));
    if api_done && !expected {
        return Err(refuse(
            "it is set up already, but not by the chain whose state was given (no state, or another fd or inode): it may be a copy a fork child inherited, which acts on its parent's memory; create a new userfaultfd in the target and adopt that".into(),
        ));
    }
    Ok((fd, expected && !b.fresh, api_done))
}

fn inspect_fds(
    pid: i32,
    expect: Option<(i32, u64)>,
    record: &lock::Record,
) -> Result<Fds, RemoteError> {
    let fds =
        proc::userfaultfds(pid).map_err(|e| inject::access_error(pid, "read /proc/PID/fd", e))?;
    let created_by_a_killed_attach = |u: &proc::UffdInfo| {
        record
            .creating
            .as_ref()
            .is_some_and(|before| !before.contains(&u.ino))
    };
    let found = expect
        .and_then(|(fd, ino)| fds.iter().find(|u| u.fd == fd && u.ino == ino))
        .map(|u| (u, true))
        .or_else(|| {
            fds.iter()
                .find(|u| {
                    u.fd >= MARK_FD_BASE && u.features & (FEATURES | EVENT_FEATURES) == FEATURES
                })
                .or_else(|| {
                    fds.iter().find(|u| {
                        u.fd >= MARK_FD_BASE && u.features == 0 && created_by_a_killed_attach(u)
                    })
                })
                .map(|u| (u, false))
        });
    let mut close = Vec::new();
    for u in &fds {
        if found.is_some_and(|(f, _)| f.fd == u.fd) || !created_by_a_killed_attach(u) {
            continue;
        }
        if found.is_some_and(|(f, _)| f.ino == u.ino) {
            close.push((
                u.fd,
                format!(
                    "a second reference to the tracking userfaultfd (inode {}) an interrupted attach left",
                    u.ino
                ),
            ));
        } else if u.features == 0 {
            close.push((
                u.fd,
                "a userfaultfd an interrupted attach created and never set up".to_string(),
            ));
        }
    }
    Ok(Fds {
        found: found.map(|(u, expected)| Found {
            fd: u.fd,
            expected,
            api_done: u.features != 0,
        }),
        close,
    })
}

/// The mappings registered for write-protect right now (`uw` in smaps), as tracked mappings.
fn registered_now(pid: i32) -> Result<Vec<Mapping>, RemoteError> {
    let flags = proc::vm_flags(pid).map_err(|e| kernel_err(pid, "read /proc/PID/smaps", e))?;
    let maps = proc::maps(pid).map_err(|e| kernel_err(pid, "read /proc/PID/maps", e))?;
    Ok(maps
        .iter()
        .filter(|e| {
            flags
                .iter()
                .any(|(s, f)| *s == e.start && f.iter().any(|x| x == "uw"))
        })
        .map(Mapping::from_entry)
        .collect())
}

/// Creates the tracking userfaultfd in the target; returns its fd number there.
///
/// The lock records the creation first (with the userfaultfds the target holds before it), so
/// that a later attach can tell the leftovers of this one from the target's own if this process
/// dies midway; the caller clears the record once the fd is set up.
fn create_in_target(pid: i32, lock: &mut lock::TargetLock) -> Result<i32, RemoteError> {
    let before =
        proc::userfaultfds(pid).map_err(|e| inject::access_error(pid, "read /proc/PID/fd", e))?;
    lock.record.creating = Some(before.iter().map(|u| u.ino).collect());
    lock.write()
        .map_err(|e| kernel_err(pid, "write the target's lock file", e))?;
    // The record is cleared by `attach_with` once the new fd is set up (UFFDIO_API).
    create_and_mark(pid)
}

/// The injections of [`create_in_target`].
fn create_and_mark(pid: i32) -> Result<i32, RemoteError> {
    let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK | uffd::UFFD_USER_MODE_ONLY) as u64;
    let ret = inject::syscall_in(pid, libc::SYS_userfaultfd, [flags, 0, 0, 0, 0, 0])?;
    if ret < 0 {
        let errno = (-ret) as i32;
        let source = io::Error::from_raw_os_error(errno);
        let filters = proc::status_field(pid, "Seccomp_filters")
            .ok()
            .flatten()
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0);
        let seccomp = proc::status_field(pid, "Seccomp").ok().flatten();
        if seccomp.as_deref() == Some("2")
            && matches!(errno, libc::EPERM | libc::EACCES | libc::ENOSYS)
        {
            return Err(RemoteError::SeccompDenied {
                pid,
                filters,
                source,
            });
        }
        let hint = match errno {
            libc::ENOSYS => "the kernel is built without CONFIG_USERFAULTFD",
            libc::EMFILE | libc::ENFILE => "the target is out of file descriptors (RLIMIT_NOFILE)",
            libc::EPERM => {
                "the kernel refuses user-mode-only userfaultfds to the target (an LSM policy?)"
            }
            _ => "see userfaultfd(2)",
        };
        return Err(RemoteError::UserfaultfdFailed { pid, source, hint });
    }
    let fd = ret as i32;
    // Move it to MARK_FD_BASE or above, so a later attach recognises it.
    let moved = inject::syscall_in(
        pid,
        libc::SYS_fcntl,
        [
            fd as u64,
            libc::F_DUPFD_CLOEXEC as u64,
            MARK_FD_BASE as u64,
            0,
            0,
            0,
        ],
    );
    match moved {
        Ok(new_fd) if new_fd >= 0 => {
            // Close the original; if that fails the target keeps a second reference (harmless,
            // closed on exec).
            let _ = inject::syscall_in(pid, libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0]);
            Ok(new_fd as i32)
        }
        // RLIMIT_NOFILE below MARK_FD_BASE: keep the fd where it is (a later attach will not
        // recognise it without RemoteBuilder::expect_fd).
        Ok(_) => Ok(fd),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(start: usize, end: usize, perms: &str, offset: u64, inode: u64, path: &str) -> Mapping {
        Mapping {
            start,
            end,
            perms: perms.into(),
            offset,
            dev: if inode == 0 { "00:00" } else { "fe:01" }.into(),
            inode,
            path: path.into(),
        }
    }

    #[test]
    fn backing_identity() {
        let anon = m(0x1000, 0x9000, "rw-p", 0, 0, "");
        // Anonymous memory: the same whatever its name or protection.
        assert!(anon.same_backing_at(&m(0x3000, 0x5000, "r--p", 0, 0, "[heap]")));
        assert!(!anon.same_backing_at(&m(0x3000, 0x5000, "rw-s", 0, 0, "")));
        // A file mapping: same file at the same offset for the same address.
        let file = m(0x10000, 0x20000, "rw-p", 0x4000, 7, "/lib/x.so");
        assert!(file.same_backing_at(&m(0x12000, 0x14000, "r--p", 0x6000, 7, "/lib/x.so")));
        assert!(!file.same_backing_at(&m(0x12000, 0x14000, "rw-p", 0x7000, 7, "/lib/x.so")));
        assert!(!file.same_backing_at(&m(0x12000, 0x14000, "rw-p", 0x6000, 8, "/lib/x.so")));
        assert!(!file.same_backing_at(&anon));
    }
}
