//! Async-mode collect: `Tracker::collect()` vs a raw `PAGEMAP_SCAN` loop on `dirtytrack::sys`,
//! side by side in the same run, on separate ranges and separate userfaultfds.
//!
//! - `collect_1GiB/<fraction>`: 1 GiB of private anonymous memory (populated before it is
//!   registered), `every`-th page dirtied before each timed collect (the dirtying is not timed).
//!   Pattern: pages 0, k, 2k, ... (evenly spread, one isolated page per region for k > 1).
//! - `dirtyset_iter_1GiB/<fraction>`: walking the pages of a collected `DirtySet` (bitvec
//!   `iter_ones`) vs a plain `u64` word scan (`trailing_zeros`) over the same bits.
//! - `collect_64GiB_sparse`: 64 GiB never-touched `MAP_NORESERVE` memory, 1000 pages dirty.
//!
//! Run with `cargo bench --bench collect`; medians are in
//! `target/criterion/<group>/<function>/new/estimates.json`.

mod common;

use common::*;
use criterion::{black_box, criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use dirtytrack::{DirtySet, Mode, Tracker};
use std::time::{Duration, Instant};

/// One dirty fraction of the 1 GiB workload.
struct Fraction {
    label: &'static str,
    /// Dirty every `every`-th page (0: none).
    every: usize,
    /// Criterion's timed budget; the untimed dirtying can be 25× longer (100 %: ~0.2 s of
    /// write faults per iteration), so the expensive fractions get small budgets.
    measure: Duration,
    /// Alternating lib/raw pairs of the interleaved cross-check.
    pairs: usize,
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const FRACTIONS: [Fraction; 5] = [
    Fraction {
        label: "0pct",
        every: 0,
        measure: ms(2000),
        pairs: 400,
    },
    Fraction {
        label: "0p1pct",
        every: 1000,
        measure: ms(1500),
        pairs: 400,
    },
    Fraction {
        label: "1pct",
        every: 100,
        measure: ms(1000),
        pairs: 300,
    },
    Fraction {
        label: "10pct",
        every: 10,
        measure: ms(300),
        pairs: 100,
    },
    Fraction {
        label: "100pct",
        every: 1,
        measure: ms(100),
        pairs: 20,
    },
];

fn async_tracker() -> Tracker {
    Tracker::builder()
        .mode(Mode::Async)
        .build()
        .expect("async tracker (needs Linux 6.7+)")
}

/// Times `tracker.collect()` after dirtying `every`-th page of `[base, base + pages)`.
fn time_lib_collect(
    tracker: &Tracker,
    base: usize,
    pages: usize,
    every: usize,
    iters: u64,
    value: &mut u8,
) -> Duration {
    let expected = dirty_count(pages, every);
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        *value = value.wrapping_add(1);
        dirty_every(base, pages, every, *value);
        let t = Instant::now();
        let set = tracker.collect().expect("collect");
        total += t.elapsed();
        assert_eq!(set.len(), expected, "dirtytrack collect");
        drop(black_box(set));
    }
    total
}

/// Times the raw harvest after dirtying `every`-th page of its range.
fn time_raw_collect(
    raw: &mut RawAsync,
    pages: usize,
    every: usize,
    iters: u64,
    value: &mut u8,
) -> Duration {
    let expected = dirty_count(pages, every);
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        *value = value.wrapping_add(1);
        dirty_every(raw.start, pages, every, *value);
        let t = Instant::now();
        let regions = raw.harvest().expect("raw harvest");
        total += t.elapsed();
        assert_eq!(region_pages(&regions), expected, "raw harvest");
        drop(black_box(regions));
    }
    total
}

/// The words of `set`'s single segment (pages relative to `base`), for the plain scan.
fn words_of(set: &DirtySet, base: usize, pages: usize) -> Vec<u64> {
    let ps = page_size();
    let mut words = vec![0u64; pages.div_ceil(64)];
    for p in set.pages() {
        let i = (p - base) / ps;
        words[i / 64] |= 1 << (i % 64);
    }
    words
}

fn word_scan(words: &[u64], base: usize, ps: usize) -> usize {
    let mut acc = 0usize;
    for (wi, &word) in words.iter().enumerate() {
        let mut w = word;
        while w != 0 {
            let bit = w.trailing_zeros() as usize;
            acc ^= base + (wi * 64 + bit) * ps;
            w &= w - 1;
        }
    }
    acc
}

fn collect_1gib(c: &mut Criterion) {
    let ps = page_size();
    let len = GIB;
    let pages = len / ps;

    let lib_mem = map(len);
    populate(&lib_mem);
    let tracker = async_tracker();
    tracker
        .register(lib_mem.addr() as *mut u8, len)
        .expect("register 1 GiB");
    let raw_mem = map(len);
    populate(&raw_mem);
    let mut raw = RawAsync::new(raw_mem.addr(), len).expect("raw async setup");
    let mut value = 0u8;

    for f in &FRACTIONS {
        // Start clean on both sides.
        tracker.collect().expect("collect");
        raw.harvest().expect("raw harvest");
        let regions = {
            dirty_every(raw.start, pages, f.every, 1);
            raw.harvest().expect("raw harvest").len()
        };
        eprintln!(
            "collect_1GiB/{}: {} dirty pages, {} regions per harvest",
            f.label,
            dirty_count(pages, f.every),
            regions
        );

        let mut g = c.benchmark_group(format!("collect_1GiB/{}", f.label));
        g.sampling_mode(SamplingMode::Flat)
            .sample_size(20)
            .warm_up_time(f.measure / 4)
            .measurement_time(f.measure);
        g.bench_function("dirtytrack", |b| {
            b.iter_custom(|iters| {
                time_lib_collect(&tracker, lib_mem.addr(), pages, f.every, iters, &mut value)
            })
        });
        g.bench_function("raw", |b| {
            b.iter_custom(|iters| time_raw_collect(&mut raw, pages, f.every, iters, &mut value))
        });
        g.finish();

        let (mut va, mut vb) = (value, value);
        let (lib, rawt) = interleaved(
            f.pairs,
            || time_lib_collect(&tracker, lib_mem.addr(), pages, f.every, 1, &mut va),
            || time_raw_collect(&mut raw, pages, f.every, 1, &mut vb),
        );
        eprintln!(
            "INTERLEAVED collect_1GiB/{}: dirtytrack {:?}, raw {:?}, ratio {:.3} ({} pairs)",
            f.label,
            lib,
            rawt,
            ratio(lib, rawt),
            f.pairs
        );
    }

    // DirtySet iteration over a real collect's result (one 262144-bit segment).
    for f in FRACTIONS.iter().filter(|f| f.every == 100 || f.every == 1) {
        tracker.collect().expect("collect");
        dirty_every(lib_mem.addr(), pages, f.every, 1);
        let set = tracker.collect().expect("collect");
        let n = dirty_count(pages, f.every);
        assert_eq!(set.len(), n);
        let base = lib_mem.addr();
        let words = words_of(&set, base, pages);
        let want = set.pages().fold(0usize, |a, p| a ^ p);
        assert_eq!(word_scan(&words, base, ps), want);

        let mut g = c.benchmark_group(format!("dirtyset_iter_1GiB/{}", f.label));
        g.sample_size(20)
            .warm_up_time(ms(300))
            .measurement_time(ms(1500))
            .throughput(Throughput::Elements(n as u64));
        g.bench_function("bitvec_pages", |b| {
            b.iter(|| black_box(&set).pages().fold(0usize, |a, p| a ^ p))
        });
        g.bench_function("u64_word_scan", |b| {
            b.iter(|| word_scan(black_box(&words), base, ps))
        });
        g.bench_function("bitvec_runs", |b| {
            b.iter(|| {
                black_box(&set)
                    .runs()
                    .fold(0usize, |a, r| a ^ r.start ^ r.end)
            })
        });
        g.finish();
    }
}

fn collect_64gib_sparse(c: &mut Criterion) {
    let len = 64 * GIB;
    let ps = page_size();
    let pages = len / ps;
    let every = pages.div_ceil(1000);
    let (lib_mem, raw_mem) = match (
        dirtytrack::sys::mem::AnonMapping::new(len),
        dirtytrack::sys::mem::AnonMapping::new(len),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("collect_64GiB_sparse skipped: cannot map 64 GiB with MAP_NORESERVE: {e}");
            return;
        }
    };
    let tracker = async_tracker();
    let t = Instant::now();
    tracker
        .register(lib_mem.addr() as *mut u8, len)
        .expect("register 64 GiB");
    let lib_arm = t.elapsed();
    let t = Instant::now();
    let mut raw = RawAsync::new(raw_mem.addr(), len).expect("raw async setup 64 GiB");
    let raw_arm = t.elapsed();
    eprintln!(
        "collect_64GiB_sparse: {} dirty pages (every {every}-th); arming: dirtytrack register {:?}, raw register+writeprotect {:?}",
        dirty_count(pages, every),
        lib_arm,
        raw_arm
    );
    let mut value = 0u8;
    let mut g = c.benchmark_group("collect_64GiB_sparse");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(20)
        .warm_up_time(ms(300))
        .measurement_time(ms(2000));
    g.bench_function("dirtytrack", |b| {
        b.iter_custom(|iters| {
            time_lib_collect(&tracker, lib_mem.addr(), pages, every, iters, &mut value)
        })
    });
    g.bench_function("raw", |b| {
        b.iter_custom(|iters| time_raw_collect(&mut raw, pages, every, iters, &mut value))
    });
    g.finish();
    let (mut va, mut vb) = (value, value);
    let (lib, rawt) = interleaved(
        20,
        || time_lib_collect(&tracker, lib_mem.addr(), pages, every, 1, &mut va),
        || time_raw_collect(&mut raw, pages, every, 1, &mut vb),
    );
    eprintln!(
        "INTERLEAVED collect_64GiB_sparse: dirtytrack {:?}, raw {:?}, ratio {:.3} (20 pairs)",
        lib,
        rawt,
        ratio(lib, rawt)
    );
    // Unregister before unmapping (the tracker and the raw fd go first).
    drop(tracker);
    drop(raw);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(ms(300))
        .measurement_time(ms(2000));
    targets = collect_1gib, collect_64gib_sparse
}
criterion_main!(benches);
