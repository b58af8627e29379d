//! Per-range state shared by the tracker, the backends and the monitor thread.

use crate::dirty_set::Segment;
use crate::live::Cow;
use crate::tracker::RangeId;
use bitvec::prelude::*;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// A bitmap whose words are updated atomically, so the monitor thread can mark pages while a
/// collect harvests others (one `fetch_or` per mark, one `swap` per word per harvest).
pub(crate) struct AtomicBitmap {
    words: Box<[AtomicU64]>,
    bits: usize,
}

impl AtomicBitmap {
    pub(crate) fn new(bits: usize) -> AtomicBitmap {
        AtomicBitmap {
            words: (0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            bits,
        }
    }

    /// Sets bit `i` (ignored if out of range).
    pub(crate) fn set(&self, i: usize) {
        if i < self.bits {
            self.words[i / 64].fetch_or(1 << (i % 64), Ordering::AcqRel);
        }
    }

    /// Sets bits `[from, to)`.
    pub(crate) fn set_range(&self, from: usize, to: usize) {
        let to = to.min(self.bits);
        let mut i = from;
        while i < to {
            let w = i / 64;
            let lo = i % 64;
            let hi = (to - w * 64).min(64);
            let mask = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            self.words[w].fetch_or(mask, Ordering::AcqRel);
            i = w * 64 + hi;
        }
    }

    /// ORs a bit vector of the same length in, word by word (bits past the end are zero).
    pub(crate) fn or_bits(&self, bits: &BitVec<u64, Lsb0>) {
        for (w, &b) in self.words.iter().zip(bits.as_raw_slice()) {
            if b != 0 {
                w.fetch_or(b, Ordering::AcqRel);
            }
        }
    }

    /// Takes every set bit, leaving the bitmap clear, into `out` (ORed).
    pub(crate) fn take_into(&self, out: &mut BitVec<u64, Lsb0>) {
        for (w, o) in self.words.iter().zip(out.as_raw_mut_slice()) {
            if w.load(Ordering::Relaxed) != 0 {
                *o |= w.swap(0, Ordering::AcqRel);
            }
        }
    }

    /// Copies every set bit into `out` (ORed) without clearing.
    pub(crate) fn copy_into(&self, out: &mut BitVec<u64, Lsb0>) {
        for (w, o) in self.words.iter().zip(out.as_raw_mut_slice()) {
            *o |= w.load(Ordering::Acquire);
        }
    }

    /// Moves every set bit into each of `targets` (ORed), leaving `self` clear.
    pub(crate) fn move_into(&self, targets: &[&AtomicBitmap]) {
        for (i, w) in self.words.iter().enumerate() {
            if w.load(Ordering::Relaxed) != 0 {
                let v = w.swap(0, Ordering::AcqRel);
                for t in targets {
                    t.words[i].fetch_or(v, Ordering::AcqRel);
                }
            }
        }
    }

    /// Clears every bit.
    pub(crate) fn clear(&self) {
        for w in self.words.iter() {
            w.store(0, Ordering::Release);
        }
    }
}

/// One registered range.
pub(crate) struct RangeState {
    pub(crate) id: RangeId,
    /// Current start address. Changes only when the monitor follows an `mremap` move, under the
    /// tracker's `ranges` write lock.
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
    /// A lost range makes every call that touches it fail with `Error::RangeLost`.
    pub(crate) lost: Mutex<Option<String>>,
    /// The range's addresses may no longer hold this tracker's registration (unmapped, replaced,
    /// partly moved, or a scan said so). Then unregister and drop never touch them again: the
    /// memory there may belong to someone else by now (kernels before the owner check in
    /// `UFFDIO_UNREGISTER` would strip another tracker's registration). Whatever is still ours
    /// is released when the userfaultfd is closed.
    pub(crate) gone: std::sync::atomic::AtomicBool,
    /// The copy-on-write state while a live snapshot of this range runs (sync mode). Set and
    /// taken under the tracker's `batch` lock; read by the monitor under it.
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
        Segment::for_range(self.id, self.start(), self.pages(page_size))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_range_spans_words() {
        for (from, to) in [
            (0, 1),
            (3, 64),
            (0, 64),
            (63, 65),
            (5, 200),
            (64, 128),
            (0, 130),
        ] {
            let b = AtomicBitmap::new(130);
            b.set_range(from, to);
            let mut out = bitvec![u64, Lsb0; 0; 130];
            b.take_into(&mut out);
            let ones: Vec<usize> = out.iter_ones().collect();
            let want: Vec<usize> = (from..to.min(130)).collect();
            assert_eq!(ones, want, "{from}..{to}");
            let mut again = bitvec![u64, Lsb0; 0; 130];
            b.take_into(&mut again);
            assert!(again.not_any(), "take clears");
        }
    }

    #[test]
    fn or_bits_and_move_into_work_word_by_word() {
        let a = AtomicBitmap::new(130);
        let mut v = bitvec![u64, Lsb0; 0; 130];
        for i in [0, 63, 64, 129] {
            v.set(i, true);
        }
        a.or_bits(&v);
        let (b, c) = (AtomicBitmap::new(130), AtomicBitmap::new(130));
        b.set(5);
        a.move_into(&[&b, &c]);
        let take = |x: &AtomicBitmap| {
            let mut out = bitvec![u64, Lsb0; 0; 130];
            x.take_into(&mut out);
            out.iter_ones().collect::<Vec<_>>()
        };
        assert_eq!(take(&a), Vec::<usize>::new(), "moved out");
        assert_eq!(take(&b), vec![0, 5, 63, 64, 129]);
        assert_eq!(take(&c), vec![0, 63, 64, 129]);
    }
}
