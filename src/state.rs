//! State shared by the [`Tracker`](crate::Tracker) handle, the backends and the monitor thread.
//!
//! # Locks and what they protect
//!
//! | lock | where | protects | held by |
//! |---|---|---|---|
//! | `harvest` | `Tracker` | the pagemap scanner; makes collect / peek / clear / register / unregister / live-snapshot instants one at a time | user threads |
//! | `registry` | `TrackerState` | the overlap check and the register / unregister ioctls; the next range id | user threads |
//! | `ranges` (RwLock) | `TrackerState` | the list of registered ranges and its address index, `RangeList` (written only briefly, never across an ioctl) | everyone; the monitor reads (`read_recursive`) |
//! | `batch` | `TrackerState` | "read a batch of uffd messages and apply it" (monitor) vs "re-protect a range, then take its marks" (sync harvest) and "install / remove a range's copy-on-write state"; also orders a live snapshot's hand-back of marks with sync collects | monitor; sync harvest; live snapshots; others as a barrier |
//! | `RangeState::cow` | per range | which live snapshot (if any) copies the range: set and taken under `batch`; read under `batch` by the monitor and the background pass, and without it only to test for a snapshot in progress (under `harvest`) | under `batch`, or alone for a read |
//! | `Cow::state` | per snapshot | the copy buffer, the copied bitmap, the failure reason: written only under `batch`; read alone by `LiveSnapshot::progress` and after the state was removed | under `batch`, or alone for a read |
//! | `RangeState::lost` | per range | why the range is lost (first reason wins) | anyone, innermost, never across another lock or ioctl |
//! | `TrackerState::poisoned` | `TrackerState` | why the monitor died | anyone, innermost |
//!
//! Lock order: `harvest` → `registry` → `ranges` → `batch` → (`RangeState::cow` →
//! `Cow::state`, `RangeState::lost`, `TrackerState::poisoned`: leaves, never held while taking another).
//! The monitor thread takes only `ranges` (read) then `batch` (then the leaves). No lock is held
//! by a user thread while it could fault on tracked memory, because the library never writes to
//! tracked memory.
//!
//! Atomics, and what each ordering pairs with: `RangeState::start` is stored (Release) only by
//! the monitor under `ranges` (read) + `batch`, when it follows an `mremap` move, and loaded
//! (Acquire) by everyone; readers that need the final value take the `batch` barrier first.
//! `RangeState::gone` is stored (Release) by whoever marks the range gone and loaded (Acquire)
//! before any ioctl on the range's addresses. The per-range bitmaps (`AtomicBitmap`) are marked
//! with `fetch_or` and taken with `swap`, both `AcqRel`, words then summary on marking, summary
//! then words on taking, so a mark is in exactly one harvest (the protocol is written out on
//! `AtomicBitmap`). The move count (`range::Moves`) is bumped after a moved range's start is
//! stored. Each of these protocols has a loom model (`loom_models`, run by `scripts/loom`).
//!
//! `batch` as a barrier: the monitor holds it from the moment it reads messages until it has
//! applied them (marks set, lost ranges flagged, moved ranges re-keyed). Taking and releasing it
//! therefore waits until every message the monitor had already read is applied. An event
//! (`REMOVE`, `UNMAP`, `REMAP`) blocks the thread that caused it until the monitor reads it, so
//! after a barrier every `madvise`/`munmap`/`mremap` that has returned is visible in the ranges.

use crate::atomic::Ordering;
use crate::probe::Capabilities;
use crate::range::{RangeList, RangeState};
use crate::sys::uffd;
use crate::types::Prefault;
use crate::{Error, Mode};
use parking_lot::{Mutex, RwLock};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

pub(crate) struct TrackerState {
    /// `Async` or `Sync`, never `Auto`.
    pub(crate) mode: Mode,
    pub(crate) caps: Capabilities,
    pub(crate) page_size: usize,
    /// Never-touched-page strategy (sync mode; async always has WP_UNPOPULATED).
    pub(crate) prefault: Prefault,
    /// Advise `MADV_NOHUGEPAGE` on registered ranges.
    pub(crate) no_thp: bool,
    /// The pid that created the tracker; in any other process (a fork child) the tracker is inert.
    pub(crate) owner_pid: u32,
    /// The tracker's userfaultfd (non-blocking, close-on-exec).
    pub(crate) uffd: OwnedFd,
    /// See the module docs.
    pub(crate) registry: Mutex<crate::range::Registry>,
    /// Registered ranges, in registration order, with an address index (see `RangeList`). The
    /// overlap check uses the registry's index.
    pub(crate) ranges: RwLock<RangeList>,
    /// See the module docs.
    pub(crate) batch: Mutex<()>,
    /// How often a range moved; the two address indexes (`registry`, `ranges`) hold a clone.
    pub(crate) moves: crate::range::Moves,
    /// `Some(reason)` once the monitor thread died; every call then fails with `Error::Poisoned`.
    pub(crate) poisoned: Mutex<Option<String>>,
}

impl TrackerState {
    /// Waits until the monitor has applied every message it has read (see the module docs).
    pub(crate) fn barrier(&self) {
        drop(self.batch.lock());
    }

    /// The range containing `addr`, if any (the live one where a gone range overlaps it).
    pub(crate) fn range_at(ranges: &RangeList, addr: usize) -> Option<&Arc<RangeState>> {
        ranges.find(addr)
    }

    /// `UFFDIO_WRITEPROTECT` of a range that may span several VMAs. Linux before 6.5 accepts
    /// only a range inside one VMA (`ENOENT` otherwise); on `ENOENT` the range is retried VMA by
    /// VMA from `/proc/self/maps`. On newer kernels an `ENOENT` is real and fails again.
    pub(crate) fn writeprotect_vmas(
        fd: BorrowedFd<'_>,
        start: usize,
        len: usize,
        mode: u64,
    ) -> io::Result<()> {
        match uffd::writeprotect(fd, start, len, mode) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let end = start + len;
                let vmas = crate::sys::maps::vmas_in(start, end)?;
                if vmas.len() < 2 {
                    return Err(e);
                }
                for v in vmas {
                    let (a, b) = (v.start.max(start), v.end.min(end));
                    uffd::writeprotect(fd, a, b - a, mode)?;
                }
                Ok(())
            }
            other => other,
        }
    }

    /// `UFFDIO_WRITEPROTECT` that retries `EAGAIN` (an event is waiting to be read by the monitor;
    /// the caller must not hold `batch`, or the monitor could never read it).
    pub(crate) fn writeprotect(&self, start: usize, len: usize, mode: u64) -> io::Result<()> {
        loop {
            match TrackerState::writeprotect_vmas(self.uffd.as_fd(), start, len, mode) {
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => std::thread::yield_now(),
                other => return other,
            }
        }
    }

    /// Un-registers `[start, start + len)` and wakes every writer blocked in a fault there.
    /// `UFFDIO_UNREGISTER` alone wakes only MISSING-mode waiters, not write-protect ones: a
    /// writer blocked in a WP fault would otherwise hang forever once no monitor serves it.
    pub(crate) fn release(&self, start: usize, len: usize) -> io::Result<()> {
        let res = uffd::unregister(self.uffd.as_fd(), start, len);
        let _ = uffd::wake(self.uffd.as_fd(), start, len);
        res
    }

    /// [`TrackerState::release`] for a range; if its memory is gone (see `RangeState::gone`), only the
    /// wake: a writer may still wait on a fault the monitor read before the unmap and never
    /// served (the tracker was poisoned, or is being dropped). `UFFDIO_WAKE` acts on this
    /// userfaultfd's waiters only, so it cannot disturb whoever owns the memory now; a waiter
    /// woken needlessly faults again.
    pub(crate) fn release_range(&self, r: &RangeState) -> io::Result<()> {
        if r.gone.load(Ordering::Acquire) {
            let _ = uffd::wake(self.uffd.as_fd(), r.start(), r.len);
            return Ok(());
        }
        self.release(r.start(), r.len)
    }

    /// Fails if this process is not the tracker's owner or the monitor died.
    pub(crate) fn check_usable(&self) -> Result<(), Error> {
        let current = crate::sys::getpid();
        if current != self.owner_pid {
            return Err(Error::ForkedChild {
                owner: self.owner_pid,
                current,
            });
        }
        if let Some(reason) = self.poisoned.lock().as_ref() {
            return Err(Error::Poisoned(reason.clone()));
        }
        Ok(())
    }

    /// Stops tracking `r` for good (unregister, drop): a live snapshot of it can no longer be
    /// consistent once its pages are un-protected.
    pub(crate) fn retire(&self, r: &RangeState, why: &str) {
        let _batch = self.batch.lock();
        if let Some(cow) = r.cow.lock().as_ref() {
            cow.disturbed(0, r.pages(self.page_size), why);
        }
        r.mark_lost(format!("{why} it"), self.page_size);
    }

    /// Marks the tracker poisoned and un-registers every range so that no writer stays blocked.
    pub(crate) fn poison(&self, reason: String) {
        {
            let mut p = self.poisoned.lock();
            if p.is_none() {
                *p = Some(reason);
            }
        }
        for r in self.ranges.read_recursive().iter() {
            let _ = self.release_range(r);
            r.mark_lost("the tracker was poisoned".into(), self.page_size);
        }
        // An event blocks the thread that caused it until it is read: read and drop whatever is
        // queued, so no thread stays blocked (no new event can come: nothing is registered).
        let mut msgs = [uffd::UffdMsg::default(); 16];
        while matches!(uffd::read_msgs(self.uffd.as_fd(), &mut msgs), Ok(n) if n > 0) {}
    }
}
