//! Sync mode specifics: the prefault fallbacks and the consistent live snapshot.

mod common;
use common::{page, tracker, tracker_with, Region};
use dirtytrack::{features, Mode, Prefault, Tracker};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

fn prefault_tracker(p: Prefault) -> Option<Tracker> {
    tracker_with(
        Tracker::builder()
            .mode(Mode::Sync)
            .hide_features(features::WP_UNPOPULATED)
            .prefault(p),
    )
}

fn madvise(addr: usize, len: usize, advice: i32) {
    // SAFETY: advice on our own test mappings.
    assert_eq!(
        unsafe { libc::madvise(addr as *mut libc::c_void, len, advice) },
        0
    );
}

/// Without WP_UNPOPULATED, never-touched pages must be populated before protection, and pages
/// discarded later must be populated again before the next re-protect: no first write is lost.
fn no_first_write_lost(p: Prefault) {
    let Some(t) = prefault_tracker(p) else { return };
    assert_eq!(t.prefault(), p);
    let mut r = Region::anon(64); // never touched
    t.register(r.ptr(), r.len).unwrap();
    r.rebase();
    for i in (0..64).step_by(3) {
        r.touch(i);
    }
    let d = t.collect().unwrap();
    assert_eq!(
        r.check(&d, true),
        (22, 22),
        "22 first writes to never-touched pages"
    );
    // Discard, collect, then first writes to the now-empty pages.
    madvise(r.page_addr(8), 16 * page(), libc::MADV_DONTNEED);
    let d = t.collect().unwrap();
    r.check(&d, false);
    for i in 8..24 {
        r.touch(i);
    }
    let d = t.collect().unwrap();
    assert_eq!(r.check(&d, true), (16, 16), "first writes after a discard");
}

#[test]
fn populate_read_fallback_loses_no_first_write() {
    no_first_write_lost(Prefault::PopulateRead);
}

#[test]
fn read_touch_fallback_loses_no_first_write() {
    no_first_write_lost(Prefault::ReadTouch);
}

#[test]
fn live_snapshot_is_the_contents_at_one_instant() {
    let Some(t) = tracker(Mode::Sync) else { return };
    const PAGES: usize = 16384; // 64 MiB: the background copy takes a while
    const WRITERS: usize = 3;
    let ps = page();
    let mut r = Region::anon(PAGES);
    let id = t.register(r.ptr(), r.len).unwrap();
    let r_shared = Arc::new(Region::borrowed(r.addr, r.len));
    // seq[p]: the number of writes completed to page p; a write stamps seq+1 at both ends.
    let seq: Arc<Vec<AtomicU64>> = Arc::new((0..PAGES).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    // Stops and joins the writers however the test ends, before the region is unmapped.
    struct Writers(Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>);
    impl Drop for Writers {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
            for w in self.1.drain(..) {
                let _ = w.join();
            }
        }
    }
    let writers = (0..WRITERS)
        .map(|w| {
            let (r, seq, stop) = (r_shared.clone(), seq.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut x = 0x2545F4914F6CDD1Du64 + w as u64;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let p = ((x as usize) % (PAGES / WRITERS)) * WRITERS + w;
                    let n = seq[p].load(Ordering::Relaxed) + 1;
                    let base = r.page_addr(p);
                    // SAFETY: aligned u64 stores inside the mapping (this writer owns page p).
                    unsafe {
                        std::ptr::write_volatile(base as *mut u64, n);
                        std::ptr::write_volatile((base + ps - 8) as *mut u64, n);
                    }
                    seq[p].store(n, Ordering::Release);
                }
            })
        })
        .collect();
    let writers = Writers(stop.clone(), writers);
    std::thread::sleep(std::time::Duration::from_millis(50));
    let lo: Vec<u64> = seq.iter().map(|s| s.load(Ordering::Acquire)).collect();
    let snap = t.live_snapshot(id).unwrap();
    let hi: Vec<u64> = seq.iter().map(|s| s.load(Ordering::Acquire) + 1).collect();
    // Let the writers complete 5000 more writes after the instant before the copy is collected.
    let total = |v: &[u64]| v.iter().sum::<u64>();
    // A liveness bound, not a timing assertion (generous for emulated kernels).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while total(
        &seq.iter()
            .map(|s| s.load(Ordering::Acquire))
            .collect::<Vec<_>>(),
    ) < total(&hi) + 5000
    {
        assert!(std::time::Instant::now() < deadline, "writers stalled");
        std::thread::yield_now();
    }
    let copy = snap.wait().unwrap();
    let after: Vec<u64> = seq.iter().map(|s| s.load(Ordering::Acquire)).collect();
    drop(writers);
    assert_eq!(copy.addr, r.addr);
    let word = |p: usize, off: usize| {
        u64::from_ne_bytes(
            copy.data[p * ps + off..p * ps + off + 8]
                .try_into()
                .unwrap(),
        )
    };
    let mut moved_on = 0;
    for p in 0..PAGES {
        let (a, b) = (word(p, 0), word(p, ps - 8));
        // A writer stores at offset 0, then at the end: at any one instant a == b, or a == b + 1
        // (the instant fell between its two stores). a < b would be a copy spread over time.
        assert!(
            a == b || a == b + 1,
            "page {p} is torn in the copy (start #{a}, end #{b})"
        );
        assert!(
            a >= lo[p] && a <= hi[p],
            "page {p}: copy has write #{a}, but the instant saw #{}..=#{}",
            lo[p],
            hi[p]
        );
        if after[p] >= hi[p] {
            moved_on += 1;
        }
    }
    assert!(moved_on > 0, "writers kept writing after the instant");
    // The instant acted as a collect: what changed since is what the next collect reports.
    let d = t.collect_range(id).unwrap();
    for p in 0..PAGES {
        // SAFETY: reading a u64 of our own mapping (writers joined).
        let now = unsafe { std::ptr::read_volatile(r.page_addr(p) as *const u64) };
        if now != word(p, 0) {
            assert!(
                d.contains(r.page_addr(p)),
                "page {p} changed after the instant but was not reported"
            );
        }
    }
    r.rebase();
    eprintln!("live snapshot: {PAGES} pages, {moved_on} pages written again during the copy");
}

#[test]
fn live_snapshot_refuses_a_second_one_and_fails_loudly_on_discard() {
    let Some(t) = tracker(Mode::Sync) else { return };
    let r = Region::anon(4096);
    let id = t.register(r.ptr(), r.len).unwrap();
    let snap = t.live_snapshot(id).unwrap();
    assert!(matches!(
        t.live_snapshot(id),
        Err(dirtytrack::Error::SnapshotInProgress(_))
    ));
    let ok = snap.wait();
    assert!(ok.is_ok(), "{ok:?}");
    // A discard that lands before the pages are copied must make the snapshot fail, not lie.
    let big = Region::anon(64 * 1024); // 256 MiB: the background copy takes a while
    let big_id = t.register(big.ptr(), big.len).unwrap();
    for p in (0..big.pages()).step_by(64) {
        big.write(p, 0, 1);
    }
    let snap = t.live_snapshot(big_id).unwrap();
    madvise(
        big.page_addr(big.pages() - 1024),
        1024 * page(),
        libc::MADV_DONTNEED,
    );
    // The background pass copies from the start; the discarded pages are the last 4 MiB.
    let e = snap
        .wait()
        .expect_err("a discard of uncopied pages must fail the snapshot");
    assert!(
        matches!(e, dirtytrack::Error::LiveSnapshotFailed { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("discard"), "{e}");
    // Tracking itself lost nothing: the discarded pages are reported.
    let d = t.collect_range(big_id).unwrap();
    assert!(d.contains(big.page_addr(big.pages() - 1)));
}

/// Faults the monitor reads while it retries an un-protect that answered `EAGAIN` (a discard's
/// event was in flight) are served too: every writer finishes, and every page written is in a
/// collect. Before the fix such a fault, appended after the sorted ones, could be swallowed by a
/// later coalesced run that did not cover it, and its writer waited forever (a small version of
/// this hung in 5 of 5 runs).
#[test]
fn faults_read_during_an_eagain_retry_are_all_served() {
    let Some(t) = tracker(Mode::Sync) else { return };
    const WRITERS: usize = 8;
    const SLICE: usize = 64;
    let t = Arc::new(t);
    let mut r = Region::anon(16 + WRITERS * SLICE);
    let id = t.register(r.ptr(), r.len).unwrap();
    r.rebase();
    let r = Arc::new(r);
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads: Vec<std::thread::JoinHandle<()>> = (0..WRITERS)
        .map(|w| {
            let (r, stop) = (r.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    r.write(16 + w * SLICE + i % SLICE, i % 7, (i % 251) as u8 + 1);
                    i += 1;
                }
            })
        })
        .collect();
    {
        // Discards of pages no writer uses: each blocks until the monitor reads its event, and
        // meanwhile every UFFDIO_WRITEPROTECT of the tracker answers EAGAIN.
        let (r, stop) = (r.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                madvise(r.page_addr(0), 8 * page(), libc::MADV_DONTNEED);
                std::thread::sleep(std::time::Duration::from_micros(20));
            }
        }));
    }
    let mut seen = t.collect().unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let mut collects = 1;
    while std::time::Instant::now() < until {
        seen.union(&t.collect().unwrap());
        collects += 1;
    }
    stop.store(true, Ordering::Relaxed);
    // A bound on a hang, not on speed: the writers stop at their next store.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while threads.iter().any(|h| !h.is_finished()) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let stuck = threads.iter().filter(|h| !h.is_finished()).count();
    if stuck > 0 {
        let _ = t.unregister(id); // releases the blocked writers
        panic!("HANG: {stuck} writer(s) still blocked in a fault 30 s after the last collect ({collects} collects)");
    }
    for h in threads {
        h.join().unwrap();
    }
    seen.union(&t.collect().unwrap());
    let mut r = Arc::try_unwrap(r).unwrap_or_else(|_| panic!("region still shared"));
    let (changed, _) = r.check(&seen, false);
    assert!(changed > 0, "the writers wrote");
}
