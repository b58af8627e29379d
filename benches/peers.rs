//! The incremental checkpoint cycle per dirty-tracking mechanism, side by side in the same run,
//! reported as ratios against dirtytrack async.
//!
//! Workload: a 256 MiB populated private anonymous region per mechanism. Each iteration dirties
//! 1 % of its pages (every 100th page, one byte each; **not timed**), then times the harvest:
//! find the dirty pages and copy each one out into a preallocated checkpoint buffer (one
//! `memcpy` per dirty run, plus the page's address), re-arming the tracking for the next cycle.
//!
//! - `dirtytrack_async`: `Tracker::collect()` (`Mode::Async`: one `PAGEMAP_SCAN` walk that also
//!   re-protects), then copy each run.
//! - `dirtytrack_sync`: the same with `Mode::Sync`; the (untimed) writes fault through the
//!   monitor thread.
//! - `mprotect_sigsegv`: what Boehm GC and Wine do. The region is `PROT_READ`; a `SIGSEGV`
//!   handler marks the faulting page in a static bitmap and `mprotect`s that page back to
//!   read-write. Harvest = scan the bitmap, copy, clear, `mprotect` the whole region `PROT_READ`
//!   again (timed, as dirtytrack's collect includes its re-protection).
//! - `memcmp`: what a tool does when the kernel gives nothing: compare every page with a saved
//!   copy, copy out the pages that differ and update the saved copy. It sees content changes
//!   only (a write of the same value is invisible); each iteration writes a new value.
//!
//! Besides criterion's estimates, prints one `PEERS` line per mechanism (median over all
//! criterion iterations, ratio vs dirtytrack async) and one `INTERLEAVED` line per mechanism
//! (the four alternated round by round, which cancels slow drift).
//!
//! Run with `cargo bench --bench peers` (as root, Linux 6.7+ for async mode).

mod common;

use common::*;
use criterion::{black_box, criterion_group, criterion_main, Criterion, SamplingMode};
use dirtytrack::sys::mem::AnonMapping;
use dirtytrack::{Mode, Tracker};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

const REGION: usize = 256 * MIB;
/// Dirty every `EVERY`-th page: 1 %.
const EVERY: usize = 100;
/// Rounds of the interleaved cross-check (each runs every mechanism once).
const ROUNDS: usize = 30;

/// A read-only view of a whole mapping.
///
/// Callers hold it only inside a harvest, while nothing writes the mapping.
fn mapped(m: &AnonMapping) -> &[u8] {
    // SAFETY: `m` is a live readable mapping of `m.len()` bytes that outlives the borrow. The
    // benches only write it through raw pointers (`touch`) between harvests, never while this
    // slice exists, so the bytes do not change under it (the mprotect peer's handler changes
    // protections, not contents).
    unsafe { std::slice::from_raw_parts(m.addr() as *const u8, m.len()) }
}

/// The preallocated checkpoint: page data back to back, and the address of each page.
struct Checkpoint {
    data: Vec<u8>,
    addrs: Vec<usize>,
    used: usize,
}

impl Checkpoint {
    fn new(pages: usize, ps: usize) -> Checkpoint {
        // Written once so that every frame exists before timing (vec! zeroing is lazy).
        let mut data = vec![0u8; pages * ps];
        data.iter_mut().step_by(ps).for_each(|b| *b = 1);
        Checkpoint {
            data,
            addrs: Vec::with_capacity(pages),
            used: 0,
        }
    }

    fn reset(&mut self) {
        self.addrs.clear();
        self.used = 0;
    }

    /// Copies `src` (whole pages starting at address `addr`) out.
    #[inline]
    fn copy(&mut self, src: &[u8], addr: usize, ps: usize) {
        let end = self.used + src.len();
        assert!(
            end <= self.data.len(),
            "more dirty pages than the 1 % dirtied"
        );
        self.data[self.used..end].copy_from_slice(src);
        self.used = end;
        self.addrs.extend((addr..addr + src.len()).step_by(ps));
    }
}

/// One dirty-tracking mechanism over its own 256 MiB region.
trait Peer {
    fn name(&self) -> &'static str;
    fn mem(&self) -> &AnonMapping;
    /// The timed part: find the dirty pages, copy them into `cp`, re-arm.
    fn harvest(&mut self, cp: &mut Checkpoint);
}

// ---------------------------------------------------------------------------------------------
// dirtytrack, async and sync

struct Dirtytrack {
    name: &'static str,
    // Declared before `mem`: unregistered before the mapping goes.
    tracker: Tracker,
    mem: AnonMapping,
}

impl Dirtytrack {
    fn new(name: &'static str, mode: Mode) -> Dirtytrack {
        let mem = map(REGION);
        populate(&mem);
        let tracker = Tracker::builder()
            .mode(mode)
            .build()
            .unwrap_or_else(|e| panic!("{name} tracker: {e}"));
        tracker
            .register(mem.addr() as *mut u8, REGION)
            .expect("register 256 MiB");
        Dirtytrack { name, tracker, mem }
    }
}

impl Peer for Dirtytrack {
    fn name(&self) -> &'static str {
        self.name
    }
    fn mem(&self) -> &AnonMapping {
        &self.mem
    }
    fn harvest(&mut self, cp: &mut Checkpoint) {
        let ps = page_size();
        let set = self.tracker.collect().expect("collect");
        let (base, bytes) = (self.mem.addr(), mapped(&self.mem));
        for r in set.runs() {
            cp.copy(&bytes[r.start - base..r.end - base], r.start, ps);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// mprotect + SIGSEGV (static state: one such tracker at a time)

/// Bitmap capacity: 256 MiB of 4 KiB pages.
const SEGV_MAX_PAGES: usize = REGION / 4096;
static SEGV_BITMAP: [AtomicU64; SEGV_MAX_PAGES / 64] =
    [const { AtomicU64::new(0) }; SEGV_MAX_PAGES / 64];
static SEGV_START: AtomicUsize = AtomicUsize::new(0);
/// 0 while no region is tracked: every fault is then foreign.
static SEGV_LEN: AtomicUsize = AtomicUsize::new(0);
static SEGV_PAGE: AtomicUsize = AtomicUsize::new(4096);
static SEGV_ACTIVE: AtomicBool = AtomicBool::new(false);
static SEGV_INSTALL: Once = Once::new();

/// The `SIGSEGV` handler. Async-signal-safety: it only does lock-free atomic loads and
/// `fetch_or`s on statics, and the `mprotect`, `sigaction` and `abort` system calls. POSIX does
/// not list `mprotect` as async-signal-safe, but on Linux it is a plain system call with no
/// user-space state (no lock, no allocation), which is what Boehm GC and Wine rely on.
///
/// A fault outside the tracked region (a real crash, or a stack overflow that std's own handler,
/// replaced here, would have reported) resets `SIGSEGV` to its default action and returns: the
/// faulting instruction re-executes and the process dies of `SIGSEGV` as it would have anyway.
extern "C" fn segv_handler(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid `siginfo_t` to an `SA_SIGINFO` handler, and `si_addr` is
    // the field that `SIGSEGV` fills in.
    let addr = unsafe { (*info).si_addr() } as usize;
    let (start, len) = (
        SEGV_START.load(Ordering::Acquire),
        SEGV_LEN.load(Ordering::Acquire),
    );
    if addr < start || addr - start >= len {
        // SAFETY: `signal` is async-signal-safe; resetting the disposition to default is sound.
        unsafe { libc::signal(libc::SIGSEGV, libc::SIG_DFL) };
        return;
    }
    let ps = SEGV_PAGE.load(Ordering::Relaxed);
    let i = (addr - start) / ps;
    SEGV_BITMAP[i / 64].fetch_or(1 << (i % 64), Ordering::Relaxed);
    let page = start + i * ps;
    // SAFETY: `page` is a page of the tracked region, a live anonymous mapping the tracker owns
    // (it is only unmapped after the tracker is dropped, which empties SEGV_LEN first); making it
    // writable again is what lets the interrupted write complete.
    let r = unsafe {
        libc::mprotect(
            page as *mut libc::c_void,
            ps,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
    if r != 0 {
        // SAFETY: `abort` is async-signal-safe and takes no arguments.
        unsafe { libc::abort() };
    }
}

fn segv_install() {
    // SAFETY: `sigaction` is plain old data; all-zero is a valid empty action (empty mask).
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = segv_handler as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: installs a valid `SA_SIGINFO` handler with the matching signature; the old action
    // is not needed (see `segv_handler` for foreign faults).
    let r = unsafe { libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut()) };
    assert_eq!(r, 0, "sigaction: {}", io::Error::last_os_error());
}

/// `mprotect(addr, len, prot)` on a range of a mapping the caller owns.
fn protect(mem: &AnonMapping, prot: libc::c_int) {
    // SAFETY: the whole of a live anonymous mapping we own; only protections change. With
    // PROT_READ, writes into it fault into `segv_handler`, which un-protects the page.
    let r = unsafe { libc::mprotect(mem.addr() as *mut libc::c_void, mem.len(), prot) };
    assert_eq!(r, 0, "mprotect: {}", io::Error::last_os_error());
}

struct MprotectSegv {
    mem: AnonMapping,
    words: usize,
}

impl MprotectSegv {
    fn new() -> MprotectSegv {
        assert!(
            !SEGV_ACTIVE.swap(true, Ordering::AcqRel),
            "only one mprotect tracker at a time"
        );
        let ps = page_size();
        let pages = REGION / ps;
        assert!(pages <= SEGV_MAX_PAGES, "page size below 4 KiB");
        let mem = map(REGION);
        populate(&mem);
        SEGV_BITMAP
            .iter()
            .for_each(|w| w.store(0, Ordering::Relaxed));
        SEGV_PAGE.store(ps, Ordering::Relaxed);
        SEGV_START.store(mem.addr(), Ordering::Release);
        SEGV_LEN.store(REGION, Ordering::Release);
        SEGV_INSTALL.call_once(segv_install);
        protect(&mem, libc::PROT_READ);
        MprotectSegv {
            mem,
            words: pages.div_ceil(64),
        }
    }
}

impl Drop for MprotectSegv {
    fn drop(&mut self) {
        protect(&self.mem, libc::PROT_READ | libc::PROT_WRITE);
        SEGV_LEN.store(0, Ordering::Release);
        SEGV_ACTIVE.store(false, Ordering::Release);
    }
}

impl Peer for MprotectSegv {
    fn name(&self) -> &'static str {
        "mprotect_sigsegv"
    }
    fn mem(&self) -> &AnonMapping {
        &self.mem
    }
    fn harvest(&mut self, cp: &mut Checkpoint) {
        let ps = page_size();
        let (base, bytes) = (self.mem.addr(), mapped(&self.mem));
        for (wi, word) in SEGV_BITMAP[..self.words].iter().enumerate() {
            let mut w = word.swap(0, Ordering::Relaxed);
            while w != 0 {
                let i = wi * 64 + w.trailing_zeros() as usize;
                cp.copy(&bytes[i * ps..(i + 1) * ps], base + i * ps, ps);
                w &= w - 1;
            }
        }
        protect(&self.mem, libc::PROT_READ);
    }
}

// ---------------------------------------------------------------------------------------------
// memcmp against a saved copy

struct Memcmp {
    mem: AnonMapping,
    saved: Vec<u8>,
}

impl Memcmp {
    fn new() -> Memcmp {
        let mem = map(REGION);
        populate(&mem);
        let saved = mapped(&mem).to_vec();
        Memcmp { mem, saved }
    }
}

impl Peer for Memcmp {
    fn name(&self) -> &'static str {
        "memcmp"
    }
    fn mem(&self) -> &AnonMapping {
        &self.mem
    }
    fn harvest(&mut self, cp: &mut Checkpoint) {
        let ps = page_size();
        let (base, bytes) = (self.mem.addr(), mapped(&self.mem));
        for (i, (now, old)) in bytes
            .chunks_exact(ps)
            .zip(self.saved.chunks_exact_mut(ps))
            .enumerate()
        {
            if now != old {
                cp.copy(now, base + i * ps, ps);
                old.copy_from_slice(now);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// A mechanism with its per-iteration timings and its next byte value.
struct Entry {
    peer: Box<dyn Peer>,
    value: u8,
    times: Vec<Duration>,
}

/// Runs `iters` checkpoint cycles on `e`; returns the summed harvest time.
fn cycles(e: &mut Entry, cp: &mut Checkpoint, iters: u64, record: bool) -> Duration {
    let ps = page_size();
    let pages = REGION / ps;
    let expected = dirty_count(pages, EVERY);
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        e.value = e.value.wrapping_add(1);
        dirty_every(e.peer.mem().addr(), pages, EVERY, e.value);
        cp.reset();
        let t = Instant::now();
        e.peer.harvest(cp);
        let d = t.elapsed();
        total += d;
        if record {
            e.times.push(d);
        }
        assert_eq!(cp.addrs.len(), expected, "{}", e.peer.name());
        black_box(&cp.data);
    }
    total
}

/// One untimed cycle; asserts the checkpoint holds exactly the dirtied pages, in address order,
/// with the bytes just written.
fn verify(e: &mut Entry, cp: &mut Checkpoint) {
    let ps = page_size();
    let pages = REGION / ps;
    let base = e.peer.mem().addr();
    cycles(e, cp, 1, false);
    let want: Vec<usize> = (0..pages).step_by(EVERY).map(|i| base + i * ps).collect();
    assert_eq!(want.len(), dirty_count(pages, EVERY));
    assert_eq!(cp.addrs, want, "{}: dirty pages", e.peer.name());
    for k in 0..want.len() {
        assert_eq!(cp.data[k * ps], e.value, "{}: copied data", e.peer.name());
    }
    eprintln!(
        "peers/{}: verified {} dirty pages of {pages}",
        e.peer.name(),
        want.len()
    );
}

fn peers(c: &mut Criterion) {
    let ps = page_size();
    let pages = REGION / ps;
    let expected = dirty_count(pages, EVERY);
    let mut cp = Checkpoint::new(expected, ps);
    let mut entries: Vec<Entry> = [
        Box::new(Dirtytrack::new("dirtytrack_async", Mode::Async)) as Box<dyn Peer>,
        Box::new(Dirtytrack::new("dirtytrack_sync", Mode::Sync)),
        Box::new(MprotectSegv::new()),
        Box::new(Memcmp::new()),
    ]
    .into_iter()
    .map(|peer| Entry {
        peer,
        value: 0,
        times: Vec::new(),
    })
    .collect();

    // Start clean (the mappings were populated before tracking, except for memcmp's saved copy
    // which matches already), then check each mechanism once, outside any timing.
    for e in &mut entries {
        cp.reset();
        e.peer.harvest(&mut cp);
        verify(e, &mut cp);
    }

    let mut g = c.benchmark_group("checkpoint_256MiB_1pct");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for e in &mut entries {
        g.bench_function(e.peer.name(), |b| {
            b.iter_custom(|iters| cycles(e, &mut cp, iters, true))
        });
    }
    g.finish();

    let base = median(&mut entries[0].times);
    for e in &mut entries {
        let n = e.times.len();
        let m = median(&mut e.times);
        eprintln!(
            "PEERS checkpoint_256MiB_1pct/{}: median {:?} over {n} iterations, ratio {:.3} vs dirtytrack_async",
            e.peer.name(),
            m,
            ratio(m, base)
        );
    }

    // Interleaved: every round runs each mechanism once, rotating which goes first.
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(ROUNDS); entries.len()];
    for round in 0..ROUNDS {
        for k in 0..entries.len() {
            let i = (round + k) % entries.len();
            times[i].push(cycles(&mut entries[i], &mut cp, 1, false));
        }
    }
    let medians: Vec<Duration> = times.iter_mut().map(|t| median(t)).collect();
    for (e, &m) in entries.iter().zip(&medians) {
        eprintln!(
            "INTERLEAVED checkpoint_256MiB_1pct/{}: median {:?}, ratio {:.3} vs dirtytrack_async ({ROUNDS} rounds)",
            e.peer.name(),
            m,
            ratio(m, medians[0])
        );
    }
}

criterion_group!(benches, peers);
criterion_main!(benches);
