//! The one test oracle every test uses: a shadow copy of tracked memory, compared page by page
//! with what the tracker reports; plus mode and case parameterisation and the documented skip
//! rule.
//!
//! - Every page whose bytes differ from the shadow must be in the reported set (no lost write).
//! - For exact memory (private anonymous, only user writes that change bytes), no page outside
//!   the changed set may be reported either (no over-report).
//!
//! The building blocks, from the bottom up:
//! - [`Comparison`]: one harvest compared page by page with what each page's [`Expect`]ation
//!   is; it lists every lost and every over-reported page, labelled with its scope (a region, a
//!   model's area and range) and the reason it had to be (or must not be) reported, and fails
//!   with `LOST WRITE: ...` / `OVER-REPORT: ...` and the page numbers.
//! - [`Region`]: the shadow copy. [`Region::compare_pages`] adds pages to a comparison with a
//!   caller's rule (the model test's must/may cells); [`Region::check`] is the usual rule
//!   (changed pages must be reported; with `exact`, nothing else may be).
//! - [`WriteStamps`] and [`CollectHistory`]: writers racing collects stamp each write with the
//!   number of collects started before it; each stamped write must be in one of the collects
//!   from the one it may have raced to the first one that started after it completed.
//! - [`per_mode!`] (one `#[test]` per mode) and [`per_case!`] (one `#[test]` per case of a table
//!   and per mode), and [`Memory`], the kinds of memory the per-memory-type tables map.
//!
//! Skips: a test that cannot run here (mode unsupported by the kernel, no hugetlb pages, ...)
//! prints `DIRTYTRACK-SKIP: <test>: <reason>` and FAILS, unless the environment variable
//! `DIRTYTRACK_ALLOW_SKIP=1` is set, in which case it passes after printing the line.
#![allow(dead_code)]

pub mod seccomp;

use dirtytrack::{DirtySet, Error, Mode, Tracker, TrackerBuilder};
use std::borrow::Cow;
use std::fmt::Write as _;
use std::os::fd::OwnedFd;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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

/// Generates one `#[test]` per case of a table and per mode: for each row `name => case`, the
/// tests `name::async_mode` and `name::sync_mode`, each calling `run(mode, case)`. The test's
/// name is the case's label: a failure names its case. Rows may carry attributes (doc comments).
///
/// ```ignore
/// per_case! { discard_after_collect:
///     private_anonymous_dontneed => Discard { memory: PRIVATE_ANONYMOUS, .. },
///     memfd_shared_madv_remove => Discard { memory: MEMFD_SHARED, .. },
/// }
/// ```
#[macro_export]
macro_rules! per_case {
    ($run:ident: $($(#[$attr:meta])* $name:ident => $case:expr),+ $(,)?) => {
        $(
            $crate::per_mode! {
                $(#[$attr])*
                fn $name(mode: Mode) {
                    $run(mode, $case)
                }
            }
        )+
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

/// Whether this kernel can write-protect shmem, memfd and hugetlbfs memory
/// (`UFFD_FEATURE_WP_HUGETLBFS_SHMEM`, 5.19+; 5.10 cannot, and runs sync mode only); `false`
/// after reporting a skip. Call it after [`tracker`], so that a mode the kernel lacks is the
/// reported reason.
pub fn shmem_hugetlb_wp_or_skip() -> bool {
    if dirtytrack::Capabilities::probe().has(dirtytrack::features::WP_HUGETLBFS_SHMEM) {
        return true;
    }
    skip("the kernel cannot write-protect shmem, memfd or hugetlbfs memory (UFFD_FEATURE_WP_HUGETLBFS_SHMEM, 5.19+)");
    false
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

/// Runs `f` on a new thread and returns its handle and its thread id (known before `f` runs).
pub fn spawn(f: Box<dyn FnOnce() + Send>) -> (std::thread::JoinHandle<()>, i32) {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        let _ = tx.send(unsafe { libc::gettid() });
        f()
    });
    (h, rx.recv().expect("the spawned thread sends its id first"))
}

/// Waits until thread `tid` of this process sleeps in userfaultfd code (a write fault waiting
/// for the monitor, or a memory event waiting to be read), as `/proc/self/task/<tid>/wchan`
/// names it, or else its kernel stack (`/proc/self/task/<tid>/stack`, root only: x86_64 kernels
/// before 5.16 built with the ORC unwinder, Debian's 5.10 among them, read `wchan` as "0");
/// fails after 20 s.
pub fn wait_in_userfaultfd(tid: i32, what: &str) {
    let path = format!("/proc/self/task/{tid}/wchan");
    let stack_path = format!("/proc/self/task/{tid}/stack");
    let started = std::time::Instant::now();
    loop {
        let wchan = std::fs::read_to_string(&path).unwrap_or_default();
        if wchan.contains("userfault") {
            return;
        }
        let stack = std::fs::read_to_string(&stack_path).unwrap_or_default();
        if stack.contains("userfault") {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{what} (thread {tid}) is not blocked in userfaultfd after 20 s: wchan {wchan:?}, stack {stack:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Maps fresh private anonymous memory over `[addr, addr + len)` (`MAP_FIXED`: the old mapping
/// there is unmapped, an UNMAP event for a tracker); panics on failure.
pub fn map_fresh_over(addr: usize, len: usize) {
    // SAFETY: callers pass memory of their own test mappings, which they no longer access
    // through references (only through volatile reads and writes by address).
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    assert_eq!(
        p as usize,
        addr,
        "mmap(MAP_FIXED): {}",
        std::io::Error::last_os_error()
    );
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
        let cmp = self.compare(dirty, exact);
        cmp.assert_ok();
        self.rebase();
        (cmp.must(), cmp.reported())
    }

    /// The comparison [`check`](Self::check) asserts, without asserting or rebasing: every
    /// changed page must be reported; with `exact`, no other page of this region may be.
    pub fn compare(&self, dirty: &DirtySet, exact: bool) -> Comparison {
        let mut cmp = Comparison::new("harvest");
        cmp.scope(format!("region {:#x} ({} pages)", self.addr, self.pages()));
        self.compare_pages(&mut cmp, dirty, 0..self.pages(), |_, changed| {
            if changed {
                Expect::Must("changed")
            } else if exact {
                Expect::Clean("not changed")
            } else {
                Expect::May
            }
        });
        cmp
    }

    /// Adds pages `pages` of this region to `cmp` (in its current scope): whether `dirty`
    /// reports each, and what `rule(page, changed)` expects of it, `changed` telling whether
    /// the page's bytes differ from the shadow.
    pub fn compare_pages(
        &self,
        cmp: &mut Comparison,
        dirty: &DirtySet,
        pages: std::ops::Range<usize>,
        mut rule: impl FnMut(usize, bool) -> Expect,
    ) {
        for i in pages {
            let expect = rule(i, self.page_changed(i));
            cmp.page(i, dirty.contains(self.page_addr(i)), expect);
        }
    }

    /// The pages of this region `dirty` reports (page numbers, ascending).
    pub fn reported_pages(&self, dirty: &DirtySet) -> Vec<usize> {
        dirty
            .pages()
            .filter(|&a| a >= self.addr && a < self.addr + self.len)
            .map(|a| (a - self.addr) / page())
            .collect()
    }
}

// ---- The comparison of one harvest with what each page expects ----

/// What a harvest must do with one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// It must report the page, for the reason given ("changed", "was written", ...): not
    /// reporting it is a lost write.
    Must(&'static str),
    /// It may report the page or not (a documented over-report, a discard's second report).
    May,
    /// It must not report the page, for the reason given ("not changed", ...): reporting it
    /// is an over-report.
    Clean(&'static str),
}

/// One page a harvest got wrong.
#[derive(Clone, Debug)]
pub struct Finding {
    /// Index into [`Comparison`]'s scopes, if the page was compared inside one.
    scope: Option<usize>,
    /// Page number inside its scope's memory, if the finding is about one page.
    pub page: Option<usize>,
    /// Why the page had to be reported (lost) or must not be (over-reported).
    pub why: Cow<'static, str>,
}

/// The page-by-page comparison of one harvest (a collect, a peek, a per-range form) with
/// what the test knows each page must, may or must not show. It collects every wrong page
/// before failing, so a failure lists them all (the first [`Comparison::SHOWN`] of each kind)
/// with their scope and page numbers.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// The harvest's label, first in every message ("collect", "CollectRange(3)", ...).
    harvest: String,
    /// Labels of the memory the pages belong to ("area 1, range 3"); pages compared after
    /// [`Comparison::scope`] belong to the last one.
    scopes: Vec<String>,
    lost: Vec<Finding>,
    over: Vec<Finding>,
    /// Pages compared, pages that had to be reported, and pages reported among those compared.
    compared: usize,
    must: usize,
    reported: usize,
}

impl Comparison {
    /// How many findings of each kind a failure message lists.
    pub const SHOWN: usize = 8;

    pub fn new(harvest: impl Into<String>) -> Comparison {
        Comparison {
            harvest: harvest.into(),
            scopes: Vec::new(),
            lost: Vec::new(),
            over: Vec::new(),
            compared: 0,
            must: 0,
            reported: 0,
        }
    }

    /// Pages compared from now on belong to `label` (e.g. "area 1, range 3").
    pub fn scope(&mut self, label: impl Into<String>) {
        self.scopes.push(label.into());
    }

    fn finding(&self, page: Option<usize>, why: Cow<'static, str>) -> Finding {
        Finding {
            scope: self.scopes.len().checked_sub(1),
            page,
            why,
        }
    }

    /// Page `page` (of the current scope): whether the harvest `reported` it, and what was
    /// expected of it.
    pub fn page(&mut self, page: usize, reported: bool, expect: Expect) {
        self.compared += 1;
        self.reported += reported as usize;
        match expect {
            Expect::Must(why) => {
                self.must += 1;
                if !reported {
                    let f = self.finding(Some(page), Cow::Borrowed(why));
                    self.lost.push(f);
                }
            }
            Expect::May => {}
            Expect::Clean(why) if reported => {
                let f = self.finding(Some(page), Cow::Borrowed(why));
                self.over.push(f);
            }
            Expect::Clean(_) => {}
        }
    }

    /// Records a lost write the caller found itself (e.g. a stamped write missing from every
    /// collect of its window), with why it had to be reported.
    pub fn lost_write(&mut self, page: usize, why: impl Into<Cow<'static, str>>) {
        self.must += 1;
        let f = self.finding(Some(page), why.into());
        self.lost.push(f);
    }

    /// Records a page that had to be reported and was (for the counts), when the caller
    /// checked it itself.
    pub fn found_write(&mut self) {
        self.must += 1;
        self.reported += 1;
        self.compared += 1;
    }

    /// `dirty` reports nothing but pages this comparison compared (it covered the whole
    /// harvest): otherwise an over-report, listing `dirty`.
    pub fn nothing_else(&mut self, dirty: &DirtySet) {
        if dirty.len() != self.reported {
            let why = format!(
                "{} reported pages outside the compared ones; the harvest: {dirty:?}",
                dirty.len().saturating_sub(self.reported)
            );
            self.over.push(Finding {
                scope: None,
                page: None,
                why: why.into(),
            });
        }
    }

    /// The pages lost (had to be reported, were not).
    pub fn lost(&self) -> &[Finding] {
        &self.lost
    }

    /// The pages over-reported (reported, must not be).
    pub fn over_reported(&self) -> &[Finding] {
        &self.over
    }

    /// How many compared pages had to be reported.
    pub fn must(&self) -> usize {
        self.must
    }

    /// How many compared pages the harvest reported.
    pub fn reported(&self) -> usize {
        self.reported
    }

    fn describe(&self, kind: &str, what: &str, findings: &[Finding], out_of: usize) -> String {
        let mut s = format!(
            "{kind}: {}: {} of {out_of} {what}:",
            self.harvest,
            findings.len()
        );
        let mut last_scope = usize::MAX;
        for f in findings.iter().take(Self::SHOWN) {
            let scope = f.scope.unwrap_or(usize::MAX);
            if scope != last_scope {
                let label = f.scope.map_or("", |i| self.scopes[i].as_str());
                let _ = write!(s, "\n  {label}:");
                last_scope = scope;
            }
            match f.page {
                Some(p) => {
                    let _ = write!(s, " page {p} ({})", f.why);
                }
                None => {
                    let _ = write!(s, " {}", f.why);
                }
            }
        }
        if findings.len() > Self::SHOWN {
            let _ = write!(s, "\n  ... and {} more", findings.len() - Self::SHOWN);
        }
        s
    }

    /// `Ok` when nothing was lost or over-reported; otherwise the failure message:
    /// `LOST WRITE: ...` first (a lost write is the worse failure), then `OVER-REPORT: ...`.
    pub fn verdict(&self) -> Result<(), String> {
        let kinds = [
            (
                "LOST WRITE",
                "pages that had to be reported are not",
                &self.lost,
                self.must,
            ),
            (
                "OVER-REPORT",
                "compared pages reported that must not be",
                &self.over,
                self.compared,
            ),
        ];
        let parts: Vec<String> = kinds
            .into_iter()
            .filter(|(_, _, findings, _)| !findings.is_empty())
            .map(|(kind, what, findings, out_of)| self.describe(kind, what, findings, out_of))
            .collect();
        if parts.is_empty() {
            Ok(())
        } else {
            Err(parts.join("\n"))
        }
    }

    /// Panics with [`verdict`](Self::verdict)'s message unless nothing was lost or
    /// over-reported.
    pub fn assert_ok(&self) {
        if let Err(msg) = self.verdict() {
            panic!("{msg}");
        }
    }
}

// ---- Writers racing collects: stamped writes and the collects that must show them ----

/// Shared by writer threads and the collecting thread. A writer reads [`WriteStamps::stamp`]
/// (the number of collects started so far) before its store, so the write belongs in that
/// collect (if it raced it) or a later one; after the store it publishes the stamp with
/// [`WriteStamps::written`]. The collector takes the completed writes with
/// [`WriteStamps::completed`] before it starts the next collect with
/// [`WriteStamps::start_collect`].
pub struct WriteStamps {
    /// Collects started (incremented just before each collect starts).
    started: AtomicU64,
    /// Per page: the stamp of its last completed write; published before `written[p]`.
    stamp: Vec<AtomicU64>,
    /// Per page: a write completed since the collector last took it.
    written: Vec<AtomicBool>,
}

impl WriteStamps {
    pub fn new(pages: usize) -> WriteStamps {
        WriteStamps {
            started: AtomicU64::new(0),
            stamp: (0..pages).map(|_| AtomicU64::new(0)).collect(),
            written: (0..pages).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Writer, before its store: the stamp of the write.
    pub fn stamp(&self) -> u64 {
        self.started.load(Ordering::Acquire)
    }

    /// Writer, after its store to `page`: publishes the write and its stamp.
    pub fn written(&self, page: usize, stamp: u64) {
        self.stamp[page].store(stamp, Ordering::Release);
        self.written[page].store(true, Ordering::Release);
    }

    /// Collector, before [`start_collect`](Self::start_collect): the writes completed since the
    /// last call, as (page, stamp).
    pub fn completed(&self) -> Vec<(usize, u64)> {
        (0..self.written.len())
            .filter(|&p| self.written[p].swap(false, Ordering::AcqRel))
            .map(|p| (p, self.stamp[p].load(Ordering::Acquire)))
            .collect()
    }

    /// Collector, right before it collects: the number of the collect it starts (from 1).
    pub fn start_collect(&self) -> u64 {
        self.started.fetch_add(1, Ordering::AcqRel) + 1
    }
}

/// What every collect of a run reported, in order (collect `j` is the `j`-th, from 1), and
/// their union.
#[derive(Default)]
pub struct CollectHistory {
    sets: Vec<DirtySet>,
    all: DirtySet,
}

impl CollectHistory {
    pub fn new() -> CollectHistory {
        CollectHistory::default()
    }

    /// Records the next collect's set.
    pub fn push(&mut self, dirty: DirtySet) {
        self.all.union(&dirty);
        self.sets.push(dirty);
    }

    /// How many collects were recorded.
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    /// Every page any recorded collect reported.
    pub fn all(&self) -> &DirtySet {
        &self.all
    }

    /// The stamp-window check: each write of `done` (page of `r`, stamp `e`), completed before
    /// collect `k` started, must be in one of collects `max(e, 1)..=k`.
    pub fn compare_stamped(&self, r: &Region, done: &[(usize, u64)], k: u64) -> Comparison {
        let mut cmp = Comparison::new(format!("collect #{k}"));
        cmp.scope(format!("region {:#x} ({} pages)", r.addr, r.pages()));
        for &(p, e) in done {
            let a = r.page_addr(p);
            let from = e.max(1);
            if (from..=k).any(|j| self.sets[(j - 1) as usize].contains(a)) {
                cmp.found_write();
            } else {
                cmp.lost_write(
                    p,
                    format!(
                        "written after collect #{e} started and before #{k} started, in none of collects #{from}..=#{k}"
                    ),
                );
            }
        }
        cmp
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

impl Region {
    /// [`Region::hugetlb`], or `None` after reporting the skip "MAP_HUGETLB failed".
    pub fn hugetlb_or_skip(huge_pages: usize, shared: bool) -> Option<Region> {
        let r = Region::hugetlb(huge_pages, shared);
        if r.is_none() {
            skip("MAP_HUGETLB failed");
        }
        r
    }
}

/// The usual start of a hugetlb test: `huge_pages` free huge pages reserved, a tracker in
/// `mode`, and `huge_pages` huge pages of private `MAP_HUGETLB` memory (never touched); or
/// `None` after reporting the skip of whichever step could not be done (in that order).
pub fn hugetlb_setup(mode: Mode, huge_pages: usize) -> Option<(HugetlbPool, Tracker, Region)> {
    let pool = HugetlbPool::reserve(huge_pages)?;
    let t = tracker(mode)?;
    if !shmem_hugetlb_wp_or_skip() {
        return None;
    }
    let r = Region::hugetlb_or_skip(huge_pages, false)?;
    Some((pool, t, r))
}

/// Sums a kB field (`Swap`, `KSM`, `AnonHugePages`, ...) of `/proc/self/smaps` over the VMAs
/// overlapping `[addr, addr + len)`.
pub fn smaps_kb(addr: usize, len: usize, field: &str) -> usize {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("reading /proc/self/smaps");
    let mut inside = false;
    let mut kb = 0;
    for line in smaps.lines() {
        if let Some((a, b)) = vma_bounds(line) {
            inside = a < addr + len && addr < b;
            continue;
        }
        if let Some(v) = line.strip_prefix(field).and_then(|v| v.strip_prefix(':')) {
            if inside {
                kb += v
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<usize>()
                    .unwrap_or(0);
            }
        }
    }
    kb
}

/// The start and end of the VMA a `/proc/self/{maps,smaps}` header line describes, or `None`
/// for another line.
pub fn vma_bounds(line: &str) -> Option<(usize, usize)> {
    let first = line.split_whitespace().next()?;
    let (a, b) = first.split_once('-')?;
    Some((
        usize::from_str_radix(a, 16).ok()?,
        usize::from_str_radix(b, 16).ok()?,
    ))
}

// ---- Kinds of memory, for tables of per-memory-type cases ----

/// A kind of memory a table-driven test maps: a label and a constructor.
#[derive(Clone, Copy)]
pub struct Memory {
    /// For messages: "private anonymous", "memfd shared", ...
    pub name: &'static str,
    /// Maps `pages` never-touched pages of this kind.
    pub map: fn(pages: usize) -> Mapped,
}

/// A mapping made by a [`Memory`] constructor, with the memfd behind it (kept open as long as
/// the test needs it).
pub struct Mapped {
    pub region: Region,
    pub fd: Option<OwnedFd>,
}

impl Memory {
    pub fn map(&self, pages: usize) -> Mapped {
        (self.map)(pages)
    }

    /// Whether this kernel can write-protect this kind of memory; `false` after reporting a skip
    /// (everything but private anonymous memory is shmem: see [`shmem_hugetlb_wp_or_skip`]).
    pub fn trackable_or_skip(&self) -> bool {
        self.name == PRIVATE_ANONYMOUS.name || shmem_hugetlb_wp_or_skip()
    }
}

pub const PRIVATE_ANONYMOUS: Memory = Memory {
    name: "private anonymous",
    map: |pages| Mapped {
        region: Region::anon(pages),
        fd: None,
    },
};

pub const SHARED_ANONYMOUS: Memory = Memory {
    name: "shared anonymous",
    map: |pages| Mapped {
        region: Region::mmap(pages, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1),
        fd: None,
    },
};

pub const MEMFD_SHARED: Memory = Memory {
    name: "memfd shared",
    map: |pages| Mapped::memfd(pages, true),
};

pub const MEMFD_PRIVATE: Memory = Memory {
    name: "memfd private",
    map: |pages| Mapped::memfd(pages, false),
};

impl Mapped {
    /// [`Region::memfd`], with its fd.
    fn memfd(pages: usize, shared: bool) -> Mapped {
        let (region, fd) = Region::memfd(pages, shared);
        Mapped {
            region,
            fd: Some(fd),
        }
    }
}

/// Keeps the calling thread on the CPU it runs on (`MADV_FREE` and `MADV_PAGEOUT` drain per-CPU
/// LRU batches only on their own CPU); the old affinity comes back on drop.
pub struct PinCpu(libc::cpu_set_t);

impl PinCpu {
    pub fn new() -> PinCpu {
        // SAFETY: cpu_set_t is plain data; the calls get and set this thread's affinity.
        unsafe {
            let mut old: libc::cpu_set_t = std::mem::zeroed();
            let size = std::mem::size_of::<libc::cpu_set_t>();
            assert_eq!(libc::sched_getaffinity(0, size, &mut old), 0);
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(libc::sched_getcpu().max(0) as usize, &mut one);
            assert_eq!(libc::sched_setaffinity(0, size, &one), 0);
            PinCpu(old)
        }
    }
}

impl Drop for PinCpu {
    fn drop(&mut self) {
        // SAFETY: restores this thread's affinity.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0) };
    }
}

/// This test binary, set up to run test `name` again in a fresh process (`--exact`, one test
/// thread, output not captured): for a check that must not change this process (resource limits,
/// credentials) and must not fork the multi-threaded harness. The caller adds an environment
/// variable by which the child knows it is the child.
pub fn this_test_again(name: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args(["--exact", name, "--test-threads=1", "--nocapture"]);
    cmd
}
