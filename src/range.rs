//! Per-range state shared by the tracker, the backends and the monitor thread.

use crate::dirty_set::Segment;
use crate::live::Cow;
use crate::tracker::RangeId;
use bitvec::prelude::*;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

/// Words of an [`AtomicBitmap`] per summary bit (16 384 pages, 64 MiB of 4 KiB pages).
const GROUP_WORDS: usize = 256;

/// A bitmap whose words are updated atomically, so the monitor thread can mark pages while a
/// collect harvests others (one `fetch_or` per mark, one `swap` per word per harvest).
///
/// A summary bit per [`GROUP_WORDS`] words says which words may hold set bits, so taking from a
/// huge, mostly clear bitmap (a 1 TiB range: 4 Mi words) reads only the groups that were marked.
/// Ordering rule: a setter sets the word, then the summary bit; a taker clears the summary bit,
/// then reads the words. A set racing a take is then either taken now or left with its summary
/// bit set for the next take; a summary bit may be set over clear words (harmless).
///
/// The words are allocated zeroed by the allocator (`calloc`; for large bitmaps fresh pages from
/// the kernel), so the untouched parts of a huge bitmap cost no resident memory.
pub(crate) struct AtomicBitmap {
    words: Box<[AtomicU64]>,
    summary: Box<[AtomicU64]>,
    bits: usize,
}

// `zeroed_atomics` reinterprets `u64`s as `AtomicU64`s.
const _: () = assert!(
    std::mem::size_of::<AtomicU64>() == std::mem::size_of::<u64>()
        && std::mem::align_of::<AtomicU64>() == std::mem::align_of::<u64>()
);

/// `n` zeroed atomic words, allocated zeroed (see [`AtomicBitmap`]).
fn zeroed_atomics(n: usize) -> Box<[AtomicU64]> {
    let words: Box<[u64]> = vec![0u64; n].into_boxed_slice();
    let raw = Box::into_raw(words) as *mut [AtomicU64];
    // SAFETY: `AtomicU64` has the size, alignment and bit validity of `u64` (asserted above and
    // documented by std), so a boxed slice of `n` zero `u64`s is a valid boxed slice of `n` zero
    // `AtomicU64`s with the same allocation layout; ownership moves from one box to the other.
    unsafe { Box::from_raw(raw) }
}

impl AtomicBitmap {
    pub(crate) fn new(bits: usize) -> AtomicBitmap {
        let words = bits.div_ceil(64);
        AtomicBitmap {
            words: zeroed_atomics(words),
            summary: zeroed_atomics(words.div_ceil(GROUP_WORDS).div_ceil(64)),
            bits,
        }
    }

    /// Records that word `w` may hold set bits (after it was set).
    fn note(&self, w: usize) {
        let g = w / GROUP_WORDS;
        let bit = 1u64 << (g % 64);
        let s = &self.summary[g / 64];
        if s.load(Ordering::Relaxed) & bit == 0 {
            s.fetch_or(bit, Ordering::AcqRel);
        }
    }

    /// Calls `f(w)` for each word index `w` whose group's summary bit is set, clearing the
    /// summary bits first when `take`.
    fn for_each_noted_word(&self, take: bool, mut f: impl FnMut(usize)) {
        for (i, s) in self.summary.iter().enumerate() {
            if s.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let mut groups = if take {
                s.swap(0, Ordering::AcqRel)
            } else {
                s.load(Ordering::Acquire)
            };
            while groups != 0 {
                let g = i * 64 + groups.trailing_zeros() as usize;
                groups &= groups - 1;
                let first = g * GROUP_WORDS;
                for w in first..(first + GROUP_WORDS).min(self.words.len()) {
                    f(w);
                }
            }
        }
    }

    /// Sets bit `i` (ignored if out of range).
    pub(crate) fn set(&self, i: usize) {
        if i < self.bits {
            self.words[i / 64].fetch_or(1 << (i % 64), Ordering::AcqRel);
            self.note(i / 64);
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
            self.note(w);
            i = w * 64 + hi;
        }
    }

    /// ORs a bit vector of the same length in, word by word (bits past the end are zero).
    pub(crate) fn or_bits(&self, bits: &BitVec<u64, Lsb0>) {
        for (i, (w, &b)) in self.words.iter().zip(bits.as_raw_slice()).enumerate() {
            if b != 0 {
                w.fetch_or(b, Ordering::AcqRel);
                self.note(i);
            }
        }
    }

    /// Takes every set bit, leaving the bitmap clear, into `out` (ORed).
    pub(crate) fn take_into(&self, out: &mut BitVec<u64, Lsb0>) {
        let out = out.as_raw_mut_slice();
        self.for_each_noted_word(true, |w| {
            let word = &self.words[w];
            if word.load(Ordering::Relaxed) != 0 {
                if let Some(o) = out.get_mut(w) {
                    *o |= word.swap(0, Ordering::AcqRel);
                }
            }
        });
    }

    /// Copies every set bit into `out` (ORed) without clearing.
    pub(crate) fn copy_into(&self, out: &mut BitVec<u64, Lsb0>) {
        let out = out.as_raw_mut_slice();
        self.for_each_noted_word(false, |w| {
            if let Some(o) = out.get_mut(w) {
                *o |= self.words[w].load(Ordering::Acquire);
            }
        });
    }

    /// Moves every set bit into each of `targets` (ORed), leaving `self` clear.
    pub(crate) fn move_into(&self, targets: &[&AtomicBitmap]) {
        self.for_each_noted_word(true, |w| {
            let word = &self.words[w];
            if word.load(Ordering::Relaxed) != 0 {
                let v = word.swap(0, Ordering::AcqRel);
                for t in targets {
                    if let Some(tw) = t.words.get(w) {
                        tw.fetch_or(v, Ordering::AcqRel);
                        t.note(w);
                    }
                }
            }
        });
    }

    /// Clears bits `[from, to)`.
    pub(crate) fn clear_range(&self, from: usize, to: usize) {
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
            self.words[w].fetch_and(!mask, Ordering::AcqRel);
            i = w * 64 + hi;
        }
    }

    /// Calls `f(first, last)` for each maximal run `[first, last)` of set bits, ascending, as
    /// the bits are read word by word (no allocation).
    pub(crate) fn for_each_run(&self, mut f: impl FnMut(usize, usize)) {
        let mut run: Option<(usize, usize)> = None;
        self.for_each_noted_word(false, |w| {
            let mut v = self.words[w].load(Ordering::Acquire);
            while v != 0 {
                let b = v.trailing_zeros() as usize;
                let ones = (v >> b).trailing_ones() as usize;
                let (first, last) = (w * 64 + b, w * 64 + b + ones);
                run = match run {
                    Some((a, e)) if e == first => Some((a, last)),
                    Some(done) => {
                        f(done.0, done.1);
                        Some((first, last))
                    }
                    None => Some((first, last)),
                };
                v = if b + ones >= 64 {
                    0
                } else {
                    v & !(((1u64 << ones) - 1) << b)
                };
            }
        });
        if let Some((a, e)) = run {
            f(a, e);
        }
    }

    /// Clears every bit.
    pub(crate) fn clear(&self) {
        self.for_each_noted_word(true, |w| self.words[w].store(0, Ordering::Release));
    }
}

/// An [`AtomicBitmap`] allocated on first use: most ranges never see a discard, so their
/// discard bitmaps cost nothing (issue 14: tracking memory of 32 KiB per GiB, the marks alone).
///
/// The monitor thread may allocate it (on the first `UFFD_EVENT_REMOVE` of the range). That is a
/// heap allocation under the `batch` lock; it cannot deadlock because the monitor never faults on
/// the heap: registering heap memory is unsupported in sync mode (README), and in async mode no
/// write to tracked memory ever waits for the monitor.
pub(crate) struct LazyBitmap {
    cell: OnceLock<AtomicBitmap>,
    bits: usize,
}

impl LazyBitmap {
    pub(crate) fn new(bits: usize) -> LazyBitmap {
        LazyBitmap {
            cell: OnceLock::new(),
            bits,
        }
    }

    /// The bitmap, if it was ever needed (else every bit is clear).
    pub(crate) fn get(&self) -> Option<&AtomicBitmap> {
        self.cell.get()
    }

    /// The bitmap, allocated (all clear) if it was not yet.
    pub(crate) fn get_or_alloc(&self) -> &AtomicBitmap {
        self.cell.get_or_init(|| AtomicBitmap::new(self.bits))
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
    /// How its pages are protected (async mode; sync mode is always `Full`).
    pub(crate) arming: crate::backend::async_wp::Arming,
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
        arming: crate::backend::async_wp::Arming,
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
            gone: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(crate) fn start(&self) -> usize {
        self.start.load(Ordering::Acquire)
    }

    /// The memory moved to `start` (`mremap`, followed by the monitor under the `batch` lock).
    /// Makes every [`Registry`] rebuild its index before its next lookup.
    pub(crate) fn move_to(&self, start: usize) {
        self.start.store(start, Ordering::Release);
        RANGE_MOVES.fetch_add(1, Ordering::AcqRel);
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
            self.discards.get_or_alloc().set_range(a, b);
            if self.arming == crate::backend::async_wp::Arming::Populated {
                self.freed.get_or_alloc().set_range(a, b);
            }
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

/// Moves of any range of any tracker in the process (see [`RangeState::move_to`]).
static RANGE_MOVES: AtomicU64 = AtomicU64::new(0);

/// What the tracker's `registry` lock owns: the next range id, and every registered range
/// indexed by start address for the overlap check (O(log n) per register instead of a scan of
/// every range; a GC heap registers thousands of small ranges).
///
/// The index is keyed by each range's start when it was last (re)built. A range moves only by
/// `mremap` ([`RangeState::move_to`]), which bumps a process-wide counter; a lookup that sees a
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
    /// `RANGE_MOVES` when the index was last built.
    moves_seen: u64,
}

impl Registry {
    pub(crate) fn new() -> Registry {
        Registry {
            next_id: 0,
            by_start: BTreeMap::new(),
            max_len: 0,
            moves_seen: RANGE_MOVES.load(Ordering::Acquire),
        }
    }

    /// A registered range overlapping `[start, end)`, if any.
    pub(crate) fn overlapping(&mut self, start: usize, end: usize) -> Option<Arc<RangeState>> {
        let moves = RANGE_MOVES.load(Ordering::Acquire);
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
    fn runs_and_clear_range_match_a_reference() {
        let b = AtomicBitmap::new(300);
        for (from, to) in [(0, 3), (3, 5), (63, 64), (64, 130), (131, 132), (200, 300)] {
            b.set_range(from, to);
        }
        b.clear_range(100, 110);
        b.clear_range(250, 251);
        let mut runs = Vec::new();
        b.for_each_run(|a, e| runs.push((a, e)));
        assert_eq!(
            runs,
            vec![
                (0, 5),
                (63, 100),
                (110, 130),
                (131, 132),
                (200, 250),
                (251, 300)
            ]
        );
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
