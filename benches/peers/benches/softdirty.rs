//! Soft-dirty (`/proc/self/clear_refs` + `/proc/self/pagemap`) vs dirtytrack's async mode: the
//! incremental checkpoint cycle at 1 % (also 10 % and 0.1 %) dirty pages.
//!
//! Soft-dirty needs `CONFIG_MEM_SOFT_DIRTY`, which the development host's kernel lacks, so this
//! runs inside the `scripts/kernel-matrix` QEMU guest (Debian kernels, all with soft-dirty):
//! `scripts/bench-softdirty`. The guest is emulated (TCG, no KVM): **absolute times are
//! emulation times; only the ratios, measured side by side in the same guest run, mean
//! anything.** Where soft-dirty is unavailable (the host) it prints `SOFTDIRTY-SKIP: <reason>`
//! and exits 0.
//!
//! Self-timed (no criterion): criterion's warm-up and sample counts would take far too long under
//! TCG, and its statistics add nothing to a ratio taken from rotated rounds.
//!
//! Writing `4` to `clear_refs` clears and write-protects every page of the **whole process**, so
//! no two mechanisms are ever alive at once. The run is `ROUNDS` rounds; in each, every mechanism
//! (rotating which goes first) is created on its own fresh region, and for each dirty fraction
//! does one untimed warm-up cycle and then `CYCLES` timed cycles, and is dropped. A cycle: write
//! one byte (a new value every cycle) into every `n`-th page (`common::dirty_every`; timed as
//! "writes", where each mechanism's first-write tax shows), then harvest (find the written pages,
//! copy them into a preallocated checkpoint, re-arm; timed as "harvest"). After every cycle,
//! outside the timing, the checkpoint must hold exactly the written pages, in address order, with
//! the value just written (assert).
//!
//! Mechanisms: dirtytrack async (sync, labelled as such, on kernels before 6.7), soft-dirty, and
//! for context mprotect + SIGSEGV and the copy-only floor (the program's own list of what it
//! wrote). Soft-dirty's re-arm also write-protects the checkpoint buffer and the rest of the
//! process: the resulting extra faults are part of its cost and are inside its harvest times.
//!
//! Transparent huge pages are disabled for the whole process (`PR_SET_THP_DISABLE`): the Debian
//! guest kernels default THP to `always`, the host benches run with `madvise` (no THP for these
//! mappings), and soft-dirty tracks a THP as one unit (a one-byte write reports 512 pages).
//!
//! Environment: `DIRTYTRACK_SOFTDIRTY_MIB` (region size, default 64),
//! `DIRTYTRACK_SOFTDIRTY_ROUNDS` (default 10), `DIRTYTRACK_SOFTDIRTY_CYCLES` (timed cycles per
//! fraction per mechanism per round, default 8).
//!
//! Output (stdout), one machine-parsable line per fraction and mechanism:
//! `SOFTDIRTY <fraction> <mechanism> writes_median_us=.. harvest_median_us=..
//! cycle_median_us=.. ratio_vs_async=.. harvest_ratio_vs_async=.. round_ratio_min=..
//! round_ratio_max=.. cycles=..` (`ratio_vs_async` = cycle median / the baseline's cycle median;
//! `round_ratio_*` = the spread of that ratio over the rounds' own medians), then a Markdown
//! table, then `SOFTDIRTY-DONE`. Arguments are ignored (the guest's init passes libtest's).

use dirtytrack::{Mode, Tracker};
use dirtytrack_peers::common::{dirty_count, median, page_size, ratio, MIB};
use dirtytrack_peers::soft_dirty::{self, SoftDirty};
use dirtytrack_peers::{run_cycle, Checkpoint, CycleTimes, Dirtytrack, MprotectSegv, Oracle, Peer};
use std::time::{Duration, Instant};

/// Dirty fractions: (label, write every n-th page).
const FRACTIONS: [(&str, usize); 3] = [("1pct", 100), ("10pct", 10), ("0.1pct", 1000)];

/// The mechanisms, in their order in the report. The first is the baseline of the ratios.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mech {
    Dirtytrack(Mode),
    SoftDirty,
    Mprotect,
    Oracle,
}

impl Mech {
    fn name(self) -> &'static str {
        match self {
            Mech::Dirtytrack(Mode::Sync) => "dirtytrack_sync",
            Mech::Dirtytrack(_) => "dirtytrack_async",
            Mech::SoftDirty => "soft_dirty",
            Mech::Mprotect => "mprotect_sigsegv",
            Mech::Oracle => "oracle_copy_only",
        }
    }

    fn create(self, len: usize) -> Box<dyn Peer> {
        match self {
            Mech::Dirtytrack(mode) => Box::new(Dirtytrack::new(mode, len)),
            Mech::SoftDirty => Box::new(SoftDirty::new(len)),
            Mech::Mprotect => Box::new(MprotectSegv::new(len)),
            Mech::Oracle => Box::new(Oracle::new(len)),
        }
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(s) => match s.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => panic!("{name}={s:?}: expected a positive integer"),
        },
        Err(_) => default,
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Medians of one (fraction, mechanism) cell.
struct Summary {
    writes: Duration,
    harvest: Duration,
    cycle: Duration,
    /// CycleTimes median of each round.
    rounds: Vec<Duration>,
    n: usize,
}

fn summarize(samples: &[CycleTimes], per_round: usize) -> Summary {
    let mut w: Vec<Duration> = samples.iter().map(|c| c.writes).collect();
    let mut h: Vec<Duration> = samples.iter().map(|c| c.harvest).collect();
    let mut c: Vec<Duration> = samples.iter().map(|c| c.total()).collect();
    let rounds = samples
        .chunks(per_round)
        .map(|r| median(&mut r.iter().map(|c| c.total()).collect::<Vec<_>>()))
        .collect();
    Summary {
        writes: median(&mut w),
        harvest: median(&mut h),
        cycle: median(&mut c),
        rounds,
        n: samples.len(),
    }
}

fn disable_thp() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integer arguments and only changes this process's
    // THP policy for mappings faulted in afterwards; no memory is touched.
    let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    assert_eq!(
        r,
        0,
        "prctl(PR_SET_THP_DISABLE): {}",
        std::io::Error::last_os_error()
    );
}

fn main() {
    let started = Instant::now();
    let release = soft_dirty::kernel_release();
    if let Err(why) = soft_dirty::available() {
        println!(
            "SOFTDIRTY-SKIP: soft-dirty is not available: {why}. \
             On the development host this is expected (its kernel has no \
             CONFIG_MEM_SOFT_DIRTY): run scripts/bench-softdirty, which runs this bench inside \
             a kernel-matrix QEMU guest whose kernel has soft-dirty."
        );
        return;
    }

    let ps = page_size();
    let mib = env_usize("DIRTYTRACK_SOFTDIRTY_MIB", 64);
    let rounds = env_usize("DIRTYTRACK_SOFTDIRTY_ROUNDS", 10);
    let cycles = env_usize("DIRTYTRACK_SOFTDIRTY_CYCLES", 8);
    let len = mib * MIB;
    let pages = len / ps;

    disable_thp();

    // Async mode needs Linux 6.7 (WP_ASYNC, PAGEMAP_SCAN); before that, the baseline is sync.
    let (baseline, note) = match Tracker::builder().mode(Mode::Async).build() {
        Ok(t) => {
            drop(t);
            (Mode::Async, None)
        }
        Err(e) => (
            Mode::Sync,
            Some(format!(
                "dirtytrack async mode is not available on this kernel ({e}); the baseline is \
                 dirtytrack SYNC mode, and every ratio_vs_async below is a ratio to sync"
            )),
        ),
    };
    let mechs = [
        Mech::Dirtytrack(baseline),
        Mech::SoftDirty,
        Mech::Mprotect,
        Mech::Oracle,
    ];
    let base_name = mechs[0].name();

    println!("SOFTDIRTY-KERNEL {release}");
    println!(
        "SOFTDIRTY-CONFIG region_mib={mib} pages={pages} page_size={ps} rounds={rounds} \
         cycles_per_round={cycles} thp=disabled baseline={base_name}"
    );
    if let Some(n) = &note {
        println!("SOFTDIRTY-NOTE {n}");
    }

    // Everything allocated up front: after soft-dirty's clear, a new mapping merged next to a
    // tracked region would mark that whole region soft-dirty again (and the assert would fire).
    let max_dirty = FRACTIONS
        .iter()
        .map(|&(_, every)| dirty_count(pages, every))
        .max()
        .unwrap_or(0);
    let mut cp = Checkpoint::new(max_dirty, ps);
    let mut samples: Vec<Vec<Vec<CycleTimes>>> = FRACTIONS
        .iter()
        .map(|_| {
            mechs
                .iter()
                .map(|_| Vec::with_capacity(rounds * cycles))
                .collect()
        })
        .collect();
    let mut value = 0u8;

    for round in 0..rounds {
        let t_round = Instant::now();
        for j in 0..mechs.len() {
            let mi = (round + j) % mechs.len();
            let mut peer = mechs[mi].create(len);
            for (fi, &(_, every)) in FRACTIONS.iter().enumerate() {
                run_cycle(&mut *peer, &mut cp, every, &mut value); // warm-up, verified
                for _ in 0..cycles {
                    let c = run_cycle(&mut *peer, &mut cp, every, &mut value);
                    samples[fi][mi].push(c);
                }
            }
            drop(peer);
        }
        eprintln!(
            "softdirty: round {}/{rounds} took {:.1} s",
            round + 1,
            t_round.elapsed().as_secs_f64()
        );
    }

    let mut table = String::new();
    table.push_str(&format!(
        "### Checkpoint cycle, soft-dirty vs dirtytrack — kernel {release} — TCG (software \
         emulation) timings; ratios only\n\n"
    ));
    table.push_str(&format!(
        "QEMU TCG guest, no KVM: the µs below are emulation times, not hardware times; compare \
         the ratios (same guest, same run, rotated rounds). {mib} MiB populated private \
         anonymous region ({pages} pages), THP off; medians of {rounds} rounds × {cycles} \
         cycles per mechanism and fraction. writes = dirtying every n-th page (first-write \
         faults), harvest = find + copy + re-arm, cycle = both.\n\n"
    ));
    if let Some(n) = &note {
        table.push_str(&format!("**Note:** {n}.\n\n"));
    }
    table.push_str(&format!(
        "| dirty | mechanism | writes (µs) | harvest (µs) | cycle (µs) | cycle ÷ {base_name} \
         (round range) | harvest ÷ {base_name} |\n|---|---|---|---|---|---|---|\n"
    ));
    for (fi, &(label, every)) in FRACTIONS.iter().enumerate() {
        let sums: Vec<Summary> = samples[fi].iter().map(|s| summarize(s, cycles)).collect();
        let b = &sums[0];
        for (mi, s) in sums.iter().enumerate() {
            let name = mechs[mi].name();
            let r = ratio(s.cycle, b.cycle);
            let rh = ratio(s.harvest, b.harvest);
            let per_round: Vec<f64> = s
                .rounds
                .iter()
                .zip(&b.rounds)
                .map(|(&x, &y)| ratio(x, y))
                .collect();
            let lo = per_round.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = per_round.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            println!(
                "SOFTDIRTY {label} {name} writes_median_us={:.1} harvest_median_us={:.1} \
                 cycle_median_us={:.1} ratio_vs_async={r:.3} harvest_ratio_vs_async={rh:.3} \
                 round_ratio_min={lo:.3} round_ratio_max={hi:.3} cycles={} dirty_pages={}",
                us(s.writes),
                us(s.harvest),
                us(s.cycle),
                s.n,
                dirty_count(pages, every),
            );
            table.push_str(&format!(
                "| {label} ({} pages) | {name} | {:.0} | {:.0} | {:.0} | {r:.2} ({lo:.2}–{hi:.2}) \
                 | {rh:.2} |\n",
                dirty_count(pages, every),
                us(s.writes),
                us(s.harvest),
                us(s.cycle),
            ));
        }
    }
    println!();
    println!("{table}");
    println!(
        "SOFTDIRTY-DONE kernel={release} secs={:.1}",
        started.elapsed().as_secs_f64()
    );
}
