//! Per-range state shared by the tracker, the backends and the monitor thread.

use crate::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use crate::bitmap::{AtomicBitmap, LazyBitmap, Segment};
use crate::cow::Cow;
use crate::types::RangeId;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;

/// How a range's pages are write-protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arming {
    /// `UFFDIO_WRITEPROTECT` of the whole range: with `WP_UNPOPULATED` the kernel puts a
    /// protection marker in the page-table entry of every never-touched page, which builds full
    /// page tables (2 MiB per GiB: a 1 TiB range took 3–57 s and 2 GiB of page tables here), and
    /// every scan walks them.
    Full,
    /// Only populated pages are protected (a `PAGEMAP_SCAN` with `WP_MATCHING` and
    /// `backend::async_wp::POPULATED_WRITTEN`); cost and page tables grow with populated memory. Measured on
    /// 6.18 in a registered private anonymous range without markers: a never-touched page has no
    /// entry and is `WRITTEN` only to the fast-path scan, which this mask shape does not take; a
    /// first write creates a present entry without the protection bit (`WRITTEN|PRESENT`), so the
    /// next scan reports and protects it; a first read maps the zero page (`PFNZERO`), which a
    /// collect neither reports nor protects, and a later write replaces it with a new page,
    /// reported. (Register and clear protect more: see `backend::async_wp::protect_populated`.)
    /// Discards leave no entry either, so they are reported from `UFFD_EVENT_REMOVE` (re-marked
    /// after each harvest, as on kernels whose scan misses discards).
    Populated,
}

/// One registered range.
pub(crate) struct RangeState {
    pub(crate) id: RangeId,
    /// Current start address. Stored (Release) only by the monitor thread, under `ranges` (read,
    /// `read_recursive`) and `batch`, when it follows an `mremap` move; loaded (Acquire) by
    /// everyone. A reader that needs the address after a move that has returned takes the
    /// `batch` barrier first (`TrackerState::barrier`).
    pub(crate) start: AtomicUsize,
    /// Length in bytes (fixed).
    pub(crate) len: usize,
    /// Protection granule: the page size, or the huge page size of a hugetlbfs range.
    pub(crate) granule: usize,
    /// What backs the range (from `/proc/self/maps` at registration).
    pub(crate) backing: crate::Backing,
    /// How its pages are protected (async mode; sync mode is always `Full`).
    pub(crate) arming: Arming,
    /// Start and end at registration (for error messages).
    pub(crate) registered_at: usize,
    /// Pages known dirty that the page tables may not show: sync-mode write faults recorded by
    /// the monitor, discards seen as `UFFD_EVENT_REMOVE`, and what a failed harvest had already
    /// taken from the kernel or could not scan. Every collect takes these; every peek reads
    /// them. Marked by any thread with `fetch_or`; never cleared except by a harvest.
    pub(crate) marks: AtomicBitmap,
    /// Pages discarded (`UFFD_EVENT_REMOVE`) since the last harvest. The discarding thread zaps
    /// the pages only after the monitor has read the event, possibly after the harvest that
    /// took their mark: so every harvest moves these back into `marks`, and the next collect
    /// reports them again (over-report, documented for discards).
    /// Allocated on the first discard (see [`LazyBitmap`]).
    pub(crate) discards: LazyBitmap,
    /// Sync mode without `WP_UNPOPULATED`: discarded pages to populate again before the next
    /// re-protect (their next first write would not fault otherwise). Allocated on the first
    /// discard (see [`LazyBitmap`]).
    pub(crate) repopulate: LazyBitmap,
    /// Ranges armed with `Arming::Populated`: pages discarded (`UFFD_EVENT_REMOVE`) whose
    /// page-table entry has not yet been seen gone. `MADV_FREE` pages are zapped whenever the
    /// kernel reclaims them, possibly many collects later, and the populated-only scan does not
    /// see a page without an entry: every collect looks at these pages, reports those whose
    /// entry is gone, and forgets them. Allocated on the first discard.
    pub(crate) freed: LazyBitmap,
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
    pub(crate) gone: AtomicBool,
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
        arming: Arming,
    ) -> RangeState {
        RangeState {
            id,
            start: AtomicUsize::new(start),
            len,
            granule,
            backing,
            arming,
            registered_at: start,
            marks: AtomicBitmap::new(len / page_size),
            discards: LazyBitmap::new(len / page_size),
            repopulate: LazyBitmap::new(len / page_size),
            freed: LazyBitmap::new(len / page_size),
            lost: Mutex::new(None),
            cow: Mutex::new(None),
            gone: AtomicBool::new(false),
        }
    }

    pub(crate) fn start(&self) -> usize {
        self.start.load(Ordering::Acquire)
    }

    /// The memory moved to `start` (`mremap`, followed by the monitor under the `batch` lock).
    /// The start is stored before the tracker's move count is bumped, so an index that sees the
    /// new count and sorts again sees the new start (see [`Moves`]).
    pub(crate) fn move_to(&self, start: usize, moves: &Moves) {
        self.start.store(start, Ordering::Release);
        moves.bump();
    }

    pub(crate) fn end(&self) -> usize {
        self.start() + self.len
    }

    pub(crate) fn pages(&self, page_size: usize) -> usize {
        self.len / page_size
    }

    /// An empty result segment for this range at its current address.
    pub(crate) fn segment(&self, page_size: usize) -> Segment {
        Segment::for_range(self.id, self.start(), self.pages(page_size))
    }

    /// A discard of `[from, to)` (absolute): the contents changed, and the pages lost their
    /// page-table entries.
    ///
    /// `discards` (and `freed`) are marked before `marks`, and that order matters: an async
    /// harvest takes `marks` and then re-arms `discards` without the `batch` lock, while the
    /// monitor may be marking. A harvest that takes a discarded page from `marks` therefore also
    /// finds it in `discards` (the `AtomicBitmap` protocol makes the monitor's earlier marks
    /// happen before the harvest's later reads) and reports it again next time, when the zap
    /// that follows the event may have landed. Marked the other way round, a harvest could take
    /// the page from `marks`, miss it in `discards`, and the collect after the zap would not
    /// report it (model `a_discard_taken_by_a_harvest_is_reported_again_by_the_next`).
    pub(crate) fn mark_discarded(&self, from: usize, to: usize, page_size: usize) {
        let start = self.start();
        let (from, to) = (from.max(start), to.min(start + self.len));
        if from < to {
            let (a, b) = ((from - start) / page_size, (to - start).div_ceil(page_size));
            self.discards.get_or_alloc().set_range(a, b);
            if self.arming == Arming::Populated {
                self.freed.get_or_alloc().set_range(a, b);
            }
            self.marks.set_range(a, b);
        }
    }

    /// After a harvest took (or cleared) the marks: the pages discarded since the previous
    /// harvest are marked again for the next one, and queued for re-population if `repopulate`.
    pub(crate) fn rearm_discards(&self, repopulate: bool) {
        let Some(discards) = self.discards.get() else {
            return; // never discarded
        };
        if repopulate {
            discards.move_into(&[&self.marks, self.repopulate.get_or_alloc()]);
        } else {
            discards.move_into(&[&self.marks]);
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

/// The registered ranges (the `TrackerState::ranges` lock's contents): in registration order, which is
/// the order collects report them in, plus an index by start address for [`RangeList::find`],
/// which the monitor calls for every fault (a GC heap registers thousands of ranges).
///
/// The index is sorted whenever the list changes (under the write lock). A move (`mremap`,
/// applied by the monitor under the read lock) can leave it out of order until the next
/// [`RangeList::resort`]; `find` checks every answer, and falls back to a linear search when
/// the index gives none, so a stale index costs time, never a wrong answer.
pub(crate) struct RangeList {
    list: Vec<Arc<RangeState>>,
    /// The same ranges, by start address as of `moves_seen`.
    by_start: Vec<Arc<RangeState>>,
    /// The tracker's move count, and its value when `by_start` was last sorted.
    moves: Moves,
    moves_seen: u64,
}

impl std::ops::Deref for RangeList {
    type Target = [Arc<RangeState>];
    fn deref(&self) -> &[Arc<RangeState>] {
        &self.list
    }
}

impl RangeList {
    /// An empty list of the ranges whose moves `moves` counts.
    pub(crate) fn new(moves: Moves) -> RangeList {
        RangeList {
            list: Vec::new(),
            by_start: Vec::new(),
            moves_seen: moves.count(),
            moves,
        }
    }

    /// Adds `r` (last in registration order).
    pub(crate) fn push(&mut self, r: Arc<RangeState>) {
        self.list.push(r.clone());
        if self.index_stale() {
            self.by_start.push(r);
            self.resort();
        } else {
            let key = (r.start(), r.id.0);
            let i = self.by_start.partition_point(|x| (x.start(), x.id.0) < key);
            self.by_start.insert(i, r);
        }
    }

    /// Removes the ranges `remove` selects (it must answer the same for the same range) and
    /// returns them, in registration order.
    pub(crate) fn extract(
        &mut self,
        mut remove: impl FnMut(&RangeState) -> bool,
    ) -> Vec<Arc<RangeState>> {
        let (out, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.list)
            .into_iter()
            .partition(|r| remove(r));
        self.list = keep;
        self.by_start.retain(|r| !remove(r));
        out
    }

    /// Removes the range with id `id`.
    pub(crate) fn remove_id(&mut self, id: RangeId) -> Option<Arc<RangeState>> {
        let i = self.list.iter().position(|r| r.id == id)?;
        let r = self.list.remove(i);
        self.by_start.retain(|x| !Arc::ptr_eq(x, &r));
        Some(r)
    }

    /// Removes every range.
    pub(crate) fn take_all(&mut self) -> Vec<Arc<RangeState>> {
        self.by_start.clear();
        std::mem::take(&mut self.list)
    }

    /// Whether a range moved since the index was sorted.
    pub(crate) fn index_stale(&self) -> bool {
        self.moves.count() != self.moves_seen
    }

    /// Sorts the index by the ranges' current starts.
    pub(crate) fn resort(&mut self) {
        // The count first: a move that lands during the sort leaves the index stale.
        self.moves_seen = self.moves.count();
        // Keys are unique (ids are); an unstable sort allocates nothing.
        self.by_start.sort_unstable_by_key(|r| (r.start(), r.id.0));
    }

    /// The range containing `addr`. Ranges can overlap only when one of them is gone (its memory
    /// was unmapped, or another range was moved over it): the one whose memory is there wins.
    pub(crate) fn find(&self, addr: usize) -> Option<&Arc<RangeState>> {
        let contains = |r: &RangeState| r.start() <= addr && addr < r.end();
        let i = self.by_start.partition_point(|r| r.start() <= addr);
        if let Some(r) = i.checked_sub(1).map(|i| &self.by_start[i]) {
            if contains(r) && !r.gone.load(Ordering::Acquire) {
                return Some(r);
            }
        }
        // A miss, a gone range, or a stale index.
        let mut found = None;
        for r in self.list.iter().filter(|r| contains(r)) {
            if !r.gone.load(Ordering::Acquire) {
                return Some(r);
            }
            found = found.or(Some(r));
        }
        found
    }
}

/// How many times a range of one tracker moved (`mremap`, [`RangeState::move_to`]). The
/// tracker's address indexes ([`RangeList`], [`Registry`]) remember the count they were sorted
/// at and sort again when it changed.
///
/// Protocol: a move stores the range's new start (release), then bumps the count
/// (`fetch_add`, `AcqRel`); an index loads the count (acquire) before reading the starts. An
/// index that sees a bump therefore sees the start stored before it; one that misses a
/// concurrent bump sorts again at its next lookup, and its lookups check every answer against
/// the current starts meanwhile (model `a_moved_range_is_found_at_its_new_start`).
#[derive(Clone)]
pub(crate) struct Moves(Arc<AtomicU64>);

impl Moves {
    pub(crate) fn new() -> Moves {
        Moves(Arc::new(AtomicU64::new(0)))
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// What the tracker's `registry` lock owns: the next range id, and every registered range
/// indexed by start address for the overlap check (O(log n) per register instead of a scan of
/// every range; a GC heap registers thousands of small ranges).
///
/// The index is keyed by each range's start when it was last (re)built. A range moves only by
/// `mremap` ([`RangeState::move_to`]), which bumps the tracker's [`Moves`]; a lookup that sees a
/// new count rebuilds the index from the ranges' current starts first. Ranges in the index do
/// not overlap, except lost ones (their memory was unmapped or moved away): so a lookup checks
/// every range that starts less than the longest range's length below the new range's end.
pub(crate) struct Registry {
    /// The last id handed out.
    pub(crate) next_id: u64,
    /// Every registered range (lost ones too, until unregistered), by (start, id).
    by_start: BTreeMap<(usize, u64), Arc<RangeState>>,
    /// The longest registered length (not lowered on removal; reset on rebuild).
    max_len: usize,
    /// The tracker's move count, and its value when the index was last built.
    moves: Moves,
    moves_seen: u64,
}

impl Registry {
    pub(crate) fn new(moves: Moves) -> Registry {
        Registry {
            next_id: 0,
            by_start: BTreeMap::new(),
            max_len: 0,
            moves_seen: moves.count(),
            moves,
        }
    }

    /// A registered range overlapping `[start, end)`, if any.
    pub(crate) fn overlapping(&mut self, start: usize, end: usize) -> Option<Arc<RangeState>> {
        let moves = self.moves.count();
        if moves != self.moves_seen {
            let all: Vec<Arc<RangeState>> =
                std::mem::take(&mut self.by_start).into_values().collect();
            self.max_len = 0;
            for r in all {
                self.insert(r);
            }
            self.moves_seen = moves;
        }
        let lowest = start.saturating_sub(self.max_len);
        self.by_start
            .range((lowest, 0)..(end, 0))
            .rev()
            .map(|(_, r)| r)
            .find(|r| r.start() < end && start < r.end())
            .cloned()
    }

    /// Adds `r` to the index.
    pub(crate) fn insert(&mut self, r: Arc<RangeState>) {
        self.max_len = self.max_len.max(r.len);
        self.by_start.insert((r.start(), r.id.0), r);
    }

    /// Removes `r` from the index.
    pub(crate) fn remove(&mut self, r: &RangeState) {
        if self.by_start.remove(&(r.start(), r.id.0)).is_none() {
            // Moved since the index was built: find it by id.
            self.by_start.retain(|_, x| x.id != r.id);
        }
    }

    /// Forgets every range.
    pub(crate) fn clear(&mut self) {
        self.by_start.clear();
        self.max_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(id: u64, start: usize, pages: usize) -> Arc<RangeState> {
        Arc::new(RangeState::new(
            RangeId(id),
            start,
            pages * 4096,
            4096,
            4096,
            crate::Backing::PrivateAnonymous,
            Arming::Full,
        ))
    }

    #[test]
    fn find_answers_right_with_a_stale_index_and_prefers_live_ranges() {
        let moves = Moves::new();
        let mut l = RangeList::new(moves.clone());
        // Registered high to low, as mmap hands out addresses.
        let (a, b, c) = (
            range(1, 0x30_000, 4),
            range(2, 0x20_000, 4),
            range(3, 0x10_000, 4),
        );
        for r in [&a, &b, &c] {
            l.push(r.clone());
        }
        assert_eq!(l.iter().map(|r| r.id.0).collect::<Vec<_>>(), [1, 2, 3]);
        for (addr, id) in [(0x10_000, 3), (0x13_fff, 3), (0x20_000, 2), (0x33_000, 1)] {
            assert_eq!(l.find(addr).map(|r| r.id.0), Some(id), "{addr:#x}");
        }
        assert!(l.find(0x14_000).is_none() && l.find(0x34_000).is_none());
        // c moves above a (mremap): the index is stale, answers stay right.
        c.move_to(0x40_000, &moves);
        assert!(l.index_stale());
        assert_eq!(l.find(0x41_000).map(|r| r.id.0), Some(3));
        assert!(l.find(0x10_000).is_none());
        assert_eq!(l.find(0x21_000).map(|r| r.id.0), Some(2));
        l.resort();
        assert_eq!(l.find(0x41_000).map(|r| r.id.0), Some(3));
        // b's memory is unmapped and a moves over it: the live range wins, either order.
        b.mark_gone("unmapped".into(), 4096);
        a.move_to(0x20_000, &moves);
        assert_eq!(l.find(0x21_000).map(|r| r.id.0), Some(1));
        l.resort();
        assert_eq!(l.find(0x21_000).map(|r| r.id.0), Some(1));
        // Removal keeps both orders consistent.
        assert_eq!(l.remove_id(RangeId(1)).map(|r| r.id.0), Some(1));
        assert_eq!(
            l.find(0x21_000).map(|r| r.id.0),
            Some(2),
            "only the gone one is left"
        );
        let out = l.extract(|r| r.id.0 == 2);
        assert_eq!(out.len(), 1);
        assert!(l.find(0x21_000).is_none());
        assert_eq!(l.take_all().len(), 1);
        assert!(l.find(0x41_000).is_none());
    }
}
