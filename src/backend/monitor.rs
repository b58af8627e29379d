//! The monitor thread: the one reader of the tracker's userfaultfd.
//!
//! # Design note
//!
//! It runs in both modes. In sync mode it serves write-protect faults; in both modes it serves
//! memory events (`UFFD_EVENT_REMOVE`, `UNMAP`, `REMAP`), which block the thread that caused them
//! until they are read.
//!
//! Loop: `poll` the uffd and a doorbell eventfd (control messages — stop, test hooks — arrive on
//! a `crossbeam-channel` and ring it); when the uffd is readable, take `ranges` (read) and
//! `batch`, read up to [`BATCH`] messages, and apply them:
//! - `REMOVE [a, b)` (`MADV_DONTNEED`, `MADV_FREE`, `MADV_REMOVE`): the pages' contents changed
//!   (to zero, or to the file's): mark them dirty;
//! - `UNMAP [a, b)` (`munmap`, `mmap(MAP_FIXED)` over, `mremap` shrink): the ranges it touches
//!   are lost: every page is marked dirty and every later call on them says so;
//! - `REMAP from → to` (`mremap` move): a range wholly inside the moved area follows it (its start
//!   is re-keyed; the registration and the protection bits moved with the page tables); a range
//!   only partly inside is lost;
//! - write-protect fault at `a` (sync mode): **record the page in the range's marks first**, then
//!   un-protect it, which wakes the writer. Faults of one batch are sorted and un-protected as
//!   coalesced runs, each inside one range (a fault outside every range alone). A stale fault
//!   (the page was already un-protected, or a collect re-protected it since) is recorded again:
//!   a harmless over-report; dropping it could lose a write.
//!
//! If `UFFDIO_WRITEPROTECT` answers `EAGAIN` (an event is queued behind the faults), the monitor
//! reads more messages, applies the events, queues the faults, and retries. The faults queued
//! meanwhile are un-protected in a pass of their own, sorted again: a run is coalesced only
//! over one sorted pass, so it never takes in a fault it does not cover (which left that
//! writer blocked for good before, `tests/sync.rs`,
//! `faults_read_during_an_eagain_retry_are_all_served`).
//!
//! # Deadlock rule
//!
//! The monitor never waits on a lock that a user thread can hold while faulting on tracked
//! memory: it takes `ranges` for reading (written only for short, ioctl-free updates) and `batch`
//! (held by user threads only across ioctls that do not depend on a faulting writer, released on
//! `EAGAIN`). It never calls user code. Its buffers are allocated before the loop; the fault list
//! can grow only past [`FAULTS_CAPACITY`] outstanding faults (each needs a distinct blocked
//! thread). The one thing it cannot protect against is a process that registers memory the
//! allocator or this thread itself uses (e.g. a slice of the malloc heap): that is documented as
//! unsupported in sync mode.
//!
//! If the loop fails (a read error other than `EAGAIN`, an unexpected ioctl error, a panic), the
//! tracker is poisoned: every range is un-registered (waking every blocked writer) and every call
//! returns `Error::Poisoned`.

use crate::range::{RangeList, RangeState};
use crate::state::TrackerState;
use crate::sys::{mem, uffd};
use crate::Mode;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Messages read per `read(2)`.
const BATCH: usize = 64;
/// Pre-allocated room for outstanding faults.
const FAULTS_CAPACITY: usize = 4096;

/// A control message to the monitor thread. Sent on a channel; the eventfd is the doorbell that
/// wakes the thread's `poll`, which then drains the channel in order.
#[derive(Debug)]
pub(crate) enum Control {
    /// Leave the loop.
    Stop,
    /// Test hook: panic now, to exercise poisoning.
    #[cfg(feature = "testing")]
    PanicForTest,
    /// Test hook: serve nothing for this long (no lock held), so writers stay blocked; the
    /// sender hears once the pause has begun. Any control message ends it early (`Stop` also
    /// ends the thread; any other is dropped).
    #[cfg(feature = "testing")]
    PauseForTest(std::time::Duration, crossbeam_channel::Sender<()>),
    /// Test hook: ends a pause (a no-op otherwise).
    #[cfg(feature = "testing")]
    ResumeForTest,
    /// Test hook: fail (poisoning the tracker) right after reading and applying the next batch
    /// of messages, before un-protecting its faults.
    #[cfg(feature = "testing")]
    FailAfterNextBatchForTest,
}

/// A write fault read but not yet served: the pages to un-protect, `[start, end)`, and the end
/// of the range they belong to (`end` itself for a fault outside every range), so that a
/// coalesced run never leaves its range (see `run`). Ordered by `start` first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Fault {
    start: usize,
    end: usize,
    range_end: usize,
}

/// The running thread, its control channel and doorbell.
pub(crate) struct Monitor {
    control: crossbeam_channel::Sender<Control>,
    doorbell: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl Monitor {
    /// Starts the monitor for `core`.
    pub(crate) fn start(core: Arc<TrackerState>) -> io::Result<Monitor> {
        let doorbell = mem::eventfd()?;
        let doorbell_for_thread = doorbell.try_clone()?;
        let (control, inbox) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("dirtytrack-monitor".into())
            .spawn(move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run(&core, &doorbell_for_thread, &inbox)
                }));
                let reason = match result {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => format!("the monitor thread failed: {e}"),
                    Err(_) => "the monitor thread panicked".to_string(),
                };
                core.poison(reason);
            })?;
        Ok(Monitor {
            control,
            doorbell,
            thread: Some(thread),
        })
    }

    /// Sends a control message and rings the doorbell.
    pub(crate) fn send(&self, msg: Control) {
        if self.control.send(msg).is_ok() {
            let _ = mem::eventfd_signal(self.doorbell.as_fd());
        }
    }

    /// Stops the thread and waits for it.
    pub(crate) fn stop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.send(Control::Stop);
            let _ = t.join();
        }
    }

    /// Forgets the thread without joining (it does not exist in a fork child).
    pub(crate) fn abandon(&mut self) {
        self.thread.take();
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(
    core: &TrackerState,
    doorbell: &OwnedFd,
    inbox: &crossbeam_channel::Receiver<Control>,
) -> io::Result<()> {
    let mut msgs = vec![uffd::UffdMsg::default(); BATCH];
    let mut faults: Vec<Fault> = Vec::with_capacity(FAULTS_CAPACITY);
    // The pass being un-protected; `faults` collects what is read meanwhile (see below).
    let mut current: Vec<Fault> = Vec::with_capacity(FAULTS_CAPACITY);
    #[cfg(feature = "testing")]
    let mut fail_after_next_batch = false;
    loop {
        let [uffd_ready, control_ready] = mem::poll_in2(core.uffd.as_fd(), doorbell.as_fd(), -1)?;
        if control_ready {
            mem::eventfd_drain(doorbell.as_fd())?;
            // Without the `testing` hooks the only message is `Stop`, so this loop never loops.
            #[cfg_attr(not(feature = "testing"), allow(clippy::never_loop))]
            while let Ok(msg) = inbox.try_recv() {
                match msg {
                    Control::Stop => return Ok(()),
                    #[cfg(feature = "testing")]
                    Control::PanicForTest => panic!("test hook: monitor panic"),
                    #[cfg(feature = "testing")]
                    Control::PauseForTest(d, begun) => {
                        let _ = begun.send(());
                        if let Ok(Control::Stop) = inbox.recv_timeout(d) {
                            return Ok(());
                        }
                    }
                    #[cfg(feature = "testing")]
                    Control::ResumeForTest => {}
                    #[cfg(feature = "testing")]
                    Control::FailAfterNextBatchForTest => fail_after_next_batch = true,
                }
            }
        }
        if !uffd_ready {
            continue;
        }
        let ranges = core.ranges.read_recursive();
        let _batch = core.batch.lock();
        read_batch(core, &ranges, &mut msgs, &mut faults)?;
        #[cfg(feature = "testing")]
        if fail_after_next_batch {
            return Err(io::Error::other("test hook: failed after reading a batch"));
        }
        if faults.is_empty() {
            continue;
        }
        // read_batch recorded every fault in its range's marks; only now un-protect, as
        // coalesced runs. A run never leaves the range of its first fault: adjacent pages of two
        // ranges are two VMAs, and one of them may be gone from the kernel (unregistered, or a
        // stale fault of a range no longer tracked); its `ENOENT` must not be taken for the
        // tracked one's. Faults read during an `EAGAIN` retry go to `faults` and are handled in
        // the next pass, sorted on their own: coalescing runs only ascending over one sorted
        // pass, so no fault can be swallowed by a run that does not cover it.
        while !faults.is_empty() {
            std::mem::swap(&mut faults, &mut current);
            current.sort_unstable();
            let mut i = 0;
            while i < current.len() {
                let Fault {
                    start,
                    mut end,
                    range_end,
                } = current[i];
                let mut j = i + 1;
                while j < current.len() && current[j].start <= end && current[j].end <= range_end {
                    end = end.max(current[j].end);
                    j += 1;
                }
                unprotect(core, &ranges, &mut msgs, &mut faults, start, end)?;
                i = j;
            }
            current.clear();
        }
    }
}

/// Reads one batch and applies events; pushes to `faults` a [`Fault`] for each write fault (one
/// page, or one huge page in a hugetlbfs range).
fn read_batch(
    core: &TrackerState,
    ranges: &RangeList,
    msgs: &mut [uffd::UffdMsg],
    faults: &mut Vec<Fault>,
) -> io::Result<()> {
    let n = match uffd::read_msgs(core.uffd.as_fd(), msgs) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
        Err(e) => return Err(e),
    };
    let ps = core.page_size;
    for m in &msgs[..n] {
        match m.event {
            uffd::EVENT_PAGEFAULT => {
                let addr = m.pagefault_address() as usize & !(ps - 1);
                let range = TrackerState::range_at(ranges, addr);
                // Protection granule: a page, or a whole huge page (hugetlbfs cannot
                // un-protect less: UFFDIO_WRITEPROTECT of 4 KiB there is EINVAL).
                let granule = range.map_or(ps, |r| r.granule);
                let start = addr & !(granule - 1);
                if core.mode == Mode::Sync {
                    // Record before the page is un-protected (which happens later, in `run`).
                    if let Some(r) = range {
                        let first = (start - r.start()) / ps;
                        for i in first..first + granule / ps {
                            r.marks.set(i);
                            // Live snapshot: keep the page's old contents before the write.
                            if let Some(cow) = r.cow.lock().as_ref() {
                                cow.copy_page(i, r.start() + i * ps, ps);
                            }
                        }
                    }
                }
                faults.push(Fault {
                    start,
                    end: start + granule,
                    range_end: range.map_or(start + granule, |r| r.end()),
                });
            }
            uffd::EVENT_REMOVE => {
                let (a, b) = m.remove();
                for r in ranges.iter() {
                    r.mark_discarded(a as usize, b as usize, ps);
                    disturb_cow(
                        r,
                        a as usize,
                        b as usize,
                        ps,
                        "a discard (MADV_DONTNEED, MADV_FREE or MADV_REMOVE)",
                    );
                }
            }
            uffd::EVENT_UNMAP => {
                let (a, b) = m.remove();
                let (a, b) = (a as usize, b as usize);
                for r in ranges.iter().filter(|r| r.start() < b && a < r.end()) {
                    disturb_cow(r, a, b, ps, "an unmap");
                    r.mark_gone(
                        format!("{a:#x}..{b:#x} was unmapped (munmap, mmap(MAP_FIXED) over it, or mremap)"),
                        ps,
                    );
                }
            }
            uffd::EVENT_REMAP => {
                let (from, to, len) = m.remap();
                let (from, to, len) = (from as usize, to as usize, len as usize);
                for r in ranges
                    .iter()
                    .filter(|r| r.start() < from + len && from < r.end())
                {
                    disturb_cow(r, from, from + len, ps, "an mremap");
                    if r.start() >= from && r.end() <= from + len {
                        r.move_to(to + (r.start() - from), &core.moves);
                    } else {
                        r.mark_lost(
                            format!(
                                "mremap moved only part of it ({from:#x}..{:#x} to {to:#x})",
                                from + len
                            ),
                            ps,
                        );
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// A live snapshot of `r` cannot stay consistent if `[a, b)` changed under it before being copied.
fn disturb_cow(r: &RangeState, a: usize, b: usize, ps: usize, what: &str) {
    let (s, e) = (r.start(), r.end());
    let (a, b) = (a.max(s), b.min(e));
    if a < b {
        if let Some(cow) = r.cow.lock().as_ref() {
            cow.disturbed((a - s) / ps, (b - s).div_ceil(ps), what);
        }
    }
}

/// Un-protects `[start, end)` and wakes its writers. On `EAGAIN` reads (and applies) more
/// messages first. A range that is gone (`ENOENT`, `EINVAL`) is only woken.
fn unprotect(
    core: &TrackerState,
    ranges: &RangeList,
    msgs: &mut [uffd::UffdMsg],
    faults: &mut Vec<Fault>,
    start: usize,
    end: usize,
) -> io::Result<()> {
    loop {
        match TrackerState::writeprotect_vmas(core.uffd.as_fd(), start, end - start, 0) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                // Faults read here are recorded by read_batch and un-protected on a later pass.
                let before = faults.len();
                read_batch(core, ranges, msgs, faults)?;
                if faults.len() == before {
                    std::thread::yield_now();
                }
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EINVAL)) => {
                // Gone (unregistered, unmapped): waking is all that is left to do. But a range
                // that is still tracked must not answer this: waking alone would let the writer
                // fault again forever, so fail (the tracker is poisoned, writers released).
                if let Some(r) = TrackerState::range_at(ranges, start) {
                    if r.lost.lock().is_none() {
                        return Err(e);
                    }
                }
                let _ = uffd::wake(core.uffd.as_fd(), start, end - start);
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}
