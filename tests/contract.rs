//! The README's tracking-contract rows that rested on measurements only (marked †), each asserted
//! with the shadow-copy oracle: `MADV_FREE` + reclaim, `MADV_POPULATE_WRITE`, swap-out/in
//! (`MADV_PAGEOUT` with a temporary swap file), `MADV_COLLAPSE`, KSM, pinned io_uring fixed
//! buffers; plus `RangeInfo::backing` and `Backing::blind_spots()`.
//!
//! Tests that change system-wide state (swap, ksmd) serialise on a lock and restore it on drop.

mod common;
use common::{
    bounded, huge_page_size, page, smaps_kb, tracker, vma_bounds, Mapped, Memory, PinCpu, Region,
    MEMFD_PRIVATE, MEMFD_SHARED, PRIVATE_ANONYMOUS, SHARED_ANONYMOUS,
};
#[allow(unused_imports)]
use dirtytrack::Mode;
use dirtytrack::{Backing, RangeId, Tracker};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A PMD-sized transparent huge page (2 MiB with 4 KiB base pages, 32 MiB with 16 KiB).
fn huge() -> usize {
    common::thp_size()
}

fn madvise_raw(addr: usize, len: usize, advice: i32) -> io::Result<()> {
    // SAFETY: advice on a mapping the test owns; the test's Regions only use raw pointers.
    let rc = unsafe { libc::madvise(addr as *mut libc::c_void, len, advice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn madvise(addr: usize, len: usize, advice: i32) {
    if let Err(e) = madvise_raw(addr, len, advice) {
        panic!("madvise({advice}): {e}");
    }
}

/// The `VmFlags` of the VMA containing `addr`.
fn vm_flags(addr: usize) -> Vec<String> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((a, b)) = vma_bounds(line) {
            inside = a <= addr && addr < b;
            continue;
        }
        if let (true, Some(v)) = (inside, line.strip_prefix("VmFlags:")) {
            return v.split_whitespace().map(str::to_string).collect();
        }
    }
    panic!("no VMA at {addr:#x}");
}

/// Polls `cond` every 10 ms until it holds or `limit` passes; returns whether it held.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A lock for tests that change system-wide memory settings (swap, ksmd).
fn system_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// MADV_FREE + reclaim (†): the lazily freed pages read as zero after MADV_PAGEOUT; every changed
// page is reported (the discard over-reports, as for MADV_DONTNEED).

per_mode! {
    fn madv_free_then_pageout_reports_every_changed_page(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        // New pages and lazily freed pages wait in per-CPU LRU batches, which MADV_FREE and
        // MADV_PAGEOUT drain on their own CPU only: stay on one CPU from the first write to
        // the reclaim, so that the written pages are lazily freed and then reclaimed.
        let pinned = PinCpu::new();
        let mut r = Region::anon(16);
        // 0..8 written non-zero, 8..12 written with zero, 12..16 never touched.
        for i in 0..8 {
            r.write(i, 0, 1);
        }
        for i in 8..12 {
            r.write(i, 0, 0);
        }
        let id = t.register(r.ptr(), r.len).unwrap();
        r.rebase();
        r.touch(0);
        assert_eq!(r.check(&t.collect().unwrap(), true), (1, 1));
        r.touch(1); // written since the collect, then lazily freed
        madvise(r.addr, r.len, libc::MADV_FREE);
        // Written after MADV_FREE: the page is dirty again and survives reclaim.
        bounded(&t, id, "a write after MADV_FREE", || r.write(2, 0, 9));
        let zeroed = || -> Vec<usize> { (0..8).filter(|&i| i != 2 && r.read(i, 0) == 0).collect() };
        for _ in 0..20 {
            madvise(r.addr, r.len, libc::MADV_PAGEOUT);
            if zeroed().len() == 7 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(pinned);
        let zeroed = zeroed();
        assert_eq!(
            zeroed,
            vec![0, 1, 3, 4, 5, 6, 7],
            "MADV_PAGEOUT reclaims the clean lazily-freed pages (they read as zero)"
        );
        let d = t.collect().unwrap();
        let (changed, reported) = r.check(&d, false);
        eprintln!(
            "{mode:?}: MADV_FREE + PAGEOUT: changed {changed}, reported {reported} {:?}",
            r.reported_pages(&d)
        );
        assert_eq!(changed, 8, "pages 0..8: seven zeroed, page 2 rewritten");
        assert_eq!(reported, 16, "every freed page is reported, changed or not (over-report: 8)");
        // Tracking continues: the discarded pages may be reported once more.
        bounded(&t, id, "writes after the reclaim", || {
            r.touch(3);
            r.touch(13);
        });
        let exact = common::EXACT_AFTER_DISCARD;
        let (changed, reported) = r.check(&t.collect().unwrap(), exact);
        eprintln!("{mode:?}: next collect: changed {changed}, reported {reported}");
        assert_eq!(changed, 2);
        bounded(&t, id, "more writes", || {
            r.touch(4);
            r.touch(14);
        });
        assert_eq!(
            r.check(&t.collect().unwrap(), true),
            (2, 2),
            "exact again two collects after the discard"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// MADV_POPULATE_WRITE over a tracked range (†): the kernel write-faults every page without
// changing it; every page is reported (over-report), contents unchanged.

per_mode! {
    fn madv_populate_write_reports_every_page(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        // MADV_POPULATE_WRITE is 5.14+: older kernels (5.10) refuse it with EINVAL.
        let scratch = Region::anon(1);
        // SAFETY: advice on our own untracked scratch mapping.
        if unsafe { libc::madvise(scratch.addr as *mut libc::c_void, page(), libc::MADV_POPULATE_WRITE) } != 0 {
            common::skip(&format!("MADV_POPULATE_WRITE (5.14+): {}", std::io::Error::last_os_error()));
            return;
        }
        let mut r = Region::anon(32);
        // 0..8 written, 8..16 read (zero page), 16..32 never touched.
        for i in 0..8 {
            r.write(i, 0, 1);
        }
        for i in 8..16 {
            r.read(i, 0);
        }
        let id = t.register(r.ptr(), r.len).unwrap();
        r.rebase();
        assert!(t.collect().unwrap().is_empty());
        bounded(&t, id, "MADV_POPULATE_WRITE", || {
            madvise(r.addr, r.len, libc::MADV_POPULATE_WRITE)
        });
        let d = t.collect().unwrap();
        let (changed, reported) = r.check(&d, false);
        eprintln!("{mode:?}: MADV_POPULATE_WRITE over 32 pages: changed {changed}, reported {reported}");
        assert_eq!(changed, 0, "populating does not change contents");
        assert_eq!(reported, 32, "every page it write-faults is reported (over-report)");
        // Populated pages are protected again and tracked exactly.
        bounded(&t, id, "writes", || {
            r.touch(3);
            r.touch(20);
        });
        assert_eq!(r.check(&t.collect().unwrap(), true), (2, 2));
        // A second POPULATE_WRITE over now-populated, protected pages: reported again.
        bounded(&t, id, "MADV_POPULATE_WRITE", || {
            madvise(r.addr, 8 * page(), libc::MADV_POPULATE_WRITE)
        });
        assert_eq!(r.check(&t.collect().unwrap(), false), (0, 8));
        assert!(t.collect().unwrap().is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// Swap-out / swap-in (†): with a temporary swap file, MADV_PAGEOUT pages (some written since
// the last collect, some not), read or write them back in: reported exactly.

/// A swap file enabled for the duration of a test; swapped off and removed on drop.
struct SwapFile {
    path: std::ffi::CString,
    _lock: MutexGuard<'static, ()>,
}

impl SwapFile {
    const MIB: usize = 32;

    /// Enables a fresh 32 MiB swap file, or returns the reason it cannot.
    fn enable() -> Result<SwapFile, String> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let lock = system_lock();
        if !std::path::Path::new("/proc/swaps").exists() {
            return Err("no /proc/swaps: the kernel lacks CONFIG_SWAP".into());
        }
        let name = format!("/var/tmp/dirtytrack-test-swap.{}", std::process::id());
        let _ = std::fs::remove_file(&name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&name)
            .map_err(|e| format!("creating {name}: {e}"))?;
        let ps = page();
        let pages = Self::MIB * (1 << 20) / ps;
        // The swap header (mkswap's format): version 1, last page, no bad pages, the magic at
        // the end of the first page. The file is fully written: swapon refuses holes.
        let mut first = vec![0u8; ps];
        first[1024..1028].copy_from_slice(&1u32.to_ne_bytes());
        first[1028..1032].copy_from_slice(&((pages - 1) as u32).to_ne_bytes());
        first[ps - 10..].copy_from_slice(b"SWAPSPACE2");
        let written = f
            .write_all(&first)
            .and_then(|()| f.write_all(&vec![0u8; (pages - 1) * ps]))
            .and_then(|()| f.sync_all());
        drop(f);
        let path = std::ffi::CString::new(name.clone()).unwrap();
        let swap = SwapFile { path, _lock: lock };
        written.map_err(|e| format!("writing {name}: {e}"))?;
        // SAFETY: a NUL-terminated path.
        if unsafe { libc::swapon(swap.path.as_ptr(), 0) } != 0 {
            let e = io::Error::last_os_error();
            return Err(format!("swapon {name}: {e}"));
        }
        Ok(swap)
    }
}

impl Drop for SwapFile {
    fn drop(&mut self) {
        // SAFETY: a NUL-terminated path; fails harmlessly when swapon did not succeed.
        unsafe { libc::swapoff(self.path.as_ptr()) };
        let _ = std::fs::remove_file(self.path.to_str().unwrap());
    }
}

/// `r` (32 pages, all written before register, registered): writes, pages out, swaps in by
/// reading and by writing; every collect exact. Returns the `Swap` kB seen after each pageout.
fn swap_round_trip(t: &Tracker, id: RangeId, r: &mut Region) -> Vec<usize> {
    let mut swapped = Vec::new();
    let mut pageout = |r: &Region| {
        madvise(r.addr, r.len, libc::MADV_PAGEOUT);
        let kb = smaps_kb(r.addr, r.len, "Swap");
        swapped.push(kb);
        kb
    };
    // Writes two pages (bounded: a writer stuck in a fault fails the test).
    let write_two = |r: &Region, [a, b]: [usize; 2], what: &str| {
        bounded(t, id, what, || {
            r.touch(a);
            r.touch(b);
        })
    };
    // The next collect reports exactly the changed pages, `want` (changed, reported).
    let collect_exact = |r: &mut Region, want: (usize, usize), what: &str| {
        assert_eq!(r.check(&t.collect().unwrap(), true), want, "{what}");
    };
    write_two(r, [0, 5], "writes");
    collect_exact(r, (2, 2), "writes");
    // Written since the collect, then swapped out: still reported.
    write_two(r, [1, 6], "writes");
    let kb = pageout(r);
    assert!(
        kb >= r.len / 1024 / 2,
        "MADV_PAGEOUT swapped out only {kb} kB of {}",
        r.len / 1024
    );
    collect_exact(r, (2, 2), "written, swapped out, collected");
    // Swapped out clean (protected), read back in: still protected.
    pageout(r);
    for i in 0..r.pages() {
        r.read(i, 0);
    }
    collect_exact(r, (0, 0), "swap-in by reading");
    write_two(r, [2, 7], "writes after swap-in");
    collect_exact(r, (2, 2), "writes after swap-in");
    // Swapped out clean, swapped in by the write itself.
    pageout(r);
    write_two(r, [3, 31], "writes to swapped-out pages");
    collect_exact(r, (2, 2), "swap-in by writing");
    assert!(t.collect().unwrap().is_empty());
    swapped
}

/// Swap-out / swap-in of 32 pages of `memory` (see [`swap_round_trip`]).
fn swap_test(mode: Mode, memory: Memory) {
    let Some(t) = tracker(mode) else { return };
    if !memory.trackable_or_skip() {
        return;
    }
    let swap = match SwapFile::enable() {
        Ok(s) => s,
        Err(reason) => {
            common::skip(&format!("no swap to page out to: {reason}"));
            return;
        }
    };
    // New pages wait in per-CPU LRU batches that MADV_PAGEOUT drains on its own CPU only.
    let _pinned = PinCpu::new();
    let Mapped {
        region: mut r,
        fd: _fd,
    } = memory.map(32);
    for i in 0..r.pages() {
        r.write(i, 0, 1 + i as u8);
        r.write(i, 1000, 0x5a);
    }
    let id = t.register(r.ptr(), r.len).unwrap();
    r.rebase();
    let kb = swap_round_trip(&t, id, &mut r);
    let kind = memory.name;
    eprintln!("{mode:?} {kind}: swapped kB after each pageout: {kb:?}; every collect exact");
    drop(r);
    drop(swap);
}

per_case! { swap_test:
    swap_out_and_in_private_anonymous_is_exact => PRIVATE_ANONYMOUS,
    swap_out_and_in_memfd_shared_is_exact => MEMFD_SHARED,
}

/// `MADV_PAGEOUT` of written pages, whether or not swap exists (without swap, swap-backed pages
/// cannot be evicted and the advice is harmless): nothing lost, nothing over-reported.
fn pageout_exact(mode: Mode, memory: Memory) {
    let Some(t) = tracker(mode) else { return };
    if !memory.trackable_or_skip() {
        return;
    }
    let _lock = system_lock(); // not while another test has its swap file on
    let no_swap = std::fs::read_to_string("/proc/swaps").map_or(true, |s| s.lines().count() <= 1);
    let Mapped {
        region: mut r,
        fd: _fd,
    } = memory.map(16);
    for i in 0..16 {
        r.write(i, 0, 1);
    }
    let id = t.register(r.ptr(), r.len).unwrap();
    r.rebase();
    bounded(&t, id, "writes", || {
        r.touch(1);
        r.touch(9);
    });
    madvise(r.addr, r.len, libc::MADV_PAGEOUT);
    let kb = smaps_kb(r.addr, r.len, "Swap");
    eprintln!(
        "{mode:?} {}: no swap configured: {no_swap}; swapped {kb} kB",
        memory.name
    );
    if no_swap {
        assert_eq!(kb, 0);
    }
    assert_eq!(r.check(&t.collect().unwrap(), true), (2, 2));
    madvise(r.addr, r.len, libc::MADV_PAGEOUT);
    bounded(&t, id, "writes", || r.touch(4));
    assert_eq!(r.check(&t.collect().unwrap(), true), (1, 1));
    assert!(t.collect().unwrap().is_empty());
}

per_case! { pageout_exact:
    pageout_private_anonymous_is_exact => PRIVATE_ANONYMOUS,
    pageout_memfd_shared_is_exact => MEMFD_SHARED,
}

// ---------------------------------------------------------------------------------------------
// MADV_COLLAPSE (†): the kernel refuses to collapse protected pages into a huge page.

/// THP-aligned, `MADV_HUGEPAGE`, every page written while small pages were forced: one THP
/// size of small pages (512 with 4 KiB pages) that `MADV_COLLAPSE` can turn into one huge page.
fn small_pages_collapsible() -> Region {
    let r = Region::anon_aligned(huge() / page(), huge());
    madvise(r.addr, r.len, libc::MADV_NOHUGEPAGE);
    for i in 0..r.pages() {
        r.write(i, 0, 1 + (i % 200) as u8);
    }
    madvise(r.addr, r.len, libc::MADV_HUGEPAGE);
    r
}

per_mode! {
    fn madv_collapse_is_refused_on_a_tracked_range(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        // Control: the same memory untracked collapses.
        let control = small_pages_collapsible();
        if let Err(e) = madvise_raw(control.addr, control.len, libc::MADV_COLLAPSE) {
            common::skip(&format!("MADV_COLLAPSE of untracked memory fails here: {e}"));
            return;
        }
        assert_eq!(smaps_kb(control.addr, control.len, "AnonHugePages"), huge() / 1024);
        drop(control);

        // The region is MADV_HUGEPAGE, so khugepaged may collapse it in the background before
        // it is registered (the likely cause of one CI failure: MADV_COLLAPSE succeeded, as it
        // does on a huge page already there). Once registered it cannot (its entries are
        // write-protected): build it again until it is registered as small pages.
        let (mut r, id) = (0..10)
            .find_map(|_| {
                let r = small_pages_collapsible();
                let id = t.register(r.ptr(), r.len).unwrap();
                if smaps_kb(r.addr, r.len, "AnonHugePages") == 0 {
                    return Some((r, id));
                }
                t.unregister(id).unwrap();
                None
            })
            .expect("khugepaged collapsed the region before it was registered, 10 times in a row");
        r.rebase();
        let e = madvise_raw(r.addr, r.len, libc::MADV_COLLAPSE).unwrap_err();
        eprintln!("{mode:?}: MADV_COLLAPSE of a protected range: {e}");
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
        assert_eq!(smaps_kb(r.addr, r.len, "AnonHugePages"), 0, "not collapsed");
        assert!(t.collect().unwrap().is_empty(), "the refused collapse changed nothing");
        // One page written (unprotected in async mode), the rest protected: still refused.
        bounded(&t, id, "a write", || r.touch(7));
        let e = madvise_raw(r.addr, r.len, libc::MADV_COLLAPSE).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
        assert_eq!(r.check(&t.collect().unwrap(), true), (1, 1));
        bounded(&t, id, "writes", || {
            r.touch(0);
            r.touch(300);
            r.touch(511);
        });
        assert_eq!(r.check(&t.collect().unwrap(), true), (3, 3), "tracking continues exactly");
        assert_eq!(smaps_kb(r.addr, r.len, "AnonHugePages"), 0);
    }
}

// ---------------------------------------------------------------------------------------------
// KSM (†): register takes the range out of KSM (un-merges merged pages, clears VM_MERGEABLE),
// so ksmd never drops the write protection of tracked pages.

/// How long to wait for ksmd (nice 5): typically 0.2-2 s, much longer on a loaded machine.
const KSMD_LIMIT: Duration = Duration::from_secs(30);

/// ksmd running fast for the duration of a test; the old settings come back on drop.
struct Ksm {
    old: Vec<(&'static str, String)>,
    _lock: MutexGuard<'static, ()>,
}

impl Ksm {
    const DIR: &'static str = "/sys/kernel/mm/ksm";

    fn start() -> Result<Ksm, String> {
        let lock = system_lock();
        let mut ksm = Ksm {
            old: Vec::new(),
            _lock: lock,
        };
        for (file, value) in [
            ("pages_to_scan", "5000"),
            ("sleep_millisecs", "1"),
            ("run", "1"),
        ] {
            let path = format!("{}/{file}", Self::DIR);
            let old = std::fs::read_to_string(&path)
                .map_err(|e| format!("{path}: {e} (kernel without CONFIG_KSM?)"))?;
            std::fs::write(&path, value).map_err(|e| format!("writing {path}: {e}"))?;
            ksm.old.push((file, old.trim().to_string()));
        }
        Ok(ksm)
    }

    /// Starts (`true`) or stops ksmd; merged pages stay merged while it is stopped.
    fn run(&self, on: bool) {
        std::fs::write(format!("{}/run", Self::DIR), if on { "1" } else { "0" }).unwrap();
    }

    fn full_scans() -> u64 {
        std::fs::read_to_string(format!("{}/full_scans", Self::DIR))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Ksm {
    fn drop(&mut self) {
        // `run` first (it was written last).
        for (file, old) in self.old.iter().rev() {
            let _ = std::fs::write(format!("{}/{file}", Self::DIR), old);
        }
    }
}

/// Fills every 512th byte of `r` with 0x5a, so that all its pages are identical, and marks it
/// `MADV_MERGEABLE`.
fn identical_mergeable(r: &Region) {
    for i in 0..r.pages() {
        for off in (0..page()).step_by(512) {
            r.write(i, off, 0x5a);
        }
    }
    madvise(r.addr, r.len, libc::MADV_MERGEABLE);
}

per_mode! {
    /// Range `a` is merged by ksmd before register; range `b` is mergeable but not yet merged
    /// (ksmd stopped) when registered, then ksmd runs. Register must un-merge `a` and take both
    /// out of KSM: otherwise ksmd would replace protected PTEs of `b` by KSM pages without the
    /// write-protect bit (sync mode then lost 15 of 16 writes).
    fn ksm_merged_pages_are_unmerged_on_register_and_stay_exact(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        let ksm = match Ksm::start() {
            Ok(k) => k,
            Err(reason) => {
                common::skip(&format!("KSM unavailable: {reason}"));
                return;
            }
        };
        let mg = |r: &Region| vm_flags(r.addr).iter().any(|f| f == "mg");
        let merged = |r: &Region| smaps_kb(r.addr, r.len, "KSM");
        let mut a = Region::anon(64);
        let control = Region::anon(64);
        identical_mergeable(&a);
        identical_mergeable(&control);
        if !wait_for(KSMD_LIMIT, || merged(&a) >= a.len / 1024 / 2) {
            common::skip(&format!("ksmd merged only {} kB of 256 within {KSMD_LIMIT:?}", merged(&a)));
            return;
        }
        ksm.run(false);
        let mut b = Region::anon(64);
        let control_b = Region::anon(64); // untracked twin of `b`, same age
        identical_mergeable(&b);
        identical_mergeable(&control_b);
        eprintln!(
            "{mode:?}: before register: a: KSM {} kB, b: KSM {} kB, mg {}",
            merged(&a),
            merged(&b),
            mg(&b)
        );
        assert!(mg(&a) && mg(&b));
        let ida = t.register(a.ptr(), a.len).unwrap();
        let idb = t.register(b.ptr(), b.len).unwrap();
        a.rebase();
        b.rebase();
        assert_eq!(merged(&a), 0, "register un-merged the range");
        assert!(!mg(&a) && !mg(&b), "register cleared VM_MERGEABLE: {:?}", vm_flags(b.addr));
        // Let ksmd run until it has merged `b`'s untracked twin, plus one more full scan:
        // nothing tracked is merged (again).
        ksm.run(true);
        let start = Instant::now();
        assert!(
            wait_for(KSMD_LIMIT, || merged(&control_b) >= control_b.len / 1024 / 2),
            "ksmd did not merge the untracked control within {KSMD_LIMIT:?}"
        );
        let scans = Ksm::full_scans();
        assert!(
            wait_for(KSMD_LIMIT, || Ksm::full_scans() > scans),
            "ksmd did not complete a full scan within {KSMD_LIMIT:?}"
        );
        eprintln!(
            "{mode:?}: after {:?} of ksmd: a {} kB, b {} kB, controls {} + {} kB merged",
            start.elapsed(),
            merged(&a),
            merged(&b),
            merged(&control),
            merged(&control_b)
        );
        assert_eq!((merged(&a), merged(&b)), (0, 0), "the tracked ranges are not merged");
        // No collect before the writes: a collect re-protects (sync mode), which would hide a
        // merge's dropped protection. The check below is exact: un-merging was no write either.
        for (r, id) in [(&mut a, ida), (&mut b, idb)] {
            bounded(&t, id, "writes", || {
                for i in (0..64).step_by(4) {
                    r.touch(i);
                }
            });
        }
        let d = t.collect().unwrap();
        let counts = (a.check(&d, true), b.check(&d, true));
        eprintln!("{mode:?}: 16 writes in each range: (changed, reported) {counts:?}");
        assert_eq!(counts, ((16, 16), (16, 16)));
        drop(ksm);
    }
}

// ---------------------------------------------------------------------------------------------
// Pinned buffers (†): io_uring READ_FIXED into a buffer registered (pinned) with the ring before
// the range was registered writes through the kernel's mapping, without a fault: NOT reported.

mod uring {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const IORING_OFF_SQ_RING: i64 = 0;
    const IORING_OFF_CQ_RING: i64 = 0x800_0000;
    const IORING_OFF_SQES: i64 = 0x1000_0000;
    const IORING_ENTER_GETEVENTS: u32 = 1;
    const IORING_REGISTER_BUFFERS: u32 = 0;
    pub const IORING_OP_READ_FIXED: u8 = 4;

    #[repr(C)]
    #[derive(Default)]
    struct Offsets {
        head: u32,
        tail: u32,
        ring_mask: u32,
        ring_entries: u32,
        flags_or_overflow: u32,
        dropped_or_cqes: u32,
        array_or_flags: u32,
        resv1: u32,
        user_addr: u64,
    }

    #[repr(C)]
    #[derive(Default)]
    struct Params {
        sq_entries: u32,
        cq_entries: u32,
        flags: u32,
        sq_thread_cpu: u32,
        sq_thread_idle: u32,
        features: u32,
        wq_fd: u32,
        resv: [u32; 3],
        sq_off: Offsets,
        cq_off: Offsets,
    }

    #[repr(C)]
    #[derive(Default)]
    pub struct Sqe {
        pub opcode: u8,
        pub flags: u8,
        pub ioprio: u16,
        pub fd: i32,
        pub off: u64,
        pub addr: u64,
        pub len: u32,
        pub rw_flags: u32,
        pub user_data: u64,
        pub buf_index: u16,
        pub personality: u16,
        pub splice_fd_in: i32,
        pub addr3: u64,
        pub pad: u64,
    }

    #[repr(C)]
    struct Cqe {
        user_data: u64,
        res: i32,
        flags: u32,
    }

    struct Map(*mut u8, usize);
    impl Drop for Map {
        fn drop(&mut self) {
            // SAFETY: our own mapping.
            unsafe { libc::munmap(self.0.cast(), self.1) };
        }
    }

    /// A one-entry io_uring: enough for one request at a time.
    pub struct Ring {
        sq: Map,
        cq: Map,
        sqes: Map,
        p: Params,
        fd: OwnedFd,
    }

    // SAFETY: the ring's memory is only used through `&mut self` (one thread at a time).
    unsafe impl Send for Ring {}

    fn cvt(rc: libc::c_long) -> io::Result<libc::c_long> {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    fn map(fd: &OwnedFd, len: usize, off: i64) -> io::Result<Map> {
        // SAFETY: mapping the ring's memory as io_uring(7) describes.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Map(p.cast(), len))
    }

    impl Ring {
        pub fn new() -> io::Result<Ring> {
            let mut p = Params::default();
            // SAFETY: `p` is a valid io_uring_params.
            let fd = cvt(unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, &mut p) })?;
            // SAFETY: a fresh fd we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            let sq_len = p.sq_off.array_or_flags as usize + 4 * p.sq_entries as usize;
            let cq_len = p.cq_off.dropped_or_cqes as usize + 16 * p.cq_entries as usize;
            let sq = map(&fd, sq_len, IORING_OFF_SQ_RING)?;
            let cq = map(&fd, cq_len, IORING_OFF_CQ_RING)?;
            let sqes = map(&fd, 64 * p.sq_entries as usize, IORING_OFF_SQES)?;
            Ok(Ring {
                sq,
                cq,
                sqes,
                p,
                fd,
            })
        }

        /// Registers (pins) one fixed buffer, index 0.
        pub fn register_buffer(&self, addr: usize, len: usize) -> io::Result<()> {
            let iov = libc::iovec {
                iov_base: addr as *mut libc::c_void,
                iov_len: len,
            };
            // SAFETY: one valid iovec.
            cvt(unsafe {
                libc::syscall(
                    libc::SYS_io_uring_register,
                    self.fd.as_raw_fd(),
                    IORING_REGISTER_BUFFERS,
                    &iov,
                    1u32,
                )
            })
            .map(drop)
        }

        fn u32_at(m: &Map, off: u32) -> *mut u32 {
            // SAFETY: offsets given by the kernel, inside the mapping.
            unsafe { m.0.add(off as usize).cast() }
        }

        /// Submits `sqe` and waits for its completion; returns the result (`-errno` on error).
        pub fn run(&mut self, sqe: Sqe) -> io::Result<i32> {
            use std::sync::atomic::{fence, Ordering};
            let (so, co) = (&self.p.sq_off, &self.p.cq_off);
            // SAFETY: the ring's shared memory, laid out as the kernel's offsets say; one
            // request in flight at a time, so slot 0 is free.
            unsafe {
                self.sqes.0.cast::<Sqe>().write(sqe);
                *Self::u32_at(&self.sq, so.array_or_flags) = 0;
                let tail = Self::u32_at(&self.sq, so.tail);
                fence(Ordering::SeqCst);
                tail.write_volatile(tail.read_volatile().wrapping_add(1));
                fence(Ordering::SeqCst);
                cvt(libc::syscall(
                    libc::SYS_io_uring_enter,
                    self.fd.as_raw_fd(),
                    1u32,
                    1u32,
                    IORING_ENTER_GETEVENTS,
                    std::ptr::null::<libc::c_void>(),
                    0usize,
                ))?;
                fence(Ordering::SeqCst);
                let head = Self::u32_at(&self.cq, co.head);
                let h = head.read_volatile();
                assert_ne!(
                    h,
                    Self::u32_at(&self.cq, co.tail).read_volatile(),
                    "no completion"
                );
                let mask = *Self::u32_at(&self.cq, co.ring_mask);
                let cqe = self
                    .cq
                    .0
                    .add(co.dropped_or_cqes as usize)
                    .cast::<Cqe>()
                    .add((h & mask) as usize)
                    .read();
                fence(Ordering::SeqCst);
                head.write_volatile(h.wrapping_add(1));
                assert_eq!(cqe.user_data, 7, "the completion of our request");
                Ok(cqe.res)
            }
        }
    }
}

per_mode! {
    /// Documented blind spot: the kernel writes a pinned buffer without faulting, so page-table
    /// tracking does not see it. The write is NOT reported; writes by the program still are.
    fn io_uring_read_fixed_into_pinned_buffer_is_invisible_documented(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        let mut ring = match uring::Ring::new() {
            Ok(r) => r,
            Err(e) => {
                common::skip(&format!("io_uring_setup: {e}"));
                return;
            }
        };
        let mut r = Region::anon(4);
        for i in 0..4 {
            r.write(i, 0, 1);
        }
        ring.register_buffer(r.addr, r.len).unwrap(); // pinned before the range is registered
        let (src, src_fd) = Region::memfd(1, true);
        for off in 0..page() {
            src.write(0, off, 0xab);
        }
        let id = t.register(r.ptr(), r.len).unwrap();
        r.rebase();
        let sqe = uring::Sqe {
            opcode: uring::IORING_OP_READ_FIXED,
            fd: src_fd.as_raw_fd(),
            off: 0,
            addr: r.page_addr(1) as u64,
            len: page() as u32,
            buf_index: 0,
            user_data: 7,
            ..Default::default()
        };
        let res = bounded(&t, id, "io_uring READ_FIXED", || ring.run(sqe)).unwrap();
        assert_eq!(res, page() as i32, "READ_FIXED result (-errno on error)");
        assert_eq!(r.changed(), vec![1], "the kernel did write page 1");
        let d = t.collect().unwrap();
        eprintln!("{mode:?}: READ_FIXED into a pinned buffer: reported {:?}", r.reported_pages(&d));
        assert!(!d.contains(r.page_addr(1)), "documented: a pinned-buffer write is not visible");
        assert!(d.is_empty());
        // Tracking of the program's own writes is intact, also on the pinned pages.
        r.rebase();
        bounded(&t, id, "writes", || {
            r.touch(1);
            r.touch(3);
        });
        assert_eq!(r.check(&t.collect().unwrap(), true), (2, 2));
        drop(ring); // unpins
        drop(src);
    }
}

// ---------------------------------------------------------------------------------------------
// RangeInfo::backing and Backing::blind_spots().

per_mode! {
    fn backing_and_blind_spots(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        if !common::shmem_hugetlb_wp_or_skip() {
            return;
        }
        let mut mapped = Vec::new(); // every range stays mapped (and registered) to the end
        for (memory, want, blind) in [
            (PRIVATE_ANONYMOUS, Backing::PrivateAnonymous, false),
            (SHARED_ANONYMOUS, Backing::Shared, true),
            (MEMFD_SHARED, Backing::Shared, true),
            (MEMFD_PRIVATE, Backing::PrivateFile, true),
        ] {
            let m = memory.map(4);
            let r = &m.region;
            let name = memory.name;
            let id = t.register(r.ptr(), r.len).unwrap();
            let info = t.range(id).unwrap();
            assert_eq!(info.backing, want, "{name}: {info:?}");
            let spots = info.backing.blind_spots();
            eprintln!("{mode:?}: {name}: {want:?}: {spots:?}");
            assert_eq!(!spots.is_empty(), blind, "{name}: {want:?}: {spots:?}");
            mapped.push(m);
        }
        let shared_spots = Backing::Shared.blind_spots().join("; ");
        for what in ["another mapping", "pwrite", "ftruncate"] {
            assert!(shared_spots.contains(what), "{shared_spots}");
        }
        assert_eq!(t.ranges().len(), 4);
    }
}

per_mode! {
    fn backing_hugetlb(mode: Mode) {
        let Some((_pool, t, r)) = common::hugetlb_setup(mode, 1) else { return };
        let id = t.register(r.ptr(), r.len).unwrap();
        let backing = t.range(id).unwrap().backing;
        assert_eq!(backing, Backing::Hugetlb { page_size: huge_page_size() });
        eprintln!("{mode:?}: {backing:?}: {:?}", backing.blind_spots());
        assert!(!backing.blind_spots().is_empty());
    }
}
