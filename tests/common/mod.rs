//! The one test oracle every test uses: a shadow copy of tracked memory, compared page by page
//! with what the tracker reports; plus mode parameterisation and the documented skip rule.
//!
//! - Every page whose bytes differ from the shadow must be in the reported set (no lost write).
//! - For exact memory (private anonymous, only user writes that change bytes), no page outside
//!   the changed set may be reported either (no over-report).
//!
//! Skips: a test that cannot run here (mode unsupported by the kernel, no hugetlb pages, ...)
//! prints `DIRTYTRACK-SKIP: <test>: <reason>` and FAILS, unless the environment variable
//! `DIRTYTRACK_ALLOW_SKIP=1` is set, in which case it passes after printing the line.
#![allow(dead_code)]

use dirtytrack::{DirtySet, Error, Mode, Tracker, TrackerBuilder};
use std::ptr;

/// Generates one `#[test]` per mode: `name::async_mode` and `name::sync_mode`, each calling
/// `body(mode)`.
#[macro_export]
macro_rules! per_mode {
    ($(#[$attr:meta])* fn $name:ident($mode:ident: Mode) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(#[$attr])*
            fn run($mode: dirtytrack::Mode) $body
            #[test]
            fn async_mode() { run(dirtytrack::Mode::Async) }
            #[test]
            fn sync_mode() { run(dirtytrack::Mode::Sync) }
        }
    };
}

pub fn page() -> usize {
    dirtytrack::page_size()
}

/// Reports a skip; panics unless `DIRTYTRACK_ALLOW_SKIP=1`.
pub fn skip(reason: &str) {
    let name = std::thread::current().name().unwrap_or("?").to_string();
    eprintln!("DIRTYTRACK-SKIP: {name}: {reason}");
    if std::env::var("DIRTYTRACK_ALLOW_SKIP").as_deref() != Ok("1") {
        panic!("cannot run here: {reason} (set DIRTYTRACK_ALLOW_SKIP=1 to allow skipping)");
    }
}

/// A tracker in `mode`, or `None` after reporting a skip when the kernel cannot run that mode.
pub fn tracker(mode: Mode) -> Option<Tracker> {
    tracker_with(Tracker::builder().mode(mode))
}

pub fn tracker_with(b: TrackerBuilder) -> Option<Tracker> {
    match b.build() {
        Ok(t) => {
            eprintln!("DIRTYTRACK-MODE: {:?}", t.mode());
            Some(t)
        }
        Err(e @ (Error::UnsupportedKernel { .. } | Error::Permission(_))) => {
            skip(&e.to_string());
            None
        }
        Err(e) => panic!("Tracker::build failed: {e}"),
    }
}

/// Whether the collect right after the one that reported a discard must be exact: no. The
/// contract lets discarded pages be reported by the next two collects (the zap may land after the
/// first), and kernels differ here (Debian's 6.18.15 scan reports a freed page table's entries
/// again one collect later). Tests check instead that nothing outside the discarded pages is
/// reported, and that the collect after that is exact.
pub const EXACT_AFTER_DISCARD: bool = false;

/// Runs `f` (which writes tracked memory) on another thread; if it has not finished after a few
/// seconds, unregisters `id` (which un-protects the range and wakes a stuck writer) and fails.
pub fn bounded<T: Send>(
    t: &Tracker,
    id: dirtytrack::RangeId,
    what: &str,
    f: impl FnOnce() -> T + Send,
) -> T {
    std::thread::scope(|s| {
        let h = s.spawn(f);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !h.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if !h.is_finished() {
            let _ = t.unregister(id);
            let _ = h.join();
            panic!(
                "HANG: {what} did not complete within 5 s (the writer was released by unregister)"
            );
        }
        h.join().unwrap()
    })
}

/// `mmap(hint, len, PROT_READ | PROT_WRITE, flags, fd, 0)` (hint 0: anywhere); panics on failure.
fn map_rw(hint: usize, len: usize, flags: i32, fd: i32) -> usize {
    // SAFETY: a fresh mapping; the address is only a hint (callers pass no MAP_FIXED).
    let p = unsafe {
        libc::mmap(
            hint as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            0,
        )
    };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    p as usize
}

/// An anonymous (or other) mapping with a shadow copy of its bytes.
pub struct Region {
    pub addr: usize,
    pub len: usize,
    shadow: Vec<u8>,
    owned: bool,
}

// The region's memory is only touched through volatile raw-pointer accesses.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    /// `pages` pages of private anonymous memory, never touched.
    pub fn anon(pages: usize) -> Region {
        Region::mmap(
            pages,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
        )
    }

    /// `pages` pages of private anonymous memory, never touched, at `hint` if that is free (else
    /// wherever the kernel puts it). Tests that unmap and map again pages of a region use a hint
    /// far below the other mappings, so that no other thread's `mmap` (e.g. a starting thread's
    /// signal stack) can land in the hole in between: the kernel looks for room top-down.
    pub fn anon_near(pages: usize, hint: usize) -> Region {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        Region::owning(map_rw(hint, pages * page(), flags, -1), pages * page())
    }

    pub fn mmap(pages: usize, flags: i32, fd: i32) -> Region {
        Region::owning(map_rw(0, pages * page(), flags, fd), pages * page())
    }

    /// Takes ownership of the mapping `[addr, addr + len)` (unmapped on drop).
    fn owning(addr: usize, len: usize) -> Region {
        Region {
            addr,
            len,
            shadow: vec![0; len],
            owned: true,
        }
    }

    /// Wraps memory the test manages itself (not unmapped on drop).
    pub fn borrowed(addr: usize, len: usize) -> Region {
        let mut r = Region {
            addr,
            len,
            shadow: vec![0; len],
            owned: false,
        };
        r.rebase();
        r
    }

    pub fn pages(&self) -> usize {
        self.len / page()
    }

    pub fn ptr(&self) -> *mut u8 {
        self.addr as *mut u8
    }

    pub fn page_addr(&self, i: usize) -> usize {
        assert!(i < self.pages());
        self.addr + i * page()
    }

    /// Writes `v` at byte `off` of page `i`.
    pub fn write(&self, i: usize, off: usize, v: u8) {
        // SAFETY: inside the mapping; volatile because other threads and the kernel also access it.
        unsafe { ptr::write_volatile((self.page_addr(i) + off) as *mut u8, v) }
    }

    /// Changes page `i` (increments its first byte).
    pub fn touch(&self, i: usize) {
        let v = self.read(i, 0);
        self.write(i, 0, v.wrapping_add(1));
    }

    pub fn read(&self, i: usize, off: usize) -> u8 {
        // SAFETY: inside the mapping.
        unsafe { ptr::read_volatile((self.page_addr(i) + off) as *const u8) }
    }

    /// The shadow takes the current contents (after a clear or collect).
    pub fn rebase(&mut self) {
        // SAFETY: the mapping is readable and `len` long.
        let now = unsafe { std::slice::from_raw_parts(self.addr as *const u8, self.len) };
        self.shadow.copy_from_slice(now);
    }

    /// Pages whose bytes differ from the shadow.
    pub fn changed(&self) -> Vec<usize> {
        // SAFETY: as in `rebase`.
        let now = unsafe { std::slice::from_raw_parts(self.addr as *const u8, self.len) };
        (0..self.pages())
            .filter(|&i| {
                let r = i * page()..(i + 1) * page();
                now[r.clone()] != self.shadow[r]
            })
            .collect()
    }

    /// The shadow of pages `pages` takes their current contents; the other pages keep theirs.
    pub fn rebase_pages(&mut self, pages: std::ops::Range<usize>) {
        let bytes = pages.start * page()..pages.end * page();
        assert!(bytes.end <= self.len);
        // SAFETY: inside the mapping, which is readable.
        let now = unsafe {
            std::slice::from_raw_parts((self.addr + bytes.start) as *const u8, bytes.len())
        };
        self.shadow[bytes].copy_from_slice(now);
    }

    /// Whether page `i` differs from its shadow.
    pub fn page_changed(&self, i: usize) -> bool {
        let bytes = i * page()..(i + 1) * page();
        // SAFETY: inside the mapping, which is readable.
        let now = unsafe { std::slice::from_raw_parts(self.page_addr(i) as *const u8, page()) };
        now != &self.shadow[bytes]
    }

    /// Page `i`'s shadow becomes a copy of page `j`'s shadow in `from` (the page moved, e.g. by
    /// `mremap`).
    pub fn copy_shadow_page(&mut self, i: usize, from: &Region, j: usize) {
        let ps = page();
        self.shadow[i * ps..(i + 1) * ps].copy_from_slice(&from.shadow[j * ps..(j + 1) * ps]);
    }

    /// The oracle: every changed page is in `dirty`; with `exact`, nothing else in this region is.
    /// Then the shadow takes the current contents. Returns (changed, reported) counts.
    pub fn check(&mut self, dirty: &DirtySet, exact: bool) -> (usize, usize) {
        let changed = self.changed();
        let lost: Vec<usize> = changed
            .iter()
            .copied()
            .filter(|&i| !dirty.contains(self.page_addr(i)))
            .collect();
        assert!(
            lost.is_empty(),
            "LOST WRITES: {} of {} changed pages not reported (first: page {:?})",
            lost.len(),
            changed.len(),
            &lost[..lost.len().min(8)]
        );
        let reported: Vec<usize> = dirty
            .pages()
            .filter(|&a| a >= self.addr && a < self.addr + self.len)
            .map(|a| (a - self.addr) / page())
            .collect();
        if exact {
            let over: Vec<usize> = reported
                .iter()
                .copied()
                .filter(|i| !changed.contains(i))
                .collect();
            assert!(
                over.is_empty(),
                "over-reported {} pages that did not change (first: {:?})",
                over.len(),
                &over[..over.len().min(8)]
            );
        }
        self.rebase();
        (changed.len(), reported.len())
    }
}

impl Region {
    /// Gives the mapping back to the caller (not unmapped on drop; the shadow is freed), for
    /// tests that punched holes into it: the holes may hold another test's memory by then, so
    /// the test unmaps only the pieces it still owns (see [`unmap_pieces`]).
    pub fn disown(mut self) -> (usize, usize) {
        self.owned = false;
        (self.addr, self.len)
    }
}

/// Unmaps the page ranges `pieces` (page offsets from `addr`) of a disowned mapping.
pub fn unmap_pieces(addr: usize, pieces: &[std::ops::Range<usize>]) {
    for p in pieces {
        // SAFETY: the caller owns these pages (pieces of its own disowned mapping).
        unsafe {
            libc::munmap(
                (addr + p.start * page()) as *mut libc::c_void,
                p.len() * page(),
            )
        };
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: we mapped it.
            unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
        }
    }
}

// ---- Memory-type constructors (memory_types.rs, kernel_writes.rs) ----

/// Default huge page size (hugetlbfs), from `/proc/meminfo`.
pub fn huge_page_size() -> usize {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Hugepagesize:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        })
        .map_or(2 << 20, |kb| kb * 1024)
}

/// Size of a PMD-mapped transparent huge page, from
/// `/sys/kernel/mm/transparent_hugepage/hpage_pmd_size`: 2 MiB with 4 KiB base pages, 32 MiB
/// with 16 KiB (arm64), 512 MiB with 64 KiB. 2 MiB if the file is missing (no THP).
pub fn thp_size() -> usize {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(2 << 20)
}

impl Region {
    /// `pages` pages of a fresh (zero-filled) memfd, mapped `MAP_SHARED` (`shared`) or
    /// `MAP_PRIVATE`. Returns the fd too, for `pwrite`s and second mappings.
    pub fn memfd(pages: usize, shared: bool) -> (Region, std::os::fd::OwnedFd) {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        // SAFETY: a NUL-terminated name; the fd is ours.
        let fd = unsafe { libc::memfd_create(c"dirtytrack-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: resizing our own memfd.
        let rc = unsafe { libc::ftruncate(fd.as_raw_fd(), (pages * page()) as libc::off_t) };
        assert_eq!(rc, 0, "ftruncate: {}", std::io::Error::last_os_error());
        let flags = if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        (Region::mmap(pages, flags, fd.as_raw_fd()), fd)
    }

    /// `pages` pages of private anonymous memory whose start is a multiple of `align`, never
    /// touched.
    pub fn anon_aligned(pages: usize, align: usize) -> Region {
        let len = pages * page();
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        let base = map_rw(0, len + align, flags, -1);
        let addr = base.next_multiple_of(align);
        let tail = base + len + align - (addr + len);
        // SAFETY: the parts of our fresh mapping outside the aligned window are unmapped again.
        unsafe {
            if addr > base {
                libc::munmap(base as *mut libc::c_void, addr - base);
            }
            if tail > 0 {
                libc::munmap((addr + len) as *mut libc::c_void, tail);
            }
        }
        Region::owning(addr, len)
    }

    /// `huge_pages` huge pages of `MAP_HUGETLB` anonymous memory (`MAP_SHARED` or `MAP_PRIVATE`),
    /// or `None` when the kernel has none to give (see [`HugetlbPool`]).
    pub fn hugetlb(huge_pages: usize, shared: bool) -> Option<Region> {
        let len = huge_pages * huge_page_size();
        let sharing = if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        // SAFETY: a fresh mapping at an address the kernel picks.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                sharing | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        Some(Region {
            addr: p as usize,
            len,
            shadow: vec![0; len],
            owned: true,
        })
    }
}

/// Reserves hugetlb pages (`/proc/sys/vm/nr_hugepages`) for one test at a time; restores the
/// old value on drop. Tests holding it are serialised.
pub struct HugetlbPool {
    old: Option<String>,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl HugetlbPool {
    const PATH: &'static str = "/proc/sys/vm/nr_hugepages";

    /// Makes at least `free` huge pages free, or `None` after reporting a skip.
    pub fn reserve(free: usize) -> Option<HugetlbPool> {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let free_now = || meminfo("HugePages_Free").unwrap_or(0);
        let mut pool = HugetlbPool {
            old: None,
            _lock: lock,
        };
        if free_now() < free {
            let Ok(old) = std::fs::read_to_string(Self::PATH) else {
                skip("cannot read /proc/sys/vm/nr_hugepages");
                return None;
            };
            let total: usize = old.trim().parse().unwrap_or(0);
            let want = total + free - free_now();
            if std::fs::write(Self::PATH, want.to_string()).is_ok() {
                pool.old = Some(old.trim().to_string());
            }
        }
        if free_now() < free {
            skip(&format!(
                "{free} free hugetlb pages needed, {} available (nr_hugepages could not be raised)",
                free_now()
            ));
            return None;
        }
        Some(pool)
    }
}

impl Drop for HugetlbPool {
    fn drop(&mut self) {
        if let Some(old) = self.old.take() {
            let _ = std::fs::write(Self::PATH, old);
        }
    }
}

/// A numeric field of `/proc/meminfo` (as printed, without unit).
pub fn meminfo(field: &str) -> Option<usize> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}
