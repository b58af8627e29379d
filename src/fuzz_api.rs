//! Internals exposed for the fuzz targets in `fuzz/`, and nothing else. Not part of the API:
//! no stability, hidden from the docs.

use crate::backend::async_wp::{scan_loop as inner_scan_loop, ScanError};
use crate::bitmap::Segment;
use crate::dirty_set::DirtySet;
pub use crate::sys::pagemap::{PageRegion, ScanOutcome};

/// Builds a `DirtySet` over `[start, start + pages * page_size)` from kernel-style regions, the
/// way a collect does (regions are clamped to the segment).
pub fn dirty_set_from_regions(
    page_size: usize,
    start: usize,
    pages: usize,
    regions: &[PageRegion],
) -> DirtySet {
    let mut seg = Segment::new(start, pages);
    for r in regions {
        if r.end > r.start {
            seg.mark(r.start as usize, r.end as usize, page_size);
        }
    }
    DirtySet::from_segments(page_size, vec![seg])
}

/// Runs the `walk_end` continuation loop over `[start, end)` with `call` standing in for the
/// ioctl. Returns the set it built and whether it ended in an error (`Some(description)`).
pub fn scan_loop(
    page_size: usize,
    start: usize,
    end: usize,
    vec_len: usize,
    call: impl FnMut(usize, &mut [PageRegion]) -> ScanOutcome,
) -> (DirtySet, Option<String>) {
    let pages = (end - start) / page_size;
    let mut seg = Segment::new(start, pages);
    let mut buf = vec![PageRegion::default(); vec_len.max(1)];
    let mut used = 0;
    let res = inner_scan_loop(start, end, &mut seg, page_size, &mut buf, &mut used, call);
    let err = res.err().map(|e| match e {
        ScanError::Kernel(e) => format!("kernel: {e}"),
        ScanError::NoProgress { at, walk_end } => format!("no progress at {at:#x} ({walk_end:#x})"),
    });
    (DirtySet::from_segments(page_size, vec![seg]), err)
}
