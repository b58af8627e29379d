//! `Tracker::collect_into` allocates nothing in a steady state (issue 14), counted by a global
//! allocator that counts every allocation of every thread (the monitor thread's included).
//!
//! Both modes run in one `#[test]`, one after the other: a second test running in parallel (or
//! the harness recording its result) would allocate inside the counted window.

mod common;

use common::*;
use dirtytrack::{DirtySet, Mode};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

/// The system allocator, counting allocations and reallocations.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

/// The thread id of the test's own thread (0 until it starts).
static TEST_TID: AtomicI32 = AtomicI32::new(0);

/// Counts an allocation, unless libtest's main thread (thread id = process id) makes it while
/// the test runs on another thread: when a test runs for over 60 s, as this one did once under
/// QEMU/TCG on Linux 5.10 (82 s), libtest's main thread formats "has been running for over 60
/// seconds", which may fall inside a counted window. Every thread of the library (the
/// monitor's, the collecting one) is still counted.
fn count() {
    // SAFETY: gettid and getpid have no preconditions.
    let (tid, pid) = unsafe { (libc::gettid(), libc::getpid()) };
    if tid == pid && TEST_TID.load(Ordering::Relaxed) != pid {
        return;
    }
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so `Counting`
// upholds `GlobalAlloc`'s contract exactly as `System` does; the counter is a relaxed atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Three ranges of different sizes; writes a varying set of pages before every collect, checks
/// each collect against the shadow oracle, and counts the allocations of collects 6..=25.
fn steady_state_collects_allocate_nothing(mode: Mode) {
    let Some(t) = tracker(mode) else { return };
    let mut regions: Vec<Region> = [64, 1, 3000].iter().map(|&n| Region::anon(n)).collect();
    for r in &regions {
        t.register(r.ptr(), r.pages() * page()).expect("register");
    }
    for r in &mut regions {
        r.rebase();
    }
    let mut out = DirtySet::new();
    let mut counted = 0;
    for round in 0..25usize {
        for (k, r) in regions.iter().enumerate() {
            for i in ((round % 3).min(r.pages() - 1)..r.pages()).step_by(7 + k) {
                r.write(i, round % 64, round as u8 + 1);
            }
        }
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        t.collect_into(&mut out).expect("collect_into");
        let after = ALLOCATIONS.load(Ordering::SeqCst);
        if round >= 5 {
            counted += after - before;
        }
        for r in &mut regions {
            let (changed, _) = r.check(&out, true); // no lost write, no over-report
            assert!(
                changed > 0,
                "{mode:?} round {round}: every region was written"
            );
        }
    }
    assert!(!out.is_empty(), "the last collect reported the last writes");
    // The counter works: a plain collect builds a new set.
    regions[0].write(0, 100, 1);
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    let fresh = t.collect().expect("collect");
    assert!(
        ALLOCATIONS.load(Ordering::SeqCst) > before,
        "collect() allocates its DirtySet"
    );
    regions[0].check(&fresh, true);
    assert_eq!(
        counted, 0,
        "{mode:?}: 20 steady-state collect_into calls allocated {counted} times"
    );
}

#[test]
fn collect_into_allocates_nothing_in_steady_state() {
    // SAFETY: gettid has no preconditions.
    TEST_TID.store(unsafe { libc::gettid() }, Ordering::Relaxed);
    // parking_lot allocates its process-wide table of parked threads (two allocations) the first
    // time any thread parks: here a collect contending with the monitor, which on a slow kernel
    // (5.10 under TCG) first happened inside the counted window. A one-time initialisation, not
    // a steady-state cost: park once before counting.
    let (m, c) = (parking_lot::Mutex::new(()), parking_lot::Condvar::new());
    let _ = c.wait_for(&mut m.lock(), std::time::Duration::from_millis(1));
    steady_state_collects_allocate_nothing(Mode::Async);
    steady_state_collects_allocate_nothing(Mode::Sync);
}
