//! First-write cost on protected pages: `writer threads` write one byte into each of
//! [`PAGES`] protected pages (disjoint contiguous blocks per thread); the time per iteration is
//! the wall time from the first writer's start to the last writer's end (divide by [`PAGES`]
//! for the time per first write; criterion also prints it as a throughput).
//!
//! Side by side, per writer count (1, 2, 4):
//! - `untracked`: the same writes into populated, unprotected memory;
//! - `dirtytrack_async`: `Mode::Async` (the kernel resolves the fault);
//! - `dirtytrack_sync`: `Mode::Sync` (the library's monitor thread serves each fault);
//! - `raw_sync`: a minimal monitor on `dirtytrack::sys` (poll, read one `uffd_msg`, un-protect
//!   that page).
//!
//! Set `DIRTYTRACK_BENCH_PIN_CPU=0` to pin every thread to one CPU (stable sync figures on small
//! VMs, where cross-CPU wake-ups dominate and vary run to run).
//!
//! Re-arming (`Tracker::clear()` / `UFFDIO_WRITEPROTECT` WP) happens outside the timing.

mod common;

use common::*;
use criterion::{black_box, criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use dirtytrack::sys::mem::AnonMapping;
use dirtytrack::{Mode, Tracker};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Pages written per iteration.
const PAGES: usize = 4096;
const WRITERS: [usize; 3] = [1, 2, 4];

fn populated(pages: usize) -> AnonMapping {
    let m = map(pages * page_size());
    populate(&m);
    m
}

fn tracker(mode: Mode, m: &AnonMapping) -> Tracker {
    let t = Tracker::builder()
        .mode(mode)
        .build()
        .unwrap_or_else(|e| panic!("{mode:?} tracker: {e}"));
    t.register(m.addr() as *mut u8, m.len())
        .unwrap_or_else(|e| panic!("{mode:?} register: {e}"));
    t
}

/// Alternating lib-sync / raw-sync pairs of the interleaved cross-check, per writer count.
const INTERLEAVED_PAIRS: usize = 15;

/// One raw-sync round: re-protect (untimed), timed writes, check every fault was served.
fn raw_round(raw: &RawSync, m: &AnonMapping, threads: usize, value: u8) -> Duration {
    raw.rearm().expect("raw re-protect");
    let before = raw.served.load(Ordering::Relaxed);
    let t = timed_writes(m.addr(), PAGES, threads, value);
    let served = raw.served.load(Ordering::Relaxed) - before;
    assert_eq!(served, PAGES as u64, "raw monitor served every first write");
    t
}

/// Checks once, outside any timing, that every first write is seen.
fn check_tracker(t: &Tracker, m: &AnonMapping) {
    t.clear().expect("clear");
    timed_writes(m.addr(), PAGES, 2, 0xaa);
    let set = t.collect().expect("collect");
    assert_eq!(
        set.len(),
        PAGES,
        "{:?} tracker missed first writes",
        t.mode()
    );
}

fn first_write(c: &mut Criterion) {
    pin_from_env();
    let untracked = populated(PAGES);
    let async_mem = populated(PAGES);
    let async_t = tracker(Mode::Async, &async_mem);
    check_tracker(&async_t, &async_mem);
    let sync_mem = populated(PAGES);
    let sync_t = tracker(Mode::Sync, &sync_mem);
    check_tracker(&sync_t, &sync_mem);
    let raw_mem = populated(PAGES);
    let raw = RawSync::new(raw_mem.addr(), raw_mem.len()).expect("raw sync setup");
    let mut value = 0u8;

    for &threads in &WRITERS {
        let mut g = c.benchmark_group(format!("first_write_{PAGES}pages/{threads}threads"));
        g.sampling_mode(SamplingMode::Flat)
            .throughput(Throughput::Elements(PAGES as u64));
        g.bench_function("untracked", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    value = value.wrapping_add(1);
                    total += timed_writes(untracked.addr(), PAGES, threads, value);
                }
                total
            })
        });
        for (name, t, m) in [
            ("dirtytrack_async", &async_t, &async_mem),
            ("dirtytrack_sync", &sync_t, &sync_mem),
        ] {
            g.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        t.clear().expect("clear");
                        value = value.wrapping_add(1);
                        total += timed_writes(m.addr(), PAGES, threads, value);
                    }
                    total
                })
            });
        }
        g.bench_function("raw_sync", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    value = value.wrapping_add(1);
                    total += raw_round(&raw, &raw_mem, threads, value);
                }
                total
            })
        });
        g.finish();

        let (mut va, mut vb) = (value, value);
        let (lib, rawt) = interleaved(
            INTERLEAVED_PAIRS,
            || {
                sync_t.clear().expect("clear");
                va = va.wrapping_add(1);
                timed_writes(sync_mem.addr(), PAGES, threads, va)
            },
            || {
                vb = vb.wrapping_add(1);
                raw_round(&raw, &raw_mem, threads, vb)
            },
        );
        eprintln!(
            "INTERLEAVED first_write_{PAGES}pages/{threads}threads: dirtytrack_sync {:?} ({:.2} us/write), raw_sync {:?} ({:.2} us/write), ratio {:.3} ({INTERLEAVED_PAIRS} pairs)",
            lib,
            lib.as_secs_f64() * 1e6 / PAGES as f64,
            rawt,
            rawt.as_secs_f64() * 1e6 / PAGES as f64,
            ratio(lib, rawt)
        );
    }
    // Trackers and the raw monitor un-register before their memory is unmapped.
    drop((async_t, sync_t, raw));
}

/// Live snapshot of 256 MiB while two writer threads keep dirtying random pages, against a
/// stopped-world copy of the same range into a fresh buffer (`process_vm_readv`, the physical
/// limit of a copy that is kept). Throughput is printed in MiB/s by criterion. The writers are
/// not stopped during the baseline: it measures the copy alone, not a consistent one.
fn live_snapshot(c: &mut Criterion) {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    const SNAP_PAGES: usize = 65536; // 256 MiB
    let m = populated(SNAP_PAGES);
    let t = Tracker::builder()
        .mode(Mode::Sync)
        .build()
        .expect("sync tracker");
    let id = t.register(m.addr() as *mut u8, m.len()).expect("register");
    let stop = Arc::new(AtomicBool::new(false));
    let base = m.addr();
    let writers: Vec<_> = (0..2u64)
        .map(|w| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (w + 1);
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    touch(base + (x as usize % SNAP_PAGES) * page_size(), x as u8);
                }
            })
        })
        .collect();
    let mut g = c.benchmark_group("live_snapshot_256MiB_2writers");
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Bytes(m.len() as u64));
    g.bench_function("dirtytrack_live_snapshot", |b| {
        b.iter(|| {
            let copy = t
                .live_snapshot(id)
                .expect("live snapshot")
                .wait()
                .expect("copy");
            assert_eq!(copy.data.len(), m.len());
        })
    });
    // A fresh buffer per copy, as the live snapshot's `LiveCopy` is: a checkpointer keeps each
    // copy, so both pay for faulting in (and freeing) 256 MiB of destination.
    g.bench_function("stopped_world_copy", |b| {
        b.iter(|| {
            let mut buf = vec![0u8; m.len()];
            dirtytrack::sys::mem::read_own_memory(m.addr(), &mut buf).expect("copy");
            black_box(buf)
        })
    });
    g.finish();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.join();
    }
    drop(t);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = first_write
}

criterion_group! {
    name = snapshot;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(4));
    targets = live_snapshot
}
criterion_main!(benches, snapshot);
