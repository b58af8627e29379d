//! Model-based property test (proptest-state-machine) on the real kernel, in both modes.
//!
//! System under test: one `Tracker` and 1–2 pairs of private anonymous areas (1–64 pages each;
//! the two areas of a pair have the same size, so a range can `mremap` to the same offset in the
//! other one). Operations: user writes (test thread, and batches from two short-lived threads),
//! kernel writes (`read(2)` from a pipe), reads, `MADV_DONTNEED`, `mprotect` RO/NONE → RW round
//! trips, register (and register over a tracked page, which must fail with `Overlap`),
//! unregister, `mremap` of a whole range to the other area of its pair (the tracker must follow
//! it), replacing part of a range (`mmap(MAP_FIXED)` over it, or `munmap` then map again: the
//! range is lost), `collect`, `peek`, `clear` and their per-range forms.
//!
//! Reference model: for every page, whether it MUST be reported (written or discarded since the
//! last reset of its range) and until how many resets it MAY be reported (discarded pages: also
//! by the collect after, as the README documents; in sync mode, pages written by two threads at
//! once, whose second fault message can arrive after the next re-protect: a documented harmless
//! over-report). The model also tracks where VMAs may be split, to move only ranges that are one
//! VMA (`mremap` fails with EFAULT across VMAs of a userfaultfd-registered range). Lost ranges make whole-tracker harvests fail
//! with `RangeLost`. After every successful collect or peek: every MUST page and every page
//! whose bytes differ from the shadow copy (the shared oracle) is reported, and nothing else is
//! (private anonymous memory is exact). `t.ranges()` must match the model after every operation
//! (addresses after moves, lost flags).
//!
//! Scale: `DIRTYTRACK_MODEL_CASES` (cases per mode, default [`DEFAULT_CASES`]); each case runs
//! up to [`MAX_OPS`] operations. The totals are printed at the end of each test.

mod common;
use common::{page, CollectHistory, Comparison, Expect, Region, WriteStamps};
use dirtytrack::{DirtySet, Error, Mode, RangeId, Tracker};
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::{Config, TestRunner};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Cases per mode when `DIRTYTRACK_MODEL_CASES` is not set: ~100 operations each, so ~500k
/// operations per mode (~1M per run) in a release build (`cargo test --release`, what CI runs:
/// ~43 s on 2 cores, both modes in parallel), ~30k per mode in a debug build (~11 s; debug is
/// ~8x slower per operation).
const DEFAULT_CASES: u32 = if cfg!(debug_assertions) { 300 } else { 5000 };
/// Operations per case: 1..=MAX_OPS.
const MAX_OPS: usize = 200;
/// Pages per area: 1..=MAX_PAGES.
const MAX_PAGES: usize = 64;
/// Where the areas are mapped (sync mode: 2 TiB higher): far below the heap and the shared
/// libraries, so that the holes `mremap` and `munmap` leave for an instant are never the highest
/// free gap, where the kernel would put another thread's new mapping (a starting thread maps its
/// signal stack itself, e.g. the tracker's monitor thread, a while after `Tracker::build`).
const AREAS_AT: usize = 0x2000_0000_0000;

/// Resets a "may" survives: a stale sync fault message is recorded at the latest just after the
/// re-protect that follows it. (Discards: see [`DISCARD_RESETS`].)
const MAY_STALE_FAULT: u8 = 2;

/// How many collects may report a discarded page (README, tracking contract): the next one
/// must, the one after may too (the zap can land after the first), on every kernel and in both
/// modes (see `common::EXACT_AFTER_DISCARD`).
const DISCARD_RESETS: u8 = 2;

// ---------------------------------------------------------------------------------------------
// Reference model
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cell {
    /// Written since the last reset of its range: must be reported.
    must: bool,
    /// May be reported by this many more resets of its range.
    may: u8,
    /// A VMA may start at this page. `mremap` moves only within one VMA (EFAULT across VMAs
    /// when userfaultfd is involved), and split VMAs do not always merge again (e.g. after an
    /// unregister next to a VMA that has an anon_vma), so every boundary any operation made
    /// counts as a possible split for good, except inside memory that was replaced whole.
    split: bool,
}

#[derive(Clone, Debug)]
struct MRange {
    key: u32,
    area: usize,
    start: usize,
    pages: usize,
    lost: bool,
}

impl MRange {
    fn pages(&self) -> std::ops::Range<usize> {
        self.start..self.start + self.pages
    }
}

#[derive(Clone)]
struct Model {
    sync: bool,
    /// `cells[area][page]`; areas `2i` and `2i + 1` form pair `i` (same size).
    cells: Vec<Vec<Cell>>,
    /// In registration order (the tracker's order).
    ranges: Vec<MRange>,
    next_key: u32,
}

impl std::fmt::Debug for Model {
    /// Compact: per area, one character per page (`.` clean, `W` must, `m` may), `|` before a
    /// page where a VMA may start.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "Model {{ sync: {}, next_key: {}",
            self.sync, self.next_key
        )?;
        for (a, cells) in self.cells.iter().enumerate() {
            let mut pages = String::new();
            for (p, c) in cells.iter().enumerate() {
                if c.split && p > 0 {
                    pages.push('|');
                }
                pages.push(match (c.must, c.may) {
                    (true, _) => 'W',
                    (false, 0) => '.',
                    _ => 'm',
                });
            }
            writeln!(f, "  area {a}: {pages}")?;
        }
        for r in &self.ranges {
            writeln!(f, "  {r:?}")?;
        }
        write!(f, "}}")
    }
}

/// `(area, page)` pairs.
type Pages = Vec<(usize, usize)>;

#[derive(Clone, Debug)]
enum Op {
    /// User writes from the test thread: (area, page, byte offset).
    Write(Vec<(usize, usize, usize)>),
    /// User writes from two short-lived threads at once (the batches may share pages).
    ThreadWrites(Pages, Pages),
    /// `read(2)` from a pipe into `len` bytes at `off` of a page.
    KernelWrite {
        area: usize,
        page: usize,
        off: usize,
        len: usize,
    },
    Read(Pages),
    Discard {
        area: usize,
        start: usize,
        pages: usize,
    },
    /// `mprotect` to `PROT_NONE` (`none`) or `PROT_READ`, then back to read-write.
    Mprotect {
        area: usize,
        start: usize,
        pages: usize,
        none: bool,
    },
    Register {
        area: usize,
        start: usize,
        pages: usize,
    },
    /// A register that overlaps a tracked page: must fail with `Overlap`.
    RegisterOverlap {
        area: usize,
        start: usize,
        pages: usize,
    },
    Unregister(u32),
    /// `mremap` the whole range to the same offset of the other area of its pair.
    Move(u32),
    /// Replaces pages `[start, start + pages)` (relative to the range) with fresh memory:
    /// `munmap` then `mmap` (`munmap_first`), or `mmap(MAP_FIXED)` over them.
    Replace {
        key: u32,
        start: usize,
        pages: usize,
        munmap_first: bool,
    },
    Collect,
    Peek,
    Clear,
    CollectRange(u32),
    PeekRange(u32),
    ClearRange(u32),
}

impl Model {
    fn owner(&self, area: usize, page: usize) -> Option<&MRange> {
        self.ranges
            .iter()
            .find(|r| r.area == area && r.pages().contains(&page))
    }

    fn range(&self, key: u32) -> Option<&MRange> {
        self.ranges.iter().find(|r| r.key == key)
    }

    fn any_lost(&self) -> bool {
        self.ranges.iter().any(|r| r.lost)
    }

    /// Maximal runs of pages no range (lost or not) claims: (area, start, len).
    fn free_runs(&self) -> Vec<(usize, usize, usize)> {
        let mut out = Vec::new();
        for (a, cells) in self.cells.iter().enumerate() {
            let mut p = 0;
            while p < cells.len() {
                if self.owner(a, p).is_some() {
                    p += 1;
                    continue;
                }
                let s = p;
                while p < cells.len() && self.owner(a, p).is_none() {
                    p += 1;
                }
                out.push((a, s, p - s));
            }
        }
        out
    }

    fn written(&mut self, area: usize, page: usize, stale: bool) {
        if self.owner(area, page).is_some_and(|r| !r.lost) {
            let c = &mut self.cells[area][page];
            c.must = true;
            if stale {
                c.may = c.may.max(MAY_STALE_FAULT);
            }
        }
    }

    /// VMAs may start at `start` and `end` of `area` from now on.
    fn split(&mut self, area: usize, start: usize, end: usize) {
        for p in [start, end] {
            if let Some(c) = self.cells[area].get_mut(p) {
                c.split = true;
            }
        }
    }

    /// `[start, end)` of `area` is now one VMA (fresh or moved memory): no split inside.
    fn one_vma(&mut self, area: usize, start: usize, end: usize) {
        for p in start + 1..end {
            self.cells[area][p].split = false;
        }
        self.split(area, start, end);
    }

    fn reset(&mut self, key: u32) {
        let r = self.range(key).cloned().expect("range");
        for p in r.pages() {
            let c = &mut self.cells[r.area][p];
            c.must = false;
            c.may = c.may.saturating_sub(1);
        }
    }

    fn reset_all(&mut self) {
        let keys: Vec<u32> = self.ranges.iter().map(|r| r.key).collect();
        for k in keys {
            self.reset(k);
        }
    }
}

struct RefModel<const SYNC: bool>;

impl<const SYNC: bool> ReferenceStateMachine for RefModel<SYNC> {
    type State = Model;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Model> {
        prop::collection::vec(1..=MAX_PAGES, 1..=2)
            .prop_map(|sizes| {
                let mut m = Model {
                    sync: SYNC,
                    cells: sizes
                        .iter()
                        .flat_map(|&n| [vec![Cell::default(); n], vec![Cell::default(); n]])
                        .collect(),
                    ranges: Vec::new(),
                    next_key: 1,
                };
                for a in 0..m.cells.len() {
                    m.split(a, 0, 0);
                }
                m
            })
            .boxed()
    }

    fn transitions(s: &Model) -> BoxedStrategy<Op> {
        let sizes: Vec<usize> = s.cells.iter().map(Vec::len).collect();
        let areas = sizes.len();
        let sz = sizes.clone();
        let any_page = (0..areas).prop_flat_map(move |a| (Just(a), 0..sz[a]));
        let sz = sizes.clone();
        let any_span = (0..areas).prop_flat_map(move |a| {
            let n = sz[a];
            (Just(a), 0..n).prop_flat_map(move |(a, s)| (Just(a), Just(s), 1..=n - s))
        });
        let sz = sizes.clone();
        let page_off = (0..areas).prop_flat_map(move |a| (Just(a), 0..sz[a], 0..page()));

        let mut arms: Vec<(u32, BoxedStrategy<Op>)> = vec![
            (
                30,
                prop::collection::vec(page_off.clone(), 1..8)
                    .prop_map(Op::Write)
                    .boxed(),
            ),
            (
                // Two thread spawns and joins cost ~0.5 ms: rarer than the rest.
                1,
                (
                    prop::collection::vec(any_page.clone(), 1..6),
                    prop::collection::vec(any_page.clone(), 1..6),
                )
                    .prop_map(|(a, b)| Op::ThreadWrites(a, b))
                    .boxed(),
            ),
            (
                6,
                (page_off.clone(), 1..=64usize)
                    .prop_map(|((area, pg, off), len)| Op::KernelWrite {
                        area,
                        page: pg,
                        off: off.min(page() - len),
                        len,
                    })
                    .boxed(),
            ),
            (
                6,
                prop::collection::vec(any_page, 1..8)
                    .prop_map(Op::Read)
                    .boxed(),
            ),
            (
                4,
                any_span
                    .clone()
                    .prop_map(|(area, start, pages)| Op::Discard { area, start, pages })
                    .boxed(),
            ),
            (
                3,
                (any_span, any::<bool>())
                    .prop_map(|((area, start, pages), none)| Op::Mprotect {
                        area,
                        start,
                        pages,
                        none,
                    })
                    .boxed(),
            ),
            (8, Just(Op::Collect).boxed()),
            (3, Just(Op::Peek).boxed()),
            (2, Just(Op::Clear).boxed()),
        ];
        let free = s.free_runs();
        if !free.is_empty() {
            arms.push((
                12,
                prop::sample::select(free)
                    .prop_flat_map(|(area, s, n)| {
                        (s..s + n).prop_flat_map(move |start| {
                            (1..=s + n - start).prop_map(move |pages| Op::Register {
                                area,
                                start,
                                pages,
                            })
                        })
                    })
                    .boxed(),
            ));
        }
        if !s.ranges.is_empty() {
            let keys: Vec<u32> = s.ranges.iter().map(|r| r.key).collect();
            let key = prop::sample::select(keys);
            let spans: Vec<(usize, usize, usize)> = s
                .ranges
                .iter()
                .map(|r| (r.area, r.start, r.pages))
                .collect();
            let sz = sizes.clone();
            arms.push((
                2,
                prop::sample::select(spans)
                    .prop_flat_map(move |(area, rs, rn)| {
                        // Any span of the area that contains at least one page of the range.
                        let n = sz[area];
                        (rs..rs + rn).prop_flat_map(move |inside| {
                            (0..=inside).prop_flat_map(move |start| {
                                (inside + 1 - start..=n - start).prop_map(move |pages| {
                                    Op::RegisterOverlap { area, start, pages }
                                })
                            })
                        })
                    })
                    .boxed(),
            ));
            arms.push((5, key.clone().prop_map(Op::Unregister).boxed()));
            arms.push((3, key.clone().prop_map(Op::Move).boxed()));
            let spans: Vec<(u32, usize)> = s.ranges.iter().map(|r| (r.key, r.pages)).collect();
            arms.push((
                2,
                (prop::sample::select(spans), any::<bool>())
                    .prop_flat_map(|((key, n), munmap_first)| {
                        (0..n).prop_flat_map(move |start| {
                            (1..=n - start).prop_map(move |pages| Op::Replace {
                                key,
                                start,
                                pages,
                                munmap_first,
                            })
                        })
                    })
                    .boxed(),
            ));
            arms.push((5, key.clone().prop_map(Op::CollectRange).boxed()));
            arms.push((2, key.clone().prop_map(Op::PeekRange).boxed()));
            arms.push((1, key.prop_map(Op::ClearRange).boxed()));
        }
        Union::new_weighted(arms).boxed()
    }

    fn preconditions(s: &Model, op: &Op) -> bool {
        let page_ok = |a: usize, p: usize| a < s.cells.len() && p < s.cells[a].len();
        let span_ok = |a: usize, st: usize, n: usize| n > 0 && page_ok(a, st + n - 1);
        match op {
            Op::Write(w) => w.iter().all(|&(a, p, _)| page_ok(a, p)),
            Op::ThreadWrites(x, y) => x.iter().chain(y).all(|&(a, p)| page_ok(a, p)),
            Op::Read(x) => x.iter().all(|&(a, p)| page_ok(a, p)),
            Op::KernelWrite { area, page, .. } => page_ok(*area, *page),
            Op::Discard { area, start, pages }
            | Op::Mprotect {
                area, start, pages, ..
            } => span_ok(*area, *start, *pages),
            Op::Register { area, start, pages } => {
                span_ok(*area, *start, *pages)
                    && (*start..start + pages).all(|p| s.owner(*area, p).is_none())
            }
            Op::RegisterOverlap { area, start, pages } => {
                span_ok(*area, *start, *pages)
                    && (*start..start + pages).any(|p| s.owner(*area, p).is_some())
            }
            Op::Unregister(k) | Op::CollectRange(k) | Op::PeekRange(k) | Op::ClearRange(k) => {
                s.range(*k).is_some()
            }
            Op::Move(k) => s.range(*k).is_some_and(|r| {
                !r.lost
                    && r.pages().all(|p| {
                        s.owner(r.area ^ 1, p).is_none()
                            && (p == r.start || !s.cells[r.area][p].split)
                    })
            }),
            Op::Replace {
                key, start, pages, ..
            } => s
                .range(*key)
                .is_some_and(|r| *pages > 0 && start + pages <= r.pages),
            Op::Collect | Op::Peek | Op::Clear => true,
        }
    }

    fn apply(mut s: Model, op: &Op) -> Model {
        match op {
            Op::Write(w) => {
                for &(a, p, _) in w {
                    s.written(a, p, false);
                }
            }
            Op::ThreadWrites(x, y) => {
                for &(a, p) in x.iter().chain(y) {
                    // Both threads may fault on the page at once (sync mode): the second fault
                    // message can be read after the next re-protect and recorded again.
                    let both = x.contains(&(a, p)) && y.contains(&(a, p));
                    s.written(a, p, both && s.sync);
                }
            }
            Op::KernelWrite { area, page, .. } => s.written(*area, *page, false),
            Op::Read(_) | Op::RegisterOverlap { .. } => {}
            Op::Mprotect {
                area, start, pages, ..
            } => s.split(*area, *start, start + pages),
            Op::Discard { area, start, pages } => {
                for p in *start..start + pages {
                    if s.owner(*area, p).is_some_and(|r| !r.lost) {
                        let c = &mut s.cells[*area][p];
                        c.must = true;
                        c.may = c.may.max(DISCARD_RESETS);
                    }
                }
            }
            Op::Register { area, start, pages } => {
                for p in *start..start + pages {
                    let c = &mut s.cells[*area][p];
                    (c.must, c.may) = (false, 0);
                }
                s.split(*area, *start, start + pages);
                s.ranges.push(MRange {
                    key: s.next_key,
                    area: *area,
                    start: *start,
                    pages: *pages,
                    lost: false,
                });
                s.next_key += 1;
            }
            Op::Unregister(k) => s.ranges.retain(|r| r.key != *k),
            Op::Move(k) => {
                let i = s.ranges.iter().position(|r| r.key == *k).expect("range");
                let r = s.ranges[i].clone();
                for p in r.pages() {
                    s.cells[r.area ^ 1][p] = s.cells[r.area][p];
                    s.cells[r.area][p] = Cell::default();
                }
                s.one_vma(r.area, r.start, r.start + r.pages);
                s.one_vma(r.area ^ 1, r.start, r.start + r.pages);
                s.ranges[i].area ^= 1;
            }
            Op::Replace {
                key, start, pages, ..
            } => {
                let r = s.ranges.iter_mut().find(|r| r.key == *key).expect("range");
                r.lost = true;
                let (area, at) = (r.area, r.start + start);
                for p in at..at + pages {
                    s.cells[area][p] = Cell::default();
                }
                s.one_vma(area, at, at + pages);
            }
            Op::Collect => {
                if !s.any_lost() {
                    s.reset_all();
                }
            }
            Op::Clear => {
                if s.any_lost() {
                    // Fails part-way: ranges before the lost one may have been cleared.
                    let live: Vec<MRange> = s.ranges.iter().filter(|r| !r.lost).cloned().collect();
                    for r in live {
                        for p in r.pages() {
                            let c = &mut s.cells[r.area][p];
                            if c.must {
                                c.must = false;
                                c.may = c.may.max(1);
                            }
                        }
                    }
                } else {
                    s.reset_all();
                }
            }
            Op::CollectRange(k) | Op::ClearRange(k) => {
                if !s.range(*k).expect("range").lost {
                    s.reset(*k);
                }
            }
            Op::Peek | Op::PeekRange(_) => {}
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// System under test
// ---------------------------------------------------------------------------------------------

/// Per mode: [cases, operations, page writes, harvests checked].
static COUNTS: [[AtomicU64; 4]; 2] = [
    [
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    ],
    [
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    ],
];

/// Per mode, per [`Op::kind`].
static OP_COUNTS: [[AtomicU64; OP_NAMES.len()]; 2] =
    [const { [const { AtomicU64::new(0) }; OP_NAMES.len()] }; 2];

/// Per mode, per [`Op::kind`]: time spent running it (without the model's checks).
static OP_NANOS: [[AtomicU64; OP_NAMES.len()]; 2] =
    [const { [const { AtomicU64::new(0) }; OP_NAMES.len()] }; 2];

const OP_NAMES: [&str; 18] = [
    "write",
    "thread-writes",
    "kernel-write",
    "read",
    "discard",
    "mprotect",
    "register",
    "register-overlap",
    "unregister",
    "mremap",
    "munmap+mmap",
    "mmap-fixed-over",
    "collect",
    "peek",
    "clear",
    "collect-range",
    "peek-range",
    "clear-range",
];

impl Op {
    fn kind(&self) -> usize {
        match self {
            Op::Write(_) => 0,
            Op::ThreadWrites(..) => 1,
            Op::KernelWrite { .. } => 2,
            Op::Read(_) => 3,
            Op::Discard { .. } => 4,
            Op::Mprotect { .. } => 5,
            Op::Register { .. } => 6,
            Op::RegisterOverlap { .. } => 7,
            Op::Unregister(_) => 8,
            Op::Move(_) => 9,
            Op::Replace {
                munmap_first: true, ..
            } => 10,
            Op::Replace { .. } => 11,
            Op::Collect => 12,
            Op::Peek => 13,
            Op::Clear => 14,
            Op::CollectRange(_) => 15,
            Op::PeekRange(_) => 16,
            Op::ClearRange(_) => 17,
        }
    }
}

fn count(sync: bool, what: usize, n: u64) {
    COUNTS[sync as usize][what].fetch_add(n, Ordering::Relaxed);
}

struct Sut {
    // Dropped first: un-registers everything before the areas are unmapped.
    t: Tracker,
    areas: Vec<Region>,
    ids: HashMap<u32, RangeId>,
    pipe: [std::os::fd::OwnedFd; 2],
    /// The model before the current operation.
    pre: Model,
}

/// The lines of `/proc/self/maps` within 64 pages of `[addr, addr + len)` (for failure messages).
fn maps_around(addr: usize, len: usize) -> String {
    let (lo, hi) = (addr.saturating_sub(64 * page()), addr + len + 64 * page());
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            let mut it = l.split(['-', ' ']);
            let s = usize::from_str_radix(it.next().unwrap_or("0"), 16).unwrap_or(0);
            let e = usize::from_str_radix(it.next().unwrap_or("0"), 16).unwrap_or(0);
            s < hi && e > lo
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn mode_of(sync: bool) -> Mode {
    if sync {
        Mode::Sync
    } else {
        Mode::Async
    }
}

fn sys_ok(rc: i32, what: &str) {
    assert_eq!(rc, 0, "{what}: {}", std::io::Error::last_os_error());
}

impl Sut {
    fn addr(&self, area: usize, page: usize) -> usize {
        self.areas[area].page_addr(page)
    }

    /// Whole-tracker harvest result for the model before the op: errors iff a range is lost.
    fn expect_lost<T: std::fmt::Debug>(&self, res: &Result<T, Error>, what: &str) -> bool {
        let lost: Vec<RangeId> = self
            .pre
            .ranges
            .iter()
            .filter(|r| r.lost)
            .map(|r| self.ids[&r.key])
            .collect();
        match res {
            Err(Error::RangeLost { id, .. }) if lost.contains(id) => true,
            Err(e) => panic!("{what}: unexpected error {e} (lost ranges: {lost:?})"),
            Ok(_) if lost.is_empty() => false,
            Ok(v) => panic!("{what}: expected RangeLost (lost ranges: {lost:?}), got {v:?}"),
        }
    }

    /// The oracle for one harvest over `scope` (range keys) of the model before the op: the
    /// shared [`Comparison`], with the model's rule per page (must: written since the last
    /// reset, or changed from the shadow; may: a "may" the model allows; else clean), and
    /// nothing reported outside the harvested ranges.
    fn check(&mut self, d: &DirtySet, scope: &[u32], what: &str) {
        count(self.pre.sync, 3, 1);
        let mut cmp = Comparison::new(what);
        for &k in scope {
            let r = self.pre.range(k).expect("range").clone();
            let cells = &self.pre.cells[r.area];
            cmp.scope(format!("area {}, range {k}", r.area));
            self.areas[r.area].compare_pages(&mut cmp, d, r.pages(), |p, changed| {
                let c = cells[p];
                assert!(
                    !changed || c.must || c.may > 0,
                    "{what}: model bug: area {} page {p} changed without a model reason",
                    r.area
                );
                if c.must {
                    Expect::Must("was written")
                } else if changed {
                    Expect::Must("changed")
                } else if c.may > 0 {
                    Expect::May
                } else {
                    Expect::Clean("not written, no model reason")
                }
            });
        }
        cmp.nothing_else(d);
        cmp.assert_ok();
    }

    fn rebase(&mut self, keys: &[u32]) {
        for &k in keys {
            let r = self.pre.range(k).expect("range").clone();
            self.areas[r.area].rebase_pages(r.pages());
        }
    }

    fn live_keys(&self) -> Vec<u32> {
        self.pre
            .ranges
            .iter()
            .filter(|r| !r.lost)
            .map(|r| r.key)
            .collect()
    }

    fn bump(&self, area: usize, page: usize, off: usize) {
        let a = &self.areas[area];
        a.write(page, off, a.read(page, off).wrapping_add(1));
    }

    /// Maps fresh anonymous memory at `addr` (which must be unmapped, or mapped with `fixed`).
    fn map_fresh(addr: usize, len: usize, replace: bool, before: &str) {
        let flag = if replace {
            libc::MAP_FIXED
        } else {
            libc::MAP_FIXED_NOREPLACE
        };
        // SAFETY: (re)mapping part of our own areas.
        let p = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | flag,
                -1,
                0,
            )
        };
        if p as usize != addr {
            let err = std::io::Error::last_os_error();
            panic!(
                "mmap at {addr:#x} (+{len:#x}): {err}; mappings around it before:\n{before}\nnow:\n{}",
                maps_around(addr, len)
            );
        }
    }

    fn run(&mut self, op: &Op) {
        let ps = page();
        let sync = self.pre.sync;
        match op {
            Op::Write(w) => {
                for &(a, p, off) in w {
                    self.bump(a, p, off);
                }
                count(sync, 2, w.len() as u64);
            }
            Op::ThreadWrites(x, y) => {
                let areas = &self.areas;
                std::thread::scope(|sc| {
                    for batch in [x, y] {
                        sc.spawn(move || {
                            for &(a, p) in batch {
                                let r = &areas[a];
                                r.write(p, 1, r.read(p, 1).wrapping_add(1));
                            }
                        });
                    }
                });
                count(sync, 2, (x.len() + y.len()) as u64);
            }
            Op::KernelWrite {
                area,
                page: p,
                off,
                len,
            } => {
                let dst = self.addr(*area, *p) + off;
                // Different from what is there now, byte by byte.
                let buf: Vec<u8> = (0..*len)
                    .map(|i| self.areas[*area].read(*p, off + i).wrapping_add(1))
                    .collect();
                use std::os::fd::AsRawFd;
                // SAFETY: writing our buffer into our pipe, then reading it into our page.
                unsafe {
                    let n = libc::write(self.pipe[1].as_raw_fd(), buf.as_ptr().cast(), *len);
                    assert_eq!(n, *len as isize, "pipe write");
                    let n = libc::read(self.pipe[0].as_raw_fd(), dst as *mut libc::c_void, *len);
                    assert_eq!(
                        n,
                        *len as isize,
                        "read(2) into tracked memory: {}",
                        std::io::Error::last_os_error()
                    );
                }
                count(sync, 2, 1);
            }
            Op::Read(x) => {
                for &(a, p) in x {
                    std::hint::black_box(self.areas[a].read(p, 0));
                }
            }
            Op::Discard { area, start, pages } => {
                // SAFETY: discarding pages of our own area.
                let rc = unsafe {
                    libc::madvise(
                        self.addr(*area, *start) as *mut libc::c_void,
                        pages * ps,
                        libc::MADV_DONTNEED,
                    )
                };
                sys_ok(rc, "madvise(MADV_DONTNEED)");
            }
            Op::Mprotect {
                area,
                start,
                pages,
                none,
            } => {
                let a = self.addr(*area, *start) as *mut libc::c_void;
                let first = if *none {
                    libc::PROT_NONE
                } else {
                    libc::PROT_READ
                };
                // SAFETY: changing the protection of our own area, and restoring it.
                unsafe {
                    sys_ok(libc::mprotect(a, pages * ps, first), "mprotect");
                    sys_ok(
                        libc::mprotect(a, pages * ps, libc::PROT_READ | libc::PROT_WRITE),
                        "mprotect RW",
                    );
                }
            }
            Op::Register { area, start, pages } => {
                let addr = self.addr(*area, *start);
                let id = self
                    .t
                    .register(addr as *mut u8, pages * ps)
                    .unwrap_or_else(|e| panic!("register {addr:#x}+{pages} pages: {e}"));
                self.ids.insert(self.pre.next_key, id);
                self.areas[*area].rebase_pages(*start..start + pages);
            }
            Op::RegisterOverlap { area, start, pages } => {
                let addr = self.addr(*area, *start);
                match self.t.register(addr as *mut u8, pages * ps) {
                    Err(Error::Overlap { existing, .. }) => {
                        assert!(self.ids.values().any(|&v| v == existing))
                    }
                    other => panic!("overlapping register must fail with Overlap: {other:?}"),
                }
            }
            Op::Unregister(k) => {
                let id = self.ids.remove(k).expect("id");
                self.t
                    .unregister(id)
                    .unwrap_or_else(|e| panic!("unregister {id:?}: {e}"));
            }
            Op::Move(k) => {
                let r = self.pre.range(*k).expect("range").clone();
                let (from, to) = (self.addr(r.area, r.start), self.addr(r.area ^ 1, r.start));
                let len = r.pages * ps;
                let before = format!(
                    "{op:?} {from:#x} -> {to:#x}\n{}",
                    maps_around(from.min(to), from.max(to) + len - from.min(to))
                );
                // SAFETY: moving our own pages over our own destination; the hole left behind
                // is filled again with fresh memory right away.
                let moved = unsafe {
                    libc::mremap(
                        from as *mut libc::c_void,
                        len,
                        len,
                        libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                        to as *mut libc::c_void,
                    )
                };
                if moved as usize != to {
                    let err = std::io::Error::last_os_error();
                    panic!(
                        "mremap {from:#x} -> {to:#x} (+{len:#x}): {err}; mappings:\n{}",
                        maps_around(from.min(to), from.max(to) + len - from.min(to))
                    );
                }
                Self::map_fresh(from, len, false, &before);
                let (src, dst) = if r.area < (r.area ^ 1) {
                    let (lo, hi) = self.areas.split_at_mut(r.area ^ 1);
                    (&lo[r.area], &mut hi[0])
                } else {
                    let (lo, hi) = self.areas.split_at_mut(r.area);
                    (&hi[0], &mut lo[r.area ^ 1])
                };
                for p in r.pages() {
                    dst.copy_shadow_page(p, src, p);
                }
                let info = self.t.range(self.ids[k]).expect("range info");
                assert_eq!(
                    info.addr, to,
                    "the tracker must follow the mremap: {info:?}"
                );
                assert!(info.lost.is_none(), "{info:?}");
            }
            Op::Replace {
                key,
                start,
                pages,
                munmap_first,
            } => {
                let r = self.pre.range(*key).expect("range").clone();
                let addr = self.addr(r.area, r.start + start);
                let before = format!("{op:?} at {addr:#x}\n{}", maps_around(addr, pages * ps));
                if *munmap_first {
                    // SAFETY: unmapping pages of our own area; mapped again right below (see
                    // AREAS_AT for why nothing else lands there; NOREPLACE would fail loudly).
                    sys_ok(
                        unsafe { libc::munmap(addr as *mut libc::c_void, pages * ps) },
                        "munmap",
                    );
                    Self::map_fresh(addr, pages * ps, false, &before);
                } else {
                    Self::map_fresh(addr, pages * ps, true, &before);
                }
                let info = self.t.range(self.ids[key]).expect("range info");
                assert!(
                    info.lost.is_some(),
                    "a range whose memory was replaced must be lost: {info:?}"
                );
            }
            Op::Collect => {
                let res = self.t.collect();
                if !self.expect_lost(&res, "collect") {
                    let keys = self.live_keys();
                    self.check(&res.expect("ok"), &keys, "collect");
                    self.rebase(&keys);
                }
            }
            Op::Peek => {
                let res = self.t.peek();
                if !self.expect_lost(&res, "peek") {
                    let keys = self.live_keys();
                    self.check(&res.expect("ok"), &keys, "peek");
                }
            }
            Op::Clear => {
                let res = self.t.clear();
                // Cleared or not, the model now only allows what was pending.
                self.expect_lost(&res, "clear");
                let keys = self.live_keys();
                self.rebase(&keys);
            }
            Op::CollectRange(k) | Op::PeekRange(k) | Op::ClearRange(k) => {
                let id = self.ids[k];
                let lost = self.pre.range(*k).expect("range").lost;
                let res = match op {
                    Op::CollectRange(_) => self.t.collect_range(id),
                    Op::PeekRange(_) => self.t.peek_range(id),
                    _ => self.t.clear_range(id).map(|()| DirtySet::new()),
                };
                let what = format!("{op:?}");
                match res {
                    Err(Error::RangeLost { id: x, .. }) if lost && x == id => {}
                    Err(e) => panic!("{what}: unexpected error {e}"),
                    Ok(v) if lost => panic!("{what}: expected RangeLost, got {v:?}"),
                    Ok(d) => {
                        if !matches!(op, Op::ClearRange(_)) {
                            self.check(&d, &[*k], &what);
                        }
                        if !matches!(op, Op::PeekRange(_)) {
                            self.rebase(&[*k]);
                        }
                    }
                }
            }
        }
    }
}

struct ModelTest<const SYNC: bool>;

impl<const SYNC: bool> StateMachineTest for ModelTest<SYNC> {
    type SystemUnderTest = Sut;
    type Reference = RefModel<SYNC>;

    fn init_test(m: &Model) -> Sut {
        count(SYNC, 0, 1);
        let t = Tracker::builder()
            .mode(mode_of(SYNC))
            .build()
            .unwrap_or_else(|e| panic!("Tracker::build: {e}"));
        let mut fds = [0; 2];
        // SAFETY: a fresh pipe.
        sys_ok(
            unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) },
            "pipe2",
        );
        use std::os::fd::FromRawFd;
        // SAFETY: fds we just created and own.
        let pipe = unsafe {
            [
                std::os::fd::OwnedFd::from_raw_fd(fds[0]),
                std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            ]
        };
        Sut {
            t,
            // Far below every other mapping (see `Region::anon_near`), with gaps between areas.
            areas: m
                .cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let at = AREAS_AT + SYNC as usize * AREAS_AT / 16;
                    Region::anon_near(c.len(), at + i * 2 * MAX_PAGES * page())
                })
                .collect(),
            ids: HashMap::new(),
            pipe,
            pre: m.clone(),
        }
    }

    fn apply(mut sut: Sut, after: &Model, op: Op) -> Sut {
        count(SYNC, 1, 1);
        let kind = op.kind();
        let started = Instant::now();
        sut.run(&op);
        OP_COUNTS[SYNC as usize][kind].fetch_add(1, Ordering::Relaxed);
        OP_NANOS[SYNC as usize][kind]
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        sut.pre = after.clone();
        sut
    }

    fn check_invariants(sut: &Sut, m: &Model) {
        let ps = page();
        let got: Vec<(usize, usize, bool)> = sut
            .t
            .ranges()
            .iter()
            .map(|i| (i.addr, i.len, i.lost.is_some()))
            .collect();
        let want: Vec<(usize, usize, bool)> = m
            .ranges
            .iter()
            .map(|r| (sut.addr(r.area, r.start), r.pages * ps, r.lost))
            .collect();
        assert_eq!(got, want, "tracker.ranges() (addr, len, lost) vs the model");
    }
}

fn cases() -> u32 {
    std::env::var("DIRTYTRACK_MODEL_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

fn run<const SYNC: bool>() {
    let mode = mode_of(SYNC);
    if common::tracker(mode).is_none() {
        return;
    }
    let config = Config {
        cases: cases(),
        // Only tests/model.rs may be written: no regression files next to it.
        failure_persistence: None,
        ..Config::default()
    };
    let started = Instant::now();
    let mut runner = TestRunner::new(config.clone());
    let result = runner.run(
        &RefModel::<SYNC>::sequential_strategy(1..=MAX_OPS),
        |(init, ops, seen)| {
            ModelTest::<SYNC>::test_sequential(config.clone(), init, ops, seen);
            Ok(())
        },
    );
    let c: Vec<u64> = COUNTS[SYNC as usize]
        .iter()
        .map(|x| x.load(Ordering::Relaxed))
        .collect();
    eprintln!(
        "DIRTYTRACK-MODEL: {mode:?}: {} cases (incl. shrinking), {} operations, {} page writes, {} harvests checked, {:.1} s",
        c[0],
        c[1],
        c[2],
        c[3],
        started.elapsed().as_secs_f64()
    );
    let per_op: Vec<String> = OP_NAMES
        .iter()
        .zip(
            OP_COUNTS[SYNC as usize]
                .iter()
                .zip(&OP_NANOS[SYNC as usize]),
        )
        .map(|(n, (c, t))| {
            let (c, t) = (c.load(Ordering::Relaxed), t.load(Ordering::Relaxed));
            format!("{n} {c} ({} us)", t / c.max(1) / 1000)
        })
        .collect();
    eprintln!("DIRTYTRACK-MODEL: {mode:?}: {}", per_op.join(", "));
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn model_async() {
    run::<false>();
}

#[test]
fn model_sync() {
    run::<true>();
}

/// The shared oracle itself (no tracker): a changed page that is not reported is a lost write,
/// an unchanged page reported on exact memory an over-report, both named by page number; a
/// stamped write missing from every collect of its window is a lost write.
#[test]
fn the_oracle_reports_lost_and_over_reported_pages() {
    let ps = page();
    let mut r = Region::anon(8);
    r.rebase();
    r.touch(3);
    r.touch(5);
    let mut d = DirtySet::new();
    d.insert_range(r.page_addr(5)..r.page_addr(5) + ps);
    d.insert_range(r.page_addr(6)..r.page_addr(6) + ps);
    let err = r.compare(&d, true).verdict().expect_err("page 3 is lost");
    eprintln!("{err}");
    assert!(err.starts_with("LOST WRITE: "), "{err}");
    assert!(
        err.contains("1 of 2 pages") && err.contains("page 3 (changed)"),
        "{err}"
    );
    assert!(
        err.contains("OVER-REPORT: ") && err.contains("page 6 ("),
        "{err}"
    );
    assert!(
        !err.contains("page 5"),
        "page 5 was changed and reported: {err}"
    );
    let err = r.compare(&d, false).verdict().expect_err("page 3 is lost");
    assert!(
        !err.contains("OVER-REPORT"),
        "not exact: page 6 may be reported: {err}"
    );
    d.insert_range(r.page_addr(3)..r.page_addr(3) + ps);
    assert_eq!(r.compare(&d, false).verdict(), Ok(()));
    assert_eq!(r.check(&d, false), (2, 3));

    // A page reported outside the compared scope.
    let mut cmp = Comparison::new("collect");
    cmp.scope("range 1");
    r.compare_pages(&mut cmp, &d, 3..4, |_, _| Expect::May);
    cmp.nothing_else(&d);
    let err = cmp.verdict().expect_err("pages 5 and 6 are outside");
    assert!(
        err.contains("OVER-REPORT: collect: ") && err.contains("2 reported pages outside"),
        "{err}"
    );

    // The stamp window: a write stamped 1 (made after collect #1 started), completed before
    // collect #3 started, must be in collect 1, 2 or 3.
    let stamps = WriteStamps::new(8);
    let e = stamps.stamp();
    assert_eq!((e, stamps.start_collect()), (0, 1));
    let e1 = stamps.stamp();
    stamps.written(4, e1);
    assert_eq!(stamps.completed(), vec![(4, 1)]);
    assert_eq!(stamps.completed(), vec![], "taken once");
    let mut history = CollectHistory::new();
    for _ in 0..3 {
        history.push(DirtySet::new());
    }
    let err = history
        .compare_stamped(&r, &[(4, 1)], 3)
        .verdict()
        .expect_err("lost");
    assert!(
        err.contains("LOST WRITE: collect #3") && err.contains("page 4 (written after collect #1"),
        "{err}"
    );
    let mut history = CollectHistory::new();
    history.push(DirtySet::new());
    let mut second = DirtySet::new();
    second.insert_range(r.page_addr(4)..r.page_addr(4) + 1);
    history.push(second);
    history.push(DirtySet::new());
    assert_eq!(history.compare_stamped(&r, &[(4, 1)], 3).verdict(), Ok(()));
    assert!(
        history.compare_stamped(&r, &[(4, 3)], 3).verdict().is_err(),
        "collect #2 is before the window of a write stamped 3"
    );
}
