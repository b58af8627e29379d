//! Async mode (Linux 6.7+): `UFFD_FEATURE_WP_ASYNC` + `PAGEMAP_SCAN`.
//!
//! The kernel resolves write-protect faults itself (no message, no waiting writer): it clears
//! the page's uffd-wp bit, which `PAGEMAP_SCAN` reports as `PAGE_IS_WRITTEN`. A harvest scans with
//! `PM_SCAN_WP_MATCHING`, which re-protects exactly the pages it reports in the same page-table
//! walk, under the page-table lock: a write racing the scan is either reported now (the scan saw
//! the bit cleared and set it again) or faults after the re-protect and is reported next time.
//!
//! The rules that keep every write (docs/kernel-facts.md, "Collecting exactly (async)"):
//! - exactly `category_mask = return_mask = PAGE_IS_WRITTEN`, no anyof or inverted mask (other
//!   shapes take a generic path that, before a 2026 fix, dropped discarded pages);
//! - `PM_SCAN_CHECK_WPASYNC`, so a VMA that is no longer ours fails with `EPERM` instead of being
//!   skipped silently;
//! - loop on `walk_end`; `walk_end <= start` without an error is an error;
//! - a failed scan has already re-protected what it wrote into the vector: pre-zero the vector,
//!   keep its non-empty entries, and treat everything from the failed call's start as dirty;
//! - never pass an empty vector with `WP_MATCHING` (it re-protects and reports nothing).

use super::{lost_error, range_error, Kind};
use crate::bitmap::Segment;
use crate::range::{Arming, RangeState};
use crate::state::TrackerState;
use crate::sys::pagemap::{self, PageRegion, ScanRequest};
use crate::sys::uffd;
use crate::Error;
use std::fs::File;
use std::io;

/// Regions per `PAGEMAP_SCAN` call (24 bytes each). Larger only saves calls on fragmented sets.
const VEC_LEN: usize = 1024;

/// `uffdio_api.features` async mode asks for. The kernel adds `WP_UNPOPULATED` to `WP_ASYNC`
/// anyway; asking for it says we rely on it (never-touched pages are protected too).
pub(crate) const FEATURES: u64 =
    uffd::FEATURE_PAGEFAULT_FLAG_WP | uffd::FEATURE_WP_ASYNC | uffd::FEATURE_WP_UNPOPULATED;

/// userfaultfd(2) flags: async mode uses a user-mode-only fd. It works unprivileged, and kernel
/// writes (read(2) into tracked memory, io_uring, ...) are still reported because the kernel
/// resolves them itself.
pub(crate) const FD_FLAGS: i32 = libc::O_CLOEXEC | libc::O_NONBLOCK | uffd::UFFD_USER_MODE_ONLY;

/// The category masks of a `PAGEMAP_SCAN` (the return mask is always `PAGE_IS_WRITTEN`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Masks {
    inverted: u64,
    mask: u64,
    anyof: u64,
}

/// Ranges armed with [`Arming::Full`]: exactly `PAGE_IS_WRITTEN` (see the module docs).
const WRITTEN: Masks = Masks {
    inverted: 0,
    mask: pagemap::PAGE_IS_WRITTEN,
    anyof: 0,
};

/// Ranges armed with [`Arming::Populated`](crate::range::Arming::Populated): pages with a page-table entry (present or swapped)
/// that is not write-protected and does not map the shared zero page. Never-touched pages (no
/// entry) are not selected, so no protection marker is ever installed for them.
pub(crate) const POPULATED_WRITTEN: Masks = Masks {
    inverted: pagemap::PAGE_IS_PFNZERO,
    mask: pagemap::PAGE_IS_WRITTEN | pagemap::PAGE_IS_PFNZERO,
    anyof: pagemap::PAGE_IS_PRESENT | pagemap::PAGE_IS_SWAPPED,
};

/// Protects the populated pages of `[start, end)` ([`Arming::Populated`](crate::range::Arming::Populated)), reporting nothing:
/// register and clear. A scan with `WP_MATCHING` and no output vector takes the kernel's
/// "exclusive write-protect" path: inside each existing page table it protects every entry (zero
/// pages too, and a marker in every empty slot of that table), whatever the masks; page-table
/// holes are skipped because the masks do not select them. So it builds no page table.
pub(crate) fn protect_populated(pagemap: &File, start: usize, end: usize) -> io::Result<()> {
    let mut at = start;
    while at < end {
        let req = ScanRequest {
            flags: pagemap::PM_SCAN_WP_MATCHING | pagemap::PM_SCAN_CHECK_WPASYNC,
            start: at as u64,
            end: end as u64,
            max_pages: 0,
            category_inverted: POPULATED_WRITTEN.inverted,
            category_mask: POPULATED_WRITTEN.mask,
            category_anyof_mask: POPULATED_WRITTEN.anyof,
            return_mask: pagemap::PAGE_IS_WRITTEN,
        };
        let out = pagemap::scan(pagemap, &req, &mut []);
        out.result?;
        let walk_end = usize::try_from(out.walk_end).unwrap_or(usize::MAX);
        if walk_end <= at {
            return Err(io::Error::other(format!(
                "PAGEMAP_SCAN made no progress at {at:#x} (walk_end {walk_end:#x})"
            )));
        }
        at = walk_end;
    }
    Ok(())
}

/// Why a scan stopped early. Whatever it had harvested is already in the segment, and so is
/// every page from the failed call's start to the end of the scanned range.
#[derive(Debug)]
pub(crate) enum ScanError {
    /// The ioctl failed.
    Kernel(io::Error),
    /// `walk_end <= start` without an error.
    NoProgress { at: usize, walk_end: usize },
}

/// The `/proc/self/pagemap` fd and a reusable output vector. Lives under the tracker's harvest
/// lock, so one scan runs at a time.
pub(crate) struct Scanner {
    pagemap: File,
    buf: Vec<PageRegion>,
    /// Entries of `buf` that may be non-zero (written by the last call).
    used: usize,
    /// `max_pages` per call (0: no limit).
    max_pages: u64,
}

impl Scanner {
    /// Opens `/proc/self/pagemap`; `limits` = (vector length, `max_pages`) for tests.
    pub(crate) fn open(limits: Option<(usize, u64)>) -> io::Result<Scanner> {
        let (vec_len, max_pages) = limits.unwrap_or((VEC_LEN, 0));
        Ok(Scanner {
            pagemap: File::open("/proc/self/pagemap")?,
            buf: vec![PageRegion::default(); vec_len],
            used: 0,
            max_pages,
        })
    }

    /// Reports the written pages of `[start, end)` into `seg`, re-protecting them when `rearm`.
    pub(crate) fn scan(
        &mut self,
        start: usize,
        end: usize,
        rearm: bool,
        seg: &mut Segment,
        page_size: usize,
    ) -> Result<(), ScanError> {
        self.scan_with(start, end, rearm, seg, page_size, self.max_pages)
    }

    /// Sync mode: reports the pages of `[start, end)` that are not write-protected, without
    /// re-protecting anything and without `PM_SCAN_CHECK_WPASYNC` (the range is registered
    /// sync-style). Right before a sync-mode re-protect, under `batch`, every page is either
    /// protected, un-protected by the monitor (and so already marked), or changed behind the
    /// tracker's back with no event: zapped by a guard region (`MADV_GUARD_INSTALL`, 6.13+),
    /// which leaves a guard marker and, once removed, an empty entry. The scan reports all but
    /// the first kind; see `Capabilities::scan_reports_guard_zaps`.
    pub(crate) fn scan_unprotected(
        &mut self,
        start: usize,
        end: usize,
        seg: &mut Segment,
        page_size: usize,
    ) -> Result<(), ScanError> {
        self.scan_flags(start, end, 0, seg, page_size, self.max_pages, WRITTEN)
    }

    /// [`Scanner::scan`] of a range armed with [`Arming::Populated`](crate::range::Arming::Populated): reports (and re-protects
    /// when `rearm`) the pages [`POPULATED_WRITTEN`] selects.
    pub(crate) fn scan_populated(
        &mut self,
        start: usize,
        end: usize,
        rearm: bool,
        seg: &mut Segment,
        page_size: usize,
    ) -> Result<(), ScanError> {
        self.scan_masks(
            start,
            end,
            rearm,
            seg,
            page_size,
            self.max_pages,
            POPULATED_WRITTEN,
        )
    }

    /// Marks in `seg` the pages of `[start, end)` whose contents were dropped: no page-table
    /// entry (neither present nor swapped), or the shared zero page (a read after the drop maps
    /// it). A scan without `WP_MATCHING` for the other pages, whose gaps are the answer. Changes
    /// nothing in the page tables.
    pub(crate) fn mark_unpopulated(
        &mut self,
        start: usize,
        end: usize,
        seg: &mut Segment,
        page_size: usize,
    ) -> io::Result<()> {
        let mut at = start;
        while at < end {
            let req = ScanRequest {
                flags: pagemap::PM_SCAN_CHECK_WPASYNC,
                start: at as u64,
                end: end as u64,
                category_inverted: pagemap::PAGE_IS_PFNZERO,
                category_mask: pagemap::PAGE_IS_PFNZERO,
                category_anyof_mask: pagemap::PAGE_IS_PRESENT | pagemap::PAGE_IS_SWAPPED,
                return_mask: pagemap::PAGE_IS_PRESENT | pagemap::PAGE_IS_SWAPPED,
                ..Default::default()
            };
            let out = pagemap::scan(&self.pagemap, &req, &mut self.buf);
            self.used = self.buf.len(); // stale entries are cleared by the next scan_loop
            out.result?;
            let walk_end = usize::try_from(out.walk_end).unwrap_or(usize::MAX).min(end);
            if walk_end <= at {
                return Err(io::Error::other(format!(
                    "PAGEMAP_SCAN made no progress at {at:#x} (walk_end {walk_end:#x})"
                )));
            }
            let mut gap = at;
            for r in &self.buf[..out.regions.min(self.buf.len())] {
                let (a, b) = (r.start as usize, r.end as usize);
                if a > gap {
                    seg.mark(gap, a.min(walk_end), page_size);
                }
                gap = gap.max(b);
            }
            if gap < walk_end {
                seg.mark(gap, walk_end, page_size);
            }
            at = walk_end;
        }
        Ok(())
    }

    /// [`Scanner::scan`] with a `max_pages` limit per call (0 = none); tests use small limits to
    /// exercise the `walk_end` continuation. Never use a limit on hugetlb ranges.
    pub(crate) fn scan_with(
        &mut self,
        start: usize,
        end: usize,
        rearm: bool,
        seg: &mut Segment,
        page_size: usize,
        max_pages: u64,
    ) -> Result<(), ScanError> {
        self.scan_masks(start, end, rearm, seg, page_size, max_pages, WRITTEN)
    }

    #[allow(clippy::too_many_arguments)]
    fn scan_masks(
        &mut self,
        start: usize,
        end: usize,
        rearm: bool,
        seg: &mut Segment,
        page_size: usize,
        max_pages: u64,
        masks: Masks,
    ) -> Result<(), ScanError> {
        let flags = pagemap::PM_SCAN_CHECK_WPASYNC
            | if rearm {
                pagemap::PM_SCAN_WP_MATCHING
            } else {
                0
            };
        self.scan_flags(start, end, flags, seg, page_size, max_pages, masks)
    }

    /// One `walk_end` loop over `[start, end)` with these `PAGEMAP_SCAN` flags and masks.
    #[allow(clippy::too_many_arguments)]
    fn scan_flags(
        &mut self,
        start: usize,
        end: usize,
        flags: u64,
        seg: &mut Segment,
        page_size: usize,
        max_pages: u64,
        masks: Masks,
    ) -> Result<(), ScanError> {
        let pagemap = &self.pagemap;
        let mut used = self.used;
        let result = scan_loop(
            start,
            end,
            seg,
            page_size,
            &mut self.buf,
            &mut used,
            |at, buf| {
                let req = ScanRequest {
                    flags,
                    start: at as u64,
                    end: end as u64,
                    max_pages,
                    category_inverted: masks.inverted,
                    category_mask: masks.mask,
                    category_anyof_mask: masks.anyof,
                    return_mask: pagemap::PAGE_IS_WRITTEN,
                };
                pagemap::scan(pagemap, &req, buf)
            },
        );
        self.used = used;
        result
    }
}

/// The `walk_end` continuation loop, separate from the ioctl so that it can be fuzzed over
/// arbitrary kernel answers: `call(at, buf)` performs one scan of `[at, end)` into `buf`.
///
/// Guarantees, whatever `call` returns: it terminates (each step advances, or it stops with
/// `NoProgress`); every non-empty region written into `buf` is marked in `seg`, on success and on
/// failure; on failure, everything from the failed call's start to `end` is marked too.
/// `used` is the high-water mark of entries the kernel may have written into `buf`, across calls:
/// those left by an earlier loop (an earlier harvest) are cleared once, at the start, so that a
/// failed call (whose entries are all kept) never reports them again.
pub(crate) fn scan_loop(
    start: usize,
    end: usize,
    seg: &mut Segment,
    page_size: usize,
    buf: &mut [PageRegion],
    used: &mut usize,
    mut call: impl FnMut(usize, &mut [PageRegion]) -> pagemap::ScanOutcome,
) -> Result<(), ScanError> {
    // Cleared once per loop, not before every call: entries left by an earlier call of this
    // loop were marked in `seg` already, so keeping them on a failure changes nothing (at 10 %
    // dirty of 1 GiB, clearing before each call was 26 calls x 24 KiB of memset per collect).
    let stale = (*used).min(buf.len());
    buf[..stale].fill(PageRegion::default());
    *used = 0;
    let mut at = start;
    while at < end {
        let out = call(at, buf);
        // Keep every filled entry, on success and on failure alike.
        let filled = match out.result {
            Ok(()) => out.regions.min(buf.len()),
            Err(_) => buf.len(),
        };
        *used = (*used).max(filled);
        seg.mark_each(
            buf[..filled]
                .iter()
                .map(|r| (r.start as usize, r.end as usize)),
            page_size,
        );
        if let Err(e) = out.result {
            seg.mark(at, end, page_size);
            return Err(ScanError::Kernel(e));
        }
        let walk_end = usize::try_from(out.walk_end).unwrap_or(usize::MAX);
        if walk_end <= at {
            seg.mark(at, end, page_size);
            return Err(ScanError::NoProgress { at, walk_end });
        }
        at = walk_end;
    }
    Ok(())
}

/// One harvest of range `r` into `seg` (reset to the range's extent; its buffer is reused). On
/// error, everything taken from the kernel (and everything not scanned) is put back into the
/// range's marks, so the next harvest reports it.
pub(crate) fn harvest_into(
    core: &TrackerState,
    scanner: &mut Scanner,
    r: &RangeState,
    kind: Kind,
    seg: &mut Segment,
) -> Result<(), Error> {
    let ps = core.page_size;
    seg.reset(r.start(), r.pages(ps));
    loop {
        // Apply every event already read (a discard marks pages; a move re-keys the range).
        core.barrier();
        if r.lost.lock().is_some() {
            return Err(lost_error(r));
        }
        let start = r.start();
        seg.start = start;
        let end = start + r.len;
        let result = match (kind, r.arming) {
            (Kind::Collect | Kind::Peek, Arming::Full) => scanner
                .scan(start, end, kind == Kind::Collect, seg, ps)
                .map_err(|e| scan_error(core, r, e)),
            (Kind::Collect | Kind::Peek, Arming::Populated) => scanner
                .scan_populated(start, end, kind == Kind::Collect, seg, ps)
                .map_err(|e| scan_error(core, r, e)),
            (Kind::Clear, Arming::Full) => core
                .writeprotect(start, r.len, uffd::WRITEPROTECT_MODE_WP)
                .map_err(|e| range_error(core, r, "UFFDIO_WRITEPROTECT", e)),
            (Kind::Clear, Arming::Populated) => protect_populated(&scanner.pagemap, start, end)
                .map_err(|e| range_error(core, r, "PAGEMAP_SCAN", e)),
        };
        let result = result.and_then(|()| match r.freed.get() {
            Some(freed) if r.arming == Arming::Populated => {
                watch_freed(core, scanner, r, freed, start, kind, seg)
            }
            _ => Ok(()),
        });
        if let Err(e) = result {
            if kind == Kind::Collect {
                r.marks.or_bits(&seg.bits);
            }
            return Err(e);
        }
        // A move (mremap) during the scan: what was harvested is indexed by page, so it stays
        // valid; scan again at the new address, where the written bits now live.
        core.barrier();
        if r.start() == start || r.lost.lock().is_some() {
            break;
        }
    }
    match kind {
        Kind::Collect => r.marks.take_into(&mut seg.bits),
        Kind::Peek => r.marks.copy_into(&mut seg.bits),
        Kind::Clear => r.marks.clear(),
    }
    // A discard's zap may land after this scan. For private anonymous memory on kernels whose
    // scan reports zapped pages as written (start-up self-test), the next scan catches it; in
    // every other case (older kernels, shared memory and hugetlbfs, which keep protection
    // markers or are missed by the scan), the discarded pages are reported again.
    let scan_sees_zaps = core.caps.scan_reports_discards == Some(true)
        && r.backing == crate::Backing::PrivateAnonymous
        && r.arming == Arming::Full;
    if kind != Kind::Peek && !scan_sees_zaps {
        r.rearm_discards(false);
    }
    Ok(())
}

/// Reports the discarded pages of a populated-only range whose page-table entry is now gone
/// (see `RangeState::freed`), and forgets them, unless `kind` is a peek. Pages that still
/// have an entry (an `MADV_FREE` page not reclaimed yet, or written again) stay watched.
fn watch_freed(
    core: &TrackerState,
    scanner: &mut Scanner,
    r: &RangeState,
    freed: &crate::bitmap::AtomicBitmap,
    start: usize,
    kind: Kind,
    seg: &mut Segment,
) -> Result<(), Error> {
    let ps = core.page_size;
    let mut result = Ok(());
    // The runs are read from the live bitmap; a run the monitor adds meanwhile is seen next time.
    freed.for_each_run(|a, b| {
        if result.is_err() {
            return;
        }
        let mut gone = Segment::new(start + a * ps, 0);
        gone.reset(start + a * ps, b - a);
        result = scanner.mark_unpopulated(start + a * ps, start + b * ps, &mut gone, ps);
        if result.is_ok() {
            for (x, y) in crate::bitmap::bit_runs(gone.bits.as_raw_slice()) {
                if kind != Kind::Peek {
                    freed.clear_range(a + x, a + y);
                }
                if kind != Kind::Clear {
                    seg.mark(start + (a + x) * ps, start + (a + y) * ps, ps);
                }
            }
        }
    });
    result.map_err(|e| range_error(core, r, "PAGEMAP_SCAN", e))
}

fn scan_error(core: &TrackerState, r: &RangeState, e: ScanError) -> Error {
    match e {
        ScanError::Kernel(e) => range_error(core, r, "PAGEMAP_SCAN", e),
        ScanError::NoProgress { at, walk_end } => Error::ScanNoProgress { at, walk_end },
    }
}
