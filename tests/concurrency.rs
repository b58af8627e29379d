//! Writers racing collects: every write appears in the collect it raced with or the next one
//! (the stamp-window check of the shared oracle, `common::CollectHistory`).

mod common;
use common::{page, tracker, CollectHistory, Region, WriteStamps};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Scales the run length: `DIRTYTRACK_STRESS_SECS` (default 2 seconds per mode).
fn stress_duration() -> Duration {
    let secs = std::env::var("DIRTYTRACK_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

per_mode! {
    fn writers_racing_collects_lose_nothing(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        const PAGES: usize = 2048;
        const WRITERS: usize = 3;
        let mut r = Region::anon(PAGES);
        t.register(r.ptr(), r.len).unwrap();
        r.rebase();
        let r = Arc::new(r);
        // Each write is stamped with the number of collects started before its store, and
        // must be in the collect it raced with or a later one (`common::WriteStamps`).
        let stamps = Arc::new(WriteStamps::new(PAGES));
        let stop = Arc::new(AtomicBool::new(false));
        let stores = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (r, stamps, stop, stores) = (r.clone(), stamps.clone(), stop.clone(), stores.clone());
                std::thread::spawn(move || {
                    let mut x = 0x9E3779B97F4A7C15u64 ^ (w as u64 + 1);
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                        // Each writer owns the pages p with p % WRITERS == w.
                        let p = ((x as usize) % (PAGES / WRITERS)) * WRITERS + w;
                        let off = (x >> 32) as usize % page();
                        let e = stamps.stamp();
                        r.write(p, off, r.read(p, off).wrapping_add(1) | 1);
                        stamps.written(p, e);
                        n += 1;
                    }
                    stores.fetch_add(n, Ordering::Relaxed);
                })
            })
            .collect();
        let deadline = Instant::now() + stress_duration();
        let mut history = CollectHistory::new();
        while Instant::now() < deadline {
            // Writes completed before collect k starts: page and the stamp of a completed write.
            let done = stamps.completed();
            let k = stamps.start_collect();
            history.push(t.collect().unwrap());
            history.compare_stamped(&r, &done, k).assert_ok();
        }
        let collects = history.len();
        stop.store(true, Ordering::Relaxed);
        for w in writers { w.join().unwrap(); }
        history.push(t.collect().unwrap());
        let mut r = Arc::try_unwrap(r).ok().expect("writers joined");
        r.check(history.all(), false); // every page that changed over the whole run was reported
        let n = stores.load(Ordering::Relaxed);
        eprintln!("{mode:?}: {n} writes, {collects} collects, 0 lost");
        assert!(n > 0 && collects > 1);
    }
}

per_mode! {
    fn many_threads_fault_on_one_page_and_many_pages_at_once(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        let mut r = Region::anon(256);
        t.register(r.ptr(), r.len).unwrap();
        r.rebase();
        let r = Arc::new(r);
        let go = Arc::new(std::sync::Barrier::new(16));
        let hs: Vec<_> = (0..16)
            .map(|i| {
                let (r, go) = (r.clone(), go.clone());
                std::thread::spawn(move || {
                    go.wait();
                    r.write(0, i, 0xAA); // all threads fault on page 0
                    for p in (1 + i..256).step_by(16) { r.write(p, 0, 1); }
                })
            })
            .collect();
        for h in hs { h.join().unwrap(); }
        let d = t.collect().unwrap();
        let mut r = Arc::try_unwrap(r).ok().expect("joined");
        assert_eq!(r.check(&d, true), (256, 256));
    }
}

per_mode! {
    fn collect_racing_unregister_and_drop(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        let t = Arc::new(t);
        let regions: Vec<Region> = (0..8).map(|_| Region::anon(64)).collect();
        let ids: Vec<_> = regions.iter().map(|r| t.register(r.ptr(), r.len).unwrap()).collect();
        let collector = {
            let t = t.clone();
            std::thread::spawn(move || {
                for _ in 0..200 {
                    match t.collect() {
                        Ok(_) => {}
                        Err(e) => panic!("collect while ranges are unregistered must not fail: {e}"),
                    }
                }
            })
        };
        for (r, id) in regions.iter().zip(&ids) {
            for p in 0..r.pages() { r.touch(p); }
            t.unregister(*id).unwrap();
        }
        collector.join().unwrap();
        assert!(t.ranges().is_empty());
        drop(t); // the last handle: joins the monitor, no hang
    }
}

#[test]
fn writer_blocked_in_a_fault_is_released_when_the_tracker_is_dropped() {
    // Sync mode only: a writer blocks until the monitor un-protects its page. The monitor is
    // paused, the writer faults and blocks, and the tracker is dropped under it: the drop must
    // release the writer (UFFDIO_UNREGISTER alone does not wake write-protect waiters).
    let Some(t) = tracker(dirtytrack::Mode::Sync) else {
        return;
    };
    let r = Arc::new(Region::anon(4));
    t.register(r.ptr(), r.len).unwrap();
    assert!(
        t.__pause_monitor_for_test(Duration::from_secs(30)),
        "the monitor did not pause"
    );
    let done = Arc::new(AtomicBool::new(false));
    let w = {
        let (r, done) = (r.clone(), done.clone());
        std::thread::spawn(move || {
            r.write(1, 0, 7);
            done.store(true, Ordering::Release);
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !done.load(Ordering::Acquire),
        "the writer must be blocked in its fault"
    );
    let started = Instant::now();
    drop(t); // unregisters and wakes first; then stops the (paused) monitor
    w.join().unwrap();
    assert_eq!(r.read(1, 0), 7);
    eprintln!(
        "writer released; drop took {:?} (the monitor was paused for 30 s)",
        started.elapsed()
    );
}
