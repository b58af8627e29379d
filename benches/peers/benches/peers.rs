//! The incremental checkpoint cycle per dirty-tracking mechanism, side by side in one run,
//! reported as ratios.
//!
//! Every mechanism tracks its own 256 MiB populated private anonymous region (the peers are in
//! `dirtytrack_peers`). One cycle: the program dirties `k` % of the pages (every `1/k`-th page,
//! one byte each, a new value every cycle), then the mechanism *harvests*: finds the dirty pages,
//! copies each into a preallocated checkpoint, re-arms.
//!
//! Criterion groups:
//! - `harvest_256MiB/<mechanism>/<k>pct`, k ∈ {0, 0.1, 1, 10, 100}: the harvest alone (the writes
//!   happen outside the timing) — the "collect cost vs dirty fraction" of BENCHMARKS.md's plot.
//! - `cycle_256MiB/<mechanism>/<k>pct`, k ∈ {1, 10}: the full cycle, writes included — this is
//!   where a tracker's first-write tax (a SIGSEGV, a uffd round trip) shows.
//!
//! Besides criterion's estimates it prints `INTERLEAVED` lines: for the full cycle at 1 %, every
//! mechanism runs once per round (rotating which goes first), which cancels slow drift; each
//! line gives the medians of writes, harvest and cycle, and the cycle's ratio to every other
//! mechanism of interest.
//!
//! Every cycle, timed or not, is checked after its timing (`dirtytrack_peers::run_cycle`): the
//! checkpoint must hold exactly the written pages, in address order, with the bytes just written.
//! Before timing, each mechanism runs one such cycle at every fraction.
//!
//! Run (as root, Linux 6.7+ for async mode):
//! `DIRTYTRACK_BENCH_PIN_CPU=0 cargo bench -p dirtytrack-peers --bench peers`. Pinning matters for
//! the two sync trackers (dirtytrack sync, the `userfaultfd` crate): unpinned on this 2-vCPU
//! Firecracker guest, a fault whose monitor sleeps on the other vCPU costs ~90 µs instead of
//! ~6 µs (waking an idle vCPU goes through the hypervisor), and which tracker gets which placement
//! changes from run to run.
//! Needs libclang for the `userfaultfd` crate's build (Debian: `libclang-dev`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use dirtytrack::Mode;
use dirtytrack_peers::common::{median, page_size, pin_from_env, ratio, MIB};
use dirtytrack_peers::{
    run_cycle, Checkpoint, CycleTimes, Dirtytrack, Memcmp, MprotectSegv, Oracle, Peer, RawScan,
    UffdCrate, Xxh3,
};
use std::time::Duration;

const REGION: usize = 256 * MIB;
/// Dirty fractions: (label, write every n-th page; 0 = none).
const FRACTIONS: [(&str, usize); 5] = [
    ("0pct", 0),
    ("0.1pct", 1000),
    ("1pct", 100),
    ("10pct", 10),
    ("100pct", 1),
];
/// Fractions of the full-cycle group.
const CYCLE_FRACTIONS: [(&str, usize); 2] = [("1pct", 100), ("10pct", 10)];
/// Rounds of the interleaved cross-check (each runs every mechanism once).
const ROUNDS: usize = 30;

/// A mechanism with its next byte value.
struct Entry {
    peer: Box<dyn Peer>,
    value: u8,
}

/// One cycle on `e` (see [`run_cycle`]: it also checks the checkpoint, outside the timing).
fn cycle(e: &mut Entry, cp: &mut Checkpoint, every: usize) -> CycleTimes {
    run_cycle(&mut *e.peer, cp, every, &mut e.value)
}

fn entries() -> Vec<Entry> {
    let peers: Vec<Box<dyn Peer>> = vec![
        Box::new(RawScan::new(REGION)),
        Box::new(Dirtytrack::new(Mode::Async, REGION)),
        Box::new(Dirtytrack::new(Mode::Sync, REGION)),
        Box::new(UffdCrate::new(REGION)),
        Box::new(MprotectSegv::new(REGION)),
        Box::new(Xxh3::new(REGION)),
        Box::new(Memcmp::new(REGION)),
        Box::new(Oracle::new(REGION)),
    ];
    peers
        .into_iter()
        .map(|peer| Entry { peer, value: 0 })
        .collect()
}

fn peers(c: &mut Criterion) {
    pin_from_env();
    let ps = page_size();
    let mut cp = Checkpoint::new(REGION / ps, ps);
    let mut entries = entries();

    // Start clean (the regions were populated before tracking, and the compare peers' saved
    // state matches already), then check each mechanism at every fraction, outside any timing.
    for e in &mut entries {
        cp.reset();
        e.peer.harvest(&mut cp);
        for &(_, every) in &FRACTIONS {
            cycle(e, &mut cp, every);
        }
        eprintln!("peers/{}: verified at every fraction", e.peer.name());
    }

    let mut g = c.benchmark_group("harvest_256MiB");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(800));
    for &(label, every) in &FRACTIONS {
        for e in &mut entries {
            g.bench_function(BenchmarkId::new(e.peer.name(), label), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| cycle(e, &mut cp, every).harvest).sum())
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("cycle_256MiB");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for &(label, every) in &CYCLE_FRACTIONS {
        for e in &mut entries {
            g.bench_function(BenchmarkId::new(e.peer.name(), label), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| cycle(e, &mut cp, every).total()).sum())
            });
        }
    }
    g.finish();

    interleaved(&mut entries, &mut cp);
}

/// The full cycle at 1 %, every mechanism once per round.
fn interleaved(entries: &mut [Entry], cp: &mut Checkpoint) {
    let n = entries.len();
    let mut times: Vec<Vec<CycleTimes>> = vec![Vec::with_capacity(ROUNDS); n];
    for round in 0..ROUNDS {
        for k in 0..n {
            let i = (round + k) % n;
            times[i].push(cycle(&mut entries[i], cp, 100));
        }
    }
    let med = |v: &[CycleTimes], f: fn(&CycleTimes) -> Duration| {
        median(&mut v.iter().map(f).collect::<Vec<_>>())
    };
    let cycles: Vec<Duration> = times.iter().map(|t| med(t, |c| c.total())).collect();
    let by_name = |name: &str| {
        entries
            .iter()
            .position(|e| e.peer.name() == name)
            .map(|i| cycles[i])
    };
    let (async_, sync_) = (by_name("dirtytrack_async"), by_name("dirtytrack_sync"));
    for (i, e) in entries.iter().enumerate() {
        let mut line = format!(
            "INTERLEAVED cycle_256MiB_1pct/{}: writes {:?}, harvest {:?}, cycle {:?}",
            e.peer.name(),
            med(&times[i], |c| c.writes),
            med(&times[i], |c| c.harvest),
            cycles[i],
        );
        if let Some(a) = async_ {
            line += &format!(", {:.2}x async", ratio(cycles[i], a));
        }
        if let Some(s) = sync_ {
            line += &format!(", {:.2}x sync", ratio(cycles[i], s));
        }
        eprintln!("{line} ({ROUNDS} rounds)");
    }
}

criterion_group!(benches, peers);
criterion_main!(benches);
