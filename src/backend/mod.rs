//! The two ways of finding written pages, and the monitor thread both use.
//!
//! - [`async_wp`]: Linux 6.7+, the kernel resolves faults; harvest with `PAGEMAP_SCAN`.
//! - [`sync_wp`]: Linux 5.7+, the monitor thread records each first write and lets it through.
//! - [`monitor`]: the thread that reads the userfaultfd (faults in sync mode, events in both).

pub(crate) mod async_wp;
pub(crate) mod monitor;
pub(crate) mod sync_wp;

use crate::range::RangeState;
use crate::state::TrackerState;
use crate::sys::uffd;
use crate::Error;
use std::io;

/// What the tracker's `harvest` lock owns (see `state`'s lock table): the `/proc/self/pagemap`
/// scanner, so one scan runs at a time. Async mode always has one; sync mode only where the
/// kernel can show pages changed with no event (guard regions, see `sync_wp`).
pub(crate) struct Harvest {
    /// The scanner, if this mode and kernel use one.
    pub(crate) scanner: Option<async_wp::Scanner>,
    /// The ranges being harvested (kept for its capacity: a steady-state collect allocates
    /// nothing).
    pub(crate) ranges: Vec<std::sync::Arc<RangeState>>,
    /// Segment vector swapped with the caller's `DirtySet` (kept for its capacity).
    pub(crate) segments: Vec<crate::bitmap::Segment>,
}

/// What a harvest does with the written state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Report and reset (re-protect) atomically per page.
    Collect,
    /// Report, change nothing.
    Peek,
    /// Reset without reporting.
    Clear,
}

/// Event features both modes enable when the kernel offers them.
pub(crate) const EVENT_FEATURES: u64 =
    uffd::FEATURE_EVENT_REMOVE | uffd::FEATURE_EVENT_UNMAP | uffd::FEATURE_EVENT_REMAP;

/// Maps a harvest ioctl error on range `r` to the library error, marking the range lost when the
/// kernel says it is no longer registered.
pub(crate) fn range_error(
    core: &TrackerState,
    r: &RangeState,
    op: &'static str,
    e: io::Error,
) -> Error {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::ENOENT) | Some(libc::EINVAL) => {
            r.mark_gone(
                format!(
                    "{op} answered {e}: the memory is no longer registered with this tracker (unmapped, replaced by mmap(MAP_FIXED), or unregistered behind its back)"
                ),
                core.page_size,
            );
            lost_error(r)
        }
        _ => Error::from_kernel(op, e),
    }
}

/// `Error::RangeLost` for `r` (which must be lost).
pub(crate) fn lost_error(r: &RangeState) -> Error {
    Error::RangeLost {
        id: r.id,
        start: r.registered_at,
        end: r.registered_at + r.len,
        reason: r
            .lost
            .lock()
            .clone()
            .unwrap_or_else(|| "unknown".to_string()),
    }
}
