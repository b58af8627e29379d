//! The paths where a write could be lost outside the plain write → collect cycle: a live snapshot
//! that fails, is dropped, or whose copy is dropped; direct I/O racing collects (made exact with
//! `Tracker::mark_dirty`); guard regions (no userfaultfd event); two trackers in one process;
//! `mlock` (an over-report, never a loss). Every check uses the shared shadow oracle.

mod common;
use common::{page, tracker, Region};
use dirtytrack::{DirtySet, Error, Mode, RangeId, Tracker};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn madvise(addr: usize, len: usize, advice: i32) -> std::io::Result<()> {
    // SAFETY: advice on the test's own mappings, which it accesses only through raw pointers.
    if unsafe { libc::madvise(addr as *mut libc::c_void, len, advice) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A sync tracker with a range of `pages` written pages, collected clean, then `written` pages
/// changed: the pre-instant writes a live snapshot takes.
fn pre_instant_writes(t: &Tracker, pages: usize, written: &[usize]) -> (Region, RangeId) {
    let mut r = Region::anon(pages);
    let id = t.register(r.ptr(), r.len).unwrap();
    for p in (0..pages).step_by(64) {
        r.touch(p);
    }
    let d = t.collect().unwrap();
    r.check(&d, false);
    for &p in written {
        r.touch(p);
    }
    (r, id)
}

const WRITTEN: [usize; 5] = [0, 3, 64, 500, 1000];

/// After a live snapshot that did not hand its copy over, the next collect must report the
/// pages written before the instant (and whatever changed since): the oracle, not exact (a
/// discard over-reports).
fn next_collect_reports_them(t: &Tracker, r: &mut Region) {
    let d = t.collect().unwrap();
    for p in WRITTEN {
        assert!(
            d.contains(r.page_addr(p)),
            "LOST WRITE: page {p} written before the instant is not reported after the snapshot gave up ({} pages reported)",
            d.len()
        );
    }
    r.check(&d, false);
    // And the cycle continues exactly (a discard may be reported by the next two collects).
    r.touch(7);
    let d = t.collect().unwrap();
    r.check(&d, false);
    assert!(d.contains(r.page_addr(7)));
    r.touch(8);
    let d = t.collect().unwrap();
    r.check(&d, true);
}

#[test]
fn live_snapshot_that_fails_hands_pre_instant_writes_back() {
    let Some(t) = tracker(Mode::Sync) else { return };
    // 256 MiB: the background copy (from the start) takes long enough for a discard of the
    // last pages to land first. Retried a few times in case the copy wins the race.
    // Sized in bytes, not pages: 16 KiB-page kernels would otherwise map (and copy) 1 GiB.
    let (mut r, id) = pre_instant_writes(&t, (256 << 20) / page(), &WRITTEN);
    let mut failed = false;
    for _ in 0..5 {
        let snap = t.live_snapshot(id).unwrap();
        // The last 4 MiB.
        let tail_pages = (4 << 20) / page();
        let tail = r.pages() - tail_pages;
        madvise(r.page_addr(tail), tail_pages * page(), libc::MADV_DONTNEED).unwrap();
        match snap.wait() {
            Err(Error::LiveSnapshotFailed { reason, .. }) => {
                eprintln!("failed as expected: {reason}");
                failed = true;
                break;
            }
            Err(e) => panic!("unexpected error: {e}"),
            // The copy won: the instant collected the pre-instant writes into the committed
            // copy. Write them again and retry.
            Ok(mut copy) => {
                copy.commit();
                for p in WRITTEN {
                    r.touch(p);
                }
            }
        }
    }
    assert!(
        failed,
        "the snapshot never failed: the test did not run its path"
    );
    next_collect_reports_them(&t, &mut r);
    // The range takes a new snapshot (the failed one left no copy-on-write state behind).
    t.live_snapshot(id).unwrap().wait().unwrap().commit();
}

#[test]
fn live_snapshot_dropped_before_wait_hands_pre_instant_writes_back() {
    let Some(t) = tracker(Mode::Sync) else { return };
    let (mut r, id) = pre_instant_writes(&t, 4096, &WRITTEN);
    let snap = t.live_snapshot(id).unwrap();
    drop(snap);
    next_collect_reports_them(&t, &mut r);
    t.live_snapshot(id).unwrap().wait().unwrap().commit();
}

#[test]
fn live_copy_dropped_uncommitted_hands_pre_instant_writes_back() {
    let Some(t) = tracker(Mode::Sync) else { return };
    let (mut r, id) = pre_instant_writes(&t, 4096, &WRITTEN);
    {
        let copy = t.live_snapshot(id).unwrap().wait().unwrap();
        assert!(!copy.is_committed());
        let reported: Vec<usize> = copy
            .dirty_at_instant
            .pages()
            .map(|a| (a - r.addr) / page())
            .collect();
        assert_eq!(reported, WRITTEN, "dirty_at_instant");
        // A dump that fails half way: it moved the data out, then gave up without committing
        // (the rest of the copy is dropped at the end of this block).
        let data = copy.data;
        assert_eq!(data.len(), r.len);
    }
    next_collect_reports_them(&t, &mut r);
}

#[test]
fn live_copy_committed_is_final() {
    let Some(t) = tracker(Mode::Sync) else { return };
    let (mut r, id) = pre_instant_writes(&t, 4096, &WRITTEN);
    let mut copy = t.live_snapshot(id).unwrap().wait().unwrap();
    copy.commit();
    drop(copy);
    r.rebase(); // the copy holds the contents at the instant
    r.touch(9);
    let d = t.collect().unwrap();
    assert_eq!(
        r.check(&d, true),
        (1, 1),
        "only the write after the instant"
    );
}

// ---- Direct I/O: pinned writes made exact with mark_dirty ----

/// A file on a file system that supports `O_DIRECT` (the working directory's, then /tmp, then
/// /var/tmp), or `None` after reporting a skip.
fn direct_io_file(len: usize) -> Option<(std::fs::File, std::path::PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt;
    let dirs = [std::env::temp_dir(), "/var/tmp".into(), ".".into()];
    let mut why = Vec::new();
    for d in dirs {
        // Unique per call: the async and sync versions of a test run in parallel.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = d.join(format!("dirtytrack-odirect-{}-{n}", std::process::id()));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
        {
            Ok(f) => {
                f.set_len(len as u64).ok()?;
                return Some((f, path));
            }
            Err(e) => why.push(format!("{}: {e}", d.display())),
        }
    }
    common::skip(&format!(
        "no file system here supports O_DIRECT ({})",
        why.join("; ")
    ));
    None
}

/// Copies page `i` of the tracked memory into `image` with `process_vm_readv` (a writer or a
/// device may be writing it right now: the kernel copies, no Rust reference is formed).
fn replay(image: &mut [u8], r: &Region, dirty: &DirtySet) {
    for a in dirty.pages().filter(|&a| a >= r.addr && a < r.addr + r.len) {
        let off = a - r.addr;
        dirtytrack::sys::mem::read_own_memory(a, &mut image[off..off + page()])
            .expect("read tracked memory");
    }
}

per_mode! {
    /// A thread reads pages of a file into tracked memory with `O_DIRECT` `pread` (the kernel
    /// pins the page, then the device writes it: no fault at write time) while the main thread
    /// collects in a loop and replays every reported page into an image. With
    /// `mark_dirty` after each completed read, the image equals the memory at the end, byte for
    /// byte. (Without it such writes are lost: docs/kernel-facts.md, "Pinned direct I/O".)
    fn direct_io_racing_collects_is_exact_with_mark_dirty(mode: Mode) {
        use std::os::unix::fs::FileExt;
        let Some(t) = tracker(mode) else { return };
        const PAGES: usize = 64;
        let ps = page();
        let Some((file, path)) = direct_io_file(PAGES * ps) else { return };
        struct Unlink(std::path::PathBuf);
        impl Drop for Unlink {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let _unlink = Unlink(path);
        let r = Arc::new(Region::anon(PAGES));
        for p in 0..PAGES {
            r.write(p, 0, 1);
        }
        t.register(r.ptr(), r.len).unwrap();
        let mut image = vec![0u8; r.len];
        dirtytrack::sys::mem::read_own_memory(r.addr, &mut image).unwrap();
        let t = Arc::new(t);
        let stop = Arc::new(AtomicBool::new(false));
        let reads = std::thread::scope(|s| {
            let reader = {
                let (t, r, stop, file) = (t.clone(), r.clone(), stop.clone(), &file);
                s.spawn(move || {
                    // An aligned bounce buffer for writing the file (O_DIRECT needs alignment).
                    let bounce = Region::anon(1);
                    let mut n = 0u64;
                    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
                    while !stop.load(Ordering::Acquire) && n < 200 {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        let p = (seed % PAGES as u64) as usize;
                        n += 1;
                        // New file contents for page p: every byte carries the read number.
                        // SAFETY: the bounce page is ours, mapped and page sized.
                        unsafe { std::ptr::write_bytes(bounce.ptr(), (n % 251) as u8 + 1, ps) };
                        // SAFETY: the slice covers the bounce page, which nothing else touches.
                        let src = unsafe { std::slice::from_raw_parts(bounce.ptr(), ps) };
                        file.write_at(src, (p * ps) as u64).expect("O_DIRECT pwrite");
                        // The direct read into tracked memory: the kernel pins the page first.
                        // SAFETY: page p of the tracked region; only this thread writes it.
                        let dst = unsafe { std::slice::from_raw_parts_mut(r.page_addr(p) as *mut u8, ps) };
                        let got = file.read_at(dst, (p * ps) as u64).expect("O_DIRECT pread");
                        assert_eq!(got, ps);
                        t.mark_dirty(r.page_addr(p) as *const u8, ps).expect("mark_dirty");
                    }
                    n
                })
            };
            let mut collects = 0;
            // A liveness bound, not a timing assertion: the reader stops after 200 reads.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while !reader.is_finished() && std::time::Instant::now() < deadline {
                let d = t.collect().expect("collect");
                replay(&mut image, &r, &d);
                collects += 1;
            }
            stop.store(true, Ordering::Release);
            let n = reader.join().expect("reader");
            let d = t.collect().expect("final collect");
            replay(&mut image, &r, &d);
            eprintln!("{mode:?}: {n} O_DIRECT reads against {collects} collects");
            n
        });
        assert!(reads > 0);
        let mut now = vec![0u8; r.len];
        dirtytrack::sys::mem::read_own_memory(r.addr, &mut now).unwrap();
        let lost: Vec<usize> = (0..PAGES)
            .filter(|&p| image[p * ps..(p + 1) * ps] != now[p * ps..(p + 1) * ps])
            .collect();
        assert!(lost.is_empty(), "LOST WRITES: the replayed image differs in pages {lost:?}");
    }
}

per_mode! {
    fn mark_dirty_reports_pages_and_refuses_untracked_memory(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        let mut r = Region::anon(16);
        let other = Region::anon(4);
        t.register(r.ptr(), r.len).unwrap();
        r.rebase();
        let ps = page();
        // Unaligned: every page the span touches (pages 2, 3 and 4).
        t.mark_dirty((r.page_addr(2) + 100) as *const u8, 2 * ps).unwrap();
        t.mark_dirty(r.page_addr(9) as *const u8, 0).unwrap(); // nothing
        let d = t.collect().unwrap();
        let got: Vec<usize> = d.pages().map(|a| (a - r.addr) / ps).collect();
        assert_eq!(got, [2, 3, 4]);
        let e = t.mark_dirty(other.ptr(), ps).unwrap_err();
        assert!(matches!(e, Error::NotTracked { .. }), "{e}");
        assert!(e.to_string().contains("register"), "{e}");
        // Partly outside: refused, nothing marked.
        let e = t.mark_dirty(r.page_addr(15) as *const u8, 2 * ps).unwrap_err();
        assert!(matches!(e, Error::NotTracked { addr, .. } if addr == r.addr + r.len), "{e}");
        assert!(t.collect().unwrap().is_empty());
        let e = t.mark_dirty(usize::MAX as *const u8, 2).unwrap_err();
        assert!(matches!(e, Error::AddressOverflow { .. }), "{e}");
    }
}

// ---- Guard regions (6.13+): pages zapped with no userfaultfd event ----

per_mode! {
    /// `MADV_GUARD_INSTALL` over written pages, a collect, `MADV_GUARD_REMOVE`: the pages now
    /// read zero, and a later collect must say so (async mode sees it in the page tables; sync
    /// mode with a read-only scan before each re-protect).
    fn guard_regions_are_reported(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        if !t.capabilities().guard_pages {
            common::skip("the kernel has no guard regions (MADV_GUARD_INSTALL, 6.13+)");
            return;
        }
        if mode == Mode::Sync && t.capabilities().scan_reports_guard_zaps != Some(true) {
            // The documented limit: the report says so (never silent).
            assert!(t.capabilities().to_string().contains("CANNOT see pages zapped by a guard region"));
            common::skip("this kernel's PAGEMAP_SCAN does not show guard-zapped pages: sync mode cannot see them (documented)");
            return;
        }
        let mut r = Region::anon(16);
        for p in 0..16 {
            r.write(p, 0, 0x5a);
        }
        t.register(r.ptr(), r.len).unwrap();
        r.rebase();
        let guarded = 4..8;
        let ps = page();
        // Installed and removed between two collects.
        madvise(r.page_addr(guarded.start), guarded.len() * ps, 102).unwrap();
        madvise(r.page_addr(guarded.start), guarded.len() * ps, 103).unwrap();
        r.write(12, 0, 1);
        let d = t.collect().unwrap();
        assert_eq!(r.check(&d, true), (5, 5), "zapped pages 4..8 and page 12");
        // Installed across a collect: the guarded pages cannot be read by the oracle then, so
        // the collects while guarded and after removal are merged.
        madvise(r.page_addr(guarded.start), guarded.len() * ps, 102).unwrap();
        let mut seen = t.collect().unwrap();
        for p in 0..4 {
            r.write(p, 1, 2); // unguarded pages
        }
        madvise(r.page_addr(guarded.start), guarded.len() * ps, 103).unwrap();
        seen.union(&t.collect().unwrap());
        // The pages were zero already (zapped above), so only pages 0..4 changed: the guard
        // pages may be reported again (the zap itself), never a page outside them.
        r.check(&seen, false);
        let outside: Vec<usize> = seen
            .pages()
            .map(|a| (a - r.addr) / ps)
            .filter(|p| !(0..8).contains(p))
            .collect();
        assert!(outside.is_empty(), "over-reported {outside:?}");
        // A write after removal is seen.
        r.touch(5);
        let d = t.collect().unwrap();
        r.check(&d, true);
        // And a guard over a page written since the last collect (written, then zapped back to
        // zero: unchanged in the end, so reporting it is allowed and nothing else is).
        r.touch(6);
        madvise(r.page_addr(6), ps, 102).unwrap();
        madvise(r.page_addr(6), ps, 103).unwrap();
        r.touch(10);
        let d = t.collect().unwrap();
        r.check(&d, false);
        let got: Vec<usize> = d.pages().map(|a| (a - r.addr) / ps).filter(|&p| p != 6).collect();
        assert_eq!(got, [10]);
    }
}

// ---- Two trackers in one process ----

/// Several trackers may live in one process (the kernel gives each range one owner): each stays
/// exact, and a range cannot be registered with two of them.
#[test]
fn two_trackers_in_one_process_are_independent_and_exact() {
    let caps = dirtytrack::Capabilities::probe();
    let modes: Vec<Mode> = [Mode::Async, Mode::Sync]
        .into_iter()
        .filter(|m| match m {
            Mode::Async => caps.check_async().is_ok(),
            _ => caps.check_sync().is_ok(),
        })
        .collect();
    if modes.len() < 2 {
        common::skip("both modes are needed (an async and a sync tracker side by side)");
    }
    let Some(m1) = modes.first().copied() else {
        return;
    };
    let m2 = modes.last().copied().unwrap_or(m1);
    let (Some(a), Some(b)) = (tracker(m1), tracker(m2)) else {
        return;
    };
    let mut ra = Region::anon(32);
    let mut rb = Region::anon(32);
    a.register(ra.ptr(), ra.len).unwrap();
    b.register(rb.ptr(), rb.len).unwrap();
    ra.rebase();
    rb.rebase();
    let e = b.register(ra.ptr(), ra.len).unwrap_err();
    assert!(matches!(e, Error::OwnedByAnotherUserfaultfd { .. }), "{e}");
    for round in 0..20 {
        ra.touch(round % 32);
        rb.touch((round * 7) % 32);
        rb.touch((round * 3) % 32);
        let (da, db) = if round % 2 == 0 {
            (a.collect().unwrap(), b.collect().unwrap())
        } else {
            let db = b.collect().unwrap();
            (a.collect().unwrap(), db)
        };
        ra.check(&da, true);
        rb.check(&db, true);
        assert!(da.pages().all(|p| p >= ra.addr && p < ra.addr + ra.len));
        assert!(db.pages().all(|p| p >= rb.addr && p < rb.addr + rb.len));
    }
    // Dropping one leaves the other exact.
    drop(a);
    rb.touch(1);
    let db = b.collect().unwrap();
    rb.check(&db, true);
}

// ---- mlock: a documented over-report ----

per_mode! {
    /// `mlock` of a tracked range populates it for writing (breaking copy-on-write), which the
    /// page tables show as written: every locked page is reported once (an over-report the
    /// README documents), and nothing is lost.
    fn mlock_over_reports_and_loses_nothing(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        let mut r = Region::anon(16);
        t.register(r.ptr(), r.len).unwrap();
        r.rebase();
        r.touch(3);
        // SAFETY: locking our own mapping.
        let locked = unsafe { libc::mlock(r.ptr() as *const libc::c_void, r.len) } == 0;
        if !locked {
            common::skip(&format!("mlock failed: {}", std::io::Error::last_os_error()));
            return;
        }
        let d = t.collect().unwrap();
        let (changed, reported) = r.check(&d, false);
        eprintln!("{mode:?}: mlock: {changed} changed, {reported} reported");
        r.touch(9);
        let d = t.collect().unwrap();
        r.check(&d, true);
        // SAFETY: unlocking our own mapping.
        unsafe { libc::munlock(r.ptr() as *const libc::c_void, r.len) };
    }
}
