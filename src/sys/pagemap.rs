//! `PAGEMAP_SCAN` on `/proc/self/pagemap` (6.7; `<linux/fs.h>`).

use super::{cvt, iowr};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `PAGEMAP_SCAN = _IOWR('f', 16, struct pm_scan_arg)` = `0xc0606610` (6.7).
pub const PAGEMAP_SCAN: u64 = iowr::<PmScanArg>(b'f' as u64, 16);
const _: () = assert!(PAGEMAP_SCAN == 0xc060_6610);

/// `PM_SCAN_WP_MATCHING` (6.7): write-protect the pages the scan reports, in the same walk.
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `PM_SCAN_CHECK_WPASYNC` (6.7): fail with `EPERM` on a VMA not registered for async WP.
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// `PAGE_IS_WPALLOWED` (6.7).
pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;
/// `PAGE_IS_WRITTEN` (6.7): not write-protected by uffd-wp (written since protection).
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
/// `PAGE_IS_FILE` (6.7).
pub const PAGE_IS_FILE: u64 = 1 << 2;
/// `PAGE_IS_PRESENT` (6.7).
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
/// `PAGE_IS_SWAPPED` (6.7).
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
/// `PAGE_IS_PFNZERO` (6.7).
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;
/// `PAGE_IS_HUGE` (6.7).
pub const PAGE_IS_HUGE: u64 = 1 << 6;
/// `PAGE_IS_SOFT_DIRTY` (6.8).
pub const PAGE_IS_SOFT_DIRTY: u64 = 1 << 7;

/// `struct page_region`: `[start, end)` with `categories` (masked by `return_mask`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// `struct pm_scan_arg`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct PmScanArg {
    pub size: u64,
    pub flags: u64,
    pub start: u64,
    pub end: u64,
    pub walk_end: u64,
    pub vec: u64,
    pub vec_len: u64,
    pub max_pages: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}
const _: () = assert!(std::mem::size_of::<PmScanArg>() == 96);
const _: () = assert!(std::mem::size_of::<PageRegion>() == 24);

/// What one `PAGEMAP_SCAN` call is asked to do; the output vector is passed separately.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanRequest {
    pub flags: u64,
    pub start: u64,
    pub end: u64,
    pub max_pages: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

/// What one `PAGEMAP_SCAN` call did. Returned on success *and* on failure: a failed scan may
/// already have filled `out` and re-protected what it filled (docs/kernel-facts.md, "A failed
/// scan is not atomic").
#[derive(Debug)]
pub struct ScanOutcome {
    /// Number of regions the kernel reported (on failure: unknown, so 0; inspect `out`).
    pub regions: usize,
    /// `walk_end` as the kernel left it.
    pub walk_end: u64,
    /// `Err` with the errno when the ioctl failed.
    pub result: io::Result<()>,
}

/// One `PAGEMAP_SCAN` ioctl on an open `/proc/<pid>/pagemap`, writing into `out`
/// (`vec = out.as_mut_ptr()`, `vec_len = out.len()`).
///
/// An empty `out` is passed as `vec = NULL, vec_len = 0`, which with `PM_SCAN_WP_MATCHING`
/// re-protects the range without reporting anything: callers that must not lose written state
/// never pass an empty `out` with that flag.
pub fn scan(pagemap: &File, req: &ScanRequest, out: &mut [PageRegion]) -> ScanOutcome {
    let mut arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        flags: req.flags,
        start: req.start,
        end: req.end,
        walk_end: 0,
        vec: if out.is_empty() {
            0
        } else {
            out.as_mut_ptr() as u64
        },
        vec_len: out.len() as u64,
        max_pages: req.max_pages,
        category_inverted: req.category_inverted,
        category_mask: req.category_mask,
        category_anyof_mask: req.category_anyof_mask,
        return_mask: req.return_mask,
    };
    // SAFETY: `arg` is a valid `pm_scan_arg` with `size` set; `vec`/`vec_len` describe `out`, an
    // exclusively borrowed slice of `PageRegion` (plain old data, any bit pattern valid) that
    // outlives the call. The kernel writes at most `vec_len` entries.
    let ret = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
    match cvt(ret as _) {
        Ok(n) => ScanOutcome {
            regions: n as usize,
            walk_end: arg.walk_end,
            result: Ok(()),
        },
        Err(e) => ScanOutcome {
            regions: 0,
            walk_end: arg.walk_end,
            result: Err(e),
        },
    }
}
