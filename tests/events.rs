//! Memory events under tracking: discards, unmaps, moves, fork, mprotect.

mod common;
use common::{map_fresh_over, page, spawn, tracker, wait_in_userfaultfd, Region};
use dirtytrack::Error;

/// Asserts that every page `d` reports in `r` is in `allowed` (page indices).
fn only_pages(r: &Region, d: &dirtytrack::DirtySet, allowed: impl Fn(usize) -> bool) {
    for a in d.pages().filter(|&a| a >= r.addr && a < r.addr + r.len) {
        let p = (a - r.addr) / page();
        assert!(
            allowed(p),
            "page {p} reported but neither written nor discarded"
        );
    }
}

fn madvise(addr: usize, len: usize, advice: i32) {
    // SAFETY: advice on our own test mappings.
    let rc = unsafe { libc::madvise(addr as *mut libc::c_void, len, advice) };
    assert_eq!(rc, 0, "madvise: {}", std::io::Error::last_os_error());
}

per_mode! {
    fn discarded_pages_are_reported(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        let mut r = Region::anon(64);
        for p in 0..64 { r.write(p, 0, 0x55); }
        t.register(r.ptr(), r.len).unwrap();
        r.rebase();
        // Discard written and unwritten-since-register pages alike: their contents become zero.
        r.touch(3);
        madvise(r.page_addr(0), 10 * page(), libc::MADV_DONTNEED);
        let d = t.collect().unwrap();
        r.check(&d, false);
        for p in 0..10 { assert!(d.contains(r.page_addr(p)), "discarded page {p} not reported"); }
        // After the collect, the discarded (now empty) pages are protected again.
        r.touch(5);
        r.touch(40);
        let d = t.collect().unwrap();
        only_pages(&r, &d, |p| p < 10 || p == 40);
        assert_eq!(r.check(&d, common::EXACT_AFTER_DISCARD).0, 2);
        r.touch(6);
        let d = t.collect().unwrap();
        assert_eq!(r.check(&d, true), (1, 1), "exact again two collects after the discard");
    }
}

per_mode! {
    fn discarding_a_whole_page_table_is_reported(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        // One last-level page table maps page() / 8 pages (8-byte entries): 2 MiB with 4 KiB
        // pages, 32 MiB with 16 KiB (arm64), 512 MiB with 64 KiB. Twice that, so that at least
        // one table-aligned span lies inside.
        let per_table = page() / 8;
        let mut r = Region::anon(2 * per_table);
        for p in 0..2 * per_table { r.write(p, 0, 1); }
        t.register(r.ptr(), r.len).unwrap();
        r.rebase();
        let span = per_table * page();
        let first = (r.addr + span - 1) & !(span - 1);
        madvise(first, span, libc::MADV_DONTNEED);
        let d = t.collect().unwrap();
        assert_eq!(r.check(&d, false).0, per_table);
        let base = (first - r.addr) / page();
        r.touch(base + 7);
        let d = t.collect().unwrap();
        only_pages(&r, &d, |p| (base..base + per_table).contains(&p));
        assert_eq!(r.check(&d, common::EXACT_AFTER_DISCARD).0, 1, "a write after the discard and a collect is seen");
        r.touch(base + 9);
        assert_eq!(r.check(&t.collect().unwrap(), true), (1, 1));
    }
}

per_mode! {
    fn munmap_of_a_range_is_never_silent(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        let r = Region::anon(16);
        let keep = Region::anon(4);
        let id = t.register(r.ptr(), r.len).unwrap();
        let other = t.register(keep.ptr(), keep.len).unwrap();
        // Unmap the middle of the range.
        // SAFETY: unmapping part of our own mapping; the Region's drop unmaps the rest.
        unsafe { libc::munmap((r.addr + 4 * page()) as *mut libc::c_void, 4 * page()) };
        keep.touch(1);
        let e = t.collect().unwrap_err();
        match &e {
            Error::RangeLost { id: lost, reason, .. } => {
                assert_eq!(*lost, id);
                assert!(reason.contains("unmapped"), "{reason}");
            }
            e => panic!("expected RangeLost, got {e}"),
        }
        assert!(e.to_string().contains("unregister it"), "{e}");
        assert!(t.range(id).unwrap().lost.is_some());
        // Nothing lost for the other range: its page is reported once the lost one is gone.
        t.unregister(id).unwrap();
        let d = t.collect().unwrap();
        assert!(d.contains(keep.page_addr(1)), "{d:?}");
        t.unregister(other).unwrap();
        // Pages 4..8 are a hole that a parallel test may have mapped by now: unmap only ours.
        let (addr, _) = r.disown();
        common::unmap_pieces(addr, &[0..4, 8..16]);
    }
}

per_mode! {
    fn mmap_fixed_over_a_range_is_never_silent(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        let r = Region::anon(8);
        let id = t.register(r.ptr(), r.len).unwrap();
        // SAFETY: replacing pages of our own mapping with fresh anonymous memory.
        let p = unsafe {
            libc::mmap(
                (r.addr + 2 * page()) as *mut libc::c_void,
                2 * page(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        r.touch(2); // a write into the new, untracked memory
        for res in [t.collect().map(drop), t.peek().map(drop), t.clear()] {
            assert!(matches!(res, Err(Error::RangeLost { .. })), "{res:?}");
        }
        t.unregister(id).unwrap();
        // The new memory can be registered afresh.
        t.register(r.ptr(), r.len).unwrap();
    }
}

per_mode! {
    /// A range moved (`mremap` `MREMAP_FIXED`) over the memory of an older range: the older one
    /// is lost (unmapped) but still registered, at the same addresses as the moved one. Writes
    /// there belong to the moved range, also those made before the lost one is unregistered.
    fn writes_go_to_the_moved_range_not_the_lost_one_it_replaced(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        let victim = Region::anon(8);
        let mut moving = Region::anon(8);
        let lost = t.register(victim.ptr(), victim.len).unwrap();
        let id = t.register(moving.ptr(), moving.len).unwrap();
        let (to, len) = victim.disown();
        // SAFETY: moving our own mapping over our own other mapping (which it unmaps).
        let p = unsafe {
            libc::mremap(
                moving.ptr() as *mut libc::c_void,
                len,
                len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                to as *mut libc::c_void,
            )
        };
        assert_eq!(p as usize, to, "mremap: {}", std::io::Error::last_os_error());
        moving.addr = to;
        // Writes to the moved range while the lost one is still registered, and after.
        moving.touch(1);
        moving.touch(6);
        assert!(matches!(t.collect(), Err(Error::RangeLost { .. })));
        t.unregister(lost).unwrap();
        moving.touch(3);
        let d = t.collect().unwrap();
        assert_eq!(t.range(id).unwrap().addr, to);
        assert_eq!(moving.check(&d, true), (3, 3), "{d:?}");
        t.unregister(id).unwrap();
    }
}

per_mode! {
    fn mremap_move_follows_the_range(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        let ps = page();
        let r = Region::anon(16);
        for p in 0..16 { r.write(p, 0, 9); }
        let id = t.register(r.ptr(), r.len).unwrap();
        r.touch(1); // written before the move: must still be reported after it
        // Reserve a destination, then move the range there.
        let dest = Region::anon(16);
        // SAFETY: moving our own mapping over our own reserved destination.
        let moved = unsafe {
            libc::mremap(r.ptr().cast(), r.len, r.len, libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, dest.ptr() as *mut libc::c_void)
        };
        assert_eq!(moved as usize, dest.addr, "mremap: {}", std::io::Error::last_os_error());
        std::mem::forget(r); // its pages now live at `dest`
        let info = t.range(id).unwrap();
        assert_eq!(info.addr, dest.addr, "the tracker knows where the range lives now");
        assert!(info.lost.is_none());
        let mut now = Region::borrowed(dest.addr, dest.len);
        now.touch(7);
        let d = t.collect().unwrap();
        assert!(d.contains(dest.addr + ps), "write before the move reported at the new address: {d:?}");
        assert!(d.contains(dest.addr + 7 * ps), "{d:?}");
        assert_eq!(d.len(), 2, "{d:?}");
        now.check(&d, false); // page 1 changed before `now`'s shadow was taken
        now.touch(3);
        assert_eq!(now.check(&t.collect().unwrap(), true), (1, 1));
        drop(now);
        t.unregister(id).unwrap();
        drop(dest);
    }
}

per_mode! {
    fn partial_mremap_loses_the_range_loudly(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        let r = Region::anon(8);
        let id = t.register(r.ptr(), r.len).unwrap();
        let dest = Region::anon(2);
        // SAFETY: moving two pages of our own mapping over our own destination.
        let moved = unsafe {
            libc::mremap((r.addr + 2 * page()) as *mut libc::c_void, 2 * page(), 2 * page(),
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED, dest.ptr() as *mut libc::c_void)
        };
        assert_eq!(moved as usize, dest.addr);
        assert!(matches!(t.collect(), Err(Error::RangeLost { id: x, .. }) if x == id));
        t.unregister(id).unwrap();
        // Pages 2..4 moved to `dest`; the hole may hold another test's memory: unmap only ours.
        let (addr, _) = r.disown();
        common::unmap_pieces(addr, &[0..2, 4..8]);
    }
}

per_mode! {
    fn fork_child_tracker_is_inert_and_parent_stays_exact(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        let mut r = Region::anon(16);
        for p in 0..16 { r.write(p, 0, 1); }
        t.register(r.ptr(), r.len).unwrap();
        r.rebase();
        // SAFETY: the child only touches its own copy of memory and calls the tracker, then _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let inert = matches!(t.collect(), Err(Error::ForkedChild { .. }))
                && matches!(t.register(r.ptr(), r.len), Err(Error::ForkedChild { .. }));
            for p in 0..16 { r.write(p, 0, 0xEE); } // private COW copy: the parent never sees it
            drop(t);
            // SAFETY: leave without running the test harness's atexit handlers.
            unsafe { libc::_exit(if inert { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child tracker must be inert");
        // Parent: the child's writes changed nothing here; the parent's own writes are exact.
        r.touch(2);
        r.touch(9);
        let d = t.collect().unwrap();
        assert_eq!(r.check(&d, true), (2, 2));
    }
}

per_mode! {
    fn mprotect_round_trips_stay_exact(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        let mut r = Region::anon(16);
        t.register(r.ptr(), r.len).unwrap();
        r.rebase();
        for prot in [libc::PROT_READ, libc::PROT_NONE] {
            // SAFETY: changing protection of our own mapping; we restore RW before touching it.
            unsafe {
                assert_eq!(libc::mprotect(r.ptr().cast(), r.len, prot), 0);
                assert_eq!(libc::mprotect(r.ptr().cast(), r.len, libc::PROT_READ | libc::PROT_WRITE), 0);
            }
            r.touch(4);
            r.touch(15);
            let d = t.collect().unwrap();
            assert_eq!(r.check(&d, true), (2, 2), "after mprotect {prot}");
        }
    }
}

#[test]
fn faults_queued_on_two_adjacent_ranges_one_replaced_meanwhile_poison_nothing() {
    // Sync mode only (faults are messages). Two ranges share a boundary in one mapping; a writer
    // blocks on the last page of the first, another on the first page of the second, while the
    // monitor is paused. Then the second range is replaced (`mmap(MAP_FIXED)` over it; its
    // UNMAP event waits behind the faults). The monitor reads both faults and the event in one
    // batch: the two faulting pages are adjacent, but they are two ranges, and the second's
    // VMA is no longer registered. Un-protecting them as one run failed with ENOENT, taken for
    // the first (still tracked) range's, and poisoned the tracker (seen in the chaos test).
    use std::sync::Arc;
    use std::time::Duration;
    let Some(t) = tracker(dirtytrack::Mode::Sync) else {
        return;
    };
    let whole = Arc::new(Region::anon(8));
    let half = 4 * page();
    let first = t.register(whole.ptr(), half).unwrap();
    let second = t.register((whole.addr + half) as *mut u8, half).unwrap();
    // The oracle's shadow of the first range (the second is replaced below).
    let mut first_half = Region::borrowed(whole.addr, half);
    assert!(
        t.__pause_monitor_for_test(Duration::from_secs(60)),
        "the monitor did not pause"
    );
    let w = whole.clone();
    let (w_second, tid) = spawn(Box::new(move || w.write(4, 0, 0xB2)));
    wait_in_userfaultfd(tid, "the writer of the second range's first page");
    let w = whole.clone();
    let (w_first, tid) = spawn(Box::new(move || w.write(3, 0, 0xA1)));
    wait_in_userfaultfd(tid, "the writer of the first range's last page");
    // The writer blocked in the second half writes into the new mapping once woken.
    let addr = whole.addr + half;
    let (replacer, tid) = spawn(Box::new(move || map_fresh_over(addr, half)));
    wait_in_userfaultfd(tid, "the replacing mmap (its UNMAP event)");
    t.__resume_monitor_for_test();
    for h in [w_first, w_second, replacer] {
        h.join().unwrap();
    }
    assert_eq!((whole.read(3, 0), whole.read(4, 0)), (0xA1, 0xB2));
    // The tracker is not poisoned: the replaced range says it is lost, the other one works.
    assert!(t.range(second).unwrap().lost.is_some());
    assert!(t.range(first).unwrap().lost.is_none());
    assert_eq!(
        first_half.check(&t.collect_range(first).unwrap(), true),
        (1, 1)
    );
    t.unregister(second).unwrap();
    first_half.touch(1);
    assert_eq!(first_half.check(&t.collect().unwrap(), true), (1, 1));
}
