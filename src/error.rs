//! The error type. Every message says what happened and what to do about it.

use crate::types::RangeId;
use std::io;

/// Everything that can go wrong, as an enum a caller can match on.
///
/// No error path of this crate loses written pages: when a call fails part-way through a
/// harvest, what it had already taken from the kernel, plus everything it could not scan, is kept
/// and reported (as dirty) by the next successful `collect` or `peek`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An address or length is not a multiple of the page size (or huge-page size).
    #[error("{what} {value:#x} is not a multiple of the page size ({page_size} bytes): round it to a page boundary")]
    Unaligned {
        /// `"address"` or `"length"`.
        what: &'static str,
        /// The offending value.
        value: usize,
        /// The required alignment.
        page_size: usize,
    },

    /// A zero-length range.
    #[error("the range at {addr:#x} has length 0: register at least one page")]
    ZeroLength {
        /// Start address.
        addr: usize,
    },

    /// `addr + len` wraps around the address space.
    #[error("the range {addr:#x} + {len:#x} overflows the address space")]
    AddressOverflow {
        /// Start address.
        addr: usize,
        /// Length.
        len: usize,
    },

    /// Part of the range is not mapped in this process.
    #[error("the range {start:#x}..{end:#x} is not fully mapped (nothing is mapped at {hole:#x}): map the whole range before registering it")]
    NotMapped {
        /// Start of the requested range.
        start: usize,
        /// End of the requested range.
        end: usize,
        /// First unmapped address.
        hole: usize,
    },

    /// The range overlaps a range this tracker already tracks.
    #[error("the range {start:#x}..{end:#x} overlaps {existing:?} ({existing_start:#x}..{existing_end:#x}) which this tracker already tracks: unregister it first, or register only the part not yet tracked")]
    Overlap {
        /// Start of the requested range.
        start: usize,
        /// End of the requested range.
        end: usize,
        /// The range already tracked.
        existing: RangeId,
        /// Its start.
        existing_start: usize,
        /// Its end.
        existing_end: usize,
    },

    /// Another userfaultfd (another tracker, or a VMM's own uffd) already owns the memory.
    #[error("the range {start:#x}..{end:#x} is already registered with another userfaultfd (EBUSY): one tracker per range; drop the other tracker or its registration first")]
    OwnedByAnotherUserfaultfd {
        /// Start of the requested range.
        start: usize,
        /// End of the requested range.
        end: usize,
    },

    /// The kernel refused to write-protect this kind of mapping in this mode.
    #[error("the kernel refused to track {start:#x}..{end:#x} ({mapping}) in {mode:?} mode ({source}): {hint}")]
    MappingNotSupported {
        /// Start of the requested range.
        start: usize,
        /// End of the requested range.
        end: usize,
        /// What the mapping is, from `/proc/self/maps`.
        mapping: String,
        /// The mode in use.
        mode: crate::Mode,
        /// The kernel's answer.
        source: io::Error,
        /// What to do.
        hint: &'static str,
    },

    /// The running kernel lacks a feature the requested mode needs.
    #[error("{mode:?} mode needs {feature} (Linux {since}+), which kernel {kernel} does not offer: {alternative}")]
    UnsupportedKernel {
        /// The mode that was asked for.
        mode: crate::Mode,
        /// The missing feature.
        feature: &'static str,
        /// The first kernel version that has it.
        since: &'static str,
        /// `uname -r`.
        kernel: String,
        /// What to do instead.
        alternative: &'static str,
    },

    /// No userfaultfd could be had, or not one of the kind the mode needs.
    #[error("{0}")]
    Permission(String),

    /// Out of file descriptors or memory.
    #[error("{what} failed: {source}: {hint}")]
    ResourceExhausted {
        /// What was being done.
        what: &'static str,
        /// The kernel's answer (`EMFILE`, `ENFILE`, `ENOMEM`, `EAGAIN`).
        source: io::Error,
        /// What to do.
        hint: &'static str,
    },

    /// The `RangeId` is not (or no longer) registered with this tracker.
    #[error(
        "{0:?} is not registered with this tracker (already unregistered, or from another tracker)"
    )]
    UnknownRange(RangeId),

    /// The registration of a range vanished under the tracker: the memory was unmapped, replaced
    /// (`mmap(MAP_FIXED)`), moved, or unregistered behind the tracker's back. Its pages were
    /// reported dirty once more (nothing silently clean); the range must be unregistered.
    #[error("{id:?} ({start:#x}..{end:#x}) is no longer tracked: {reason}. Its contents must be treated as changed; unregister it (and register the new memory if you still want it tracked)")]
    RangeLost {
        /// The range.
        id: RangeId,
        /// Its start when registered.
        start: usize,
        /// Its end when registered.
        end: usize,
        /// What the library saw.
        reason: String,
    },

    /// The tracker was created by another process (this one is a `fork` child).
    #[error("this tracker belongs to process {owner}, not to this process {current} (a fork child): it is inert here; create a new Tracker in the child if the child needs tracking")]
    ForkedChild {
        /// The pid that created the tracker.
        owner: u32,
        /// The current pid.
        current: u32,
    },

    /// The tracker's monitor thread died; tracking state is unknown, so the tracker refuses work.
    #[error("the tracker is poisoned: {0}. All ranges were un-protected so no writer hangs; treat every tracked page as changed and create a new Tracker")]
    Poisoned(String),

    /// A live snapshot could not produce a consistent copy.
    #[error("the live snapshot of {id:?} is not consistent: {reason}. Nothing was lost from dirty tracking; take the snapshot again")]
    LiveSnapshotFailed {
        /// The range.
        id: RangeId,
        /// What happened.
        reason: String,
    },

    /// The operation needs another mode.
    #[error("{what} needs Mode::Sync (this tracker runs in {mode:?} mode): build a tracker with Tracker::builder().mode(Mode::Sync)")]
    NeedsSyncMode {
        /// The operation.
        what: &'static str,
        /// The tracker's mode.
        mode: crate::Mode,
    },

    /// A live snapshot of the range is already running.
    #[error("a live snapshot of {0:?} is already in progress: wait for it first")]
    SnapshotInProgress(RangeId),

    /// A kernel call failed in a way the library has no better name for.
    #[error("{op} failed: {source}")]
    Kernel {
        /// The operation, e.g. `"UFFDIO_WRITEPROTECT"`.
        op: &'static str,
        /// The kernel's answer.
        source: io::Error,
    },

    /// [`DirtySet::with_page_size`](crate::DirtySet::with_page_size) was given a page size that is
    /// not a power of two.
    #[error("page size {page_size} is not a power of two: pass the granularity of the addresses (4096, 16384, 65536, a huge page size)")]
    InvalidPageSize {
        /// The value given.
        page_size: usize,
    },

    /// [`Tracker::mark_dirty`](crate::Tracker::mark_dirty) named memory that no registered range
    /// covers.
    #[error("{start:#x}..{end:#x} is not tracked ({addr:#x} is in no registered range): mark_dirty records changes only for registered memory; register the buffer first, or mark only its registered part")]
    NotTracked {
        /// Start of the span (rounded down to a page).
        start: usize,
        /// End of the span (rounded up to a page).
        end: usize,
        /// The first address that is in no registered range.
        addr: usize,
    },

    /// `PAGEMAP_SCAN` stopped making progress (`walk_end <= start` without an error).
    #[error("PAGEMAP_SCAN made no progress at {at:#x} (walk_end {walk_end:#x}); the unscanned rest was kept as dirty")]
    ScanNoProgress {
        /// Where the scan started.
        at: usize,
        /// What the kernel returned as `walk_end`.
        walk_end: usize,
    },
}

impl Error {
    /// Maps resource errnos to [`Error::ResourceExhausted`], anything else to [`Error::Kernel`].
    pub(crate) fn from_kernel(op: &'static str, source: io::Error) -> Error {
        match source.raw_os_error() {
            Some(libc::EMFILE) | Some(libc::ENFILE) => Error::ResourceExhausted {
                what: op,
                source,
                hint: "the process or system is out of file descriptors; raise RLIMIT_NOFILE (ulimit -n) or close fds",
            },
            Some(libc::ENOMEM) => Error::ResourceExhausted {
                what: op,
                source,
                hint: "out of memory or out of VMAs; free memory, or raise vm.max_map_count if the process has many mappings",
            },
            _ => Error::Kernel { op, source },
        }
    }
}
