//! Ports of the kernel's pagemap_ioctl selftest scenarios: scan continuation with tiny output
//! vectors and page limits, independent ranges, one page toggled many times.

mod common;
use common::{tracker, tracker_with, Region};
use dirtytrack::{Mode, Tracker};

#[test]
fn walk_end_resumption_with_tiny_vectors_and_page_limits() {
    for (vec_len, max_pages) in [(1, 0), (7, 0), (1024, 50), (3, 5)] {
        let Some(t) = tracker_with(
            Tracker::builder()
                .mode(Mode::Async)
                .scan_limits(vec_len, max_pages),
        ) else {
            return;
        };
        let mut r = Region::anon(4096);
        t.register(r.ptr(), r.len).unwrap();
        r.rebase();
        // 896 dirty pages in runs of varied length.
        let mut n = 0;
        for p in 0..4096 {
            if p % 9 < 2 || (p % 64 == 13) {
                r.touch(p);
                n += 1;
            }
        }
        let d = t.collect().unwrap();
        let (changed, reported) = r.check(&d, true);
        assert_eq!(
            (changed, reported),
            (n, n),
            "vec_len {vec_len}, max_pages {max_pages}"
        );
        assert!(
            t.collect().unwrap().is_empty(),
            "a resumed scan re-protected everything it reported"
        );
    }
}

per_mode! {
    fn one_page_toggled_a_hundred_times(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        let mut r = Region::anon(8);
        t.register(r.ptr(), r.len).unwrap();
        r.rebase();
        for _ in 0..100 {
            r.touch(5);
            assert_eq!(r.check(&t.collect().unwrap(), true), (1, 1));
            assert!(t.collect().unwrap().is_empty());
        }
    }
}

per_mode! {
    fn independent_ranges_and_per_range_calls(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        let mut a = Region::anon(32);
        let mut b = Region::anon(32);
        let ia = t.register(a.ptr(), a.len).unwrap();
        let ib = t.register(b.ptr(), b.len).unwrap();
        a.rebase();
        b.rebase();
        a.touch(1);
        b.touch(2);
        assert_eq!(t.peek_range(ia).unwrap().len(), 1);
        let da = t.collect_range(ia).unwrap();
        assert_eq!(a.check(&da, true), (1, 1));
        assert!(!da.contains(b.page_addr(2)), "a per-range collect reports only its range");
        t.clear_range(ib).unwrap();
        b.rebase();
        assert!(t.collect().unwrap().is_empty(), "range b was cleared, range a collected");
        b.touch(31);
        assert_eq!(b.check(&t.collect().unwrap(), true), (1, 1));
    }
}

per_mode! {
    fn sparse_multi_gib_range(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        // 8 GiB of address space, never touched except for 1000 scattered pages.
        // No shadow copy here (8 GiB would not fit a small test VM): the expected pages are known.
        let pages = (8usize << 30) / common::page();
        let m = dirtytrack::sys::mem::AnonMapping::new(pages * common::page()).unwrap();
        t.register(m.addr() as *mut u8, m.len()).unwrap();
        let mut want = Vec::new();
        for k in 0..1000usize {
            let a = m.addr() + (k * 2_097_143) % pages * common::page();
            // SAFETY: a byte inside our own mapping.
            unsafe { std::ptr::write_volatile(a as *mut u8, 1) };
            want.push(a);
        }
        want.sort_unstable();
        want.dedup();
        let d = t.collect().unwrap();
        assert_eq!(d.pages().collect::<Vec<_>>(), want);
        assert!(t.collect().unwrap().is_empty());
        drop(t); // before the mapping goes
    }
}

per_mode! {
    fn many_ranges(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        let mut rs: Vec<Region> = (0..64).map(|_| Region::anon(8)).collect();
        for r in &mut rs {
            t.register(r.ptr(), r.len).unwrap();
            r.rebase();
        }
        for (i, r) in rs.iter().enumerate() { r.touch(i % 8); }
        let d = t.collect().unwrap();
        for r in &mut rs { assert_eq!(r.check(&d, true), (1, 1)); }
        assert_eq!(d.len(), 64);
    }
}
