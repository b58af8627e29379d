//! Scaling (issue 14): the cost of a call must grow with the memory the program touches and
//! writes, not with what it registered.
//!
//! - `sync_collect/<size>` vs `async_collect/<size>`: a collect with 85 dirty pages (spread
//!   evenly; the dirtying is not timed) of a populated range of 32 MiB, 256 MiB and 1 GiB, and
//!   1 % of 1 GiB (2 622 pages). Sync mode re-protects only the pages written since the last
//!   collect, so it should track async mode, not the range size.
//! - `collect_into` vs `collect`: the same harvest into a reused [`DirtySet`].
//! - `SCALE floor` (printed, 1 % of 1 GiB only): the floor of the sync interface next to the
//!   async collect of the same run, written directly on `dirtytrack::sys` — one
//!   `UFFDIO_WRITEPROTECT` per written page (what a sync collect cannot do with less), and the
//!   same number of calls that change nothing (unpopulated memory: no page table, no flush).
//! - `SCALE sparse_1TiB` (printed, one shot): register, a collect of 5 written pages and an
//!   empty collect of a 1 TiB `MAP_NORESERVE` range, and the page tables (`VmPTE`) they build:
//!   `register_sparse` (async) vs `register` (async, sync) in the same run.
//! - `SCALE register` (printed, one shot): registering one-page ranges one by one in a mapping
//!   split into 20 000 VMAs (every other page read-only): the mean cost of calls 1–100 and
//!   9 901–10 000, and `register_many` of the same 10 000 ranges.
//!
//! - `SCALE memory` (printed): the heap a 16 GiB registration allocates (per-range bitmaps).
//!
//! `DIRTYTRACK_BENCH_SCALE=collect,sparse,register,memory` picks parts (default: all);
//! `DIRTYTRACK_BENCH_SPARSE_ONLY=1` leaves out the 1 TiB `register` rows (tens of seconds each).
//! Run with `cargo bench --bench scale`.

mod common;

use common::*;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use dirtytrack::{DirtySet, Mode, Tracker};
use std::time::{Duration, Instant};

fn wanted(part: &str) -> bool {
    match std::env::var("DIRTYTRACK_BENCH_SCALE") {
        Ok(list) => list.split(',').any(|p| p == part),
        Err(_) => true,
    }
}

fn tracker(mode: Mode) -> Tracker {
    Tracker::builder()
        .mode(mode)
        .build()
        .unwrap_or_else(|e| panic!("{mode:?} tracker: {e}"))
}

/// `VmPTE` of this process in KiB.
fn vm_pte_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmPTE:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Dirties `count` pages spread evenly over `pages` (untimed), then times `harvest`.
fn time_after_dirtying(
    base: usize,
    pages: usize,
    every: usize,
    value: &mut u8,
    mut harvest: impl FnMut() -> usize,
) -> Duration {
    *value = value.wrapping_add(1);
    let n = dirty_every(base, pages, every, *value);
    let t = Instant::now();
    let got = harvest();
    let el = t.elapsed();
    assert!(got >= n, "harvest reported {got} pages, {n} written");
    el
}

fn bench_collect(c: &mut Criterion) {
    if !wanted("collect") {
        return;
    }
    pin_from_env();
    let ps = page_size();
    // (label, bytes, every-th page dirty)
    // "nothing": the floor of each mode (async: its scan; sync: the guard-zap scan, on kernels
    // where it runs, see `Capabilities::scan_reports_guard_zaps`).
    let cases: [(&str, usize, usize); 5] = [
        ("32MiB_85pages", 32 * MIB, 32 * MIB / ps / 85),
        ("256MiB_85pages", 256 * MIB, 256 * MIB / ps / 85),
        ("1GiB_85pages", GIB, GIB / ps / 85),
        ("1GiB_1pct", GIB, 100),
        ("1GiB_nothing", GIB, 0),
    ];
    let mut g = c.benchmark_group("scale_collect");
    g.sample_size(20).measurement_time(Duration::from_secs(2));
    for (label, len, every) in cases {
        let pages = len / ps;
        let mut medians = Vec::new();
        for mode in [Mode::Sync, Mode::Async] {
            let m = map(len);
            populate(&m);
            let t = tracker(mode);
            t.register(m.addr() as *mut u8, len).expect("register");
            let mut v = 0u8;
            let name = format!("{mode:?}/{label}");
            g.bench_function(&name, |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            time_after_dirtying(m.addr(), pages, every, &mut v, || {
                                black_box(t.collect().expect("collect")).len()
                            })
                        })
                        .sum()
                })
            });
            let mut out = DirtySet::new();
            g.bench_function(format!("{name}/collect_into"), |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            time_after_dirtying(m.addr(), pages, every, &mut v, || {
                                t.collect_into(&mut out).expect("collect_into");
                                out.len()
                            })
                        })
                        .sum()
                })
            });
            // Interleaving is impossible across two trackers of different modes in one process
            // without them disturbing each other; take a plain median of 31 for the summary.
            let mut samples: Vec<Duration> = (0..31)
                .map(|_| {
                    time_after_dirtying(m.addr(), pages, every, &mut v, || {
                        t.collect().expect("collect").len()
                    })
                })
                .collect();
            medians.push(median(&mut samples));
        }
        println!(
            "SCALE collect {label}: sync {:.1} us, async {:.1} us, sync/async {:.2}",
            medians[0].as_secs_f64() * 1e6,
            medians[1].as_secs_f64() * 1e6,
            ratio(medians[0], medians[1])
        );
        if label == "1GiB_1pct" {
            let (reprotect, noop) = sync_interface_floor(len, every);
            println!(
                "SCALE floor {label}: {} one-page UFFDIO_WRITEPROTECT calls: re-protecting the \
                 written pages {:.1} us ({:.2}x async), changing nothing {:.1} us ({:.2}x async)",
                dirty_count(pages, every),
                reprotect.as_secs_f64() * 1e6,
                ratio(reprotect, medians[1]),
                noop.as_secs_f64() * 1e6,
                ratio(noop, medians[1]),
            );
        }
    }
    g.finish();
}

/// The least a sync-mode collect of every `every`-th page of `len` bytes must do, measured on the
/// raw interface (medians of 31): re-protect each written page with its own
/// `UFFDIO_WRITEPROTECT` (the pages are un-protected untimed before each sample, as the monitor
/// does on a first write), and the same number of calls on unpopulated registered memory, where
/// the kernel finds no page table and changes and flushes nothing (the call's fixed cost).
fn sync_interface_floor(len: usize, every: usize) -> (Duration, Duration) {
    use dirtytrack::sys::uffd;
    use std::os::fd::AsFd;
    let ps = page_size();
    let written = map(len);
    populate(&written);
    let unpopulated = map(len);
    let fd = uffd::userfaultfd(libc::O_CLOEXEC | libc::O_NONBLOCK).expect("userfaultfd");
    uffd::api(fd.as_fd(), uffd::FEATURE_PAGEFAULT_FLAG_WP).expect("UFFDIO_API");
    for m in [&written, &unpopulated] {
        uffd::register(fd.as_fd(), m.addr(), len, uffd::REGISTER_MODE_WP).expect("register");
    }
    uffd::writeprotect(fd.as_fd(), written.addr(), len, uffd::WRITEPROTECT_MODE_WP)
        .expect("protect");
    let pages: Vec<usize> = (0..len / ps).step_by(every).map(|i| i * ps).collect();
    let each = |base: usize, mode: u64| {
        for &off in &pages {
            uffd::writeprotect(fd.as_fd(), base + off, ps, mode).expect("UFFDIO_WRITEPROTECT");
        }
    };
    let mut reprotect: Vec<Duration> = (0..31)
        .map(|_| {
            each(written.addr(), uffd::WRITEPROTECT_MODE_DONTWAKE);
            let t = Instant::now();
            each(written.addr(), uffd::WRITEPROTECT_MODE_WP);
            t.elapsed()
        })
        .collect();
    let mut noop: Vec<Duration> = (0..31)
        .map(|_| {
            let t = Instant::now();
            each(unpopulated.addr(), uffd::WRITEPROTECT_MODE_WP);
            t.elapsed()
        })
        .collect();
    (median(&mut reprotect), median(&mut noop))
}

fn bench_sparse(_c: &mut Criterion) {
    if !wanted("sparse") {
        return;
    }
    let ps = page_size();
    let len = 1usize << 40;
    let full = std::env::var("DIRTYTRACK_BENCH_SPARSE_ONLY").is_err();
    for (mode, sparse) in [
        (Mode::Async, true),
        (Mode::Async, false),
        (Mode::Sync, false),
    ] {
        if !sparse && !full {
            continue;
        }
        let m = map(len);
        let t = tracker(mode);
        let pte0 = vm_pte_kib();
        let t0 = Instant::now();
        if sparse {
            t.register_sparse(m.addr() as *mut u8, len)
                .expect("register_sparse 1 TiB");
        } else {
            t.register(m.addr() as *mut u8, len)
                .expect("register 1 TiB");
        }
        let reg = t0.elapsed();
        let pte1 = vm_pte_kib();
        let offsets = [0, 1 << 30, 300 << 30, 777 << 30, len - ps];
        for (i, off) in offsets.iter().enumerate() {
            touch(m.addr() + off, i as u8 + 1);
        }
        let t1 = Instant::now();
        let first = t.collect().expect("collect");
        let col = t1.elapsed();
        let t2 = Instant::now();
        let empty = t.collect().expect("collect");
        let col_empty = t2.elapsed();
        let pte2 = vm_pte_kib();
        println!(
            "SCALE sparse_1TiB {mode:?} {}: {:.1} ms (VmPTE +{} KiB), collect of 5 written {:.1} ms ({} pages), empty collect {:.1} ms ({} pages), VmPTE after {} KiB",
            if sparse { "register_sparse" } else { "register" },
            reg.as_secs_f64() * 1e3,
            pte1.saturating_sub(pte0),
            col.as_secs_f64() * 1e3,
            first.len(),
            col_empty.as_secs_f64() * 1e3,
            empty.len(),
            pte2.saturating_sub(pte0),
        );
        drop(t);
    }
}

fn bench_register(_c: &mut Criterion) {
    if !wanted("register") {
        return;
    }
    let ps = page_size();
    let n: usize = std::env::var("DIRTYTRACK_BENCH_REGISTER_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let m = map(2 * n * ps);
    // Every odd page read-only: 2n VMAs.
    for i in 0..n {
        let page = (m.addr() + (2 * i + 1) * ps) as *mut libc::c_void;
        // SAFETY: the page lies inside the bench-owned mapping `m`; no reference points into it.
        let rc = unsafe { libc::mprotect(page, ps, libc::PROT_READ) };
        assert_eq!(rc, 0, "mprotect: {}", std::io::Error::last_os_error());
    }
    let t = tracker(Mode::Async);
    let mut times = Vec::with_capacity(n);
    let t_all = Instant::now();
    for i in 0..n {
        let t0 = Instant::now();
        t.register((m.addr() + 2 * i * ps) as *mut u8, ps)
            .expect("register");
        times.push(t0.elapsed());
    }
    let total = t_all.elapsed();
    let med = |s: &[Duration]| median(&mut s.to_vec()).as_secs_f64() * 1e6;
    let k = 100.min(n);
    println!(
        "SCALE register one by one: median of calls 1-{k} {:.1} us, of calls {}-{n} {:.1} us, all {n}: {:.2} s",
        med(&times[..k]),
        n - k + 1,
        med(&times[n - k..]),
        total.as_secs_f64()
    );
    drop(t);
    let t = tracker(Mode::Async);
    let ranges: Vec<(*mut u8, usize)> = (0..n)
        .map(|i| ((m.addr() + 2 * i * ps) as *mut u8, ps))
        .collect();
    let t0 = Instant::now();
    let ids = t.register_many(&ranges).expect("register_many");
    println!(
        "SCALE register_many of {n}: {:.2} ms ({:.1} us per range)",
        t0.elapsed().as_secs_f64() * 1e3,
        t0.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    assert_eq!(ids.len(), n);
    let t0 = Instant::now();
    let d = t.collect().expect("collect");
    println!(
        "SCALE collect of {n} one-page ranges: {:.2} ms ({} dirty)",
        t0.elapsed().as_secs_f64() * 1e3,
        d.len()
    );
    drop(t);

    // Sync first writes: the monitor looks up each fault's range. The same 100 pages (the last
    // registered) are written with 100 ranges registered, then with all n; ratio in one run.
    let k = 100.min(n);
    let first_write_us = |registered: &[(*mut u8, usize)]| -> f64 {
        let t = tracker(Mode::Sync);
        t.register_many(registered).expect("register_many");
        let mut times = Vec::with_capacity(5 * k);
        for round in 0..5u8 {
            for &(p, _) in &ranges[n - k..] {
                let t0 = Instant::now();
                // SAFETY: `p` is a page of the bench-owned mapping `m`, writable, not aliased.
                unsafe { p.write_volatile(round) };
                times.push(t0.elapsed());
            }
            black_box(t.collect().expect("collect"));
        }
        med(&times)
    };
    let few = first_write_us(&ranges[n - k..]);
    let all = first_write_us(&ranges);
    println!(
        "SCALE sync first write with {k} ranges registered: {few:.1} us, with {n}: {all:.1} us (ratio {:.2})",
        all / few
    );
}

/// Heap in use (glibc `mallinfo2`: arena plus mmapped chunks), in bytes.
fn heap_bytes() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let mi = unsafe { libc::mallinfo2() };
    mi.uordblks + mi.hblkhd
}

fn bench_memory(_c: &mut Criterion) {
    if !wanted("memory") {
        return;
    }
    let len = 16 * GIB;
    for mode in [Mode::Async, Mode::Sync] {
        let m = map(len);
        let t = tracker(mode);
        let before = heap_bytes();
        t.register(m.addr() as *mut u8, len)
            .expect("register 16 GiB");
        let after = heap_bytes();
        println!(
            "SCALE memory {mode:?}: heap +{} KiB for 16 GiB registered ({:.1} KiB per GiB)",
            (after - before) >> 10,
            (after - before) as f64 / 1024.0 / 16.0
        );
    }
}

criterion_group!(
    benches,
    bench_collect,
    bench_sparse,
    bench_register,
    bench_memory
);
criterion_main!(benches);
