//! Per-range state shared by the tracker, the backends and the monitor thread.

use crate::bitmap::{AtomicBitmap, Segment};
use crate::cow::Cow;
use crate::types::RangeId;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One registered range.
pub(crate) struct RangeState {
    pub(crate) id: RangeId,
    /// Current start address. Stored (Release) only by the monitor thread, under `ranges` (read,
    /// `read_recursive`) and `batch`, when it follows an `mremap` move; loaded (Acquire) by
    /// everyone. A reader that needs the address after a move that has returned takes the
    /// `batch` barrier first (`Core::barrier`).
    pub(crate) start: AtomicUsize,
    /// Length in bytes (fixed).
    pub(crate) len: usize,
    /// Protection granule: the page size, or the huge page size of a hugetlbfs range.
    pub(crate) granule: usize,
    /// What backs the range (from `/proc/self/maps` at registration).
    pub(crate) backing: crate::Backing,
    /// Start and end at registration (for error messages).
    pub(crate) registered_at: usize,
    /// Pages known dirty that the page tables may not show: sync-mode write faults recorded by
    /// the monitor, discards seen as `UFFD_EVENT_REMOVE`, and what a failed harvest had already
    /// taken from the kernel or could not scan. Every collect takes these; every snapshot reads
    /// them. Marked by any thread with `fetch_or`; never cleared except by a harvest.
    pub(crate) marks: AtomicBitmap,
    /// Pages discarded (`UFFD_EVENT_REMOVE`) since the last harvest. The discarding thread zaps
    /// the pages only after the monitor has read the event, possibly after the harvest that
    /// took their mark: so every harvest moves these back into `marks`, and the next collect
    /// reports them again (over-report, documented for discards).
    pub(crate) discards: AtomicBitmap,
    /// Sync mode without `WP_UNPOPULATED`: discarded pages to populate again before the next
    /// re-protect (their next first write would not fault otherwise).
    pub(crate) repopulate: AtomicBitmap,
    /// `Some(reason)` once the registration vanished (unmap, partial move, `EPERM` from a scan).
    /// A lost range makes every call that touches it fail with `Error::RangeLost`. A leaf lock:
    /// taken briefly by anyone, never while taking another.
    pub(crate) lost: Mutex<Option<String>>,
    /// The range's addresses may no longer hold this tracker's registration (unmapped, replaced,
    /// partly moved, or a scan said so). Then unregister and drop never touch them again: the
    /// memory there may belong to someone else by now (kernels before the owner check in
    /// `UFFDIO_UNREGISTER` would strip another tracker's registration). Whatever is still ours
    /// is released when the userfaultfd is closed.
    /// Stored (Release) by whoever marks the range gone, loaded (Acquire) before any ioctl on
    /// the range's addresses.
    pub(crate) gone: std::sync::atomic::AtomicBool,
    /// The copy-on-write state while a live snapshot of this range runs (sync mode). Set and
    /// taken under the tracker's `batch` lock; read under it by the monitor and the background
    /// pass, and without it only to test whether a snapshot is in progress.
    pub(crate) cow: Mutex<Option<Arc<Cow>>>,
}

impl RangeState {
    pub(crate) fn new(
        id: RangeId,
        start: usize,
        len: usize,
        page_size: usize,
        granule: usize,
        backing: crate::Backing,
    ) -> RangeState {
        RangeState {
            id,
            start: AtomicUsize::new(start),
            len,
            granule,
            backing,
            registered_at: start,
            marks: AtomicBitmap::new(len / page_size),
            discards: AtomicBitmap::new(len / page_size),
            repopulate: AtomicBitmap::new(len / page_size),
            lost: Mutex::new(None),
            cow: Mutex::new(None),
            gone: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(crate) fn start(&self) -> usize {
        self.start.load(Ordering::Acquire)
    }

    pub(crate) fn end(&self) -> usize {
        self.start() + self.len
    }

    pub(crate) fn pages(&self, page_size: usize) -> usize {
        self.len / page_size
    }

    /// An empty result segment for this range at its current address.
    pub(crate) fn segment(&self, page_size: usize) -> Segment {
        Segment::new(self.start(), self.pages(page_size))
    }

    /// A discard of `[from, to)` (absolute): the contents changed, and the pages lost their
    /// page-table entries.
    pub(crate) fn mark_discarded(&self, from: usize, to: usize, page_size: usize) {
        let start = self.start();
        let (from, to) = (from.max(start), to.min(start + self.len));
        if from < to {
            let (a, b) = ((from - start) / page_size, (to - start).div_ceil(page_size));
            self.marks.set_range(a, b);
            self.discards.set_range(a, b);
        }
    }

    /// After a harvest took (or cleared) the marks: the pages discarded since the previous
    /// harvest are marked again for the next one, and queued for re-population if `repopulate`.
    pub(crate) fn rearm_discards(&self, repopulate: bool) {
        if repopulate {
            self.discards.move_into(&[&self.marks, &self.repopulate]);
        } else {
            self.discards.move_into(&[&self.marks]);
        }
    }

    /// Marks the range lost because its memory is gone (see `gone`).
    pub(crate) fn mark_gone(&self, reason: String, page_size: usize) {
        self.gone.store(true, Ordering::Release);
        self.mark_lost(reason, page_size);
    }

    /// Marks the range lost (first reason wins) and every page dirty.
    pub(crate) fn mark_lost(&self, reason: String, page_size: usize) {
        let mut lost = self.lost.lock();
        if lost.is_none() {
            *lost = Some(reason);
        }
        self.marks.set_range(0, self.pages(page_size));
    }
}
