//! [`DirtySet`]: the pages a collect or peek found written.
//!
//! A set is one bitmap per tracked range ([`Segment`]), so a VMM can walk it range by range
//! ([`DirtySet::ranges`], [`RangeView`]) the way it walks KVM's per-slot dirty log: bit `i` of a
//! range's words is page `i` of the range, least significant bit first.

use crate::bitmap::{bit_runs, ones, Segment};
use crate::types::RangeId;
use crate::Error;
use std::fmt;
use std::ops::Range;

/// A set of dirty pages, one bitmap per tracked range.
///
/// Returned by [`Tracker::collect`](crate::Tracker::collect) and
/// [`Tracker::peek`](crate::Tracker::peek). Addresses are process virtual addresses; every
/// page address is page aligned.
///
/// ```no_run
/// # fn main() -> Result<(), dirtytrack::Error> {
/// # let tracker = dirtytrack::Tracker::new()?;
/// let dirty = tracker.collect()?;
/// for run in dirty.runs() {
///     // copy `run.len()` bytes at `run.start` into the incremental dump
/// }
/// println!("{} pages, {} bytes", dirty.len(), dirty.bytes());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DirtySet {
    page_size: usize,
    /// Sorted by `start`, non-overlapping.
    segments: Vec<Segment>,
    /// Number of set bits over all segments.
    count: usize,
}

impl Default for DirtySet {
    fn default() -> Self {
        DirtySet::new()
    }
}

impl DirtySet {
    /// An empty set with the system page size.
    pub fn new() -> DirtySet {
        DirtySet::empty(crate::page_size())
    }

    /// An empty set with an explicit page granularity, which must be a power of two
    /// ([`Error::InvalidPageSize`] otherwise: every address computation here relies on it).
    ///
    /// ```
    /// use dirtytrack::DirtySet;
    /// let mut set = DirtySet::with_page_size(16384).unwrap();
    /// set.insert_range(0x4000..0x4001);
    /// assert_eq!(set.pages().collect::<Vec<_>>(), [0x4000]);
    /// assert!(DirtySet::with_page_size(3000).is_err());
    /// ```
    pub fn with_page_size(page_size: usize) -> Result<DirtySet, Error> {
        if !page_size.is_power_of_two() {
            return Err(Error::InvalidPageSize { page_size });
        }
        Ok(DirtySet::empty(page_size))
    }

    /// An empty set; `page_size` is a power of two (the process's or a checked one).
    fn empty(page_size: usize) -> DirtySet {
        debug_assert!(page_size.is_power_of_two());
        DirtySet {
            page_size,
            segments: Vec::new(),
            count: 0,
        }
    }

    /// Builds a set from segments (sorted, non-overlapping, with the same page size).
    pub(crate) fn from_segments(page_size: usize, mut segments: Vec<Segment>) -> DirtySet {
        segments.sort_by_key(|s| s.start);
        let count = count_all(&segments);
        DirtySet {
            page_size,
            segments,
            count,
        }
    }

    /// Empties the set and hands out its segments, whose buffers the next harvest reuses
    /// (`Tracker::collect_into`).
    pub(crate) fn take_segments(&mut self) -> Vec<Segment> {
        self.count = 0;
        std::mem::take(&mut self.segments)
    }

    /// Replaces the contents with `segments` (non-overlapping, any order), without allocating.
    pub(crate) fn set_segments(&mut self, page_size: usize, mut segments: Vec<Segment>) {
        segments.sort_unstable_by_key(|s| s.start);
        self.page_size = page_size;
        self.count = count_all(&segments);
        self.segments = segments;
    }

    /// The page granularity of the addresses in this set.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Number of dirty pages.
    pub fn len(&self) -> usize {
        self.count
    }

    /// No dirty page.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Dirty bytes (`len() * page_size()`).
    pub fn bytes(&self) -> usize {
        self.count * self.page_size
    }

    /// Whether the page containing `addr` is dirty.
    pub fn contains(&self, addr: usize) -> bool {
        let i = self.segments.partition_point(|s| s.start <= addr);
        if i == 0 {
            return false;
        }
        let s = &self.segments[i - 1];
        let page = (addr - s.start) / self.page_size;
        s.bits.get(page).is_some_and(|b| *b)
    }

    /// Start addresses of the dirty pages, ascending.
    pub fn pages(&self) -> impl Iterator<Item = usize> + '_ {
        let ps = self.page_size;
        self.segments
            .iter()
            .flat_map(move |s| ones(s.bits.as_raw_slice()).map(move |i| s.start + i * ps))
    }

    /// Maximal runs of contiguous dirty pages as byte ranges, ascending. Runs are coalesced
    /// across adjacent tracked ranges too.
    pub fn runs(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        let ps = self.page_size;
        let mut per_segment = self.segments.iter().flat_map(move |s| {
            bit_runs(s.bits.as_raw_slice()).map(move |(a, b)| s.start + a * ps..s.start + b * ps)
        });
        let mut pending = per_segment.next();
        std::iter::from_fn(move || {
            let mut run = pending.take()?;
            loop {
                match per_segment.next() {
                    Some(next) if next.start == run.end => run.end = next.end,
                    next => {
                        pending = next;
                        return Some(run);
                    }
                }
            }
        })
    }

    /// Adds every page of `other` to `self`.
    ///
    /// The use: a dump of a collected set failed, so re-merge the set into the next one and
    /// nothing is lost. Sets with different extents or page sizes are merged page by page
    /// (`other`'s pages are split to `self`'s granularity when it is finer).
    pub fn union(&mut self, other: &DirtySet) {
        if other.is_empty() {
            return;
        }
        if self.segments.is_empty() && self.page_size == other.page_size {
            // Into an empty set: take `other`'s segments whole, range identities included.
            self.segments = other.segments.clone();
            self.count = other.count;
            return;
        }
        let same_extents = self.page_size == other.page_size
            && self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(a, b)| a.start == b.start && a.bits.len() == b.bits.len());
        if same_extents {
            for (a, b) in self.segments.iter_mut().zip(&other.segments) {
                a.or_same_extent(b);
            }
        } else {
            let runs: Vec<Range<usize>> = other.runs().collect();
            for r in runs {
                self.insert_range(r);
            }
            return;
        }
        self.count = count_all(&self.segments);
    }

    /// Per-range views, in address order: one per tracked range the harvest covered (clean
    /// ranges included), plus any part added by [`DirtySet::insert_range`].
    pub fn ranges(&self) -> impl Iterator<Item = RangeView<'_>> + '_ {
        let page_size = self.page_size;
        self.segments
            .iter()
            .map(move |segment| RangeView { segment, page_size })
    }

    /// The view of tracked range `id`, if this set covers it.
    pub fn range(&self, id: RangeId) -> Option<RangeView<'_>> {
        self.ranges().find(|r| r.id() == Some(id))
    }

    /// Range `id`'s dirty pages as a KVM-style bitmap (see [`RangeView::to_kvm_bitmap`]).
    pub fn kvm_bitmap(&self, id: RangeId) -> Option<Vec<u64>> {
        self.range(id).map(|r| r.to_kvm_bitmap())
    }

    /// Marks every page overlapping `range` dirty (e.g. to merge pages known dirty from elsewhere).
    pub fn insert_range(&mut self, range: Range<usize>) {
        if range.start >= range.end {
            return;
        }
        let ps = self.page_size;
        let lo = range.start - range.start % ps;
        let hi = range.end.div_ceil(ps).saturating_mul(ps);
        if hi <= lo {
            return;
        }
        // Merge every segment overlapping or touching [lo, hi) into one new segment.
        let first = self.segments.partition_point(|s| s.end(ps) < lo);
        let last = self.segments.partition_point(|s| s.start <= hi);
        let merged: Vec<Segment> = self.segments.drain(first..last).collect();
        let start = merged.first().map_or(lo, |s| s.start.min(lo));
        let end = merged.last().map_or(hi, |s| s.end(ps).max(hi));
        let mut seg = Segment::new(start, (end - start) / ps);
        // The range identity survives only when the extent did not change.
        if let [only] = merged.as_slice() {
            if only.start == start && only.bits.len() == seg.bits.len() {
                seg.range = only.range;
            }
        }
        for m in &merged {
            let off = (m.start - start) / ps;
            for i in m.bits.iter_ones() {
                seg.bits.set(off + i, true);
            }
        }
        seg.mark(lo, hi, ps);
        self.segments.insert(first, seg);
        self.count = count_all(&self.segments);
    }
}

/// One tracked range's part of a [`DirtySet`], in the shape of KVM's per-slot dirty log.
///
/// Bit `i` of [`words`](RangeView::words) is page `i` of the range (`start + i * page_size`),
/// least significant bit first, exactly like the bitmap `KVM_GET_DIRTY_LOG` fills for a memory
/// slot whose `userspace_addr` is [`start`](RangeView::start). So a VMM that registered each
/// memory slot as one range can OR these words into what it already does with KVM's log.
///
/// ```no_run
/// # fn main() -> Result<(), dirtytrack::Error> {
/// # let tracker = dirtytrack::Tracker::new()?;
/// # let slot_of = |_id: dirtytrack::RangeId| 0u32;
/// let dirty = tracker.collect()?;
/// for range in dirty.ranges() {
///     for run in range.runs() {
///         // guest physical address = slot base + run.start; copy run.len() bytes
///     }
///     let kvm_style: Vec<u64> = range.to_kvm_bitmap();
/// #   let _ = (kvm_style, range.id().map(slot_of));
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Copy)]
pub struct RangeView<'a> {
    segment: &'a Segment,
    page_size: usize,
}

impl<'a> RangeView<'a> {
    /// The tracked range, or `None` when this part was built by [`DirtySet::insert_range`]
    /// outside (or across) the tracker's ranges.
    pub fn id(&self) -> Option<RangeId> {
        self.segment.range
    }

    /// The address of the range's first page (where the range lived at the harvest).
    pub fn start(&self) -> usize {
        self.segment.start
    }

    /// The range's length in pages (dirty or not).
    pub fn page_count(&self) -> usize {
        self.segment.bits.len()
    }

    /// The range's length in bytes.
    pub fn len_bytes(&self) -> usize {
        self.segment.bits.len() * self.page_size
    }

    /// The page granularity of the bits.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Number of dirty pages in this range.
    pub fn dirty_pages(&self) -> usize {
        self.words().iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The bitmap: `page_count().div_ceil(64)` words, bit `i` (LSB first) = page `i`. Bits past
    /// `page_count()` in the last word are zero.
    pub fn words(&self) -> &'a [u64] {
        self.segment.bits.as_raw_slice()
    }

    /// Whether page `index` of the range is dirty (`false` past the end).
    pub fn is_dirty(&self, index: usize) -> bool {
        self.segment.bits.get(index).is_some_and(|b| *b)
    }

    /// Maximal runs of dirty pages as byte offsets relative to [`start`](RangeView::start),
    /// ascending. For a memory slot: guest physical address = slot base + offset.
    pub fn runs(&self) -> impl Iterator<Item = Range<usize>> + 'a {
        let ps = self.page_size;
        bit_runs(self.words()).map(move |(a, b)| a * ps..b * ps)
    }

    /// The bitmap as an owned KVM-style dirty log (`KVM_GET_DIRTY_LOG` layout).
    pub fn to_kvm_bitmap(&self) -> Vec<u64> {
        self.words().to_vec()
    }

    /// ORs this range's dirty pages into a rust-vmm `AtomicBitmap` that covers the range from
    /// its offset 0 (the bitmap of a `GuestRegionMmap` registered as this range). The bitmap
    /// may use another page size; pages are converted by address.
    ///
    /// Fails without marking anything when the bitmap is shorter than the range (marking only a
    /// part would drop dirty pages silently).
    #[cfg(feature = "vm-memory")]
    pub fn mark_atomic_bitmap(
        &self,
        bitmap: &vm_memory::bitmap::AtomicBitmap,
    ) -> Result<(), BitmapTooSmall> {
        if bitmap.byte_size() < self.len_bytes() {
            return Err(BitmapTooSmall {
                bitmap_bytes: bitmap.byte_size(),
                range_bytes: self.len_bytes(),
            });
        }
        for run in self.runs() {
            bitmap.set_addr_range(run.start, run.len());
        }
        Ok(())
    }
}

impl fmt::Debug for RangeView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RangeView")
            .field("id", &self.id())
            .field("start", &format_args!("{:#x}", self.start()))
            .field("page_count", &self.page_count())
            .field("dirty_pages", &self.dirty_pages())
            .finish()
    }
}

/// [`RangeView::mark_atomic_bitmap`] was given a bitmap shorter than the range.
#[cfg(feature = "vm-memory")]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the AtomicBitmap covers {bitmap_bytes:#x} bytes but the range has {range_bytes:#x}: give the bitmap of the memory region registered as this range")]
pub struct BitmapTooSmall {
    /// `AtomicBitmap::byte_size()`.
    pub bitmap_bytes: usize,
    /// The range's length.
    pub range_bytes: usize,
}

fn count_all(segments: &[Segment]) -> usize {
    segments
        .iter()
        .flat_map(|s| s.bits.as_raw_slice())
        .map(|w| w.count_ones() as usize)
        .sum()
}

impl PartialEq for DirtySet {
    /// Two sets are equal when they hold the same pages (extents may differ).
    fn eq(&self, other: &DirtySet) -> bool {
        self.count == other.count && self.runs().eq(other.runs())
    }
}
impl Eq for DirtySet {}

impl fmt::Debug for DirtySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut l = f.debug_list();
        for r in self.runs().take(32) {
            l.entry(&format_args!("{:#x}..{:#x}", r.start, r.end));
        }
        if self.runs().nth(32).is_some() {
            l.entry(&format_args!("…"));
        }
        l.finish()?;
        write!(f, " ({} pages)", self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ps: usize, segs: &[(usize, usize, &[usize])]) -> DirtySet {
        let segments = segs
            .iter()
            .map(|&(start, pages, dirty)| {
                let mut s = Segment::new(start, pages);
                for &p in dirty {
                    s.bits.set(p, true);
                }
                s
            })
            .collect();
        DirtySet::from_segments(ps, segments)
    }

    #[test]
    fn runs_coalesce_within_and_across_segments() {
        let s = set(
            0x1000,
            &[
                (0x10000, 4, &[0, 1, 3]),
                (0x14000, 2, &[0]),
                (0x20000, 1, &[0]),
            ],
        );
        let runs: Vec<_> = s.runs().collect();
        assert_eq!(
            runs,
            vec![0x10000..0x12000, 0x13000..0x15000, 0x20000..0x21000]
        );
        assert_eq!(s.len(), 5);
        assert!(s.contains(0x13fff) && !s.contains(0x12000) && !s.contains(0x0));
    }

    #[test]
    fn union_same_and_different_extents() {
        let mut a = set(0x1000, &[(0x10000, 70, &[0, 69])]);
        let b = set(0x1000, &[(0x10000, 70, &[1, 64])]);
        a.union(&b);
        assert_eq!(a.pages().count(), 4);
        let c = set(0x1000, &[(0x8000, 10, &[9]), (0x60000, 2, &[1])]);
        a.union(&c);
        let pages: Vec<_> = a.pages().collect();
        // a: pages 0 and 69 of 0x10000; b: 1 and 64; c: 0x11000 (again) and 0x61000.
        assert_eq!(pages, vec![0x10000, 0x11000, 0x50000, 0x55000, 0x61000]);
        assert!(a.contains(0x11000) && a.contains(0x61000) && a.contains(0x10000));
        assert_eq!(a.len(), 5);
    }

    #[test]
    fn range_views_are_kvm_style_bitmaps() {
        let ps = 0x1000;
        let mut a = Segment::for_range(RangeId(7), 0x10_0000, 70);
        for p in [0, 1, 2, 63, 64, 69] {
            a.bits.set(p, true);
        }
        let b = Segment::for_range(RangeId(9), 0x40_0000, 3);
        let mut s = DirtySet::from_segments(ps, vec![b, a]);
        let views: Vec<_> = s.ranges().collect();
        assert_eq!(views.len(), 2);
        assert_eq!(views[0].id(), Some(RangeId(7)));
        assert_eq!(views[0].start(), 0x10_0000);
        assert_eq!(views[0].page_count(), 70);
        assert_eq!(views[0].dirty_pages(), 6);
        let want0 = 0b111 | 1 << 63;
        assert_eq!(views[0].words(), &[want0, 1 | 1 << 5]);
        assert_eq!(
            views[0].runs().collect::<Vec<_>>(),
            vec![0..3 * ps, 63 * ps..65 * ps, 69 * ps..70 * ps]
        );
        assert!(views[0].is_dirty(64) && !views[0].is_dirty(65) && !views[0].is_dirty(700));
        assert_eq!(views[1].dirty_pages(), 0);
        assert_eq!(s.kvm_bitmap(RangeId(9)), Some(vec![0]));
        assert_eq!(s.kvm_bitmap(RangeId(8)), None);
        // Inside one range the identity survives; across ranges it does not.
        s.insert_range(0x40_1000..0x40_2000);
        assert_eq!(s.kvm_bitmap(RangeId(9)), Some(vec![0b10]));
        s.insert_range(0x3f_f000..0x40_1000);
        assert_eq!(s.range(RangeId(9)).map(|r| r.id()), None);
        assert_eq!(s.ranges().last().map(|r| r.id()), Some(None));
        // A union into an empty set keeps the range views.
        let mut u = DirtySet::with_page_size(ps).unwrap();
        let mut one = Segment::for_range(RangeId(3), 0x1000, 2);
        one.bits.set(1, true);
        u.union(&DirtySet::from_segments(ps, vec![one]));
        assert_eq!(u.kvm_bitmap(RangeId(3)), Some(vec![0b10]));
        assert_eq!(u.len(), 1);
    }

    #[cfg(feature = "vm-memory")]
    #[test]
    fn range_view_marks_an_atomic_bitmap() {
        use std::num::NonZeroUsize;
        use vm_memory::bitmap::AtomicBitmap;
        let ps = 0x1000;
        let mut a = Segment::for_range(RangeId(1), 0x10_0000, 130);
        for p in [0, 64, 65, 129] {
            a.bits.set(p, true);
        }
        let s = DirtySet::from_segments(ps, vec![a]);
        let view = s.range(RangeId(1)).expect("range 1");
        let bitmap = AtomicBitmap::new(130 * ps, NonZeroUsize::new(ps).expect("page size"));
        view.mark_atomic_bitmap(&bitmap).expect("large enough");
        assert_eq!(bitmap.get_and_reset(), view.to_kvm_bitmap());
        let small = AtomicBitmap::new(129 * ps, NonZeroUsize::new(ps).expect("page size"));
        assert!(view.mark_atomic_bitmap(&small).is_err());
        assert_eq!(small.get_and_reset(), vec![0, 0, 0]);
    }

    #[test]
    fn insert_range_rounds_to_pages() {
        let mut s = DirtySet::with_page_size(0x1000).unwrap();
        s.insert_range(0x1fff..0x2001);
        assert_eq!(s.runs().collect::<Vec<_>>(), vec![0x1000..0x3000]);
        s.insert_range(0x5000..0x6000);
        s.insert_range(0x3000..0x5000);
        assert_eq!(s.runs().collect::<Vec<_>>(), vec![0x1000..0x6000]);
        assert_eq!(s.len(), 5);
    }
}
