//! # dirtytrack
//!
//! Which pages of my own memory were written since I last asked?
//!
//! `dirtytrack` answers with userfaultfd write-protection (uffd-wp), the replacement for the
//! kernel's soft-dirty bits (which reset the whole process, race between read and clear, and are
//! missing on arm64 and on kernels built without `CONFIG_MEM_SOFT_DIRTY`).
//!
//! - **Async mode** (Linux 6.7+): ranges are registered with `UFFD_FEATURE_WP_ASYNC`; the kernel
//!   resolves write faults itself, and [`Tracker::collect`] harvests written pages and
//!   re-protects them in one `PAGEMAP_SCAN` walk.
//! - **Sync mode** (Linux 5.7+): a monitor thread records each first write after a collect and
//!   lets it through.
//!
//! ```no_run
//! use dirtytrack::Tracker;
//! # fn main() -> Result<(), dirtytrack::Error> {
//! # let (addr, len) = (std::ptr::null_mut(), 0);
//! let tracker = Tracker::new()?;                 // Mode::Auto: async if the kernel has it
//! let id = tracker.register(addr, len)?;         // page-aligned, mapped memory
//! // ... the program writes ...
//! let dirty = tracker.collect()?;                // written since register; now clean again
//! for run in dirty.runs() { /* copy run.start..run.end into the incremental dump */ }
//! # Ok(()) }
//! ```
//!
//! Layers, bottom up: [`sys`] (the kernel ABI: raw structs, constants, one wrapper per ioctl),
//! [`probe`] (capabilities), the backends (async, sync, and the monitor thread), and on top
//! [`Tracker`] and [`DirtySet`].

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod backend;
#[cfg(feature = "capi")]
pub mod capi;
mod core;
mod dirty_set;
mod error;
#[doc(hidden)]
pub mod fuzz_api;
mod live;
pub mod probe;
mod range;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub mod remote;
#[allow(missing_docs)]
pub mod sys;
mod tracker;

pub use dirty_set::DirtySet;
pub use error::Error;
pub use live::{LiveCopy, LiveSnapshot};
pub use probe::{Capabilities, FdSource, Prefault};
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub use remote::{RemoteError, RemoteTracker};
pub use tracker::{Backing, Mode, RangeId, RangeInfo, Thp, Tracker, TrackerBuilder};

/// `UFFD_FEATURE_*` bits, for [`TrackerBuilder::hide_features`] and [`Capabilities::has`].
pub mod features {
    pub use crate::sys::uffd::{
        FEATURE_EVENT_REMAP as EVENT_REMAP, FEATURE_EVENT_REMOVE as EVENT_REMOVE,
        FEATURE_EVENT_UNMAP as EVENT_UNMAP, FEATURE_PAGEFAULT_FLAG_WP as PAGEFAULT_FLAG_WP,
        FEATURE_WP_ASYNC as WP_ASYNC, FEATURE_WP_HUGETLBFS_SHMEM as WP_HUGETLBFS_SHMEM,
        FEATURE_WP_UNPOPULATED as WP_UNPOPULATED,
    };
}

/// The page size of this process, in bytes.
pub fn page_size() -> usize {
    static PS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PS.get_or_init(sys::page_size)
}
