//! [`Tracker`], its builder, and range handles.

use crate::backend::async_wp::{self, Arming};
use crate::backend::live::{self, LiveSnapshot};
use crate::backend::{self, monitor::Monitor, sync_wp, Harvest, Kind};
use crate::bitmap::Segment;
use crate::core::Core;
use crate::dirty_set::DirtySet;
use crate::probe::{self, Capabilities};
use crate::range::RangeState;
use crate::sys::{self, maps, mem, uffd};
use crate::types::{Backing, Mode, Prefault, RangeId, Thp};
use crate::Error;
use parking_lot::{Mutex, RwLock};
use std::fmt;
use std::os::fd::AsFd;
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

/// Configures and builds a [`Tracker`].
///
/// ```no_run
/// use dirtytrack::{Mode, Tracker};
/// # fn main() -> Result<(), dirtytrack::Error> {
/// let tracker = Tracker::builder().mode(Mode::Async).build()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct TrackerBuilder {
    mode: Mode,
    prefault: Option<Prefault>,
    hidden_features: u64,
    thp: Thp,
    scan_limits: Option<(usize, u64)>,
}

impl TrackerBuilder {
    /// The mode to use (default [`Mode::Auto`]).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Forces sync mode's never-touched-page strategy instead of the best the kernel has.
    /// Asking for one the kernel lacks is an error at `build`.
    pub fn prefault(mut self, prefault: Prefault) -> Self {
        self.prefault = Some(prefault);
        self
    }

    /// Pretends the kernel lacks these `UFFD_FEATURE_*` bits (see [`crate::features`]); for
    /// testing fallbacks (e.g. hide `WP_UNPOPULATED` to exercise the sync prefault paths).
    /// Feature `testing` only.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn hide_features(mut self, features: u64) -> Self {
        self.hidden_features |= features;
        self
    }

    /// What to do about transparent huge pages (default [`Thp::Leave`]).
    pub fn thp(mut self, thp: Thp) -> Self {
        self.thp = thp;
        self
    }

    /// Test knob: `PAGEMAP_SCAN` output vector length and `max_pages` per call, to exercise the
    /// `walk_end` continuation with tiny limits. Never use `max_pages` with hugetlb ranges.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn scan_limits(mut self, vec_len: usize, max_pages: u64) -> Self {
        self.scan_limits = Some((vec_len.max(1), max_pages));
        self
    }

    /// Probes the kernel, opens the userfaultfd and starts the monitor thread.
    pub fn build(self) -> Result<Tracker, Error> {
        let caps = Capabilities::probe().without_features(self.hidden_features);
        let mode = match self.mode {
            Mode::Auto => caps.auto_mode()?,
            Mode::Async => caps.check_async().map(|()| Mode::Async)?,
            Mode::Sync => caps.check_sync().map(|()| Mode::Sync)?,
        };
        let prefault = match mode {
            Mode::Sync => self.prefault.unwrap_or_else(|| caps.prefault()),
            _ => Prefault::Unpopulated,
        };
        if mode == Mode::Sync {
            check_prefault(&caps, prefault)?;
        }
        let events = caps.features & backend::EVENT_FEATURES;
        let shmem_hugetlb = caps.features & uffd::FEATURE_WP_HUGETLBFS_SHMEM;
        let (flags, features) = match mode {
            Mode::Sync => (sync_wp::FD_FLAGS, sync_wp::features(prefault)),
            _ => (async_wp::FD_FLAGS, async_wp::FEATURES),
        };
        let (fd, _) = probe::open_fd(flags).map_err(|(sys_err, dev_err)| {
            match sys_err.raw_os_error() {
                Some(libc::EMFILE) | Some(libc::ENFILE) => {
                    Error::from_kernel("creating the userfaultfd", sys_err)
                }
                _ => Error::Permission(format!(
                    "could not create the userfaultfd for {mode:?} mode (userfaultfd(2): {sys_err}; /dev/userfaultfd: {dev_err}); see Tracker::capabilities() or Capabilities::probe() for what this process can do"
                )),
            }
        })?;
        uffd::api(fd.as_fd(), features | events | shmem_hugetlb)
            .map_err(|e| Error::from_kernel("UFFDIO_API", e))?;
        // Sync mode scans too where the kernel can show pages changed with no event (guard
        // regions; see `backend::sync_wp`).
        let zap_scan = caps.scan_reports_guard_zaps == Some(true);
        let scanner = match mode {
            Mode::Sync if !zap_scan => None,
            _ => Some(
                async_wp::Scanner::open(self.scan_limits)
                    .map_err(|e| Error::from_kernel("opening /proc/self/pagemap", e))?,
            ),
        };
        let moves = crate::range::Moves::new();
        let core = Arc::new(Core {
            mode,
            caps,
            page_size: sys::page_size(),
            prefault,
            no_thp: self.thp == Thp::Disable,
            owner_pid: sys::getpid(),
            uffd: fd,
            registry: Mutex::new(crate::range::Registry::new(moves.clone())),
            ranges: RwLock::new(crate::range::RangeList::new(moves.clone())),
            moves,
            batch: Mutex::new(()),
            poisoned: Mutex::new(None),
        });
        let monitor = Monitor::start(core.clone())
            .map_err(|e| Error::from_kernel("starting the monitor thread", e))?;
        Ok(Tracker {
            core,
            harvest: Mutex::new(Harvest {
                scanner,
                ranges: Vec::new(),
                segments: Vec::new(),
            }),
            monitor: Some(monitor),
        })
    }
}

fn check_prefault(caps: &Capabilities, p: Prefault) -> Result<(), Error> {
    let missing = |feature, since| Error::UnsupportedKernel {
        mode: Mode::Sync,
        feature,
        since,
        kernel: caps.kernel_release.clone(),
        alternative: "choose another Prefault, or leave the default (the best the kernel has)",
    };
    match p {
        Prefault::Unpopulated if !caps.wp_unpopulated() => {
            Err(missing("UFFD_FEATURE_WP_UNPOPULATED", "6.4"))
        }
        Prefault::PopulateRead if !caps.madv_populate_read => {
            Err(missing("MADV_POPULATE_READ", "5.14"))
        }
        _ => Ok(()),
    }
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
    core: Arc<Core>,
    /// Makes collect / peek / clear / unregister / live-snapshot instants one at a time and
    /// owns the pagemap scanner; first in the lock order (`core`'s lock table). Only user
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
    ///   2 MiB huge page (over-report; use [`Thp::Disable`] to avoid it);
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

    /// [`Tracker::register`] and [`Tracker::register_sparse`]: atomic with respect to collects,
    /// like [`Tracker::register_many`]. The new range is in the ranges list (so the monitor
    /// finds it) before it is armed, and a failure takes it out again: holding `harvest`
    /// throughout means no collect, peek or clear ever sees a range that was not returned.
    fn register_one(&self, addr: *mut u8, len: usize, arming: Arming) -> Result<RangeId, Error> {
        self.core.check_usable()?;
        let (start, end) = self.check_range(addr, len)?;
        // Lock order: harvest, then registry.
        let _harvest = self.harvest.lock();
        let mut registry = self.core.registry.lock();
        self.register_locked(&mut registry, start, end, arming)
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

    /// Checks `[addr, addr + len)` for [`Tracker::register`]: page aligned, not empty, no
    /// overflow. Returns (start, end).
    fn check_range(&self, addr: *mut u8, len: usize) -> Result<(usize, usize), Error> {
        let ps = self.core.page_size;
        let start = addr as usize;
        if start % ps != 0 {
            return Err(Error::Unaligned {
                what: "address",
                value: start,
                page_size: ps,
            });
        }
        if len == 0 {
            return Err(Error::ZeroLength { addr: start });
        }
        if len % ps != 0 {
            return Err(Error::Unaligned {
                what: "length",
                value: len,
                page_size: ps,
            });
        }
        let end = start
            .checked_add(len)
            .ok_or(Error::AddressOverflow { addr: start, len })?;
        Ok((start, end))
    }

    /// The rest of [`Tracker::register`], under the `harvest` and `registry` locks.
    fn register_locked(
        &self,
        registry: &mut crate::range::Registry,
        start: usize,
        end: usize,
        arming: Arming,
    ) -> Result<RangeId, Error> {
        let core = &*self.core;
        let ps = core.page_size;
        let len = end - start;
        if let Some(r) = registry.overlapping(start, end) {
            return Err(Error::Overlap {
                start,
                end,
                existing: r.id,
                existing_start: r.start(),
                existing_end: r.end(),
            });
        }
        let vmas = maps::vmas_in(start, end)
            .map_err(|e| Error::from_kernel("reading /proc/self/maps", e))?;
        if let Some(hole) = maps::first_hole(&vmas, start, end) {
            return Err(Error::NotMapped { start, end, hole });
        }
        let backing = backing_of(&vmas, start)?;
        let not_supported = |hint: &'static str| Error::MappingNotSupported {
            start,
            end,
            mapping: describe(&vmas),
            mode: core.mode,
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
            hint,
        };
        let granule = match backing {
            Backing::Hugetlb { page_size } => {
                for (what, value) in [("hugetlbfs address", start), ("hugetlbfs length", len)] {
                    if value % page_size != 0 {
                        return Err(Error::Unaligned {
                            what,
                            value,
                            page_size,
                        });
                    }
                }
                if !core.caps.has(uffd::FEATURE_EVENT_REMOVE) {
                    return Err(not_supported("tracking hugetlbfs needs UFFD_FEATURE_EVENT_REMOVE (4.11+): without it discards are lost"));
                }
                page_size
            }
            _ if vmas.iter().any(maps::looks_hugetlb) => return Err(not_supported(
                "register hugetlbfs memory as a range of its own, aligned to its huge page size",
            )),
            _ => ps,
        };
        if arming == Arming::Populated {
            if core.mode != Mode::Async {
                return Err(not_supported(
                    "register_sparse needs Mode::Async (sync mode protects every page); use register",
                ));
            }
            if backing != Backing::PrivateAnonymous {
                return Err(not_supported(
                    "register_sparse tracks private anonymous memory only; use register",
                ));
            }
        }
        if core.no_thp {
            // Best effort: hugetlbfs mappings reject it and need no THP policy.
            let _ = mem::madvise(start, len, mem::MADV_NOHUGEPAGE);
        }
        if !matches!(backing, Backing::Hugetlb { .. }) {
            // KSM merging drops the write-protect bits (sync mode lost 15 of 16 writes): take the
            // range out of KSM. A no-op unless the range was MADV_MERGEABLE or the process uses
            // PR_SET_MEMORY_MERGE; fails harmlessly without CONFIG_KSM.
            let _ = mem::madvise(start, len, mem::MADV_UNMERGEABLE);
        }
        let ioctls = uffd::register(core.uffd.as_fd(), start, len, uffd::REGISTER_MODE_WP)
            .map_err(|e| register_error(core, start, end, &vmas, e))?;
        let unregister = || {
            let _ = core.release(start, len);
        };
        if ioctls & (1 << uffd::NR_WRITEPROTECT) == 0 {
            unregister();
            return Err(not_supported("the kernel does not offer UFFDIO_WRITEPROTECT on this mapping; shmem and hugetlbfs need UFFD_FEATURE_WP_HUGETLBFS_SHMEM (5.19+)"));
        }
        registry.next_id += 1;
        let id = RangeId(registry.next_id);
        let state = Arc::new(RangeState::new(
            id, start, len, ps, granule, backing, arming,
        ));
        // Visible to the monitor before any page is protected, so no fault finds no range.
        core.ranges.write().push(state.clone());
        let armed = match arming {
            Arming::Full => sync_wp::prefault(core.prefault, start, len, ps)
                .map_err(|e| ("populating the range before protecting it", e))
                .and_then(|()| {
                    core.writeprotect(start, len, uffd::WRITEPROTECT_MODE_WP)
                        .map_err(|e| ("UFFDIO_WRITEPROTECT", e))
                }),
            Arming::Populated => std::fs::File::open("/proc/self/pagemap")
                .and_then(|pagemap| async_wp::protect_populated(&pagemap, start, end))
                .map_err(|e| ("PAGEMAP_SCAN (protecting the populated pages)", e)),
        };
        if let Err((op, e)) = armed {
            core.ranges.write().remove_id(id);
            unregister();
            return Err(Error::from_kernel(op, e));
        }
        registry.insert(state);
        Ok(id)
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
            let r = Core::range_at(&ranges, at).ok_or(Error::NotTracked {
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
            .and_then(|at| Core::range_at(&ranges, at))
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

    /// Sends a test hook's control message to the monitor thread (if it runs).
    #[cfg(feature = "testing")]
    fn send_to_monitor(&self, msg: crate::backend::monitor::Control) {
        if let Some(m) = &self.monitor {
            m.send(msg);
        }
    }

    /// Test hook: makes the monitor thread panic, to exercise poisoning. Not part of the API.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn __panic_monitor_for_test(&self) {
        self.send_to_monitor(crate::backend::monitor::Control::PanicForTest);
    }

    /// Test hook: the monitor thread serves nothing for `d` (or until
    /// [`Tracker::__resume_monitor_for_test`]), so writers stay blocked in their faults. Returns
    /// once the pause has begun (`false` if it did not within 10 s). Not part of the API.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn __pause_monitor_for_test(&self, d: std::time::Duration) -> bool {
        let (begun, wait) = crossbeam_channel::bounded(1);
        self.send_to_monitor(crate::backend::monitor::Control::PauseForTest(d, begun));
        wait.recv_timeout(std::time::Duration::from_secs(10))
            .is_ok()
    }

    /// Test hook: the monitor thread fails (poisoning the tracker) right after it reads and
    /// applies its next batch of messages, before it un-protects that batch's faults. Not part of
    /// the API.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn __fail_monitor_after_next_batch_for_test(&self) {
        self.send_to_monitor(crate::backend::monitor::Control::FailAfterNextBatchForTest);
    }

    /// Test hook: ends a pause of the monitor thread early. Not part of the API.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn __resume_monitor_for_test(&self) {
        self.send_to_monitor(crate::backend::monitor::Control::ResumeForTest);
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

/// What backs `vmas`. A hugetlbfs mapping's huge page size is read from `/proc/self/smaps`
/// (`KernelPageSize`): when it cannot be read, registering fails rather than guess a granule
/// (a guess of 2 MiB for a 1 GiB-page mapping would lose writes).
fn backing_of(vmas: &[maps::Vma], start: usize) -> Result<Backing, Error> {
    let kind = |v: &maps::Vma| -> Result<Backing, Error> {
        Ok(if maps::looks_hugetlb(v) {
            let at = v.start.max(start);
            let page_size = match maps::kernel_page_size(at) {
                Ok(Some(ps)) if ps.is_power_of_two() => ps,
                Ok(_) => {
                    return Err(Error::Kernel {
                        op: "reading the huge page size (KernelPageSize) from /proc/self/smaps",
                        source: std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!(
                                "no usable KernelPageSize for the hugetlbfs mapping at {at:#x}"
                            ),
                        ),
                    })
                }
                Err(e) => {
                    return Err(Error::from_kernel(
                        "reading the huge page size (KernelPageSize) from /proc/self/smaps",
                        e,
                    ))
                }
            };
            Backing::Hugetlb { page_size }
        } else if v.is_shared() {
            Backing::Shared
        } else if v.is_file_backed() {
            Backing::PrivateFile
        } else {
            Backing::PrivateAnonymous
        })
    };
    let mut kinds = vmas.iter().map(kind);
    let first = kinds
        .next()
        .transpose()?
        .unwrap_or(Backing::PrivateAnonymous);
    for k in kinds {
        if k? != first {
            return Ok(Backing::Mixed);
        }
    }
    Ok(first)
}

fn describe(vmas: &[maps::Vma]) -> String {
    let kinds: Vec<String> = vmas
        .iter()
        .map(|v| {
            let sharing = if v.is_shared() { "shared" } else { "private" };
            match (v.is_file_backed(), v.path.as_str()) {
                (false, "") => format!("{sharing} anonymous"),
                (false, p) => format!("{sharing} anonymous {p}"),
                (true, p) => format!("{sharing} file mapping {p}"),
            }
        })
        .collect();
    kinds.join(", ")
}

fn register_error(
    core: &Core,
    start: usize,
    end: usize,
    vmas: &[maps::Vma],
    e: std::io::Error,
) -> Error {
    match e.raw_os_error() {
        Some(libc::EBUSY) => Error::OwnedByAnotherUserfaultfd { start, end },
        // Write-protect registration needs a writable mapping (VM_MAYWRITE): a shared mapping of
        // a file opened read-only, or of a write-sealed memfd, is refused with EPERM.
        Some(libc::EPERM) => Error::MappingNotSupported {
            start,
            end,
            mapping: describe(vmas),
            mode: core.mode,
            source: e,
            hint: "a shared mapping that can never be written (file opened O_RDONLY, write-sealed memfd) cannot be write-protected; it cannot change through this mapping, so there is nothing to track there",
        },
        Some(libc::ENOMEM) | Some(libc::EMFILE) | Some(libc::ENFILE) => {
            Error::from_kernel("UFFDIO_REGISTER", e)
        }
        Some(libc::EINVAL) => {
            // Unmapped since we looked?
            if let Ok(now) = maps::vmas_in(start, end) {
                if let Some(hole) = maps::first_hole(&now, start, end) {
                    return Error::NotMapped { start, end, hole };
                }
            }
            let hugetlb = vmas
                .iter()
                .any(|v| v.path.contains("hugepage") || v.path.starts_with("/dev/hugepages"));
            let file = vmas.iter().any(|v| v.is_file_backed());
            let hint = if hugetlb {
                "hugetlbfs ranges must start and end on a huge-page boundary (usually 2 MiB)"
            } else if file && core.mode == crate::Mode::Sync {
                "sync mode tracks anonymous, shmem/memfd and hugetlbfs memory only; use Mode::Async (Linux 6.7+) for regular file mappings"
            } else {
                "this kind of mapping cannot be write-protected by userfaultfd (e.g. VM_DROPPABLE, VM_PFNMAP/IO memory, or a file system without support)"
            };
            Error::MappingNotSupported {
                start,
                end,
                mapping: describe(vmas),
                mode: core.mode,
                source: e,
                hint,
            }
        }
        _ => Error::from_kernel("UFFDIO_REGISTER", e),
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
