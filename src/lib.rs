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
//! # Layers
//!
//! Each module uses only the ones above it in this list (no import cycle):
//!
//! | module | what it is |
//! |---|---|
//! | `sys/` | the kernel ABI only: raw `#[repr(C)]` structs, constants (each with the kernel version that added it), one thin wrapper per system call or ioctl; the only code that calls `libc::syscall`/`libc::ioctl`; crate-private |
//! | `atomic` | the atomics of the lock-free code: std's, or loom's under `cfg(loom)` (the loom models in `loom_models` check the production code) |
//! | `types` | the plain shared types: [`Mode`], [`RangeId`], [`Backing`], [`Thp`], [`Prefault`], [`FdSource`] |
//! | `error` | [`Error`], the one error enum |
//! | [`probe`] | capability probing on throwaway fds: [`Capabilities`] |
//! | `bitmap` | the one bitmap code: word masks, the atomic per-range bitmap, the per-range result segment |
//! | `dirty_set` | [`DirtySet`], the result of a collect |
//! | `cow` | a range's copy-on-write state during a live snapshot |
//! | `range` | one registered range: its address, marks, lost state, how it is armed (`Arming`); the address indexes and their move count |
//! | `state` | `TrackerState`: the state the tracker, the backends and the monitor share; the lock table |
//! | `backend/` | `async_wp` (`PAGEMAP_SCAN`), `sync_wp` (re-protect + marks), `monitor` (the thread reading the userfaultfd; design note there) |
//! | `live` | [`LiveSnapshot`], [`LiveCopy`]: consistent live snapshots (sync mode) and the hand-back of the pages a dropped snapshot owes |
//! | `tracker/` | the API on top: [`Tracker`] and [`RangeInfo`] (`mod.rs`), [`TrackerBuilder`] (`builder.rs`), registration (`register.rs`), test hooks (`hooks.rs`) |
//! | `remote/` | (feature `remote`) tracking another process: the system-call injector, `RemoteTracker`, the target lock, chain states (uses `sys`, `bitmap`, `dirty_set` and the async scan loop) |

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

// The `testing` feature is for this repository's own tests only (see build.rs).
#[cfg(all(feature = "testing", not(dirtytrack_own_build)))]
compile_error!(
    "dirtytrack's `testing` feature exposes its kernel ABI module and test hooks to its own tests \
     and is refused outside its repository; something in the dependency graph turned it on \
     (`cargo tree -e features -i dirtytrack` shows what): remove it"
);

// The dependency order is the table above (rustfmt sorts these declarations).
mod atomic;
mod backend;
mod bitmap;
mod cow;
mod dirty_set;
mod error;
mod live;
pub mod probe;
mod range;
#[cfg(all(
    feature = "remote",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
pub mod remote;
mod state;
#[allow(missing_docs)]
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod sys;
/// The kernel ABI. Crate-private: its wrappers' safety depends on their callers (see
/// `sys/mod.rs`). The `testing` feature exposes it, hidden from the docs and with no stability
/// promise, to this crate's tests, benchmarks and fuzz targets.
#[cfg(not(feature = "testing"))]
#[allow(dead_code)]
mod sys;
mod tracker;
mod types;

#[cfg(all(test, loom))]
mod loom_models;

#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod fuzz_api;

#[cfg(feature = "vm-memory")]
pub use dirty_set::BitmapTooSmall;
pub use dirty_set::{DirtySet, RangeView};
pub use error::Error;
pub use live::{LiveCopy, LiveSnapshot};
pub use probe::Capabilities;
#[cfg(all(
    feature = "remote",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
pub use remote::{RemoteError, RemoteTracker};
pub use tracker::{RangeInfo, Tracker, TrackerBuilder};
pub use types::{Backing, FdSource, Mode, Prefault, RangeId, Thp};

/// `UFFD_FEATURE_*` bits, for [`Capabilities::has`] (and the `testing` feature's
/// `TrackerBuilder::hide_features`).
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
