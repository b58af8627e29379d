//! Scaling paths (issue 14), checked for exactness with the shared oracle: sparse ranges
//! (`register_sparse`: only populated pages protected), batch registration (`register_many`),
//! and the overlap index across moves. The costs themselves are measured in `benches/scale.rs`.

mod common;

use common::*;
use dirtytrack::sys::mem::{self, AnonMapping};
use dirtytrack::{DirtySet, Error, Mode, Thp, Tracker};

const TIB: usize = 1 << 40;

fn vm_pte_kib() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("VmPTE:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmPTE")
}

fn write(addr: usize, v: u8) {
    // SAFETY: callers pass addresses inside a live test-owned read-write mapping that no Rust
    // reference points into.
    unsafe { std::ptr::write_volatile(addr as *mut u8, v) }
}

fn read(addr: usize) -> u8 {
    // SAFETY: as in `write`.
    unsafe { std::ptr::read_volatile(addr as *const u8) }
}

fn pages_of(d: &DirtySet) -> Vec<usize> {
    d.pages().collect()
}

per_mode! {
    /// A 1 TiB never-touched range: 5 written pages (and 3 only read) are reported exactly, a
    /// discard and a clear keep it exact, and the page tables stay small.
    fn sparse_1tib_reports_exactly_what_was_written(mode: Mode) {
        let Some(t) = sparse_tracker(mode) else { return };
        let ps = page();
        let m = AnonMapping::new(TIB).expect("mmap 1 TiB MAP_NORESERVE");
        let base = m.addr();
        if mode == Mode::Sync {
            match t.register_sparse(base as *mut u8, TIB) {
                Err(Error::MappingNotSupported { .. }) => return,
                other => panic!("sync register_sparse: {other:?}"),
            }
        }
        let pte0 = vm_pte_kib();
        t.register_sparse(base as *mut u8, TIB).expect("register_sparse");
        let written = [0, 1 << 30, 300 << 30, (777 << 30) + 5 * ps, TIB - ps];
        let read_only = [ps, 2 << 30, TIB - 2 * ps];
        for (i, off) in written.iter().enumerate() {
            write(base + off, i as u8 + 1);
        }
        for off in read_only {
            assert_eq!(read(base + off), 0);
        }
        let want: Vec<usize> = written.iter().map(|o| base + o).collect();
        assert_eq!(pages_of(&t.collect().expect("collect")), want);
        assert!(t.collect().expect("collect").is_empty(), "nothing written since");
        // Second writes to protected pages, a first write next to one, a write to a page that
        // was only read (zero page).
        write(base + written[1], 9);
        write(base + written[1] + ps, 9);
        write(base + read_only[1], 9);
        assert_eq!(
            pages_of(&t.collect().expect("collect")),
            vec![base + written[1], base + written[1] + ps, base + read_only[1]]
        );
        // A discard changes the contents (to zero): reported; the zapped page's next first
        // write is seen again.
        advise(base + written[2], ps, libc::MADV_DONTNEED).expect("MADV_DONTNEED");
        let d = t.collect().expect("collect");
        assert!(d.contains(base + written[2]), "discard reported");
        assert!(pages_of(&d).iter().all(|&a| a == base + written[2]));
        let _ = t.collect().expect("collect"); // the discard may be reported twice
        write(base + written[2], 3);
        assert_eq!(pages_of(&t.collect().expect("collect")), vec![base + written[2]]);
        // Clear: protects what is populated, reports nothing.
        write(base + written[3], 4);
        write(base + (500 << 30), 4);
        t.clear().expect("clear");
        assert!(t.collect().expect("collect").is_empty());
        write(base + written[3], 5);
        assert_eq!(pages_of(&t.collect().expect("collect")), vec![base + written[3]]);
        let pte = vm_pte_kib().saturating_sub(pte0);
        assert!(pte < 16 << 10, "page tables grew by {pte} KiB for 1 TiB with 8 pages touched");
    }
}

per_mode! {
    /// `register_sparse` against the oracle: random writes, reads and discards over a range
    /// that was partly populated before registration.
    fn sparse_range_matches_the_oracle(mode: Mode) {
        let Some(t) = sparse_tracker(mode) else { return };
        if mode == Mode::Sync {
            return; // refused, see sparse_1tib_reports_exactly_what_was_written
        }
        let mut r = Region::anon(2048);
        for i in (0..2048).step_by(3) {
            r.write(i, 0, 1); // populated before registration
        }
        for i in (1..2048).step_by(5) {
            let _ = r.read(i, 0); // zero page before registration
        }
        t.register_sparse(r.ptr(), r.len).expect("register_sparse");
        r.rebase();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut discarded_before = false;
        for _round in 0..60 {
            let mut discarded = false;
            for _ in 0..next(200) {
                let i = next(2048);
                match next(10) {
                    0..=5 => r.touch(i), // changes the page
                    6..=8 => {
                        let _ = r.read(i, 0);
                    }
                    _ => {
                        advise(r.page_addr(i), page(), libc::MADV_DONTNEED)
                            .expect("MADV_DONTNEED");
                        discarded = true;
                    }
                }
            }
            let d = t.collect().expect("collect");
            // A discard may be reported by the two collects after it (EXACT_AFTER_DISCARD).
            r.check(&d, !discarded && !discarded_before);
            discarded_before = discarded;
        }
    }
}

per_mode! {
    /// `register_many`: 2 000 one-page ranges in a mapping split into 4 000 VMAs, all or nothing.
    fn register_many_is_all_or_nothing(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        let ps = page();
        let n = 2000;
        let mut r = Region::anon(2 * n);
        for i in 0..n {
            // SAFETY: the page lies inside `r`'s mapping; no reference points into it.
            let rc = unsafe {
                libc::mprotect(r.page_addr(2 * i + 1) as *mut _, ps, libc::PROT_READ)
            };
            assert_eq!(rc, 0);
        }
        let ranges: Vec<(*mut u8, usize)> =
            (0..n).map(|i| (r.page_addr(2 * i) as *mut u8, ps)).collect();
        let ids = t.register_many(&ranges).expect("register_many");
        assert_eq!(ids.len(), n);
        assert_eq!(t.ranges().len(), n);
        r.rebase();
        for i in (0..n).step_by(7) {
            r.write(2 * i, 1, 7);
        }
        r.check(&t.collect().expect("collect"), true);
        // A batch whose last range overlaps a registered one: nothing of it stays registered.
        let other = Region::anon(16);
        let mut batch: Vec<(*mut u8, usize)> =
            (0..16).map(|i| (other.page_addr(i) as *mut u8, ps)).collect();
        batch.push((r.page_addr(10) as *mut u8, ps));
        match t.register_many(&batch) {
            Err(Error::Overlap { existing, .. }) => assert_eq!(existing, ids[5]),
            other => panic!("overlapping batch: {other:?}"),
        }
        assert_eq!(t.ranges().len(), n, "the batch was rolled back");
        // Its first ranges are free to register again (not left registered by the failure).
        let again = t.register_many(&batch[..16]).expect("register the rolled-back ranges");
        assert_eq!(again.len(), 16);
        // A batch overlapping itself.
        let third = Region::anon(4);
        let selfish = [
            (third.page_addr(0) as *mut u8, 2 * ps),
            (third.page_addr(1) as *mut u8, ps),
        ];
        assert!(matches!(t.register_many(&selfish), Err(Error::Overlap { .. })));
        t.register(third.ptr(), 4 * ps).expect("rolled back, so free");
        for id in ids.iter().step_by(2) {
            t.unregister(*id).expect("unregister");
        }
        // Unregistered ranges are free again, registered ones still refuse overlaps.
        t.register(r.page_addr(0) as *mut u8, ps).expect("free again");
        assert!(matches!(
            t.register(r.page_addr(2) as *mut u8, ps),
            Err(Error::Overlap { .. })
        ));
    }
}

per_mode! {
    /// The overlap index follows a range that `mremap` moved.
    fn overlap_check_follows_moves(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        let ps = page();
        let a = Region::anon(8);
        let id = t.register(a.ptr(), 8 * ps).expect("register");
        let dst = Region::anon(8);
        // SAFETY: moves `a`'s mapping over `dst`'s (MREMAP_FIXED); neither is referenced. `a`'s
        // old addresses become unmapped; `dst`'s Region unmaps the new location on drop.
        let moved = unsafe {
            libc::mremap(
                a.ptr() as *mut _,
                8 * ps,
                8 * ps,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                dst.ptr() as *mut libc::c_void,
            )
        };
        assert_eq!(moved as usize, dst.addr, "mremap");
        let info = t.range(id).expect("range");
        assert_eq!(info.addr, dst.addr, "the range followed the move");
        match t.register(dst.page_addr(3) as *mut u8, ps) {
            Err(Error::Overlap { existing, .. }) => assert_eq!(existing, id),
            other => panic!("register inside the moved range: {other:?}"),
        }
        // Map something new at the old place: it does not overlap anything any more.
        let again = Region::anon_near(8, a.addr);
        if again.addr == a.addr {
            t.register(again.ptr(), 8 * ps).expect("the old place is free");
        }
        let _ = a.disown(); // its addresses were moved away; `again` owns them now
    }
}

per_mode! {
    /// A sparse range: pages freed with MADV_FREE and reclaimed three collects later (their
    /// contents turn to zero, with no event then) are still reported.
    fn sparse_range_reports_late_reclaim_of_freed_pages(mode: Mode) {
        let Some(t) = sparse_tracker(mode) else { return };
        if mode == Mode::Sync {
            return; // register_sparse is async only
        }
        let pinned = PinCpu::new();
        let mut r = Region::anon(16);
        for i in 0..8 {
            r.write(i, 0, 1);
        }
        t.register_sparse(r.ptr(), r.len).expect("register_sparse");
        r.rebase();
        advise(r.addr, 8 * page(), libc::MADV_FREE).expect("MADV_FREE");
        r.write(2, 0, 9); // written after MADV_FREE: survives reclaim
        for _ in 0..3 {
            r.check(&t.collect().expect("collect"), false);
        }
        let zeroed = || -> Vec<usize> { (0..8).filter(|&i| r.read(i, 0) == 0).collect() };
        for _ in 0..20 {
            advise(r.addr, 8 * page(), libc::MADV_PAGEOUT).expect("MADV_PAGEOUT");
            if zeroed().len() == 7 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(pinned);
        assert_eq!(zeroed(), vec![0, 1, 3, 4, 5, 6, 7], "MADV_PAGEOUT reclaimed the freed pages");
        let (changed, _) = r.check(&t.collect().expect("collect"), false); // no lost write
        assert_eq!(changed, 7);
        r.touch(3);
        r.touch(12);
        r.check(&t.collect().expect("collect"), true);
    }
}

/// Destructive `madvise` on the test's own mappings.
fn advise(addr: usize, len: usize, advice: i32) -> std::io::Result<()> {
    // SAFETY: the test's own mapping, accessed only through raw pointers (no reference into it
    // is alive across the call).
    unsafe { mem::madvise_destructive(addr, len, advice) }
}

/// A tracker for `register_sparse` ranges, with transparent huge pages off for them: a first
/// write into a THP range may populate and report a whole huge page (documented over-report;
/// Debian's kernels run THP `always`, this machine `madvise`), and these tests check exactness.
fn sparse_tracker(mode: Mode) -> Option<Tracker> {
    tracker_with(Tracker::builder().mode(mode).thp(Thp::Disable))
}
