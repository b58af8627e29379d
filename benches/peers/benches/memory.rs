//! Memory overhead of each dirty-tracking mechanism: what tracking costs on top of the tracked
//! memory itself, per GiB tracked. Byte and count measurements, not timings: no criterion.
//!
//! ```sh
//! cargo bench -p dirtytrack-peers --bench memory      # as root (sync mode), Linux 6.7+ (async)
//! ```
//!
//! About 30 s on 2 cores, and at most ~2.1 GiB mapped at a time (the memcmp peer's saved copy).
//!
//! # What is measured
//!
//! Each mechanism tracks its own 1 GiB private anonymous region, in two shapes:
//!
//! - **populated**: every page written before tracking starts (a used heap, guest RAM). All
//!   peers of `dirtytrack_peers`, built with their own constructors (which map, populate and set
//!   up tracking). `oracle_copy_only` is the baseline: populated memory, no tracking at all.
//! - **unpopulated**: mapped and registered but never touched, so that the kernel's
//!   `WP_UNPOPULATED` markers must build page tables to hold the protection. Only the uffd-wp
//!   mechanisms that support it: dirtytrack async and sync (a `Tracker` on a bare
//!   `common::map`) and the raw `PAGEMAP_SCAN` loop (`common::RawAsync`). `untracked` (the bare
//!   mapping) is the baseline.
//!
//! One mechanism exists at a time: it is built, given 50 ms for its threads to start (their
//! first allocations happen after the constructor returns), measured through one checkpoint
//! cycle, and dropped before the next one is built, so every delta belongs to it. Each is
//! measured once cold (discarded: it pays one-time costs such as a glibc arena and a thread stack
//! for the first monitor thread, which glibc then caches, or the mprotect peer's static bitmap
//! being faulted in) and then `RUNS` times; the table shows the median of those runs. Under the
//! table: every figure that varied between the runs (bytes by more than 4 KiB), and the cold
//! run's figures where they differ from the median.
//!
//! The cycle: write one byte into every 100th page (1 %, 2 622 pages), then harvest (find the
//! dirty pages, copy them into a checkpoint allocated before the measurements, re-arm).
//!
//! # Columns (all bytes are per GiB tracked: measured on 1 GiB)
//!
//! - **heap**: growth of glibc's `mallinfo2()` `uordblks + hblkhd` (bytes in use in every arena,
//!   monitor threads' own arenas included, plus chunks glibc serves by `mmap`, i.e. allocations
//!   of 128 KiB or more) from before the constructor to after it. The tracked region is `mmap`ed
//!   directly, never by malloc, so this is only the mechanism's own allocations: bitmaps, hash
//!   arrays, saved copies, scan and fault buffers, the library's registry and probe results
//!   (chunk headers included). Accurate to a few hundred bytes: chunks in glibc's per-thread
//!   cache count as in use, so small allocations served from it do not show. The bench fixes
//!   glibc's `mmap` threshold at its initial 128 KiB (`mallopt`), so allocations of that size or
//!   more are always fresh mappings, as in a fresh process, rather than reused arena memory.
//!   `heap_after_cycle_bytes` (MEMORY lines only): the same after the cycle.
//! - **RSS beyond region**: growth of `RssAnon` (`/proc/self/status`; anonymous resident memory,
//!   so code pages faulted in for the first time do not count) over the same span, minus the
//!   resident pages of the tracked region itself (counted with `mincore`). Memory the mechanism
//!   newly made resident: large allocations, saved copies, new thread stacks. Small allocations
//!   reuse arena pages an earlier run left resident, and glibc caches thread stacks, so in the
//!   measured runs this is smaller than heap; not page tables.
//! - **VmPTE**: growth of `VmPTE` (page-table pages of every level) after setup. Populated
//!   memory needs 2 MiB of PTE pages plus a 4 KiB PMD page per GiB whatever tracks it (see the
//!   baseline row); **beyond untracked** subtracts the same shape's baseline and is the
//!   page-table cost of the tracking itself.
//! - **VmPTE after cycle**: the same after the 1 % writes and the harvest (for unpopulated
//!   baselines the writes themselves build the tables: every 100th page hits every PTE page).
//! - **region VMAs**: lines of `/proc/self/maps` overlapping the tracked region after setup,
//!   after the writes (before the harvest), and after the harvest. 1 = one unsplit VMA (which
//!   may have merged with an adjacent compatible mapping: an untracked region is
//!   `MAP_NORESERVE` like a glibc arena heap, and the kernel merges the two).
//!   `mprotect` splits a VMA at every protection change: each dirty page un-protected by the
//!   SIGSEGV handler adds two until the harvest re-protects the whole region and the kernel
//!   merges them again. Each VMA is a kernel `vm_area_struct` (its size is read from
//!   `/proc/slabinfo` and printed), not counted in any column above.
//! - **other VMAs**: every other line the setup added to `/proc/self/maps`: malloc's `mmap`ed
//!   chunks (memcmp's saved copy, which adds no line when it merges with an adjacent one), and
//!   per monitor thread its stack and guard page (only in the cold run: glibc then reuses the
//!   cached stack), a glibc arena (cold run only too), and Rust std's per-thread signal stack and
//!   its guard page (every run). A neighbour merged into the region's VMA still counts here as
//!   the line it was.
//! - **one DirtySet** (dirtytrack only): after the cycle, 1 % is dirtied again and one
//!   `Tracker::collect()` result is held; *heap* is the `mallinfo2` growth while it is held,
//!   *bits* is computed: `DirtySet` has no accessor for its own size (`bytes()` is the dirty
//!   bytes, `len() * page_size()`), and a collect returns one bit per page of every registered
//!   range (`Segment::new(start, pages)` in `src/range.rs`), stored in `u64` words, so bits =
//!   `pages.div_ceil(64) * 8` bytes.
//!
//! Not measured: other kernel memory (the userfaultfd context, `vm_area_struct`s beyond their
//! count, kernel thread stacks), and the `.bss` of the mprotect peer's static 32 KiB bitmap
//! (sized for 1 GiB whatever is tracked; faulted in by the cold run, then already resident).
//!
//! Output: a Markdown table, then one line per mechanism and shape:
//! `MEMORY <mechanism> <shape> key=value ...` with the medians (`*_bytes` in bytes for
//! `region_bytes` of tracked memory, not normalised; VMA and page counts), `dirty_written` and
//! `dirty_found` (pages written and pages the harvest reported), `dirtyset_*` for dirtytrack
//! only, `runs`, and `stable=yes|no` (whether the measured runs agreed).

use dirtytrack::sys::mem::AnonMapping;
use dirtytrack::{Mode, Tracker};
use dirtytrack_peers::common::{self, page_size, GIB, KIB, MIB};
use dirtytrack_peers::{
    Checkpoint, Dirtytrack, Memcmp, MprotectSegv, Oracle, Peer, RawScan, UffdCrate, Xxh3,
};
use std::fs::File;
use std::io::Read;
use std::time::Duration;

/// The tracked region of every mechanism.
const REGION: usize = GIB;
/// Dirty every `EVERY`-th page per cycle: 1 %.
const EVERY: usize = 100;
/// Measured runs per mechanism and shape, after one discarded cold run.
const RUNS: usize = 3;
/// Time given to a new mechanism's threads to start before its setup is measured.
const SETTLE: Duration = Duration::from_millis(50);
/// Byte figures whose runs differ by at most this much are reported as stable (allocator
/// caching and page-table pages shared with neighbouring mappings move them by a few KiB).
const TOLERANCE: i64 = 4096;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Populated,
    Unpopulated,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Populated => "populated",
            Shape::Unpopulated => "unpopulated",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Untracked,
    Async,
    Sync,
    Raw,
    Mprotect,
    Memcmp,
    Xxh3,
    UffdCrate,
}

/// One row: a mechanism on a region shape.
#[derive(Clone, Copy)]
struct Config {
    kind: Kind,
    shape: Shape,
}

impl Config {
    fn name(self) -> &'static str {
        match (self.kind, self.shape) {
            (Kind::Untracked, Shape::Populated) => "oracle_copy_only",
            (Kind::Untracked, Shape::Unpopulated) => "untracked",
            (Kind::Async, _) => "dirtytrack_async",
            (Kind::Sync, _) => "dirtytrack_sync",
            (Kind::Raw, _) => "raw_pagemap_scan",
            (Kind::Mprotect, _) => "mprotect_sigsegv",
            (Kind::Memcmp, _) => "memcmp",
            (Kind::Xxh3, _) => "xxh3_per_page",
            (Kind::UffdCrate, _) => "userfaultfd_crate",
        }
    }
}

const CONFIGS: &[Config] = &[
    Config {
        kind: Kind::Untracked,
        shape: Shape::Populated,
    },
    Config {
        kind: Kind::Async,
        shape: Shape::Populated,
    },
    Config {
        kind: Kind::Sync,
        shape: Shape::Populated,
    },
    Config {
        kind: Kind::Raw,
        shape: Shape::Populated,
    },
    Config {
        kind: Kind::Mprotect,
        shape: Shape::Populated,
    },
    Config {
        kind: Kind::Memcmp,
        shape: Shape::Populated,
    },
    Config {
        kind: Kind::Xxh3,
        shape: Shape::Populated,
    },
    Config {
        kind: Kind::UffdCrate,
        shape: Shape::Populated,
    },
    Config {
        kind: Kind::Untracked,
        shape: Shape::Unpopulated,
    },
    Config {
        kind: Kind::Async,
        shape: Shape::Unpopulated,
    },
    Config {
        kind: Kind::Sync,
        shape: Shape::Unpopulated,
    },
    Config {
        kind: Kind::Raw,
        shape: Shape::Unpopulated,
    },
];

/// A mechanism with its region, whatever its shape.
enum Subject {
    /// A populated peer other than dirtytrack.
    Peer(Box<dyn Peer>),
    /// The dirtytrack peer (populated), kept typed for `tracker()`.
    Dirtytrack(Dirtytrack),
    /// A tracker on a never-touched mapping. Fields drop in order: unregistered, then unmapped.
    Tracker { tracker: Tracker, mem: AnonMapping },
    /// The raw async loop on a never-touched mapping (its fd closes before the unmap).
    Raw {
        raw: common::RawAsync,
        mem: AnonMapping,
    },
    /// A never-touched mapping, untracked.
    Bare(AnonMapping),
}

impl Subject {
    fn build(cfg: Config) -> Subject {
        match cfg.shape {
            Shape::Populated => match cfg.kind {
                Kind::Untracked => Subject::Peer(Box::new(Oracle::new(REGION))),
                Kind::Async => Subject::Dirtytrack(Dirtytrack::new(Mode::Async, REGION)),
                Kind::Sync => Subject::Dirtytrack(Dirtytrack::new(Mode::Sync, REGION)),
                Kind::Raw => Subject::Peer(Box::new(RawScan::new(REGION))),
                Kind::Mprotect => Subject::Peer(Box::new(MprotectSegv::new(REGION))),
                Kind::Memcmp => Subject::Peer(Box::new(Memcmp::new(REGION))),
                Kind::Xxh3 => Subject::Peer(Box::new(Xxh3::new(REGION))),
                Kind::UffdCrate => Subject::Peer(Box::new(UffdCrate::new(REGION))),
            },
            Shape::Unpopulated => {
                let mem = common::map(REGION);
                match cfg.kind {
                    Kind::Untracked => Subject::Bare(mem),
                    Kind::Async | Kind::Sync => {
                        let mode = if cfg.kind == Kind::Async {
                            Mode::Async
                        } else {
                            Mode::Sync
                        };
                        let tracker = Tracker::builder()
                            .mode(mode)
                            .build()
                            .unwrap_or_else(|e| panic!("{}: tracker: {e}", cfg.name()));
                        tracker
                            .register(mem.addr() as *mut u8, mem.len())
                            .unwrap_or_else(|e| panic!("{}: register: {e}", cfg.name()));
                        Subject::Tracker { tracker, mem }
                    }
                    Kind::Raw => {
                        let raw = common::RawAsync::new(mem.addr(), mem.len())
                            .expect("raw async uffd (Linux 6.7+)");
                        Subject::Raw { raw, mem }
                    }
                    _ => unreachable!("{} has no unpopulated shape", cfg.name()),
                }
            }
        }
    }

    fn mem(&self) -> &AnonMapping {
        match self {
            Subject::Peer(p) => p.mem(),
            Subject::Dirtytrack(p) => p.mem(),
            Subject::Tracker { mem, .. } | Subject::Raw { mem, .. } | Subject::Bare(mem) => mem,
        }
    }

    fn tracker(&self) -> Option<&Tracker> {
        match self {
            Subject::Dirtytrack(p) => Some(p.tracker()),
            Subject::Tracker { tracker, .. } => Some(tracker),
            _ => None,
        }
    }

    /// Tells the mechanism what was written (only the oracle listens), harvests, and returns
    /// the number of dirty pages found. Peers copy into `cp`; the unpopulated subjects only find.
    fn harvest(&mut self, cp: &mut Checkpoint) -> usize {
        cp.reset();
        match self {
            Subject::Peer(p) => {
                p.wrote(EVERY);
                p.harvest(cp);
                cp.addrs.len()
            }
            Subject::Dirtytrack(p) => {
                p.harvest(cp);
                cp.addrs.len()
            }
            Subject::Tracker { tracker, .. } => tracker.collect().expect("collect").len(),
            Subject::Raw { raw, .. } => common::region_pages(&raw.harvest().expect("scan")),
            Subject::Bare(_) => 0,
        }
    }
}

/// Process-wide memory figures at one instant.
#[derive(Clone, Copy, Default)]
struct Snap {
    /// `mallinfo2()`: `uordblks + hblkhd`.
    heap: i64,
    /// `RssAnon`, bytes.
    rss: i64,
    /// `VmPTE`, bytes.
    pte: i64,
    /// Lines of `/proc/self/maps`.
    vmas: i64,
    /// Of which overlap the tracked region.
    region_vmas: i64,
    /// Of those, how many extend past the region: a neighbouring mapping the region's VMA merged
    /// with (the kernel merges adjacent compatible anonymous VMAs, e.g. a glibc arena heap, which
    /// is `MAP_NORESERVE` like the region).
    merged: i64,
    /// Resident bytes of the tracked region (`mincore`).
    region_resident: i64,
}

/// Reads the figures without disturbing them: its buffers are allocated and faulted in once,
/// before any measurement, and reused.
struct Probe {
    buf: Vec<u8>,
    incore: Vec<u8>,
}

fn heap_now() -> i64 {
    // SAFETY: `mallinfo2` has no preconditions; it locks each arena while it sums it and returns
    // the totals by value.
    let mi = unsafe { libc::mallinfo2() };
    (mi.uordblks + mi.hblkhd) as i64
}

impl Probe {
    fn new() -> Probe {
        let mut buf = vec![1u8; 8 * MIB];
        buf.clear();
        Probe {
            buf,
            incore: vec![1u8; REGION / page_size()],
        }
    }

    fn read(&mut self, path: &str) {
        self.buf.clear();
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut self.buf))
            .unwrap_or_else(|e| panic!("reading {path}: {e}"));
    }

    /// A `/proc/self/status` field in bytes (the file gives kB).
    fn status_field(&self, key: &str) -> i64 {
        let text = std::str::from_utf8(&self.buf).expect("status is UTF-8");
        let line = text
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("no {key} in /proc/self/status"));
        let kb: i64 = line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{line}: {e}"));
        kb * 1024
    }

    fn snap(&mut self, region: Option<&AnonMapping>) -> Snap {
        let mut s = Snap::default();
        self.read("/proc/self/status");
        s.rss = self.status_field("RssAnon:");
        s.pte = self.status_field("VmPTE:");
        self.read("/proc/self/maps");
        let (lo, hi) = region.map_or((0, 0), |m| (m.addr(), m.addr() + m.len()));
        for line in self.buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            s.vmas += 1;
            let range = line.split(|&b| b == b' ').next().unwrap_or_default();
            let mut ends = range.split(|&b| b == b'-').map(|h| {
                let h = std::str::from_utf8(h).expect("maps is ASCII");
                usize::from_str_radix(h, 16).unwrap_or_else(|e| panic!("maps range {h}: {e}"))
            });
            let (start, end) = (ends.next().unwrap_or(0), ends.next().unwrap_or(0));
            if start < hi && end > lo {
                s.region_vmas += 1;
                s.merged += i64::from(start < lo) + i64::from(end > hi);
            }
        }
        if let Some(m) = region {
            let n = m.len() / page_size();
            assert!(n <= self.incore.len());
            // SAFETY: `m` is a live mapping owned by the subject being measured: its start is page
            // aligned, and `incore` holds at least one byte per page of it.
            let r = unsafe {
                libc::mincore(
                    m.addr() as *mut libc::c_void,
                    m.len(),
                    self.incore.as_mut_ptr(),
                )
            };
            assert_eq!(r, 0, "mincore: {}", std::io::Error::last_os_error());
            let resident = self.incore[..n].iter().filter(|&&b| b & 1 != 0).count();
            s.region_resident = (resident * page_size()) as i64;
        }
        // Last: the reads above allocated nothing that is still in use.
        s.heap = heap_now();
        s
    }
}

/// One run of one config. Every field is a byte count or a count; see the module doc.
const KEYS: &[&str] = &[
    "heap_bytes",
    "heap_after_cycle_bytes",
    "rss_extra_bytes",
    "rss_extra_after_cycle_bytes",
    "pte_bytes",
    "pte_after_cycle_bytes",
    "region_vmas_setup",
    "region_vmas_writes",
    "region_vmas_harvest",
    "other_vmas_setup",
    "other_vmas_harvest",
    "dirty_written",
    "dirty_found",
    "dirtyset_heap_bytes",
    "dirtyset_bits_bytes",
];

fn measure(probe: &mut Probe, cp: &mut Checkpoint, cfg: Config) -> Vec<i64> {
    let ps = page_size();
    let pages = REGION / ps;
    let s0 = probe.snap(None);
    let mut subject = Subject::build(cfg);
    // Monitor threads make their first allocations (dirtytrack's 64 KiB fault buffer) after
    // the constructor returns: let them, so that the setup figures do not race with them.
    std::thread::sleep(SETTLE);
    let s1 = probe.snap(Some(subject.mem()));
    let written = common::dirty_every(subject.mem().addr(), pages, EVERY, 1);
    let s2 = probe.snap(Some(subject.mem()));
    let found = subject.harvest(cp);
    let s3 = probe.snap(Some(subject.mem()));
    let (set_heap, set_bits) = match subject.tracker() {
        Some(t) => {
            common::dirty_every(subject.mem().addr(), pages, EVERY, 2);
            let before = heap_now();
            let set = t.collect().expect("collect");
            let held = heap_now() - before;
            assert_eq!(set.len(), written, "{}: second collect", cfg.name());
            drop(set);
            (held, (pages.div_ceil(64) * 8) as i64)
        }
        None => (-1, -1),
    };
    drop(subject);
    let rss_extra = |s: &Snap| s.rss - s0.rss - s.region_resident;
    vec![
        s1.heap - s0.heap,
        s3.heap - s0.heap,
        rss_extra(&s1),
        rss_extra(&s3),
        s1.pte - s0.pte,
        s3.pte - s0.pte,
        s1.region_vmas,
        s2.region_vmas,
        s3.region_vmas,
        s1.vmas - s0.vmas - s1.region_vmas + s1.merged,
        s3.vmas - s0.vmas - s3.region_vmas + s3.merged,
        written as i64,
        found as i64,
        set_heap,
        set_bits,
    ]
}

/// KiB per GiB tracked.
fn kib_per_gib(bytes: i64) -> String {
    let v = bytes as f64 / KIB as f64 * (GIB as f64 / REGION as f64);
    if v.abs() >= 100.0 || v.fract().abs() < 0.05 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The size in bytes of one kernel `vm_area_struct`, from `/proc/slabinfo` (root only).
fn vma_struct_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/slabinfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("vm_area_struct "))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn main() {
    // Cargo passes `--bench` (and a filter, if given) to harness = false benches; there is
    // nothing to filter here.
    // A fixed threshold (setting it turns glibc's dynamic one off): every allocation of 128 KiB
    // or more is a fresh `mmap`, counted in `hblkhd` and newly resident, as in a fresh process.
    // Otherwise, once a large chunk is freed, glibc serves the next ones from arena memory that
    // an earlier run left resident, and the RSS column would read 0 for them.
    // SAFETY: `mallopt` only sets an allocator parameter; called before any other thread exists.
    let r = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * KIB as libc::c_int) };
    assert_eq!(r, 1, "mallopt(M_MMAP_THRESHOLD) failed");
    let ps = page_size();
    let mut probe = Probe::new();
    let mut cp = Checkpoint::new(common::dirty_count(REGION / ps, EVERY), ps);
    let kernel = dirtytrack_peers::soft_dirty::kernel_release();
    eprintln!(
        "memory: {} MiB regions, every {EVERY}th page dirtied, 1 cold + {RUNS} runs, kernel {}",
        REGION / MIB,
        kernel.trim()
    );

    // runs[config][run][key]; run 0 is the cold one.
    let mut runs: Vec<Vec<Vec<i64>>> = vec![Vec::new(); CONFIGS.len()];
    for run in 0..=RUNS {
        for (i, &cfg) in CONFIGS.iter().enumerate() {
            runs[i].push(measure(&mut probe, &mut cp, cfg));
            eprintln!("  run {run}: {} {}", cfg.name(), cfg.shape.name());
        }
    }

    let medians: Vec<Vec<i64>> = runs
        .iter()
        .map(|r| {
            (0..KEYS.len())
                .map(|k| common::median(&mut r[1..].iter().map(|v| v[k]).collect::<Vec<_>>()))
                .collect()
        })
        .collect();
    let key = |name: &str| KEYS.iter().position(|k| *k == name).expect("key");
    let baseline = |shape: Shape| {
        let i = CONFIGS
            .iter()
            .position(|c| c.kind == Kind::Untracked && c.shape == shape)
            .expect("baseline");
        medians[i][key("pte_bytes")]
    };

    println!();
    println!(
        "Memory overhead per GiB tracked ({} MiB regions; cycle = every {EVERY}th page written, then harvested; median of {RUNS} runs)",
        REGION / MIB
    );
    println!();
    println!("| mechanism | shape | heap (KiB/GiB) | RSS beyond region (KiB/GiB) | VmPTE (KiB/GiB) | VmPTE beyond untracked (KiB/GiB) | VmPTE after cycle (KiB/GiB) | region VMAs: setup / writes / harvest | other VMAs | one DirtySet: heap / bits (KiB/GiB) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (i, cfg) in CONFIGS.iter().enumerate() {
        let m = &medians[i];
        let g = |name: &str| m[key(name)];
        let set = if g("dirtyset_bits_bytes") >= 0 {
            format!(
                "{} / {}",
                kib_per_gib(g("dirtyset_heap_bytes")),
                kib_per_gib(g("dirtyset_bits_bytes"))
            )
        } else {
            "–".to_string()
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} | {} |",
            cfg.name(),
            cfg.shape.name(),
            kib_per_gib(g("heap_bytes")),
            kib_per_gib(g("rss_extra_bytes")),
            kib_per_gib(g("pte_bytes")),
            kib_per_gib(g("pte_bytes") - baseline(cfg.shape)),
            kib_per_gib(g("pte_after_cycle_bytes")),
            g("region_vmas_setup"),
            g("region_vmas_writes"),
            g("region_vmas_harvest"),
            g("other_vmas_setup"),
            set,
        );
    }
    println!();
    match vma_struct_bytes() {
        Some(b) => println!("One VMA = one kernel vm_area_struct of {b} bytes (/proc/slabinfo)."),
        None => println!("(/proc/slabinfo unreadable: vm_area_struct size unknown)"),
    }

    // Stability: figures whose measured runs differ (beyond TOLERANCE for bytes), and the cold
    // run's one-time costs.
    let mut unstable = vec![false; CONFIGS.len()];
    let (mut varied, mut cold) = (Vec::new(), Vec::new());
    for (i, cfg) in CONFIGS.iter().enumerate() {
        for (k, name) in KEYS.iter().enumerate() {
            let tolerance = if name.ends_with("_bytes") {
                TOLERANCE
            } else {
                0
            };
            let vals: Vec<i64> = runs[i].iter().map(|v| v[k]).collect();
            let measured = &vals[1..];
            let lo = *measured.iter().min().expect("runs");
            let hi = *measured.iter().max().expect("runs");
            let label = format!("{} {} {name}", cfg.name(), cfg.shape.name());
            if hi - lo > tolerance {
                unstable[i] = true;
                varied.push(format!("- {label}: runs {measured:?}"));
            }
            if (vals[0] - medians[i][k]).abs() > tolerance {
                cold.push(format!(
                    "- {label}: cold {} vs median {}",
                    vals[0], medians[i][k]
                ));
            }
        }
    }
    if varied.is_empty() {
        println!(
            "Stable: every figure agreed across the {RUNS} measured runs (bytes within {TOLERANCE})."
        );
    } else {
        println!("Varied across the {RUNS} measured runs (bytes by more than {TOLERANCE}):");
        varied.iter().for_each(|n| println!("{n}"));
    }
    if !cold.is_empty() {
        println!(
            "Cold run (discarded: one-time costs of the first such mechanism in the process):"
        );
        cold.iter().for_each(|n| println!("{n}"));
    }
    println!();

    for (i, cfg) in CONFIGS.iter().enumerate() {
        let m = &medians[i];
        let mut line = format!(
            "MEMORY {} {} region_bytes={REGION} runs={RUNS}",
            cfg.name(),
            cfg.shape.name()
        );
        for (k, name) in KEYS.iter().enumerate() {
            if m[k] >= 0 || !name.starts_with("dirtyset") {
                line += &format!(" {name}={}", m[k]);
            }
        }
        line += &format!(
            " pte_beyond_untracked_bytes={}",
            m[key("pte_bytes")] - baseline(cfg.shape)
        );
        line += &format!(" stable={}", if unstable[i] { "no" } else { "yes" });
        println!("{line}");
    }
}
