//! Shared pieces of the fuzz targets: page sizes, adversarial coordinates, and a reference model
//! of a `DirtySet` (a plain sorted set of page addresses) with the checks every target runs.

use arbitrary::Arbitrary;
use dirtytrack::fuzz_api::PageRegion;
use dirtytrack::DirtySet;
use std::collections::BTreeSet;
use std::ops::Range;

/// Page sizes to try: the real ones (4 KiB, 16 KiB, 64 KiB, 2 MiB) most of the time, and tiny
/// powers of two (1, 2, 64) that make word and page boundaries dense.
pub fn page_size(sel: u8) -> usize {
    const SIZES: [usize; 8] = [4096, 4096, 1 << 14, 1 << 16, 1 << 21, 1, 2, 64];
    SIZES[sel as usize % SIZES.len()]
}

/// Where a segment `[start, start + pages * ps)` is placed. Segments are page aligned (as the
/// tracker's are) and never reach the last page of the address space (no tracked range can).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Place {
    /// Near zero: `start = page * ps`.
    Low(u16),
    /// Anywhere below 2^56.
    Mid(u64),
    /// As high as it can be: the segment ends one page below the top of the address space.
    High,
}

impl Place {
    pub fn start(self, ps: usize, pages: usize) -> usize {
        let top = usize::MAX - (pages + 1) * ps + 1; // start + pages * ps == usize::MAX - ps + 1
        let s = match self {
            Place::Low(p) => p as usize * ps,
            Place::Mid(x) => (x as usize) % (1 << 56),
            Place::High => top,
        };
        s.min(top) & !(ps - 1)
    }
}

/// An adversarial address, relative to a segment `[start, end)` or absolute.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Coord {
    /// `start + page * ps + byte % ps` (wrapping).
    FromStart { page: i16, byte: u16 },
    /// `end + page * ps + byte % ps` (wrapping).
    FromEnd { page: i16, byte: u16 },
    /// Any value.
    Raw(u64),
    /// A boundary value.
    Special(u8),
}

impl Coord {
    pub fn resolve(self, start: u64, end: u64, ps: u64) -> u64 {
        let rel = |base: u64, page: i16, byte: u16| {
            base.wrapping_add((page as i64 as u64).wrapping_mul(ps))
                .wrapping_add(byte as u64 % ps)
        };
        match self {
            Coord::FromStart { page, byte } => rel(start, page, byte),
            Coord::FromEnd { page, byte } => rel(end, page, byte),
            Coord::Raw(x) => x,
            Coord::Special(s) => {
                let specials = [
                    0,
                    1,
                    u64::MAX,
                    u64::MAX - 1,
                    u64::MAX - ps + 1,
                    start,
                    end,
                    start.wrapping_sub(1),
                    end.wrapping_add(1),
                    end.wrapping_sub(1),
                    1 << 47,
                    1 << 63,
                    (1 << 63) - 1,
                    u32::MAX as u64,
                ];
                specials[s as usize % specials.len()]
            }
        }
    }
}

/// A kernel-style region with adversarial coordinates.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct RegionSpec {
    pub start: Coord,
    pub end: Coord,
    pub categories: u64,
}

impl RegionSpec {
    pub fn resolve(self, start: usize, end: usize, ps: usize) -> PageRegion {
        let (s, e, p) = (start as u64, end as u64, ps as u64);
        PageRegion {
            start: self.start.resolve(s, e, p),
            end: self.end.resolve(s, e, p),
            categories: self.categories,
        }
    }
}

/// The reference model of a set: the start addresses of its dirty pages.
pub type Model = BTreeSet<usize>;

/// Adds to `m` every `ps`-page (aligned to absolute multiples of `ps`) overlapping
/// `[from, to) ∩ [lo, hi)`; computed in u128 so that nothing wraps.
pub fn model_mark(m: &mut Model, ps: usize, lo: u128, hi: u128, from: u128, to: u128) {
    let (from, to) = (from.max(lo), to.min(hi));
    if from >= to {
        return;
    }
    let ps = ps as u128;
    let first = from / ps;
    let last = to.div_ceil(ps);
    for p in first..last {
        let addr = p * ps;
        // The last page of the address space cannot be held by a `DirtySet` (its runs are
        // `Range<usize>`, which cannot end at 2^64); no process can map it anyway.
        if addr + ps <= usize::MAX as u128 {
            m.insert(addr as usize);
        }
    }
}

/// What `dirty_set_from_regions(ps, start, pages, regions)` must hold: every page of the
/// segment that a non-empty region overlaps (regions clamped to the segment).
pub fn model_from_regions(ps: usize, start: usize, pages: usize, regions: &[PageRegion]) -> Model {
    let mut m = Model::new();
    let lo = start as u128;
    let hi = lo + (pages as u128) * (ps as u128);
    for r in regions {
        if r.end > r.start {
            model_mark(&mut m, ps, lo, hi, r.start as u128, r.end as u128);
        }
    }
    m
}

/// Maximal runs of the model, as byte ranges.
pub fn model_runs(m: &Model, ps: usize) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    for &p in m {
        match runs.last_mut() {
            Some(r) if r.end == p => r.end = p + ps,
            _ => runs.push(p..p + ps),
        }
    }
    runs
}

/// Checks every observer of `set` against the model: `pages()`, `runs()` (maximal, ascending,
/// coalesced, consistent with `pages()`), `len()`, `is_empty()`, `bytes()`, `contains()` around
/// every run and on the given probes, equality with a clone, and `Debug`.
pub fn check_set(what: &str, set: &DirtySet, m: &Model, ps: usize, probes: &[usize]) {
    assert_eq!(set.page_size(), ps, "{what}: page_size");
    let pages: Vec<usize> = set.pages().collect();
    let want: Vec<usize> = m.iter().copied().collect();
    assert_eq!(pages, want, "{what}: pages()");
    assert_eq!(set.len(), want.len(), "{what}: len()");
    assert_eq!(set.is_empty(), want.is_empty(), "{what}: is_empty()");
    assert_eq!(set.bytes(), want.len() * ps, "{what}: bytes()");

    let runs: Vec<Range<usize>> = set.runs().collect();
    assert_eq!(runs, model_runs(m, ps), "{what}: runs()");
    // The properties on their own (they also follow from the equality above).
    let mut total = 0;
    for (i, r) in runs.iter().enumerate() {
        assert!(r.start < r.end, "{what}: empty run {r:?}");
        assert!(r.start % ps == 0 && r.end % ps == 0, "{what}: unaligned run {r:?}");
        if i > 0 {
            assert!(runs[i - 1].end < r.start, "{what}: runs not maximal/ascending");
        }
        total += (r.end - r.start) / ps;
    }
    assert_eq!(total, set.len(), "{what}: runs() and len() disagree");
    let from_runs: Vec<usize> = runs.iter().flat_map(|r| r.clone().step_by(ps)).collect();
    assert_eq!(from_runs, pages, "{what}: runs() and pages() disagree");

    // contains() at every run's edges (inside and out) and middle; with the equalities above
    // this pins it down without a call per page.
    let expect = |a: usize| m.contains(&(a - a % ps));
    for r in &runs {
        let mid = r.start + (r.end - r.start) / ps / 2 * ps;
        let last = r.end - 1;
        for a in [r.start, r.start + (ps - 1), mid, mid + ps / 2, last, last - (ps - 1)] {
            assert!(set.contains(a), "{what}: contains({a:#x}) in run {r:?}");
        }
        for a in [r.start.wrapping_sub(1), r.end, r.end.wrapping_add(ps - 1)] {
            assert_eq!(set.contains(a), expect(a), "{what}: contains({a:#x}) next to run {r:?}");
        }
    }
    for &a in probes {
        assert_eq!(set.contains(a), expect(a), "{what}: contains({a:#x}) (probe)");
    }

    let c = set.clone();
    assert!(c == *set && *set == c, "{what}: clone() != self");
    let _ = format!("{set:?}");
}
