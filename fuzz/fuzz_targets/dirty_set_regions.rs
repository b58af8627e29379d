//! `dirty_set_from_regions` (how a collect turns the kernel's `page_region`s into a `DirtySet`)
//! over arbitrary regions — unaligned, reversed, empty, out of range, overlapping — checked
//! against a page-by-page reference, and against the same set built with `insert_range`.

#![no_main]

use arbitrary::Arbitrary;
use dirtytrack::fuzz_api::dirty_set_from_regions;
use dirtytrack::DirtySet;
use dirtytrack_fuzz::{check_set, model_from_regions, page_size, Coord, Place, RegionSpec};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    page_size: u8,
    place: Place,
    pages: u16,
    regions: Vec<RegionSpec>,
    probes: Vec<Coord>,
}

fuzz_target!(|input: Input| {
    let ps = page_size(input.page_size);
    let pages = input.pages as usize % 520;
    let start = input.place.start(ps, pages);
    let end = start + pages * ps;
    let regions: Vec<_> = input
        .regions
        .iter()
        .take(256)
        .map(|r| r.resolve(start, end, ps))
        .collect();
    let probes: Vec<usize> = input
        .probes
        .iter()
        .take(64)
        .map(|c| c.resolve(start as u64, end as u64, ps as u64) as usize)
        .chain([0, usize::MAX, start, end, start.wrapping_sub(1), end.wrapping_sub(1)])
        .collect();

    let set = dirty_set_from_regions(ps, start, pages, &regions);
    let model = model_from_regions(ps, start, pages, &regions);
    check_set("dirty_set_from_regions", &set, &model, ps, &probes);

    // The same pages through the public API: insert each clamped region.
    let mut again = DirtySet::with_page_size(ps).expect("power-of-two page size");
    for r in &regions {
        let (from, to) = ((r.start as usize).max(start), (r.end as usize).min(end));
        if r.end > r.start && from < to {
            again.insert_range(from..to);
        }
    }
    check_set("insert_range of the clamped regions", &again, &model, ps, &probes);
    assert!(again == set);
});
