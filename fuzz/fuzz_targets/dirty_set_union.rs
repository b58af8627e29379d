//! `DirtySet::union` of two or three sets built from arbitrary regions over possibly different
//! extents (and page sizes), then grown with `insert_range` over arbitrary ranges: the result
//! equals the reference union; union is idempotent, commutative and associative in content, and
//! the empty set is its identity.

#![no_main]

use arbitrary::Arbitrary;
use dirtytrack::fuzz_api::dirty_set_from_regions;
use dirtytrack::DirtySet;
use dirtytrack_fuzz::{
    check_set, model_from_regions, model_mark, page_size, Coord, Model, Place, RegionSpec,
};
use libfuzzer_sys::fuzz_target;

/// An inserted range may cover at most this many pages (a `DirtySet` allocates a bit per page
/// of the span it covers, so unbounded ranges would only measure the allocator).
const MAX_INSERT_PAGES: u128 = 1 << 9;

/// A union of sets with different page sizes splits each coarse page into fine ones; skip the
/// cases that would make the reference model (and the set) larger than this many pages.
const MAX_SPLIT_PAGES: usize = 1 << 12;

/// Whether `into ∪= other` stays small enough to check.
fn small(into_ps: usize, other: &Built) -> bool {
    other.model.len().saturating_mul((other.ps / into_ps).max(1)) <= MAX_SPLIT_PAGES
}

#[derive(Arbitrary, Debug)]
struct SetSpec {
    page_size: u8,
    /// Use the first set's extent (exercises the same-extent fast path).
    same_extent_as_first: bool,
    place: Place,
    pages: u16,
    regions: Vec<RegionSpec>,
    inserts: Vec<(Coord, Coord)>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Each set has its own page size (otherwise all use the first set's).
    mixed_page_sizes: bool,
    first: SetSpec,
    second: SetSpec,
    third: Option<SetSpec>,
    probes: Vec<Coord>,
}

struct Built {
    set: DirtySet,
    model: Model,
    ps: usize,
    extent: (usize, usize),
}

fn build(spec: &SetSpec, ps: usize, first_extent: Option<(usize, usize, usize)>) -> Built {
    let pages = spec.pages as usize % 300;
    let (start, pages) = match first_extent {
        Some((s, p, first_ps)) if spec.same_extent_as_first && first_ps == ps => (s, p),
        _ => (spec.place.start(ps, pages), pages),
    };
    let end = start + pages * ps;
    let regions: Vec<_> = spec
        .regions
        .iter()
        .take(64)
        .map(|r| r.resolve(start, end, ps))
        .collect();
    let mut set = dirty_set_from_regions(ps, start, pages, &regions);
    let mut model = model_from_regions(ps, start, pages, &regions);
    check_set("built from regions", &set, &model, ps, &[]);
    for &(a, b) in spec.inserts.iter().take(16) {
        let (s, e, p) = (start as u64, end as u64, ps as u64);
        let (a, b) = (a.resolve(s, e, p) as usize, b.resolve(s, e, p) as usize);
        if a < b && (b as u128).div_ceil(ps as u128) - (a as u128 / ps as u128) > MAX_INSERT_PAGES {
            continue;
        }
        set.insert_range(a..b);
        if a < b {
            model_mark(&mut model, ps, 0, u128::MAX, a as u128, b as u128);
        }
        assert_eq!(set.len(), model.len(), "len() after insert_range({a:#x}..{b:#x})");
    }
    check_set("after insert_range", &set, &model, ps, &[]);
    Built {
        set,
        model,
        ps,
        extent: (start, pages),
    }
}

/// `into ∪= other` in the model: `other`'s pages, split or rounded out to `ps`.
fn model_union(into: &mut Model, ps: usize, other: &Model, other_ps: usize) {
    for &p in other {
        model_mark(into, ps, 0, u128::MAX, p as u128, p as u128 + other_ps as u128);
    }
}

fn union(a: &DirtySet, b: &DirtySet) -> DirtySet {
    let mut u = a.clone();
    u.union(b);
    u
}

fuzz_target!(|input: Input| {
    let ps0 = page_size(input.first.page_size);
    let ps_of = |s: &SetSpec| {
        if input.mixed_page_sizes {
            page_size(s.page_size)
        } else {
            ps0
        }
    };
    let a = build(&input.first, ps0, None);
    let first = Some((a.extent.0, a.extent.1, a.ps));
    let b = build(&input.second, ps_of(&input.second), first);
    let c = input
        .third
        .as_ref()
        .map(|s| build(s, ps_of(s), first));
    let probes: Vec<usize> = input
        .probes
        .iter()
        .take(32)
        .map(|c| {
            let (s, p) = (a.extent.0 as u64, a.extent.1 as u64);
            c.resolve(s, s + p * ps0 as u64, ps0 as u64) as usize
        })
        .collect();

    if !small(a.ps, &b) || c.as_ref().is_some_and(|c| !small(a.ps, c) || !small(b.ps, c)) {
        return;
    }
    // A ∪ B (∪ C) against the model.
    let mut ab = union(&a.set, &b.set);
    let mut m_ab = a.model.clone();
    model_union(&mut m_ab, a.ps, &b.model, b.ps);
    check_set("A ∪ B", &ab, &m_ab, a.ps, &probes);
    if let Some(c) = &c {
        let abc = union(&ab, &c.set);
        let mut m_abc = m_ab.clone();
        model_union(&mut m_abc, a.ps, &c.model, c.ps);
        check_set("(A ∪ B) ∪ C", &abc, &m_abc, a.ps, &probes);
        if b.ps == a.ps && c.ps == a.ps {
            let bc = union(&b.set, &c.set);
            assert!(union(&a.set, &bc) == abc, "union is not associative");
        }
    }

    // Idempotent: (A ∪ B) ∪ B == A ∪ B, and X ∪ X == X.
    let again = union(&ab, &b.set);
    check_set("(A ∪ B) ∪ B", &again, &m_ab, a.ps, &probes);
    let self_union = union(&ab, &ab.clone());
    check_set("(A ∪ B) ∪ (A ∪ B)", &self_union, &m_ab, a.ps, &probes);

    // Commutative in content (same page size: otherwise the granularity differs by design).
    if a.ps == b.ps {
        let ba = union(&b.set, &a.set);
        check_set("B ∪ A", &ba, &m_ab, a.ps, &probes);
        assert!(ba == ab, "union is not commutative");
    }

    // The empty set is the identity, on either side.
    for x in [&a, &b] {
        let with_empty = union(&x.set, &DirtySet::with_page_size(x.ps).expect("power-of-two page size"));
        check_set("X ∪ ∅", &with_empty, &x.model, x.ps, &probes);
        let empty_with = union(&DirtySet::with_page_size(x.ps).expect("power-of-two page size"), &x.set);
        check_set("∅ ∪ X", &empty_with, &x.model, x.ps, &probes);
    }
    // An empty set of the system page size, filled with A.
    let sys_ps = dirtytrack::page_size();
    if small(sys_ps, &a) {
        let mut m = Model::new();
        model_union(&mut m, sys_ps, &a.model, a.ps);
        check_set("DirtySet::new() ∪ A", &union(&DirtySet::new(), &a.set), &m, sys_ps, &probes);
    }

    // A union after a union keeps working (count and word invariants intact).
    ab.union(&a.set);
    check_set("(A ∪ B) ∪ A", &ab, &m_ab, a.ps, &probes);
    if let Some(end) = a.extent.0.checked_add(a.ps) {
        ab.insert_range(a.extent.0..end);
        model_mark(&mut m_ab, a.ps, 0, u128::MAX, a.extent.0 as u128, end as u128);
    }
    check_set("(A ∪ B ∪ A) + first page", &ab, &m_ab, a.ps, &probes);
});
