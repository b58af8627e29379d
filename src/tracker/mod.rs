//! [`Tracker`]: the API on top. Its builder (`builder.rs`), registration (`register.rs`) and
//! test hooks (`hooks.rs`) are files of their own.

mod builder;
#[cfg(feature = "testing")]
mod hooks;
mod register;

pub use builder::TrackerBuilder;

use crate::backend::async_wp;
use crate::backend::{self, monitor::Monitor, sync_wp, Harvest, Kind};
use crate::bitmap::Segment;
use crate::dirty_set::DirtySet;
use crate::live::{self, LiveSnapshot};
use crate::probe::Capabilities;
use crate::range::Arming;
use crate::range::RangeState;
use crate::state::TrackerState;
use crate::sys;
use crate::types::{Backing, Mode, Prefault, RangeId};
use crate::Error;
use parking_lot::Mutex;
use std::fmt;
use std::sync::Arc;

/// Where a registered range lives now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RangeInfo {
    /// The range.
    pub id: RangeId,
    /// Its current start address (it changes when `mremap` moves the memory).
    pub addr: usize,
    /// Its length in bytes.
    pub len: usize,
    /// Its start address when it was registered.
    pub registered_addr: usize,
    /// `Some(reason)` when its registration vanished; see [`Error::RangeLost`].
    pub lost: Option<String>,
    /// What backs it (see [`Backing::blind_spots`] for what cannot be seen there).
    pub backing: Backing,
}

/// Tracks which pages of registered ranges of this process's memory were written.
///
/// `Send + Sync`: every method takes `&self` and may be called from any thread. Collects,
/// peeks, clears and unregisters run one at a time; registers run one at a time.
///
/// The promise: a page written after `register`, `clear` or `collect` number N returns is
/// reported by collect N+1 or a later one (it may also be reported by collect N if the write raced
/// it). Private anonymous pages that were not written are not reported, except after a discard
/// (`MADV_DONTNEED`: the contents changed). The README's tracking contract lists every kind of
/// memory and change, and what is and is not seen.
///
/// Several trackers may live in one process: the kernel gives each range one owner (registering
/// a range another tracker owns fails with [`Error::OwnedByAnotherUserfaultfd`]), and each
/// tracker only changes the protection of its own ranges.
///
/// ```no_run
/// use dirtytrack::Tracker;
/// # fn main() -> Result<(), dirtytrack::Error> {
/// let mut buf = vec![0u8; 64 * dirtytrack::page_size()];
/// # let buf = buf.as_mut_ptr(); // real code registers page-aligned memory it mapped itself
/// let tracker = Tracker::new()?;
/// let id = tracker.register(buf, 64 * dirtytrack::page_size())?;
/// // ... the program writes ...
/// let dirty = tracker.collect()?;
/// for run in dirty.runs() {
///     println!("{:#x}..{:#x} changed", run.start, run.end);
/// }
/// tracker.unregister(id)?;
/// # Ok(()) }
/// ```
pub struct Tracker {
    core: Arc<TrackerState>,
    /// Makes collect / peek / clear / unregister / live-snapshot instants one at a time and
    /// owns the pagemap scanner; first in the lock order (`state`'s lock table). Only user
    /// threads take it (the monitor never does).
    harvest: Mutex<Harvest>,
    monitor: Option<Monitor>,
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker")
            .field("mode", &self.core.mode)
            .field("ranges", &self.core.ranges.read().len())
            .finish()
    }
}

impl Tracker {
    /// A tracker in [`Mode::Auto`].
    pub fn new() -> Result<Tracker, Error> {
        Tracker::builder().build()
    }

    /// A builder to choose the mode and options.
    pub fn builder() -> TrackerBuilder {
        TrackerBuilder::default()
    }

    /// The mode in use: `Async` or `Sync`, never `Auto`.
    pub fn mode(&self) -> Mode {
        self.core.mode
    }

    /// What the kernel offered when the tracker was built, and why this mode was chosen.
    pub fn capabilities(&self) -> &Capabilities {
        &self.core.caps
    }

    /// Sync mode's never-touched-page strategy (`Unpopulated` in async mode).
    pub fn prefault(&self) -> Prefault {
        self.core.prefault
    }

    /// Starts tracking `[addr, addr + len)`, which must be page aligned and fully mapped. Every
    /// page counts as clean when this returns.
    ///
    /// Registration write-protects the range; in sync mode (without `WP_UNPOPULATED`) it first
    /// populates it for reading. Registering never changes the memory's contents.
    ///
    /// Errors: [`Error::Unaligned`], [`Error::ZeroLength`], [`Error::AddressOverflow`],
    /// [`Error::NotMapped`], [`Error::Overlap`], [`Error::OwnedByAnotherUserfaultfd`],
    /// [`Error::MappingNotSupported`], [`Error::ResourceExhausted`].
    ///
    /// In sync mode, do not register memory that the allocator or the tracker itself writes
    /// (e.g. pages of the malloc heap): the monitor thread could then fault on its own memory.
    pub fn register(&self, addr: *mut u8, len: usize) -> Result<RangeId, Error> {
        self.register_one(addr, len, Arming::Full)
    }

    /// [`Tracker::register`] for a huge, sparsely used range of private anonymous memory (a VMM's
    /// guest address space, a reserved heap): registering, collecting and clearing cost what the
    /// populated part costs, not what the range spans. Async mode only.
    ///
    /// [`Tracker::register`] write-protects every page, and for a never-touched page the kernel
    /// then builds a page-table entry holding a protection marker: 2 MiB of page tables per GiB,
    /// and every collect walks them (1 TiB: 2 GiB of page tables, 3–57 s to register, 1–7 s per
    /// empty collect on this machine). Here only populated pages are protected; a page's first
    /// touch creates an unprotected entry, which the next collect reports (if written) and
    /// protects. Measured with 5 written pages in 1 TiB: see BENCHMARKS.md.
    ///
    /// What changes compared with [`Tracker::register`]:
    /// - a first write into a range of transparent huge pages may populate (and report) a whole
    ///   2 MiB huge page (over-report; use [`Thp::Disable`](crate::Thp::Disable) to avoid it);
    /// - discarded pages are reported from `UFFD_EVENT_REMOVE`, not from the page tables, and
    ///   stay watched until their page-table entry is gone: a page freed with `MADV_FREE` and
    ///   reclaimed by the kernel many collects later is reported then (tested three collects
    ///   later). Each collect looks at every watched page, so many lazily freed, never-reclaimed
    ///   pages cost a little per collect.
    ///
    /// Errors: those of [`Tracker::register`], and [`Error::MappingNotSupported`] in sync mode or
    /// for memory other than private anonymous.
    pub fn register_sparse(&self, addr: *mut u8, len: usize) -> Result<RangeId, Error> {
        self.register_one(addr, len, Arming::Populated)
    }

    /// Registers every range of `ranges` (`(addr, len)` pairs, each as for
    /// [`Tracker::register`]), all or nothing: on error, the ranges of this call registered so
    /// far are unregistered again and the error names the range that failed. Returns the ids in
    /// the order of `ranges`.
    ///
    /// For thousands of small ranges (a GC heap's regions): one lock and one validation pass for
    /// all of them. Collects wait until the call returns.
    pub fn register_many(&self, ranges: &[(*mut u8, usize)]) -> Result<Vec<RangeId>, Error> {
        self.core.check_usable()?;
        let core = &*self.core;
        let checked: Vec<(usize, usize)> = ranges
            .iter()
            .map(|&(addr, len)| self.check_range(addr, len))
            .collect::<Result<_, _>>()?;
        // Lock order: harvest, then registry. Holding `harvest` means no collect sees a range
        // that a failure below rolls back.
        let _harvest = self.harvest.lock();
        let mut registry = core.registry.lock();
        let mut ids = Vec::with_capacity(checked.len());
        for (start, end) in checked {
            match self.register_locked(&mut registry, start, end, Arming::Full) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    ids.sort_unstable();
                    let rolled_back = core
                        .ranges
                        .write()
                        .extract(|r| ids.binary_search(&r.id).is_ok());
                    for r in rolled_back {
                        registry.remove(&r);
                        core.retire(&r, "rolling back register_many");
                        let _ = core.release_range(&r);
                    }
                    return Err(e);
                }
            }
        }
        Ok(ids)
    }

    /// Stops tracking a range: un-protects it and forgets its pending dirty pages. A lost range
    /// (see [`Error::RangeLost`]) is unregistered the same way.
    pub fn unregister(&self, id: RangeId) -> Result<(), Error> {
        self.core.check_usable()?;
        let core = &*self.core;
        let _harvest = self.harvest.lock();
        let mut registry = core.registry.lock();
        let r = core
            .ranges
            .write()
            .remove_id(id)
            .ok_or(Error::UnknownRange(id))?;
        registry.remove(&r);
        core.retire(&r, "unregister");
        match core.release_range(&r) {
            Ok(()) => Ok(()),
            // Already gone from the kernel's side: unmapped or replaced.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) => Ok(()),
            Err(e) => Err(Error::from_kernel("UFFDIO_UNREGISTER", e)),
        }
    }

    /// The pages written since the last collect or clear (or register), in all ranges; resets
    /// them, atomically per page: a write racing the collect is reported by this collect or the
    /// next, never by neither.
    ///
    /// On error nothing is lost: what was already taken from the kernel is reported (as dirty)
    /// by the next successful collect.
    pub fn collect(&self) -> Result<DirtySet, Error> {
        self.harvest(None, Kind::Collect)
    }

    /// [`Tracker::collect`] into `out`, replacing its contents and reusing its buffers: once
    /// `out` has held a collect of the same ranges, a collect allocates nothing (the library's
    /// collect path; the kernel may still allocate page tables).
    ///
    /// On error `out` is empty, and nothing is lost, as with [`Tracker::collect`].
    ///
    /// ```no_run
    /// # fn main() -> Result<(), dirtytrack::Error> {
    /// # let tracker = dirtytrack::Tracker::new()?;
    /// let mut dirty = dirtytrack::DirtySet::new();
    /// loop {
    ///     tracker.collect_into(&mut dirty)?;
    ///     for run in dirty.runs() { /* copy it */ }
    /// #   break;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn collect_into(&self, out: &mut DirtySet) -> Result<(), Error> {
        self.harvest_into(None, Kind::Collect, out)
    }

    /// The pages written since the last collect or clear, without resetting anything: a look at
    /// the dirty set (not a copy of memory: that is [`Tracker::live_snapshot`]).
    pub fn peek(&self) -> Result<DirtySet, Error> {
        self.harvest(None, Kind::Peek)
    }

    /// Resets every range to clean without reporting.
    pub fn clear(&self) -> Result<(), Error> {
        self.harvest(None, Kind::Clear).map(drop)
    }

    /// [`Tracker::collect`] for one range.
    pub fn collect_range(&self, id: RangeId) -> Result<DirtySet, Error> {
        self.harvest(Some(id), Kind::Collect)
    }

    /// [`Tracker::peek`] for one range.
    pub fn peek_range(&self, id: RangeId) -> Result<DirtySet, Error> {
        self.harvest(Some(id), Kind::Peek)
    }

    /// [`Tracker::clear`] for one range.
    pub fn clear_range(&self, id: RangeId) -> Result<(), Error> {
        self.harvest(Some(id), Kind::Clear).map(drop)
    }

    /// Records `[addr, addr + len)` as changed: the next collect (or peek) reports every page
    /// it overlaps, in addition to what the page tables show.
    ///
    /// For changes page tables cannot show (the README's tracking contract): a direct-I/O read
    /// (`O_DIRECT`, io_uring or AIO on an `O_DIRECT` file, RDMA, any path that pins the buffer
    /// and writes it later) that was in flight across a collect, a write through another mapping
    /// of shared memory or through its file descriptor. Call it when such a write has
    /// *completed*: then the page is reported by a collect that starts after the call, whatever
    /// the page tables say. (The role of `mark_dirty` in rust-vmm's `Bitmap`.)
    ///
    /// `addr` and `len` need not be page aligned (every page the span touches is marked); a
    /// zero `len` does nothing. Every page must be inside registered ranges
    /// ([`Error::NotTracked`] otherwise, and nothing is marked); a lost range answers
    /// [`Error::RangeLost`] (all of its pages are already reported). Costs a lock and a few
    /// atomic ORs: cheap enough for every I/O completion.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), dirtytrack::Error> {
    /// # let tracker = dirtytrack::Tracker::new()?;
    /// # let (buf, n): (*mut u8, usize) = (std::ptr::null_mut(), 0);
    /// // an O_DIRECT read into tracked memory has completed:
    /// tracker.mark_dirty(buf, n)?;
    /// # Ok(()) }
    /// ```
    pub fn mark_dirty(&self, addr: *const u8, len: usize) -> Result<(), Error> {
        self.core.check_usable()?;
        if len == 0 {
            return Ok(());
        }
        let core = &*self.core;
        let ps = core.page_size;
        let first = addr as usize;
        let end = first
            .checked_add(len)
            .ok_or(Error::AddressOverflow { addr: first, len })?;
        let (start, end) = (first & !(ps - 1), end.div_ceil(ps) * ps);
        // Moves (`mremap`) the monitor has read are applied before the lookup.
        core.barrier();
        let ranges = core.ranges.read();
        // Check every covering range first, then mark (walking twice allocates nothing): an
        // error marks nothing.
        let mut at = start;
        while at < end {
            let r = TrackerState::range_at(&ranges, at).ok_or(Error::NotTracked {
                start,
                end,
                addr: at,
            })?;
            if r.lost.lock().is_some() {
                return Err(backend::lost_error(r));
            }
            at = r.end();
        }
        let mut at = start;
        while let Some(r) = Some(at)
            .filter(|&at| at < end)
            .and_then(|at| TrackerState::range_at(&ranges, at))
        {
            let base = r.start();
            let (a, b) = (start.max(base), end.min(r.end()));
            r.marks.set_range((a - base) / ps, (b - base) / ps);
            at = r.end();
        }
        Ok(())
    }

    /// Starts a consistent live snapshot of range `id` (sync mode): a copy of its contents as of
    /// one instant, made while the program keeps writing. Returns at the instant; the copy
    /// completes in the background ([`LiveSnapshot::wait`]).
    ///
    /// The instant acts as a collect of this range: [`LiveCopy::dirty_at_instant`](crate::LiveCopy::dirty_at_instant) holds the
    /// pages written since the previous collect, and the next `collect` reports the pages written
    /// since the instant. Until [`LiveCopy::commit`](crate::LiveCopy::commit) is called, the copy
    /// owes those pre-instant pages to the tracker: if the snapshot fails, is dropped before
    /// `wait`, or its copy is dropped uncommitted (a dump that failed), they are handed back and
    /// the next collect reports them. The first write to each page after the instant waits while the monitor
    /// copies the page (one page copy on top of the sync-mode round trip). Memory: one copy of
    /// the range.
    ///
    /// ```no_run
    /// use dirtytrack::{Mode, Tracker};
    /// # fn main() -> Result<(), dirtytrack::Error> {
    /// # let (addr, len) = (std::ptr::null_mut(), 0);
    /// let tracker = Tracker::builder().mode(Mode::Sync).build()?;
    /// let id = tracker.register(addr, len)?;
    /// let mut copy = tracker.live_snapshot(id)?.wait()?;   // writers kept running
    /// // copy.data: the range at the instant; tracker.collect(): what changed since
    /// copy.commit(); // once copy.data is stored
    /// # Ok(()) }
    /// ```
    pub fn live_snapshot(&self, id: RangeId) -> Result<LiveSnapshot, Error> {
        self.core.check_usable()?;
        let core = &*self.core;
        if core.mode != Mode::Sync {
            return Err(Error::NeedsSyncMode {
                what: "a consistent live snapshot",
                mode: core.mode,
            });
        }
        let mut h = self.harvest.lock();
        let r = core
            .ranges
            .read()
            .iter()
            .find(|r| r.id == id)
            .cloned()
            .ok_or(Error::UnknownRange(id))?;
        if r.cow.lock().is_some() {
            return Err(Error::SnapshotInProgress(id));
        }
        let ps = core.page_size;
        let buffer = live::alloc_buffer(r.len)?; // outside every lock: no writer waits on it
        let seg = sync_wp::reprotect_then(core, &r, h.scanner.as_mut(), |seg| {
            live::install(&r, buffer, r.pages(ps));
            r.marks.take_into(&mut seg.bits);
            Ok(())
        })?;
        let addr = seg.start;
        LiveSnapshot::start(self.core.clone(), r, seg, addr)
    }

    /// Where a range lives now (after `mremap` its address changes) and whether it is lost.
    pub fn range(&self, id: RangeId) -> Result<RangeInfo, Error> {
        self.core.check_usable()?;
        self.core.barrier();
        let ranges = self.core.ranges.read();
        let r = ranges
            .iter()
            .find(|r| r.id == id)
            .ok_or(Error::UnknownRange(id))?;
        Ok(info(r))
    }

    /// Every registered range, in registration order.
    pub fn ranges(&self) -> Vec<RangeInfo> {
        self.core.barrier();
        self.core.ranges.read().iter().map(|r| info(r)).collect()
    }

    fn harvest(&self, only: Option<RangeId>, kind: Kind) -> Result<DirtySet, Error> {
        let mut out = DirtySet::new();
        self.harvest_into(only, kind, &mut out)?;
        Ok(out)
    }

    /// The harvest behind every collect, peek and clear: one range after the other, into
    /// `out`'s reused segment buffers. On error `out` is empty, and (collect) every page already
    /// taken is back in its range's marks.
    fn harvest_into(
        &self,
        only: Option<RangeId>,
        kind: Kind,
        out: &mut DirtySet,
    ) -> Result<(), Error> {
        self.core.check_usable()?;
        let core = &*self.core;
        let mut h = self.harvest.lock();
        let h = &mut *h;
        // Both vectors keep their capacity across calls: no allocation in a steady state.
        if core.ranges.read().index_stale() {
            // A range moved (mremap): the monitor's address index is sorted again.
            core.ranges.write().resort();
        }
        let mut ranges = std::mem::take(&mut h.ranges);
        ranges.clear();
        match only {
            None => ranges.extend(core.ranges.read().iter().cloned()),
            Some(id) => ranges.push(
                core.ranges
                    .read()
                    .iter()
                    .find(|r| r.id == id)
                    .cloned()
                    .ok_or(Error::UnknownRange(id))?,
            ),
        }
        let mut spare = out.take_segments();
        let mut done = std::mem::take(&mut h.segments);
        done.clear();
        let mut failure = None;
        {
            let mut spare = spare.drain(..);
            for r in &ranges {
                let mut seg = spare.next().unwrap_or_else(|| Segment::new(r.start(), 0));
                seg.range = Some(r.id);
                let result = match core.mode {
                    crate::Mode::Sync => {
                        sync_wp::harvest_into(core, r, kind, &mut seg, h.scanner.as_mut())
                    }
                    _ => match h.scanner.as_mut() {
                        Some(scanner) => async_wp::harvest_into(core, scanner, r, kind, &mut seg),
                        None => Err(Error::Poisoned("async mode without a scanner".into())),
                    },
                };
                match result {
                    Ok(()) => done.push(seg),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
        }
        if failure.is_none() {
            // The monitor may have died during the harvest: then the marks are incomplete.
            if let Some(reason) = core.poisoned.lock().as_ref() {
                failure = Some(Error::Poisoned(reason.clone()));
            }
        }
        if let Some(e) = failure {
            if kind == Kind::Collect {
                // Nothing lost: what the other ranges yielded goes back to their marks
                // (`done[i]` is the harvest of `ranges[i]`).
                for (r, seg) in ranges.iter().zip(&done) {
                    r.marks.or_bits(&seg.bits);
                }
            }
            done.clear();
            h.segments = done;
            ranges.clear();
            h.ranges = ranges;
            out.set_segments(core.page_size, spare);
            return Err(e);
        }
        ranges.clear(); // drop the references now, keep the capacity
        h.ranges = ranges;
        out.set_segments(core.page_size, done);
        h.segments = spare;
        Ok(())
    }
}

fn info(r: &RangeState) -> RangeInfo {
    RangeInfo {
        id: r.id,
        addr: r.start(),
        len: r.len,
        registered_addr: r.registered_at,
        lost: r.lost.lock().clone(),
        backing: r.backing.clone(),
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if sys::getpid() != self.core.owner_pid {
            // A fork child: the monitor thread does not exist here; the parent owns the tracking.
            if let Some(m) = self.monitor.as_mut() {
                m.abandon();
            }
            return;
        }
        // Un-protect everything first, so no writer waits on a monitor that is about to stop.
        self.core.registry.lock().clear();
        let ranges = self.core.ranges.write().take_all();
        for r in ranges {
            self.core.retire(&r, "dropping the tracker");
            let _ = self.core.release_range(&r);
        }
        if let Some(mut m) = self.monitor.take() {
            m.stop();
        }
    }
}
