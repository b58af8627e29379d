//! dirtytrack's benchmark peers: every dirty-tracking mechanism a checkpointing program could use,
//! each a small honest implementation doing the same job on its own memory, so that
//! `benches/peers.rs` can time them side by side in one run.
//!
//! The job is one incremental checkpoint cycle: the program writes some pages (not part of
//! [`Peer::harvest`]), then the mechanism finds the pages written since the last cycle, copies
//! each into a [`Checkpoint`], and re-arms itself for the next cycle.
//!
//! | peer | mechanism |
//! |---|---|
//! | [`Dirtytrack`] | `dirtytrack::Tracker::collect()` in async or sync mode |
//! | [`RawScan`] | the physical limit of async mode: a bare `PAGEMAP_SCAN` loop, no library logic |
//! | [`MprotectSegv`] | `PROT_READ` + a `SIGSEGV` handler (Boehm GC, Wine) |
//! | [`Memcmp`], [`Xxh3`] | compare every page with a saved copy / a saved per-page hash |
//! | [`UffdCrate`] | a sync uffd-wp tracker on the `userfaultfd` crate's API |
//! | [`soft_dirty::SoftDirty`] | `/proc/self/clear_refs` + `/proc/self/pagemap` bit 55 |
//! | [`Oracle`] | no tracking at all: the program's own list of what it wrote, copied (the floor) |
//!
//! This crate is a separate workspace member because the `userfaultfd` crate runs bindgen at
//! build time (it needs libclang); building or testing the library never compiles it.
//!
//! Every peer's memory is a private anonymous mapping, populated before tracking starts (as a
//! used heap or guest RAM would be).

#[path = "../../common/mod.rs"]
pub mod common;

mod compare;
mod dirtytrack_peer;
mod mprotect;
pub mod soft_dirty;
mod uffd_crate;

pub use compare::{Memcmp, Xxh3};
pub use dirtytrack_peer::{Dirtytrack, RawScan};
pub use mprotect::MprotectSegv;
pub use uffd_crate::UffdCrate;

use common::page_size;
use dirtytrack::sys::mem::AnonMapping;
use std::time::{Duration, Instant};

/// A read-only view of a whole mapping.
///
/// Callers hold it only inside a harvest, while nothing writes the mapping (the benches write
/// between harvests, on the same thread).
pub fn mapped(m: &AnonMapping) -> &[u8] {
    // SAFETY: `m` is a live readable mapping of `m.len()` bytes that outlives the borrow. The
    // benches only write it through raw pointers (`common::touch`) between harvests, never while
    // this slice exists, so the bytes do not change under it (the mprotect peer's handler and the
    // uffd monitors change protections, not contents).
    unsafe { std::slice::from_raw_parts(m.addr() as *const u8, m.len()) }
}

/// The preallocated checkpoint: page data back to back, and the address of each page.
pub struct Checkpoint {
    pub data: Vec<u8>,
    pub addrs: Vec<usize>,
    used: usize,
}

impl Checkpoint {
    /// Room for `pages` pages of `ps` bytes, every frame already faulted in.
    pub fn new(pages: usize, ps: usize) -> Checkpoint {
        // Written once so that every frame exists before timing (vec! zeroing is lazy).
        let mut data = vec![0u8; pages * ps];
        data.iter_mut().step_by(ps).for_each(|b| *b = 1);
        Checkpoint {
            data,
            addrs: Vec::with_capacity(pages),
            used: 0,
        }
    }

    /// Empties the checkpoint (keeps its memory).
    pub fn reset(&mut self) {
        self.addrs.clear();
        self.used = 0;
    }

    /// Copies `src` (whole pages starting at address `addr`) out.
    #[inline]
    pub fn copy(&mut self, src: &[u8], addr: usize, ps: usize) {
        let end = self.used + src.len();
        assert!(
            end <= self.data.len(),
            "more dirty pages than the checkpoint has room for"
        );
        self.data[self.used..end].copy_from_slice(src);
        self.used = end;
        self.addrs.extend((addr..addr + src.len()).step_by(ps));
    }

    /// Copies the pages whose bits are set in `words` (bit `b` of word `w` = page `64 w + b` of
    /// the mapping at `base`, whose bytes are `bytes`), one copy per run of consecutive pages,
    /// as dirtytrack's `DirtySet::runs()` and `PAGEMAP_SCAN`'s regions give them: every
    /// mechanism pays the same copy. `take` reads (and may reset) one word.
    pub fn copy_bitmap_runs(
        &mut self,
        bytes: &[u8],
        base: usize,
        words: usize,
        mut take: impl FnMut(usize) -> u64,
    ) {
        let mut runs = RunBuilder::default();
        for w in 0..words {
            let mut word = take(w);
            if word == u64::MAX {
                runs.push(self, bytes, base, w * 64, w * 64 + 64);
                continue;
            }
            while word != 0 {
                let i = w * 64 + word.trailing_zeros() as usize;
                runs.push(self, bytes, base, i, i + 1);
                word &= word - 1;
            }
        }
        runs.flush(self, bytes, base);
    }
}

/// Coalesces ascending page ranges into runs and copies each run once.
#[derive(Default)]
pub struct RunBuilder {
    run: Option<(usize, usize)>,
}

impl RunBuilder {
    /// Adds pages `[a, b)` (ascending, after every page added before).
    #[inline]
    pub fn push(&mut self, cp: &mut Checkpoint, bytes: &[u8], base: usize, a: usize, b: usize) {
        match &mut self.run {
            Some((_, end)) if *end == a => *end = b,
            _ => {
                self.flush(cp, bytes, base);
                self.run = Some((a, b));
            }
        }
    }

    /// Copies the pending run.
    #[inline]
    pub fn flush(&mut self, cp: &mut Checkpoint, bytes: &[u8], base: usize) {
        let ps = page_size();
        if let Some((a, b)) = self.run.take() {
            cp.copy(&bytes[a * ps..b * ps], base + a * ps, ps);
        }
    }
}

/// Timings of one checkpoint cycle.
#[derive(Clone, Copy, Debug)]
pub struct CycleTimes {
    /// Dirtying the pages (first-write faults included).
    pub writes: Duration,
    /// [`Peer::harvest`]: find, copy, re-arm.
    pub harvest: Duration,
}

impl CycleTimes {
    pub fn total(self) -> Duration {
        self.writes + self.harvest
    }
}

/// One checkpoint cycle, the job every bench times: write a new byte value (never 0, the
/// populated pages' contents) into every `every`-th page of `peer`'s region (0: none), then
/// harvest into `cp`. Afterwards, untimed, asserts that `cp` holds exactly those pages, in
/// address order, with that value.
pub fn run_cycle(
    peer: &mut dyn Peer,
    cp: &mut Checkpoint,
    every: usize,
    value: &mut u8,
) -> CycleTimes {
    let ps = page_size();
    let (base, pages) = (peer.mem().addr(), peer.mem().len() / ps);
    *value = value.wrapping_add(1).max(1);
    let t = Instant::now();
    common::dirty_every(base, pages, every, *value);
    let writes = t.elapsed();
    peer.wrote(every);
    cp.reset();
    let t = Instant::now();
    peer.harvest(cp);
    let harvest = t.elapsed();
    std::hint::black_box(&cp.data);

    let name = peer.name();
    assert_eq!(
        cp.addrs.len(),
        common::dirty_count(pages, every),
        "{name}: number of pages harvested after writing every {every}-th page"
    );
    for (k, &a) in cp.addrs.iter().enumerate() {
        assert_eq!(
            a,
            base + k * every * ps,
            "{name}: harvested page {k} is not the {k}-th written page"
        );
        assert_eq!(cp.data[k * ps], *value, "{name}: copied data of page {k}");
    }
    CycleTimes { writes, harvest }
}

/// One dirty-tracking mechanism over its own region.
pub trait Peer {
    /// Short name used in bench ids (`dirtytrack_async`, `mprotect_sigsegv`, ...).
    fn name(&self) -> &'static str;
    /// The tracked region; the benches write into it.
    fn mem(&self) -> &AnonMapping;
    /// Called after the benches wrote every `every`-th page (0: none). Only the [`Oracle`] uses
    /// it: no real mechanism is told what was written.
    fn wrote(&mut self, _every: usize) {}
    /// The harvest: find the pages written since the last harvest, copy them into `cp` in
    /// address order, re-arm.
    fn harvest(&mut self, cp: &mut Checkpoint);
}

/// No tracking: the program already knows which pages it wrote (here: the benches' stride) and
/// copies them. The floor of every mechanism's harvest: the copy alone.
pub struct Oracle {
    mem: AnonMapping,
    every: usize,
}

impl Oracle {
    pub fn new(len: usize) -> Oracle {
        let mem = common::map(len);
        common::populate(&mem);
        Oracle { mem, every: 0 }
    }
}

impl Peer for Oracle {
    fn name(&self) -> &'static str {
        "oracle_copy_only"
    }
    fn mem(&self) -> &AnonMapping {
        &self.mem
    }
    fn wrote(&mut self, every: usize) {
        self.every = every;
    }
    fn harvest(&mut self, cp: &mut Checkpoint) {
        let ps = page_size();
        let (base, bytes) = (self.mem.addr(), mapped(&self.mem));
        if self.every == 0 {
            return;
        }
        let mut runs = RunBuilder::default();
        for i in (0..self.mem.len() / ps).step_by(self.every) {
            runs.push(cp, bytes, base, i, i + 1);
        }
        runs.flush(cp, bytes, base);
        self.every = 0;
    }
}
