//! Sync mode (Linux 5.7+): write-protect faults are messages, served by the monitor thread.
//!
//! A first write to a protected page blocks the writer and queues a fault message. The monitor
//! ([`super::monitor`]) records the page in the range's marks, then un-protects it, which wakes
//! the writer; later writes to the page run at full speed until the next collect re-protects it.
//!
//! A collect holds the `batch` lock across "take the range's marks, then re-protect the marked
//! pages". The monitor holds the same lock across "record, then un-protect". So a collect never
//! falls between a page's record and its un-protect: if the monitor goes first, the collect's
//! re-protect comes after the un-protect and its take includes the record; if the collect goes
//! first, the record lands after the take and the next collect reports it. docs/kernel-facts.md
//! ("Collecting exactly (sync)") records 0 lost with this rule (with a full re-protect; the
//! argument is the same per page).
//!
//! # Re-protecting only what was un-protected (issue 14)
//!
//! A collect re-protects the pages in the marks it takes, not the whole range, so its cost grows
//! with the pages written since the last collect (1 GiB with 85 written pages: one ioctl per
//! run of marked pages instead of a walk of 262 144 page-table entries). This is exact because
//! of one invariant, kept under `batch`:
//!
//! **every page of a range that may be un-protected is set in its `marks`**:
//! - the monitor un-protects a page only after setting its mark (both under `batch`);
//! - a discard (`UFFD_EVENT_REMOVE`, the one way pages lose their protection without a fault
//!   message here) sets the marks of the discarded pages; its zap may land after the next
//!   re-protect, so every harvest re-marks the pages discarded since the previous one
//!   (`RangeState::rearm_discards`) and the next collect re-protects them again;
//! - marks are cleared only by taking them under `batch` immediately before re-protecting the
//!   taken pages (collect, clear, live snapshot); when that re-protect fails, the taken marks are
//!   put back (pages re-protected twice are harmless);
//! - everything else that sets marks (a failed harvest putting its pages back, `mark_lost`)
//!   only adds pages, which costs a redundant re-protect, never a missed one.
//!
//! The protection bits follow an `mremap` move with the page tables, and the marks are indexed
//! by page, so a move keeps the invariant. What un-protects pages without an event (guard
//! regions) breaks the invariant: those pages are found by the read-only scan described below,
//! and re-protected with the marked ones. A live snapshot still re-protects its whole range
//! ([`reprotect_then`]).
//!
//! Never-touched pages (no page-table entry) are not protected by `UFFDIO_WRITEPROTECT` unless
//! `WP_UNPOPULATED` (6.4+) is on. Without it, ranges are populated for reading before they are
//! protected (`MADV_POPULATE_READ`, 5.14+, or one byte per page through `process_vm_readv`), and
//! pages discarded since the last re-protect are populated again before the next one.
//!
//! Changes with no event: a guard region (`MADV_GUARD_INSTALL`, 6.13+) zaps pages without any
//! userfaultfd message, and once it is removed the empty entries let the next write through
//! unseen. Where the kernel has guard pages and its `PAGEMAP_SCAN` shows such pages
//! (`Capabilities::scan_reports_guard_zaps`), every collect, peek and live-snapshot instant
//! first scans the range read-only for pages that are not write-protected, under `batch`, right
//! before re-protecting: such a page is either one the monitor un-protected (already marked)
//! or one changed behind the tracker's back, which is reported and re-protected with the rest.
//! The scan walks the range's page tables (about 1 ns per populated page), so where it runs a
//! sync collect costs O(populated) rather than O(written).
//!
//! Sync mode never uses `UFFD_USER_MODE_ONLY`: with it, every kernel write into protected memory
//! (`read(2)`, `recvmsg`, `pread`, io_uring) fails with `EFAULT` instead of faulting to the monitor.

use super::async_wp::Scanner;
use super::{lost_error, range_error, Kind};
use crate::bitmap::Segment;
use crate::range::RangeState;
use crate::state::TrackerState;
use crate::sys::{mem, uffd};
use crate::types::Prefault;
use crate::Error;
use bitvec::prelude::*;
use std::os::fd::AsFd;

/// userfaultfd(2) flags: a full fd (see the module docs).
pub(crate) const FD_FLAGS: i32 = libc::O_CLOEXEC | libc::O_NONBLOCK;

/// `uffdio_api.features` for sync mode with this prefault strategy.
pub(crate) fn features(prefault: Prefault) -> u64 {
    uffd::FEATURE_PAGEFAULT_FLAG_WP
        | if prefault == Prefault::Unpopulated {
            uffd::FEATURE_WP_UNPOPULATED
        } else {
            0
        }
}

/// Makes sure never-touched pages of `[start, start + len)` have page-table entries, so that
/// protecting them works (no-op with `WP_UNPOPULATED`).
pub(crate) fn prefault(
    prefault: Prefault,
    start: usize,
    len: usize,
    page_size: usize,
) -> std::io::Result<()> {
    match prefault {
        Prefault::Unpopulated => Ok(()),
        Prefault::PopulateRead => mem::madvise(start, len, mem::MADV_POPULATE_READ),
        Prefault::ReadTouch => mem::populate_read_by_copy(start, len, page_size),
    }
}

/// Runs of marked pages closer than this many pages are re-protected by one ioctl. Re-protecting
/// a protected page is harmless but not free: measured on 6.18 (pinned, populated 4 KiB pages),
/// one `UFFDIO_WRITEPROTECT` of one page costs ~0.87 µs and each protected page more in its span
/// ~84 ns, so merging pays up to a gap of ~10 pages.
const MERGE_GAP_PAGES: usize = 8;

/// One harvest of range `r` into `seg` (reset to the range's current extent; its buffer is
/// reused). See the module docs for the locking rule and what is re-protected. `zaps`: the
/// scanner for pages changed with no event (guard regions), where the kernel can show them;
/// what it finds is reported and re-protected with the marked pages.
pub(crate) fn harvest_into(
    core: &TrackerState,
    r: &RangeState,
    kind: Kind,
    seg: &mut Segment,
    mut zaps: Option<&mut Scanner>,
) -> Result<(), Error> {
    let ps = core.page_size;
    if kind == Kind::Peek {
        core.barrier();
        if r.lost.lock().is_some() {
            return Err(lost_error(r));
        }
        seg.reset(r.start(), r.pages(ps));
        if let Some(scanner) = zaps {
            let _batch = core.batch.lock();
            scan_unprotected(scanner, r, seg, ps);
        }
        r.marks.copy_into(&mut seg.bits);
        return Ok(());
    }
    let fallback = core.prefault != Prefault::Unpopulated;
    loop {
        let (batch, start) = lock_batch_at_start(core, r)?;
        seg.reset(start, r.pages(ps));
        // Pages changed with no event (not write-protected, not marked): reported and
        // re-protected like marked ones (a clear forgets them, but re-protects them too).
        if let Some(scanner) = zaps.as_deref_mut() {
            scan_unprotected(scanner, r, seg, ps);
        }
        // Every page that may be un-protected is marked (module docs): take them all, then
        // re-protect those, with no fault recorded or un-protected in between.
        r.marks.take_into(&mut seg.bits);
        match reprotect_marked(core, r, start, seg) {
            Ok(()) => {
                if kind == Kind::Clear {
                    seg.bits.fill(false);
                }
                r.rearm_discards(fallback);
                drop(batch);
                return Ok(());
            }
            Err(e) => {
                // Put back what was taken: the pages stay marked, so they are reported and
                // re-protected by a later harvest.
                r.marks.or_bits(&seg.bits);
                drop(batch);
                if e.raw_os_error() == Some(libc::EAGAIN) {
                    // An event waits to be read by the monitor, which needs `batch`: let it run.
                    std::thread::yield_now();
                    continue;
                }
                return Err(range_error(core, r, "UFFDIO_WRITEPROTECT", e));
            }
        }
    }
}

/// Re-protects the pages set in `seg.bits` (range `r` at `start`), one ioctl per run of marked
/// pages (runs closer than [`MERGE_GAP_PAGES`] merged, widened to the range's granule).
fn reprotect_marked(
    core: &TrackerState,
    r: &RangeState,
    start: usize,
    seg: &Segment,
) -> std::io::Result<()> {
    let ps = core.page_size;
    let granule_pages = (r.granule / ps).max(1);
    let mut pending: Option<(usize, usize)> = None;
    let flush = |(a, b): (usize, usize)| {
        let a = a - a % granule_pages;
        let b = b.div_ceil(granule_pages) * granule_pages;
        TrackerState::writeprotect_vmas(
            core.uffd.as_fd(),
            start + a * ps,
            (b - a) * ps,
            uffd::WRITEPROTECT_MODE_WP,
        )
    };
    for (a, b) in crate::bitmap::bit_runs(seg.bits.as_raw_slice()) {
        pending = match pending {
            Some((pa, pb)) if a <= pb + MERGE_GAP_PAGES => Some((pa, b)),
            Some(run) => {
                flush(run)?;
                Some((a, b))
            }
            None => Some((a, b)),
        };
    }
    match pending {
        Some(run) => flush(run),
        None => Ok(()),
    }
}

/// Marks in `seg` the pages of `r` that are not write-protected (caller holds `batch`, and the
/// range is at `seg.start`). A failed scan has marked everything it did not scan: an
/// over-report, never a loss.
fn scan_unprotected(scanner: &mut Scanner, r: &RangeState, seg: &mut Segment, ps: usize) {
    let start = seg.start;
    let _ = scanner.scan_unprotected(start, start + r.len, seg, ps);
}

/// Re-protects all of `r`, then runs `at_instant` on a segment at the range's address, both under
/// the `batch` lock: no fault is recorded or un-protected between the two. With `zaps`, the
/// segment first gets the pages changed with no event (see the module docs).
pub(crate) fn reprotect_then(
    core: &TrackerState,
    r: &RangeState,
    mut zaps: Option<&mut Scanner>,
    at_instant: impl FnOnce(&mut Segment) -> Result<(), Error>,
) -> Result<Segment, Error> {
    let fallback = core.prefault != Prefault::Unpopulated;
    loop {
        let (batch, start) = lock_batch_at_start(core, r)?;
        let mut seg = r.segment(core.page_size);
        if let Some(scanner) = zaps.as_deref_mut() {
            scan_unprotected(scanner, r, &mut seg, core.page_size);
        }
        match TrackerState::writeprotect_vmas(
            core.uffd.as_fd(),
            start,
            r.len,
            uffd::WRITEPROTECT_MODE_WP,
        ) {
            Ok(()) => {
                let result = at_instant(&mut seg);
                // Pages discarded since the last harvest: their zap may land after this
                // re-protect (then their next write does not fault), so they stay dirty for the
                // next collect, which (without WP_UNPOPULATED) also populates them again first.
                r.rearm_discards(fallback);
                drop(batch);
                return result.map(|()| seg);
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                // An event waits to be read by the monitor, which needs `batch`: let it run.
                drop(batch);
                std::thread::yield_now();
            }
            Err(e) => {
                drop(batch);
                // What the zap scan found is owed to the next collect.
                r.marks.or_bits(&seg.bits);
                return Err(range_error(core, r, "UFFDIO_WRITEPROTECT", e));
            }
        }
    }
}

/// Takes `batch` with `r` at a settled address, ready to re-protect. Without `WP_UNPOPULATED`,
/// first applies the discards the monitor has read but not yet applied (the madvising thread is
/// released when the event is read) and populates them again. Then, under `batch` — so every
/// event the monitor has read is applied, and an `munmap`/`mremap` that has returned is seen —
/// fails if the range is lost, and retries if an `mremap` moved it meanwhile. (Checking before
/// taking `batch` let a collect that raced a partial `mremap` succeed: it re-protects only
/// marked pages, so no ioctl hit the hole; seen on 6.18.15 under TCG.) Returns the guard and
/// the range's start.
fn lock_batch_at_start<'a>(
    core: &'a TrackerState,
    r: &RangeState,
) -> Result<(parking_lot::MutexGuard<'a, ()>, usize), Error> {
    loop {
        if r.lost.lock().is_some() {
            return Err(lost_error(r));
        }
        let start = r.start();
        if core.prefault != Prefault::Unpopulated {
            core.barrier();
            repopulate_discarded(core, r, start)?;
        }
        let batch = core.batch.lock();
        if r.lost.lock().is_some() {
            drop(batch);
            return Err(lost_error(r));
        }
        if r.start() == start {
            return Ok((batch, start));
        }
        // Moved (mremap) while we populated: start again at the new address.
    }
}

/// Populates the pages discarded since the last re-protect (prefault fallbacks only): those
/// queued by the last harvest, and those discarded since (read from `discards`, not taken).
fn repopulate_discarded(core: &TrackerState, r: &RangeState, start: usize) -> Result<(), Error> {
    if r.discards.get().is_none() && r.repopulate.get().is_none() {
        return Ok(()); // never discarded: nothing to populate, nothing allocated
    }
    let ps = core.page_size;
    let mut bits = bitvec![u64, Lsb0; 0; r.pages(ps)];
    if let Some(repopulate) = r.repopulate.get() {
        repopulate.take_into(&mut bits);
    }
    if let Some(discards) = r.discards.get() {
        discards.copy_into(&mut bits);
    }
    for (first, last) in crate::bitmap::bit_runs(bits.as_raw_slice()) {
        if let Err(e) = prefault(core.prefault, start + first * ps, (last - first) * ps, ps) {
            // Keep them for the next attempt; the pages themselves are already in `marks`.
            r.repopulate.get_or_alloc().or_bits(&bits);
            return Err(range_error(core, r, "populating discarded pages", e));
        }
    }
    Ok(())
}
