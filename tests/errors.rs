//! Every error case: a clear, matchable error, nothing lost, no panic.

mod common;
use common::{map_fresh_over, page, spawn, tracker, wait_in_userfaultfd, Region};
#[allow(unused_imports)]
use dirtytrack::Mode;
use dirtytrack::{features, Error, Prefault, Tracker};

per_mode! {
    fn bad_ranges_are_refused(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        // Far below every other mapping (see `Region::anon_near`), one place per mode: the hole
        // punched below must not be filled by another test thread's `mmap` before `register`.
        let hint = 0x1000_0000_0000 + usize::from(mode == Mode::Sync) * 0x10_0000_0000;
        let r = Region::anon_near(8, hint);
        let ps = page();
        let e = t.register((r.addr + 1) as *mut u8, ps).unwrap_err();
        assert!(matches!(e, Error::Unaligned { what: "address", .. }), "{e}");
        let e = t.register(r.ptr(), ps + 1).unwrap_err();
        assert!(matches!(e, Error::Unaligned { what: "length", .. }), "{e}");
        let e = t.register(r.ptr(), 0).unwrap_err();
        assert!(matches!(e, Error::ZeroLength { .. }), "{e}");
        let e = t.register((usize::MAX - ps + 1) as *mut u8, 2 * ps).unwrap_err();
        assert!(matches!(e, Error::AddressOverflow { .. }), "{e}");
        assert!(e.to_string().contains("overflows"));
        // Nothing mapped at the page after a 1-page hole we punch.
        // SAFETY: unmapping a page of our own mapping.
        unsafe { libc::munmap((r.addr + 4 * ps) as *mut libc::c_void, ps) };
        let e = t.register(r.ptr(), 8 * ps).unwrap_err();
        match e {
            Error::NotMapped { hole, .. } => assert_eq!(hole, r.addr + 4 * ps),
            e => panic!("expected NotMapped, got {e}"),
        }
        assert!(t.ranges().is_empty(), "a refused register leaves nothing behind");
        // The mapped part still registers fine.
        t.register(r.ptr(), 4 * ps).unwrap();
    }
}

per_mode! {
    fn overlaps_and_double_register_are_refused(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        let mut r = Region::anon(16);
        let ps = page();
        let id = t.register((r.addr + 4 * ps) as *mut u8, 8 * ps).unwrap();
        for (off, pages) in [(4, 8), (0, 5), (11, 5), (6, 1), (0, 16)] {
            let e = t.register((r.addr + off * ps) as *mut u8, pages * ps).unwrap_err();
            match &e {
                Error::Overlap { existing, .. } => assert_eq!(*existing, id),
                e => panic!("expected Overlap for {off}+{pages}, got {e}"),
            }
            assert!(e.to_string().contains("unregister it first"), "{e}");
        }
        // Adjacent ranges are fine and tracked independently.
        let a = t.register(r.ptr(), 4 * ps).unwrap();
        let b = t.register((r.addr + 12 * ps) as *mut u8, 4 * ps).unwrap();
        r.rebase();
        for i in [0, 3, 4, 11, 12, 15] { r.touch(i); }
        let d = t.collect().unwrap();
        assert_eq!(r.check(&d, true), (6, 6));
        // Pages 3-4 and 11-12 straddle range boundaries: runs coalesce across adjacent ranges.
        let runs: Vec<_> = d.runs().map(|x| (x.start - r.addr) / ps..(x.end - r.addr) / ps).collect();
        assert_eq!(runs, vec![0..1, 3..5, 11..13, 15..16]);
        r.touch(0);
        assert_eq!(t.collect_range(b).unwrap().len(), 0);
        assert_eq!(t.collect_range(a).unwrap().len(), 1);
    }
}

per_mode! {
    fn range_owned_by_another_tracker(mode: Mode) {
        let Some(t1) = tracker(mode) else { return };
        let Some(t2) = tracker(mode) else { return };
        let r = Region::anon(8);
        t1.register(r.ptr(), r.len).unwrap();
        let e = t2.register(r.ptr(), r.len).unwrap_err();
        assert!(matches!(e, Error::OwnedByAnotherUserfaultfd { .. }), "{e}");
        assert!(e.to_string().contains("EBUSY"));
    }
}

per_mode! {
    fn unknown_and_unregistered_ids(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        let Some(other) = tracker(mode) else { return };
        let r = Region::anon(4);
        let id = t.register(r.ptr(), r.len).unwrap();
        t.unregister(id).unwrap();
        for res in [t.unregister(id), t.clear_range(id)] {
            assert!(matches!(res, Err(Error::UnknownRange(x)) if x == id));
        }
        assert!(matches!(t.collect_range(id), Err(Error::UnknownRange(_))));
        assert!(matches!(t.peek_range(id), Err(Error::UnknownRange(_))));
        assert!(matches!(other.collect_range(id), Err(Error::UnknownRange(_))));
        // After unregister, the memory can be registered again (by this or another tracker).
        other.register(r.ptr(), r.len).unwrap();
    }
}

#[test]
fn async_mode_without_wp_async_names_kernel_feature_and_alternative() {
    let e = Tracker::builder()
        .mode(Mode::Async)
        .hide_features(features::WP_ASYNC)
        .build()
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, Error::UnsupportedKernel { since: "6.7", .. }),
        "{msg}"
    );
    assert!(
        msg.contains("WP_ASYNC") && msg.contains("Mode::Sync"),
        "{msg}"
    );
    // Auto falls back to sync when async is not there.
    match Tracker::builder().hide_features(features::WP_ASYNC).build() {
        Ok(t) => assert_eq!(t.mode(), Mode::Sync),
        Err(e) => common::skip(&format!("sync mode unavailable: {e}")),
    }
}

#[test]
fn forcing_a_prefault_the_kernel_lacks_is_an_error() {
    let e = Tracker::builder()
        .mode(Mode::Sync)
        .prefault(Prefault::Unpopulated)
        .hide_features(features::WP_UNPOPULATED)
        .build()
        .unwrap_err();
    assert!(
        matches!(e, Error::UnsupportedKernel { since: "6.4", .. }),
        "{e}"
    );
}

#[test]
fn live_snapshot_needs_sync_mode() {
    let Some(t) = tracker(Mode::Async) else {
        return;
    };
    let r = Region::anon(4);
    let id = t.register(r.ptr(), r.len).unwrap();
    let e = t
        .live_snapshot(id)
        .err()
        .expect("async live snapshot must fail");
    assert!(matches!(e, Error::NeedsSyncMode { .. }), "{e}");
}

#[test]
fn sync_mode_refuses_regular_file_mappings_with_a_hint() {
    let Some(t) = tracker(Mode::Sync) else { return };
    let dir = std::env::temp_dir().join(format!("dirtytrack-file-{}", std::process::id()));
    std::fs::write(&dir, vec![0u8; 4 * page()]).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dir)
        .unwrap();
    let r = Region::mmap(4, libc::MAP_PRIVATE, std::os::fd::AsRawFd::as_raw_fd(&f));
    let _ = std::fs::remove_file(&dir);
    match t.register(r.ptr(), r.len) {
        Err(e @ Error::MappingNotSupported { .. }) => {
            assert!(e.to_string().contains("Mode::Async"), "{e}")
        }
        // tmpfs-backed temp dirs are shmem, which sync mode supports.
        Ok(_) if is_tmpfs(&std::env::temp_dir()) => {}
        other => panic!("expected MappingNotSupported, got {other:?}"),
    }
}

fn is_tmpfs(p: &std::path::Path) -> bool {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statfs fills a zeroed, owned struct.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated; `s` is valid.
    unsafe { libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type == libc::TMPFS_MAGIC }
}

per_mode! {
    fn capabilities_explain_the_choice(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        let text = t.capabilities().to_string();
        assert!(text.contains("async mode:") && text.contains("sync mode:"), "{text}");
        assert!(text.contains(&t.capabilities().kernel_release), "{text}");
        assert_eq!(t.mode(), mode);
    }
}

per_mode! {
    fn poisoned_tracker_refuses_work_and_releases_writers(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        let r = Region::anon(8);
        let id = t.register(r.ptr(), r.len).unwrap();
        t.__panic_monitor_for_test();
        // Any uffd traffic wakes the monitor: a write fault (sync) or a discard event (both).
        r.touch(0);
        // SAFETY: discarding pages of our own mapping.
        unsafe { libc::madvise(r.ptr().cast(), page(), libc::MADV_DONTNEED) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let e = loop {
            match t.collect() {
                Err(e) => break e,
                Ok(_) => {
                    assert!(std::time::Instant::now() < deadline, "monitor never poisoned");
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        };
        assert!(matches!(e, Error::Poisoned(_)), "{e}");
        assert!(e.to_string().contains("un-protected"), "{e}");
        // Writers are not blocked: every page can be written.
        for i in 0..r.pages() { r.touch(i); }
        assert!(matches!(t.peek_range(id), Err(Error::Poisoned(_))));
        assert!(matches!(t.register(r.ptr(), r.len), Err(Error::Poisoned(_))));
    }
}

#[test]
fn a_poisoned_tracker_releases_a_writer_whose_range_was_unmapped_meanwhile() {
    // Sync mode only (faults are messages). A writer waits on a fault in a range; the range is
    // replaced (`mmap(MAP_FIXED)`), and the monitor fails right after reading the fault and the
    // UNMAP event, before serving the fault. Poisoning releases every range; the replaced one
    // is gone, and releasing it used to skip the wake too: the writer waited forever (until
    // the tracker was dropped and its userfaultfd closed).
    use std::time::{Duration, Instant};
    let Some(t) = tracker(Mode::Sync) else { return };
    let r = Region::anon(4);
    let len = r.len;
    t.register(r.ptr(), len).unwrap();
    t.__fail_monitor_after_next_batch_for_test();
    assert!(
        t.__pause_monitor_for_test(Duration::from_secs(60)),
        "the monitor did not pause"
    );
    let addr = r.addr;
    let (writer, tid) = spawn(Box::new(move || {
        Region::borrowed(addr, len).write(1, 0, 0x5A)
    }));
    wait_in_userfaultfd(tid, "the writer");
    let (replacer, tid) = spawn(Box::new(move || map_fresh_over(addr, len)));
    wait_in_userfaultfd(tid, "the replacing mmap (its UNMAP event)");
    t.__resume_monitor_for_test();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !writer.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    if !writer.is_finished() {
        drop(t); // closes the userfaultfd, which releases the writer
        let _ = (writer.join(), replacer.join());
        panic!("HANG: the writer was still blocked 10 s after the tracker was poisoned");
    }
    writer.join().unwrap();
    replacer.join().unwrap();
    assert_eq!(r.read(1, 0), 0x5A, "the write landed in the new mapping");
    let e = t.collect().unwrap_err();
    assert!(
        matches!(&e, Error::Poisoned(why) if why.contains("test hook")),
        "{e}"
    );
}

#[test]
fn fd_exhaustion_is_reported_as_a_resource_error() {
    // The lowered limit must not affect other tests, and forking this multi-threaded harness
    // would leave the child with whatever locks other tests held: so the check runs in a fresh
    // process, this test binary started again for this one test, which sees the variable.
    const CHILD: &str = "DIRTYTRACK_TEST_CHILD_FD_EXHAUSTION";
    if std::env::var_os(CHILD).is_some() {
        let lim = libc::rlimit {
            rlim_cur: 3,
            rlim_max: 1024,
        };
        // SAFETY: setting our own limit; a plain struct passed by pointer.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
        match Tracker::new() {
            Err(Error::ResourceExhausted { .. }) => std::process::exit(0),
            Err(e) => {
                eprintln!("Tracker::new under RLIMIT_NOFILE=3: {e:?}");
                std::process::exit(4)
            }
            Ok(_) => std::process::exit(5),
        }
    }
    let out = common::this_test_again("fd_exhaustion_is_reported_as_a_resource_error")
        .env(CHILD, "1")
        // Under AddressSanitizer: LeakSanitizer's exit check needs fds the lowered limit denies.
        .env(
            "ASAN_OPTIONS",
            format!(
                "{}:detect_leaks=0",
                std::env::var("ASAN_OPTIONS").unwrap_or_default()
            ),
        )
        .output()
        .expect("start the test binary again");
    assert_eq!(
        out.status.code(),
        Some(0),
        "Tracker::new under RLIMIT_NOFILE=3 must give ResourceExhausted (5: it succeeded, 4: another error); child stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

per_mode! {
    fn read_only_shared_mapping_is_refused_with_a_hint(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        // Before 5.19 the kernel refuses every shmem mapping first (EINVAL; see the next test).
        if !common::shmem_hugetlb_wp_or_skip() {
            return;
        }
        // A write-sealed memfd (shmem: both modes support it) can only be mapped read-only.
        // SAFETY: creating, filling and sealing our own memfd.
        let fd = unsafe {
            let fd = libc::memfd_create(c"dirtytrack-sealed".as_ptr(), libc::MFD_ALLOW_SEALING);
            assert!(fd >= 0);
            assert_eq!(libc::ftruncate(fd, (4 * page()) as libc::off_t), 0);
            assert_eq!(libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_WRITE), 0);
            fd
        };
        // SAFETY: a fresh read-only shared mapping of our own memfd.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), 4 * page(), libc::PROT_READ, libc::MAP_SHARED, fd, 0)
        };
        // SAFETY: the mapping keeps the memfd alive.
        unsafe { libc::close(fd) };
        assert_ne!(p, libc::MAP_FAILED);
        let e = t.register(p.cast(), 4 * page()).unwrap_err();
        assert!(matches!(e, Error::MappingNotSupported { .. }), "{e:?}");
        assert!(e.to_string().contains("cannot be write-protected"), "{e}");
        // SAFETY: unmapping our own mapping.
        unsafe { libc::munmap(p, 4 * page()) };
    }
}

/// Shared anonymous memory in sync mode: tracked where the kernel offers
/// `UFFD_FEATURE_WP_HUGETLBFS_SHMEM` (5.19+); refused before (5.10), naming that feature rather
/// than a misleading hint. Runs on every kernel with sync mode, no skip.
#[test]
fn shared_memory_without_wp_hugetlbfs_shmem_is_refused_naming_the_feature() {
    let Some(t) = tracker(Mode::Sync) else { return };
    let has = dirtytrack::Capabilities::probe().has(features::WP_HUGETLBFS_SHMEM);
    let r = Region::mmap(4, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1);
    match t.register(r.ptr(), r.len) {
        Ok(_) => assert!(
            has,
            "registered although the kernel lacks WP_HUGETLBFS_SHMEM"
        ),
        Err(e) => {
            assert!(
                !has,
                "refused although the kernel offers WP_HUGETLBFS_SHMEM: {e}"
            );
            assert!(matches!(e, Error::MappingNotSupported { .. }), "{e:?}");
            assert!(e.to_string().contains("WP_HUGETLBFS_SHMEM"), "{e}");
        }
    }
}

/// The gate area (`[vsyscall]` on x86_64) is listed in `/proc/self/maps` but is no VMA that
/// `PROCMAP_QUERY` returns: registering it must be refused as a mapping that cannot be tracked,
/// not as unmapped memory (found by fuzzing).
#[test]
fn the_vsyscall_page_is_mapped_but_not_trackable() {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let Some(line) = maps.lines().find(|l| l.ends_with("[vsyscall]")) else {
        common::skip("no [vsyscall] mapping in this process (not x86_64, or vsyscall=none)");
        return;
    };
    let start = usize::from_str_radix(line.split('-').next().unwrap(), 16).unwrap();
    let Some(t) = tracker(Mode::Auto) else { return };
    let e = t.register(start as *mut u8, page()).unwrap_err();
    assert!(
        matches!(e, Error::MappingNotSupported { .. }),
        "registering [vsyscall] at {start:#x}: {e}"
    );
}
