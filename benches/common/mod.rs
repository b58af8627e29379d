//! Shared bench helpers: memory, dirtying, and the "raw" baselines written directly on
//! `dirtytrack::sys` (no library logic), for side-by-side comparisons with `Tracker`.
//!
//! Included by both bench targets with `mod common;`; each uses only part of it.
#![allow(dead_code)]

use dirtytrack::sys::mem::{self, AnonMapping};
use dirtytrack::sys::pagemap::{self, PageRegion, ScanRequest};
use dirtytrack::sys::uffd;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const KIB: usize = 1 << 10;
pub const MIB: usize = 1 << 20;
pub const GIB: usize = 1 << 30;

/// Regions per `PAGEMAP_SCAN` call in the raw loop: the same as the library's scanner, so both
/// make the same number of ioctls.
pub const RAW_VEC_LEN: usize = 1024;

pub fn page_size() -> usize {
    dirtytrack::page_size()
}

/// A private anonymous `MAP_NORESERVE` mapping of `len` bytes (unmapped on drop).
pub fn map(len: usize) -> AnonMapping {
    AnonMapping::new(len).unwrap_or_else(|e| panic!("mmap of {len} bytes failed: {e}"))
}

/// Populates `m` for writing (every page gets its own zeroed frame), as a used heap would be.
pub fn populate(m: &AnonMapping) {
    mem::madvise(m.addr(), m.len(), mem::MADV_POPULATE_WRITE).expect("MADV_POPULATE_WRITE");
}

/// Writes one byte into one page.
#[inline(always)]
pub fn touch(addr: usize, value: u8) {
    // SAFETY: every caller passes an address inside a live bench-owned `AnonMapping` (read-write
    // anonymous memory); no Rust reference points into those mappings, and concurrent writers
    // always write disjoint pages, so a volatile byte store is sound.
    unsafe { std::ptr::write_volatile(addr as *mut u8, value) };
}

/// Writes one byte into every `every`-th page of `[base, base + pages * ps)`, starting with the
/// first page (`every == 0` writes nothing). Returns the number of pages written.
pub fn dirty_every(base: usize, pages: usize, every: usize, value: u8) -> usize {
    if every == 0 {
        return 0;
    }
    let ps = page_size();
    let mut n = 0;
    let mut i = 0;
    while i < pages {
        touch(base + i * ps, value);
        n += 1;
        i += every;
    }
    n
}

/// Pages `[0, pages)` a stride of `every` dirties.
pub fn dirty_count(pages: usize, every: usize) -> usize {
    if every == 0 {
        0
    } else {
        pages.div_ceil(every)
    }
}

/// Sum of the page counts of `regions`.
pub fn region_pages(regions: &[PageRegion]) -> usize {
    let ps = page_size() as u64;
    regions
        .iter()
        .map(|r| ((r.end - r.start) / ps) as usize)
        .sum()
}

/// Raw async-mode tracking of one range: its own user-mode-only userfaultfd with
/// `WP_ASYNC | WP_UNPOPULATED`, `MODE_WP` registration, one `UFFDIO_WRITEPROTECT`, and a harvest
/// that is nothing but the `PAGEMAP_SCAN` loop.
pub struct RawAsync {
    _fd: OwnedFd,
    pagemap: File,
    buf: Vec<PageRegion>,
    pub start: usize,
    pub len: usize,
}

impl RawAsync {
    pub fn new(start: usize, len: usize) -> io::Result<RawAsync> {
        let fd = uffd::userfaultfd(libc::O_CLOEXEC | libc::O_NONBLOCK | uffd::UFFD_USER_MODE_ONLY)?;
        uffd::api(
            fd.as_fd(),
            uffd::FEATURE_WP_ASYNC | uffd::FEATURE_WP_UNPOPULATED,
        )?;
        uffd::register(fd.as_fd(), start, len, uffd::REGISTER_MODE_WP)?;
        uffd::writeprotect(fd.as_fd(), start, len, uffd::WRITEPROTECT_MODE_WP)?;
        Ok(RawAsync {
            _fd: fd,
            pagemap: File::open("/proc/self/pagemap")?,
            buf: vec![PageRegion::default(); RAW_VEC_LEN],
            start,
            len,
        })
    }

    /// Written regions since the last harvest; re-protects them in the same walk.
    pub fn harvest(&mut self) -> io::Result<Vec<PageRegion>> {
        let mut out = Vec::new();
        let end = (self.start + self.len) as u64;
        let mut at = self.start as u64;
        while at < end {
            let req = ScanRequest {
                flags: pagemap::PM_SCAN_WP_MATCHING | pagemap::PM_SCAN_CHECK_WPASYNC,
                start: at,
                end,
                category_mask: pagemap::PAGE_IS_WRITTEN,
                return_mask: pagemap::PAGE_IS_WRITTEN,
                ..Default::default()
            };
            let o = pagemap::scan(&self.pagemap, &req, &mut self.buf);
            o.result?;
            out.extend_from_slice(&self.buf[..o.regions]);
            if o.walk_end <= at {
                return Err(io::Error::other("PAGEMAP_SCAN made no progress"));
            }
            at = o.walk_end;
        }
        Ok(out)
    }
}

/// Raw sync-mode tracking of one range: a full userfaultfd with `PAGEFAULT_FLAG_WP |
/// WP_UNPOPULATED`, and a monitor thread that polls it, reads one `uffd_msg` at a time and
/// un-protects the faulting page (which wakes the writer). Counts the faults it served.
pub struct RawSync {
    fd: Arc<OwnedFd>,
    stop: OwnedFd,
    pub served: Arc<AtomicU64>,
    thread: Option<JoinHandle<io::Result<()>>>,
    pub start: usize,
    pub len: usize,
}

impl RawSync {
    pub fn new(start: usize, len: usize) -> io::Result<RawSync> {
        let fd = Arc::new(uffd::userfaultfd(libc::O_CLOEXEC | libc::O_NONBLOCK)?);
        uffd::api(
            fd.as_fd(),
            uffd::FEATURE_PAGEFAULT_FLAG_WP | uffd::FEATURE_WP_UNPOPULATED,
        )?;
        uffd::register(fd.as_fd(), start, len, uffd::REGISTER_MODE_WP)?;
        uffd::writeprotect(fd.as_fd(), start, len, uffd::WRITEPROTECT_MODE_WP)?;
        let stop = mem::eventfd()?;
        let served = Arc::new(AtomicU64::new(0));
        let thread = {
            let (fd, stop, served) = (fd.clone(), stop.try_clone()?, served.clone());
            std::thread::Builder::new()
                .name("raw-monitor".into())
                .spawn(move || raw_monitor(&fd, &stop, &served))?
        };
        Ok(RawSync {
            fd,
            stop,
            served,
            thread: Some(thread),
            start,
            len,
        })
    }

    /// Re-protects the whole range.
    pub fn rearm(&self) -> io::Result<()> {
        uffd::writeprotect(
            self.fd.as_fd(),
            self.start,
            self.len,
            uffd::WRITEPROTECT_MODE_WP,
        )
    }
}

fn raw_monitor(fd: &OwnedFd, stop: &OwnedFd, served: &AtomicU64) -> io::Result<()> {
    let ps = page_size();
    let mut msg = [uffd::UffdMsg::default(); 1];
    loop {
        let [ready, stopped] = mem::poll_in2(fd.as_fd(), stop.as_fd(), -1)?;
        if stopped {
            return Ok(());
        }
        if !ready {
            continue;
        }
        match uffd::read_msgs(fd.as_fd(), &mut msg) {
            Ok(1) => {}
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
        if msg[0].event == uffd::EVENT_PAGEFAULT {
            let page = msg[0].pagefault_address() as usize & !(ps - 1);
            // Counted before the un-protect, which wakes the writer: the count is complete
            // when the writers return.
            served.fetch_add(1, Ordering::Relaxed);
            uffd::writeprotect(fd.as_fd(), page, ps, 0)?;
        }
    }
}

impl Drop for RawSync {
    fn drop(&mut self) {
        // Un-protect first so that no writer can stay blocked, then stop the thread.
        let _ = uffd::unregister(self.fd.as_fd(), self.start, self.len);
        let _ = mem::eventfd_signal(self.stop.as_fd());
        if let Some(t) = self.thread.take() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("raw monitor failed: {e}"),
                Err(_) => eprintln!("raw monitor panicked"),
            }
        }
    }
}

/// `threads` writer threads write one byte into each of `pages` pages at `base` (thread `t` takes
/// the `t`-th contiguous block). Returns the wall time from the first writer's start to the last
/// writer's end; thread start-up and join are not included.
pub fn timed_writes(base: usize, pages: usize, threads: usize, value: u8) -> Duration {
    let ps = page_size();
    let per = pages.div_ceil(threads);
    let barrier = Barrier::new(threads);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    let (lo, hi) = (t * per, ((t + 1) * per).min(pages));
                    barrier.wait();
                    let begin = Instant::now();
                    for i in lo..hi {
                        touch(base + i * ps, value);
                    }
                    (begin, Instant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("writer panicked"))
            .collect()
    });
    let first = spans.iter().map(|s| s.0).min().expect("no writer");
    let last = spans.iter().map(|s| s.1).max().expect("no writer");
    last - first
}

/// Runs `a` and `b` alternately (`pairs` times each, swapping which goes first every pair), each
/// returning its own timed duration, and returns their medians. A cross-check of criterion's
/// per-function runs that is immune to drift between them (cache, frequency, other load).
pub fn interleaved(
    pairs: usize,
    mut a: impl FnMut() -> Duration,
    mut b: impl FnMut() -> Duration,
) -> (Duration, Duration) {
    let (mut ta, mut tb) = (Vec::with_capacity(pairs), Vec::with_capacity(pairs));
    for i in 0..pairs {
        if i % 2 == 0 {
            ta.push(a());
            tb.push(b());
        } else {
            tb.push(b());
            ta.push(a());
        }
    }
    (median(&mut ta), median(&mut tb))
}

/// The median (upper middle) of `v`, which it sorts.
pub fn median<T: Ord + Copy>(v: &mut [T]) -> T {
    v.sort_unstable();
    v[v.len() / 2]
}

/// `a / b` as a float.
pub fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// If `DIRTYTRACK_BENCH_PIN_CPU=<n>` is set, pins the whole process (every thread created after
/// this call, the trackers' monitor threads included) to CPU `n`. On this 2-vCPU VM cross-CPU
/// wake-ups make sync round trips vary 5–100 µs run to run; pinned, the fault ping-pong stays
/// on one CPU and the comparison measures software cost.
pub fn pin_from_env() {
    let Some(cpu) = std::env::var("DIRTYTRACK_BENCH_PIN_CPU")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
    else {
        return;
    };
    // SAFETY: `cpu_set_t` is plain old data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit of the exclusively borrowed set (it bounds-checks `cpu`).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: passes a valid, live `cpu_set_t` and its exact size.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    assert_eq!(
        r,
        0,
        "sched_setaffinity to CPU {cpu}: {}",
        io::Error::last_os_error()
    );
    eprintln!("pinned to CPU {cpu}");
}
