//! The one bitmap code of the crate: word-at-a-time mask arithmetic, the atomic per-range bitmap
//! that threads mark concurrently ([`AtomicBitmap`]), and the plain per-range result bitmap a
//! harvest fills ([`Segment`]).
//!
//! Layout everywhere: bit `i` is page `i` of a range, least significant bit first in `u64` words
//! (the layout of KVM's dirty log and of bitvec's `BitVec<u64, Lsb0>`). Bits past the length in
//! the last word are always zero.

use crate::atomic::{AtomicU64, Ordering};
use crate::types::RangeId;
use bitvec::prelude::*;
use std::sync::OnceLock;

/// The words and masks covering bits `[first, last)`: `(word index, mask)`, ascending, a whole
/// word at a time where possible. The one place that computes word masks.
pub(crate) fn word_masks(first: usize, last: usize) -> impl Iterator<Item = (usize, u64)> {
    let mut i = first;
    std::iter::from_fn(move || {
        if i >= last {
            return None;
        }
        let w = i / 64;
        let lo = i % 64;
        let hi = (last - w * 64).min(64);
        let mask = if hi - lo == 64 {
            u64::MAX
        } else {
            ((1u64 << (hi - lo)) - 1) << lo
        };
        i = w * 64 + hi;
        Some((w, mask))
    })
}

/// One bit per page over `[start, start + bits.len() * page_size)`.
///
/// Invariant: bits past `bits.len()` in the last storage word are zero (bitvec keeps them so),
/// which lets [`DirtySet::union`] OR whole words when two segments have the same extent.
#[derive(Clone)]
pub(crate) struct Segment {
    pub(crate) start: usize,
    pub(crate) bits: BitVec<u64, Lsb0>,
    /// The tracked range this segment is the harvest of, when it is exactly one range's extent
    /// (`None` for segments built by `DirtySet::insert_range` across or beyond ranges).
    pub(crate) range: Option<RangeId>,
}

impl Segment {
    /// An all-clean segment of `pages` pages at `start`.
    pub(crate) fn new(start: usize, pages: usize) -> Segment {
        Segment {
            start,
            bits: bitvec![u64, Lsb0; 0; pages],
            range: None,
        }
    }

    /// An all-clean segment for the harvest of tracked range `id`.
    pub(crate) fn for_range(id: RangeId, start: usize, pages: usize) -> Segment {
        Segment {
            range: Some(id),
            ..Segment::new(start, pages)
        }
    }

    pub(crate) fn end(&self, page_size: usize) -> usize {
        self.start + self.bits.len() * page_size
    }

    /// Makes this an all-clean segment of `pages` pages at `start`, reusing the buffer (no
    /// allocation when it is large enough: `collect_into`).
    pub(crate) fn reset(&mut self, start: usize, pages: usize) {
        self.start = start;
        if self.bits.len() == pages {
            // Reused with the same extent: clear only the words that hold bits.
            for w in self.bits.as_raw_mut_slice() {
                if *w != 0 {
                    *w = 0;
                }
            }
        } else if self.bits.capacity() >= pages {
            self.bits.clear();
            self.bits.resize(pages, false);
        } else {
            // A zeroed allocation (`calloc`): a huge, sparse segment's untouched pages stay
            // unallocated until a bit lands there.
            let mut bits = BitVec::from_vec(vec![0u64; pages.div_ceil(64)]);
            bits.truncate(pages);
            self.bits = bits;
        }
    }

    /// Marks the pages overlapping `[from, to)` (clamped to the segment) dirty. On the collect
    /// path once per reported region: shifts and whole-word ORs, no bit-by-bit fill.
    pub(crate) fn mark(&mut self, from: usize, to: usize, page_size: usize) {
        self.mark_each([(from, to)], page_size);
    }

    /// [`Segment::mark`] for each `[from, to)` of `ranges`, with the segment's bounds and
    /// storage decoded once: the collect path marks a whole `PAGEMAP_SCAN` vector per call, and
    /// at 10 % dirty of 1 GiB that is 26 215 one-page regions per collect.
    pub(crate) fn mark_each(
        &mut self,
        ranges: impl IntoIterator<Item = (usize, usize)>,
        page_size: usize,
    ) {
        let (start, end) = (self.start, self.end(page_size));
        let shift = page_size.trailing_zeros();
        let words = self.bits.as_raw_mut_slice();
        for (from, to) in ranges {
            let (from, to) = (from.max(start), to.min(end));
            if from >= to {
                continue;
            }
            // `to <= end`, so `last <= bits.len()`: bits past the length stay zero.
            let first = (from - start) >> shift;
            let last = (to - start + page_size - 1) >> shift;
            if last == first + 1 {
                words[first / 64] |= 1 << (first % 64);
            } else {
                set_bits(words, first, last);
            }
        }
    }

    /// ORs `other` (same extent) into `self`, word by word.
    pub(crate) fn or_same_extent(&mut self, other: &Segment) {
        for (a, b) in self
            .bits
            .as_raw_mut_slice()
            .iter_mut()
            .zip(other.bits.as_raw_slice())
        {
            *a |= *b;
        }
    }
}

/// Sets bits `[first, last)` of `words` (LSB-first), a word at a time.
pub(crate) fn set_bits(words: &mut [u64], first: usize, last: usize) {
    for (w, mask) in word_masks(first, last) {
        words[w] |= mask;
    }
}

/// Indices of the set bits of `words`, ascending (`trailing_zeros` per set bit).
pub(crate) fn ones(words: &[u64]) -> impl Iterator<Item = usize> + '_ {
    words.iter().enumerate().flat_map(|(w, &word)| {
        let mut bits = word;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let b = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(w * 64 + b)
        })
    })
}

/// Maximal runs `[first, last)` of set bits of `words`, ascending (`trailing_zeros` /
/// `trailing_ones` per run, so a dense bitmap costs a few operations per word).
pub(crate) fn bit_runs(words: &[u64]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut w = 0;
    let mut cur = words.first().copied().unwrap_or(0);
    std::iter::from_fn(move || {
        // Find the next set bit.
        while cur == 0 {
            w += 1;
            cur = *words.get(w)?;
        }
        let b = cur.trailing_zeros() as usize;
        let first = w * 64 + b;
        // Extend across ones, possibly over whole words.
        let ones = (cur >> b).trailing_ones() as usize;
        if b + ones < 64 {
            cur &= !(((1u64 << ones) - 1) << b);
            return Some((first, first + ones));
        }
        loop {
            w += 1;
            match words.get(w) {
                Some(&u64::MAX) => continue,
                Some(&next) => {
                    let n = next.trailing_ones() as usize;
                    cur = if n == 64 {
                        0
                    } else {
                        next & !((1u64 << n) - 1)
                    };
                    return Some((first, w * 64 + n));
                }
                None => {
                    cur = 0;
                    return Some((first, w * 64));
                }
            }
        }
    })
}

/// Words of an [`AtomicBitmap`] per summary bit (16 384 pages, 64 MiB of 4 KiB pages).
const GROUP_WORDS: usize = 256;

/// A bitmap whose words are updated atomically, so the monitor thread and any user thread
/// (`Tracker::mark_dirty`) can mark pages while a collect harvests others.
///
/// A summary bit per [`GROUP_WORDS`] words says which words may hold set bits, so taking from a
/// huge, mostly clear bitmap (a 1 TiB range: 4 Mi words) reads only the groups that were marked.
///
/// # The summary protocol (checked by the loom models in `loom_models`)
///
/// - Every change of a word or of a summary word is a read-modify-write (`fetch_or`, `swap`,
///   `fetch_and`), `AcqRel`. There is no plain store after construction.
/// - A setter ORs its bits into the word, then ORs the group's bit into the summary, always —
///   it never skips the summary on a *load* that sees the summary bit set — unless its own
///   word `fetch_or` returned all of its bits already set: then the word's modification order
///   puts it after the setter of those bits and before any take that clears them, and that
///   setter notes the group (a `mark_dirty` of a page already marked costs one `fetch_or`).
/// - A taker swaps the summary word to 0, then swaps each word of the groups it had set.
///
/// Why no mark is lost: take one setter and one taker of the same group. Either the taker's
/// summary swap comes after the setter's summary `fetch_or` in the summary's modification order
/// — then the swap reads that value (or a later read-modify-write's), so the setter's `fetch_or`
/// (release) synchronizes with the swap (acquire), the setter's word `fetch_or` happens before
/// the taker's word read, and the taker takes the bit — or it comes before, and the group's bit
/// is set again after the swap, so the next take looks at the word. A summary bit may be set
/// over clear words (harmless: one more group read).
///
/// The older version skipped the summary `fetch_or` when a `Relaxed` load saw the bit set. That
/// is the store-buffering shape: the setter's load could read the bit from before a concurrent
/// swap while the taker's word load missed the setter's bit, leaving a set bit under a clear
/// summary bit, invisible to every take until another mark landed in the same group. x86's
/// locked instructions hid it; the memory model (so arm64) allows it, and the model
/// `a_mark_racing_a_take_is_never_lost` finds it.
///
/// Because a taker's word swap reads the setter's word `fetch_or` whenever it takes the bit,
/// everything the setter did before marking happens before whatever the taker does after taking:
/// `RangeState::mark_discarded` relies on that (it marks `discards` before `marks`).
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
#[cfg(not(all(test, loom)))]
fn zeroed_atomics(n: usize) -> Box<[AtomicU64]> {
    let words: Box<[u64]> = vec![0u64; n].into_boxed_slice();
    let raw = Box::into_raw(words) as *mut [AtomicU64];
    // SAFETY: `AtomicU64` has the size, alignment and bit validity of `u64` (asserted above and
    // documented by std), so a boxed slice of `n` zero `u64`s is a valid boxed slice of `n` zero
    // `AtomicU64`s with the same allocation layout; ownership moves from one box to the other.
    unsafe { Box::from_raw(raw) }
}

/// `n` zeroed atomic words, one by one: loom's atomics carry model state and cannot be
/// reinterpreted from zeroed memory. The only difference between the production code and what
/// the loom models check.
#[cfg(all(test, loom))]
fn zeroed_atomics(n: usize) -> Box<[AtomicU64]> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
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

    /// ORs `mask` into word `w`, then notes the word in the summary unless every bit of `mask`
    /// was set already (then the setter of those bits notes, or has noted, it; see "The summary
    /// protocol" above).
    fn mark_word(&self, w: usize, mask: u64) {
        if self.words[w].fetch_or(mask, Ordering::AcqRel) & mask != mask {
            self.note(w);
        }
    }

    /// Records that word `w` may hold set bits (after it was set): always a `fetch_or`, never
    /// skipped on a load that sees the bit set (see "The summary protocol" above).
    fn note(&self, w: usize) {
        let g = w / GROUP_WORDS;
        self.summary[g / 64].fetch_or(1u64 << (g % 64), Ordering::AcqRel);
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

    /// Sets bit `i`. Callers compute `i` from an address inside the range: an index past the
    /// end is a bug here, caught in debug builds (release builds ignore it rather than panic in
    /// the monitor thread).
    pub(crate) fn set(&self, i: usize) {
        debug_assert!(i < self.bits, "bit {i} past the end ({})", self.bits);
        if i < self.bits {
            self.mark_word(i / 64, 1 << (i % 64));
        }
    }

    /// Sets bits `[from, to)`.
    pub(crate) fn set_range(&self, from: usize, to: usize) {
        for (w, mask) in word_masks(from, to.min(self.bits)) {
            self.mark_word(w, mask);
        }
    }

    /// ORs a bit vector of the same length in, word by word (bits past the end are zero).
    pub(crate) fn or_bits(&self, bits: &BitVec<u64, Lsb0>) {
        for (w, &b) in bits
            .as_raw_slice()
            .iter()
            .enumerate()
            .take(self.words.len())
        {
            if b != 0 {
                self.mark_word(w, b);
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
                    if w < t.words.len() {
                        t.mark_word(w, v);
                    }
                }
            }
        });
    }

    /// Clears bits `[from, to)`.
    pub(crate) fn clear_range(&self, from: usize, to: usize) {
        for (w, mask) in word_masks(from, to.min(self.bits)) {
            self.words[w].fetch_and(!mask, Ordering::AcqRel);
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

    /// The protocol's invariant once no thread is marking or taking: every word holding set
    /// bits is in a group whose summary bit is set (else no take would ever see it).
    #[cfg(all(test, loom))]
    pub(crate) fn summary_covers_every_set_word(&self) -> bool {
        self.words.iter().enumerate().all(|(w, word)| {
            let g = w / GROUP_WORDS;
            word.load(Ordering::Acquire) == 0
                || self.summary[g / 64].load(Ordering::Acquire) & (1 << (g % 64)) != 0
        })
    }

    /// Clears every bit. A swap, not a store, like a take: a mark racing the clear is either
    /// cleared (and what the marker did before it happens before this returns) or kept.
    pub(crate) fn clear(&self) {
        self.for_each_noted_word(true, |w| {
            let word = &self.words[w];
            if word.load(Ordering::Relaxed) != 0 {
                word.swap(0, Ordering::AcqRel);
            }
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_each_matches_a_bit_by_bit_reference() {
        let ps = 0x1000;
        let start = 0x40_0000;
        let pages = 200;
        // Unaligned, overlapping, empty, inverted and out-of-segment ranges included.
        let ranges = [
            (start, start + ps),
            (start + 3 * ps + 5, start + 4 * ps),
            (start + 60 * ps, start + 70 * ps),
            (start + 63 * ps, start + 129 * ps - 1),
            (start - 5 * ps, start + 2 * ps),
            (start + 190 * ps, start + 300 * ps),
            (start + 10 * ps, start + 10 * ps),
            (start + 20 * ps, start + 19 * ps),
            (start + 500 * ps, start + 501 * ps),
        ];
        let mut seg = Segment::new(start, pages);
        seg.mark_each(ranges, ps);
        let mut want = vec![false; pages];
        for (from, to) in ranges {
            for (p, w) in want.iter_mut().enumerate() {
                let (a, b) = (start + p * ps, start + (p + 1) * ps);
                if from < b && a < to && from < to {
                    *w = true;
                }
            }
        }
        let got: Vec<bool> = seg.bits.iter().map(|b| *b).collect();
        assert_eq!(got, want);
        assert_eq!(
            seg.bits.as_raw_slice()[3] >> (pages - 192),
            0,
            "bits past the length"
        );
    }

    #[test]
    fn word_iterators_match_a_bit_by_bit_reference() {
        let mut x = 0x1234_5678_9abc_def1u64;
        for round in 0..200 {
            let nbits = 1 + round * 7 % 300;
            let mut bits = bitvec![u64, Lsb0; 0; nbits];
            for i in 0..nbits {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let density = round % 4; // sparse .. dense
                if x % 4 < density as u64 + 1 || round % 10 == 0 {
                    bits.set(i, true);
                }
            }
            let words = bits.as_raw_slice();
            let want: Vec<usize> = bits.iter_ones().collect();
            assert_eq!(ones(words).collect::<Vec<_>>(), want);
            let mut runs = Vec::new();
            for i in want {
                match runs.last_mut() {
                    Some((_, e)) if *e == i => *e += 1,
                    _ => runs.push((i, i + 1)),
                }
            }
            assert_eq!(bit_runs(words).collect::<Vec<_>>(), runs, "round {round}");
            let mut w = vec![0u64; words.len()];
            let (a, b) = (round % nbits, (round * 3 % nbits).max(round % nbits));
            set_bits(&mut w, a, b);
            let got: Vec<usize> = ones(&w).collect();
            assert_eq!(got, (a..b).collect::<Vec<_>>());
        }
    }

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
