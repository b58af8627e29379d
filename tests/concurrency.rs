//! Writers racing collects: every write appears in the collect it raced with or the next one
//! (the stamp-window check of the shared oracle, `common::CollectHistory`); `mark_dirty` and
//! discards racing collects the same way; collects racing registers that fail after the range was
//! listed never report a range id no register returned.

mod common;
use common::{page, tracker, CollectHistory, Region, WriteStamps};
use dirtytrack::{DirtySet, Error, Mode, RangeId, Tracker};
use std::collections::HashMap;
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

/// A small xorshift generator for the stress threads (each thread its own seed).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_add(1).wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    fn below(&mut self, n: usize) -> usize {
        let x = &mut self.0;
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        (*x % n as u64) as usize
    }
}

/// Sets the stop flag when dropped: a failing assertion of the collecting thread also ends the
/// threads it races with.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Joins stress threads that were told to stop, returning what each returned. Nothing but a
/// write fault blocks them, so one still running 30 s later waits for a fault the monitor will
/// never serve: then every range is unregistered (which wakes it), and the test fails with
/// `HANG` and the userfaultfd's queue (`pending`: faults not read yet; `total` - `pending`:
/// faults read but not answered).
fn join_or_release(t: &Tracker, threads: Vec<std::thread::JoinHandle<u64>>) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while threads.iter().any(|h| !h.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let stuck = threads.iter().filter(|h| !h.is_finished()).count();
    if stuck > 0 {
        let in_fault = std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|task| {
                // wchan, or the kernel stack where wchan reads "0" (x86_64 ORC kernels < 5.16).
                ["wchan", "stack"].iter().any(|f| {
                    std::fs::read_to_string(task.path().join(f))
                        .is_ok_and(|w| w.contains("userfault"))
                })
            })
            .count();
        let queues: Vec<String> = std::fs::read_dir("/proc/self/fdinfo")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|f| std::fs::read_to_string(f.path()).ok())
            .filter(|info| info.contains("pending:"))
            .map(|info| info.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        for r in t.ranges() {
            let _ = t.unregister(r.id);
        }
        for h in threads {
            let _ = h.join();
        }
        panic!(
            "HANG: {stuck} stopped threads still blocked after 30 s, {in_fault} threads in \
             userfaultfd code; userfaultfd fdinfo: {queues:?}"
        );
    }
    threads.into_iter().map(|h| h.join().unwrap()).collect()
}

per_mode! {
    fn marks_and_discards_racing_collects_lose_nothing(mode: Mode) {
        // Issue 23: a mark (`mark_dirty`, or the monitor marking a discarded range from
        // UFFD_EVENT_REMOVE) racing the collect that takes the marks must be in that collect or
        // a later one. Marks, discards and writes are stamped like the writes of
        // `writers_racing_collects_lose_nothing` (`common::WriteStamps`): each must appear in one
        // of the collects from the one running when it was made to the first that started after
        // it returned.
        let Some(t) = tracker(mode) else { return };
        const PAGES: usize = 4096;
        // Pages are owned in blocks: block b belongs to writer or discarder b % OWNERS. Markers
        // mark any page (a mark changes no memory).
        const BLOCK: usize = 16;
        const WRITERS: usize = 2;
        const DISCARDERS: usize = 1;
        const MARKERS: usize = 2;
        const OWNERS: usize = WRITERS + DISCARDERS;
        let owned_page = |rng: &mut Rng, owner: usize| {
            (rng.below(PAGES / BLOCK / OWNERS) * OWNERS + owner) * BLOCK + rng.below(BLOCK)
        };
        let mut r = Region::anon(PAGES);
        // Two ranges: the second half populated-only in async mode (`register_sparse`: its
        // discards are reported through the freed-page watch, not the page tables).
        let half = PAGES / 2 * page();
        t.register(r.ptr(), half).unwrap();
        let second = r.page_addr(PAGES / 2) as *mut u8;
        match mode {
            Mode::Async => t.register_sparse(second, half),
            _ => t.register(second, half),
        }
        .unwrap();
        r.rebase();
        let (t, r) = (Arc::new(t), Arc::new(r));
        let stamps = Arc::new(WriteStamps::new(PAGES));
        let stop = Arc::new(AtomicBool::new(false));
        let _stop_on_panic = StopOnDrop(stop.clone());
        type Body = Box<dyn FnOnce(&Tracker, &Region, &WriteStamps, &AtomicBool) -> u64 + Send>;
        let spawn = |f: Body| {
            let (t, r, stamps, stop) = (t.clone(), r.clone(), stamps.clone(), stop.clone());
            std::thread::spawn(move || f(&t, &r, &stamps, &stop))
        };
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                spawn(Box::new(move |_, r, stamps, stop| {
                    let (mut rng, mut n) = (Rng::new(w as u64), 0);
                    while !stop.load(Ordering::Relaxed) {
                        let p = owned_page(&mut rng, w);
                        let off = rng.below(page());
                        let e = stamps.stamp();
                        r.write(p, off, r.read(p, off).wrapping_add(1) | 1);
                        stamps.written(p, e);
                        n += 1;
                    }
                    n
                }))
            })
            .collect();
        let discarders: Vec<_> = (0..DISCARDERS)
            .map(|d| {
                spawn(Box::new(move |_, r, stamps, stop| {
                    let (mut rng, mut n) = (Rng::new(100 + d as u64), 0);
                    while !stop.load(Ordering::Relaxed) {
                        // A run inside one of this thread's blocks: written (not zero any more),
                        // then discarded (zero again), so the discard changes every page of it.
                        let first = owned_page(&mut rng, WRITERS + d);
                        let run = first..first + 1 + rng.below(BLOCK - first % BLOCK);
                        let e = stamps.stamp();
                        for p in run.clone() {
                            r.write(p, rng.below(page()), 0xA5);
                        }
                        for p in run.clone() {
                            stamps.written(p, e);
                        }
                        let e = stamps.stamp();
                        // SAFETY: pages of the test's own mapping, accessed only by address.
                        let rc = unsafe {
                            libc::madvise(
                                r.page_addr(run.start) as *mut libc::c_void,
                                run.len() * page(),
                                libc::MADV_DONTNEED,
                            )
                        };
                        assert_eq!(rc, 0, "MADV_DONTNEED: {}", std::io::Error::last_os_error());
                        for p in run.clone() {
                            stamps.written(p, e);
                        }
                        n += run.len() as u64;
                    }
                    n
                }))
            })
            .collect();
        let markers: Vec<_> = (0..MARKERS)
            .map(|m| {
                spawn(Box::new(move |t, r, stamps, stop| {
                    // Marking never blocks: lowest priority, so that in sync mode the monitor
                    // still serves the writers' faults promptly (2 vCPUs).
                    lowest_priority();
                    let (mut rng, mut n) = (Rng::new(200 + m as u64), 0);
                    while !stop.load(Ordering::Relaxed) {
                        // 1 to 8 pages, from and to a random byte (unaligned), sometimes across
                        // the two ranges.
                        let first = rng.below(PAGES);
                        let pages = 1 + rng.below(8.min(PAGES - first));
                        let (a, b) = (rng.below(page()), rng.below(page()));
                        let (a, b) = if pages == 1 { (a.min(b), a.max(b)) } else { (a, b) };
                        let addr = r.page_addr(first) + a;
                        let end = r.page_addr(first + pages - 1) + b + 1;
                        let e = stamps.stamp();
                        t.mark_dirty(addr as *const u8, end - addr).unwrap();
                        for p in first..first + pages {
                            stamps.written(p, e);
                        }
                        n += pages as u64;
                    }
                    n
                }))
            })
            .collect();
        let deadline = Instant::now() + stress_duration();
        let mut history = CollectHistory::new();
        let collect = |history: &mut CollectHistory| {
            // Operations completed before collect k starts: page and stamp.
            let done = stamps.completed();
            let k = stamps.start_collect();
            history.push(t.collect().unwrap());
            history.compare_stamped(&r, &done, k).assert_ok();
        };
        while Instant::now() < deadline {
            collect(&mut history);
        }
        let collects = history.len();
        stop.store(true, Ordering::Relaxed);
        let sum = |hs| join_or_release(&t, hs).into_iter().sum::<u64>();
        let (writes, discarded, marked) = (sum(writers), sum(discarders), sum(markers));
        // The last operations of every thread, then the shadow: every page that changed over the
        // whole run was reported.
        collect(&mut history);
        let mut r = Arc::try_unwrap(r).ok().expect("threads joined");
        r.check(history.all(), false);
        eprintln!(
            "{mode:?}: {marked} pages marked, {discarded} pages discarded, {writes} writes, \
             {collects} collects, 0 lost"
        );
        assert!(marked > 0 && discarded > 0 && writes > 0 && collects > 1);
    }
}

/// Gives the calling thread the lowest scheduling priority (nice 19; Linux nice values are per
/// thread), for a stress thread that never blocks.
fn lowest_priority() {
    // SAFETY: changes this thread's nice value only.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    assert_eq!(rc, 0, "setpriority: {}", std::io::Error::last_os_error());
}

/// Makes `UFFDIO_WRITEPROTECT` and `PAGEMAP_SCAN` fail with `EPERM` in the calling thread only
/// (a seccomp filter installed without `SECCOMP_FILTER_FLAG_TSYNC` binds this thread and the
/// threads it starts later; it starts none). A register from this thread then fails at its last
/// step, arming the range (`register`: `UFFDIO_WRITEPROTECT`; `register_sparse`: `PAGEMAP_SCAN`),
/// after `UFFDIO_REGISTER` and after the range was added to the tracker's list. No other public
/// way makes a register fail that late: every other check comes before the range is listed,
/// and arming fails otherwise only if the memory is unmapped in a window of microseconds.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn deny_arming_ioctls_in_this_thread() -> Result<(), String> {
    use common::seccomp::{deny_in_this_thread, Deny};
    use dirtytrack::sys::{pagemap::PAGEMAP_SCAN, uffd::UFFDIO_WRITEPROTECT};
    deny_in_this_thread(
        &[Deny::Ioctl(UFFDIO_WRITEPROTECT), Deny::Ioctl(PAGEMAP_SCAN)],
        libc::EPERM,
    )?;
    // The filter works: both requests fail with EPERM before the kernel looks at the fd (EBADF
    // without the filter).
    for (name, request) in [
        ("UFFDIO_WRITEPROTECT", UFFDIO_WRITEPROTECT),
        ("PAGEMAP_SCAN", PAGEMAP_SCAN),
    ] {
        // SAFETY: an ioctl on no fd; nothing is read or written.
        let rc = unsafe { libc::ioctl(-1, request as _, std::ptr::null_mut::<libc::c_void>()) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        assert!(
            rc == -1 && errno == Some(libc::EPERM),
            "{name} under the filter: rc {rc}, errno {errno:?}"
        );
    }
    Ok(())
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn deny_arming_ioctls_in_this_thread() -> Result<(), String> {
    Err("the test's seccomp filter knows x86_64 and aarch64 only".into())
}

per_mode! {
    fn collects_never_report_a_range_register_did_not_return(mode: Mode) {
        // Issue 23: a register lists its range (for the monitor) before arming it. A collect
        // that ran in between reported the range, and when arming failed, register rolled it
        // back and returned an error: the collect had reported a RangeId nobody was given.
        //
        // One thread registers and unregisters small ranges (writing and marking a page of each),
        // another registers with the arming ioctls denied by a thread-local seccomp filter (every
        // one of its registers fails after the range was listed), a third writes an anchor range
        // registered throughout (stamped writes: the shared oracle), and this thread collects.
        // Every range of every collect must be one a register call returned, at the address
        // and length it was registered with. A collect may report a range whose register has
        // returned before the registering thread recorded the id: those are checked once every
        // thread has stopped, against every id returned by then.
        let Some(t) = tracker(mode) else { return };
        const ANCHOR: usize = 64;
        const SLOT: usize = 8;
        const SLOTS: usize = 4;
        let mut anchor = Region::anon(ANCHOR);
        let anchor_id = t.register(anchor.ptr(), anchor.len).unwrap();
        anchor.rebase();
        let (t, anchor) = (Arc::new(t), Arc::new(anchor));
        // Every id a register returned: where and how many pages.
        // parking_lot's lock: TSan sees it (std's is not instrumented in the sanitizer runs).
        let returned = Arc::new(parking_lot::Mutex::new(HashMap::from([(
            anchor_id,
            (anchor.addr, ANCHOR),
        )])));
        let stamps = Arc::new(WriteStamps::new(ANCHOR));
        let stop = Arc::new(AtomicBool::new(false));
        let _stop_on_panic = StopOnDrop(stop.clone());
        let writer = {
            let (anchor, stamps, stop) = (anchor.clone(), stamps.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut rng, mut n) = (Rng::new(1), 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let (p, off) = (rng.below(ANCHOR), rng.below(page()));
                    let e = stamps.stamp();
                    anchor.write(p, off, anchor.read(p, off).wrapping_add(1) | 1);
                    stamps.written(p, e);
                    n += 1;
                }
                n
            })
        };
        let registrar = {
            let (t, returned, stop) = (t.clone(), returned.clone(), stop.clone());
            std::thread::spawn(move || {
                let slots: Vec<Region> = (0..SLOTS).map(|_| Region::anon(SLOT)).collect();
                let mut ids: Vec<Option<RangeId>> = vec![None; SLOTS];
                let (mut rng, mut registers, mut i) = (Rng::new(2), 0u64, 0);
                while !stop.load(Ordering::Relaxed) {
                    let (s, r) = (i % SLOTS, &slots[i % SLOTS]);
                    i += 1;
                    if let Some(id) = ids[s].take() {
                        t.unregister(id).unwrap();
                        continue;
                    }
                    let id = if mode == Mode::Async && registers % 2 == 1 {
                        t.register_sparse(r.ptr(), r.len)
                    } else {
                        t.register(r.ptr(), r.len)
                    }
                    .unwrap();
                    returned.lock().insert(id, (r.addr, SLOT));
                    ids[s] = Some(id);
                    registers += 1;
                    // Something for the collects to report: a write and a mark.
                    r.touch(rng.below(SLOT));
                    t.mark_dirty(r.page_addr(rng.below(SLOT)) as *const u8, 1).unwrap();
                }
                for id in ids.into_iter().flatten() {
                    t.unregister(id).unwrap();
                }
                registers
            })
        };
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let failing = {
            let (t, returned, stop) = (t.clone(), returned.clone(), stop.clone());
            std::thread::spawn(move || {
                let r = Region::anon(SLOT);
                for p in 0..SLOT {
                    r.touch(p); // populated: register_sparse has pages to protect
                }
                // Lowest priority: this thread never blocks, and in sync mode the other
                // registrar and the writer wait for the monitor at every first write after a
                // collect (2 vCPUs). Only how often each thread runs, not synchronisation.
                lowest_priority();
                let filtered = deny_arming_ioctls_in_this_thread();
                let denied = filtered.is_ok();
                ready_tx.send((filtered, r.addr)).unwrap();
                let mut failed = 0u64;
                while denied && !stop.load(Ordering::Relaxed) {
                    let sparse = mode == Mode::Async && failed % 2 == 1;
                    let result = if sparse {
                        t.register_sparse(r.ptr(), r.len)
                    } else {
                        t.register(r.ptr(), r.len)
                    };
                    match result {
                        Err(Error::Kernel { source, .. })
                            if source.raw_os_error() == Some(libc::EPERM) =>
                        {
                            failed += 1;
                        }
                        Err(e) => panic!("a register with arming denied failed otherwise: {e}"),
                        Ok(id) => {
                            returned.lock().insert(id, (r.addr, SLOT));
                            panic!("a register with arming denied returned {id:?}");
                        }
                    }
                }
                failed
            })
        };
        let (filtered, failing_addr) = ready.recv().unwrap();
        if let Err(reason) = filtered {
            stop.store(true, Ordering::Relaxed);
            for h in [writer, registrar, failing] {
                h.join().unwrap();
            }
            common::skip(&format!("cannot deny the arming ioctls in one thread: {reason}"));
            return;
        }
        let deadline = Instant::now() + stress_duration();
        let mut history = CollectHistory::new();
        // Ranges collects reported whose id was not (yet) recorded as returned: (collect, id,
        // start, pages).
        let mut unknown: Vec<(u64, RangeId, usize, usize)> = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        let mut views = 0u64;
        // Anchor writes whose collect failed: a failed collect hands what it took back to the
        // next one, so they are checked with the next collect that succeeds.
        let mut carried: Vec<(usize, u64)> = Vec::new();
        let mut collect = |history: &mut CollectHistory| {
            carried.extend(stamps.completed());
            let k = stamps.start_collect();
            let d = match t.collect() {
                Ok(d) => d,
                Err(e) => {
                    // A range lost under a collect names its id: it must have been returned too.
                    if let Error::RangeLost { id, start, end, .. } = &e {
                        unknown.push((k, *id, *start, (end - start) / page()));
                    }
                    errors.push(format!("collect #{k}: {e}"));
                    history.push(DirtySet::new());
                    return;
                }
            };
            {
                let returned = returned.lock();
                for v in d.ranges() {
                    let Some(id) = v.id() else { continue };
                    views += 1;
                    match returned.get(&id) {
                        Some(&(addr, pages)) => assert_eq!(
                            (v.start(), v.page_count()),
                            (addr, pages),
                            "collect #{k}: {id:?} is not where its register put it"
                        ),
                        None => unknown.push((k, id, v.start(), v.page_count())),
                    }
                }
            }
            // Only the anchor's pages are kept (the history holds every collect).
            let mut kept = DirtySet::new();
            let anchor_view = d.range(anchor_id).expect("every collect covers the anchor range");
            for run in anchor_view.runs() {
                kept.insert_range(anchor_view.start() + run.start..anchor_view.start() + run.end);
            }
            history.push(kept);
            history.compare_stamped(&anchor, &carried, k).assert_ok();
            carried.clear();
        };
        while Instant::now() < deadline {
            collect(&mut history);
        }
        let collects = history.len();
        stop.store(true, Ordering::Relaxed);
        let [writes, registers, failed] = join_or_release(&t, vec![writer, registrar, failing])[..]
        else {
            unreachable!("three threads")
        };
        collect(&mut history);
        // Every thread has stopped: every id a register returned is recorded. The ids collects
        // reported that no register returned, each with where it was and the collects that
        // reported it.
        let returned = returned.lock();
        let mut unreturned: std::collections::BTreeMap<RangeId, (usize, usize, Vec<u64>)> =
            Default::default();
        let mut misplaced = Vec::new();
        for &(k, id, start, pages) in &unknown {
            match returned.get(&id) {
                None => unreturned.entry(id).or_insert((start, pages, Vec::new())).2.push(k),
                Some(&place) if place != (start, pages) => misplaced.push((k, id, start, pages)),
                Some(_) => {}
            }
        }
        let shown: Vec<String> = unreturned
            .iter()
            .take(8)
            .map(|(id, (start, pages, ks))| {
                format!(
                    "{id:?} at {start:#x} ({pages} pages) in {} collects from #{}",
                    ks.len(),
                    ks[0]
                )
            })
            .collect();
        assert!(
            unreturned.is_empty() && misplaced.is_empty() && errors.is_empty(),
            "{mode:?}: collects reported {} range ids no register returned (the failing \
             registers' range is at {failing_addr:#x}): {shown:?}; at another place than \
             registered: {:?}; {} collects failed: {:?}",
            unreturned.len(),
            &misplaced[..misplaced.len().min(8)],
            errors.len(),
            &errors[..errors.len().min(4)],
        );
        drop(returned);
        let mut anchor = Arc::try_unwrap(anchor).ok().expect("writer joined");
        anchor.check(history.all(), false);
        eprintln!(
            "{mode:?}: {registers} registers, {failed} registers failed after listing the range, \
             {collects} collects ({views} range views), {writes} anchor writes; 0 unreturned ids, \
             0 lost"
        );
        assert!(registers > 0 && failed > 0 && collects > 1 && writes > 0);
    }
}
