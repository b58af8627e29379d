//! The cost of a mark: `Tracker::mark_dirty` and the collect that takes the marks, next to the
//! floor of one atomic `fetch_or` on a shared word, in the same run.
//!
//! - `mark_1GiB/mark_dirty_1page`: one page marked per call, spread over a registered 1 GiB
//!   range (every call lands in a bitmap group that is already noted, the case the summary
//!   protocol's `fetch_or` covers, see `AtomicBitmap`).
//! - `mark_1GiB/mark_dirty_64pages`: a 64-page run per call.
//! - `mark_1GiB/fetch_or_floor`: one `AtomicU64::fetch_or` on a word of a 32 KiB array.
//! - `mark_1GiB/collect_after_1pct_marks`: a collect taking 2 622 marked pages (the marking is
//!   not timed).
//!
//! Prints `MARK ratio` lines (interleaved medians): `mark_dirty` ÷ the `fetch_or` floor.
//! Run with `cargo bench --bench mark`.

mod common;

use common::*;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use dirtytrack::{Mode, Tracker};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn bench_mark(c: &mut Criterion) {
    pin_from_env();
    let ps = page_size();
    let m = map(GIB);
    let pages = GIB / ps;
    let tracker = Tracker::builder()
        .mode(Mode::Auto)
        .build()
        .expect("a tracker (see `cargo run --example capabilities`)");
    tracker
        .register(m.addr() as *mut u8, GIB)
        .expect("register 1 GiB");
    let words: Vec<AtomicU64> = (0..4096).map(|_| AtomicU64::new(0)).collect();
    let mut i = 0usize;
    let mut next_page = move || {
        i = (i + 7919) % pages;
        i
    };
    let mark = |page: usize, n: usize| {
        let n = n.min(pages - page);
        tracker
            .mark_dirty((m.addr() + page * ps) as *const u8, n * ps)
            .expect("mark_dirty");
    };

    let mut g = c.benchmark_group("mark_1GiB");
    g.bench_function("mark_dirty_1page", |b| b.iter(|| mark(next_page(), 1)));
    g.bench_function("mark_dirty_64pages", |b| b.iter(|| mark(next_page(), 64)));
    g.bench_function("fetch_or_floor", |b| {
        let mut w = 0usize;
        b.iter(|| {
            w = (w + 61) % words.len();
            black_box(words[w].fetch_or(1 << (w % 64), Ordering::AcqRel))
        })
    });
    g.bench_function("collect_after_1pct_marks", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                for p in (0..pages).step_by(100) {
                    mark(p, 1);
                }
                let t = Instant::now();
                black_box(tracker.collect().expect("collect"));
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
    tracker.collect().expect("collect");

    // The ratio, from alternating batches of 10 000 calls each.
    const BATCH: usize = 10_000;
    let (lib, floor) = interleaved(
        200,
        || {
            let t = Instant::now();
            for _ in 0..BATCH {
                mark(next_page(), 1);
            }
            t.elapsed()
        },
        || {
            let t = Instant::now();
            for k in 0..BATCH {
                let w = k * 61 % words.len();
                black_box(words[w].fetch_or(1 << (w % 64), Ordering::AcqRel));
            }
            t.elapsed()
        },
    );
    println!(
        "MARK ratio mark_dirty_1page / fetch_or_floor: {:.1} ({:.1} ns / {:.2} ns per call, {:?} mode)",
        ratio(lib, floor),
        lib.as_nanos() as f64 / BATCH as f64,
        floor.as_nanos() as f64 / BATCH as f64,
        tracker.mode(),
    );
}

criterion_group!(benches, bench_mark);
criterion_main!(benches);
