//! Consistent live snapshots (sync mode): a copy of a range as of one instant, taken while the
//! program keeps writing.
//!
//! At the instant the range is re-protected (as a collect does) and a copy-on-write state is
//! installed. From then on, before the monitor lets the first write to a page through, it copies
//! the page's old contents into the snapshot; a background thread copies every page nobody
//! wrote. Both copy under the tracker's `batch` lock, and a page is copied at most once, so each
//! page of the copy holds exactly its contents at the instant: a page is write-protected until
//! copied, and un-protected only by the monitor, after copying.
//!
//! What breaks consistency is reported, never hidden: a discard (`MADV_DONTNEED`...), unmap or
//! move of the range while pages are still uncopied makes [`LiveSnapshot::wait`] fail.
//!
//! # Nothing lost on any path
//!
//! The instant takes the range's pending marks (the pages written since the previous collect)
//! into the snapshot's `dirty_at_instant`. Until the caller says the copy is stored
//! ([`LiveCopy::commit`]), those pages are owed to the tracker: a failed snapshot, a
//! [`LiveSnapshot`] dropped before `wait`, a [`LiveCopy`] dropped without `commit`, and a copy
//! thread that could not be started all hand them back to the range's marks (under `batch`, the
//! lock that orders marks with sync-mode collects), so a later collect reports them. The
//! copy-on-write state is removed on every one of these paths.

use crate::bitmap::Segment;
use crate::cow::Cow;
use crate::dirty_set::DirtySet;
use crate::range::RangeState;
use crate::state::TrackerState;
use crate::sys::mem;
use crate::Error;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;

/// Pages the background pass copies per hold of the `batch` lock (writers wait at most this long).
const CHUNK: usize = 64;

/// A live snapshot in progress; [`LiveSnapshot::wait`] gives the copy.
///
/// Dropping it without `wait` stops the copy and hands the pages written before the instant back
/// to the tracker (the next collect reports them): nothing is lost.
#[must_use = "wait() returns the copy; dropping the handle discards the copy (the pages written before the instant stay pending for the next collect)"]
pub struct LiveSnapshot {
    core: Arc<TrackerState>,
    range: Arc<RangeState>,
    cow: Arc<Cow>,
    addr: usize,
    /// The marks the instant took, owed to the tracker until a `LiveCopy` carries them out.
    owed: Owed,
    thread: Option<JoinHandle<()>>,
}

/// The pages the instant took from a range's marks. Handed back to the range on drop unless
/// [`Owed::settle`] was called: the one place that decides whether pre-instant writes are lost.
struct Owed {
    core: Weak<TrackerState>,
    range: Weak<RangeState>,
    /// `None` once settled (the caller stored the copy) or given back.
    bits: Option<Segment>,
}

impl Owed {
    fn new(core: &Arc<TrackerState>, range: &Arc<RangeState>, bits: Segment) -> Owed {
        Owed {
            core: Arc::downgrade(core),
            range: Arc::downgrade(range),
            bits: Some(bits),
        }
    }

    /// The caller has the pages (a committed copy): nothing is owed any more.
    fn settle(&mut self) {
        self.bits = None;
    }

    /// Puts the pages back into the range's marks, under `batch` (ordered with sync-mode
    /// collects, which re-protect and take the marks under it). A range that is gone
    /// (unregistered, tracker dropped) needs nothing.
    fn give_back(&mut self) {
        let Some(seg) = self.bits.take() else { return };
        if let (Some(core), Some(range)) = (self.core.upgrade(), self.range.upgrade()) {
            let _batch = core.batch.lock();
            range.marks.or_bits(&seg.bits);
        }
    }
}

impl Drop for Owed {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// The result of a live snapshot.
///
/// Call [`LiveCopy::commit`] once the copy is stored: until then it owes the pages written
/// before the instant to the tracker, and dropping it hands them back (the next collect reports
/// them again, an over-report at worst). So a dump that fails half way and drops the copy loses
/// nothing.
#[derive(Debug)]
#[non_exhaustive]
pub struct LiveCopy {
    /// The range's start address at the instant.
    pub addr: usize,
    /// The range's contents at the instant.
    pub data: Vec<u8>,
    /// The pages written between the previous collect (or clear, or register) and the instant:
    /// the instant acts as a collect of this range. `collect_range` afterwards reports the pages
    /// written since the instant, so incremental dumps chain from the copy.
    pub dirty_at_instant: DirtySet,
    owed: Owed,
}

impl std::fmt::Debug for Owed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.bits.is_some() {
            "Owed"
        } else {
            "Settled"
        })
    }
}

impl LiveCopy {
    /// Says the copy (and `dirty_at_instant`) is stored: dropping the copy no longer hands the
    /// pre-instant pages back to the tracker. Call it before moving fields out of the copy.
    pub fn commit(&mut self) {
        self.owed.settle();
    }

    /// Whether [`LiveCopy::commit`] was called.
    pub fn is_committed(&self) -> bool {
        self.owed.bits.is_none()
    }
}

impl LiveSnapshot {
    /// Starts the background pass over `range`, whose copy-on-write state was installed at the
    /// instant (which took `instant` from its marks). On failure the state is removed and the
    /// marks handed back.
    pub(crate) fn start(
        core: Arc<TrackerState>,
        range: Arc<RangeState>,
        instant: Segment,
        addr: usize,
    ) -> Result<LiveSnapshot, Error> {
        let mut owed = Owed::new(&core, &range, instant);
        let cow = range.cow.lock().clone();
        let Some(cow) = cow else {
            // Cannot happen (installed under `harvest`, which the caller holds); never lose the
            // pages if it does.
            owed.give_back();
            return Err(Error::Poisoned("live snapshot state missing".into()));
        };
        let (c, r, w) = (core.clone(), range.clone(), cow.clone());
        let spawned = spawn_copy_thread(move || background_pass(&c, &r, &w, addr));
        let thread = match spawned {
            Ok(t) => t,
            Err(e) => {
                uninstall(&core, &range);
                owed.give_back();
                return Err(match e.raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::ENOMEM) => Error::ResourceExhausted {
                        what: "starting the live-snapshot copy thread",
                        source: e,
                        hint: "the process hit its thread limit (RLIMIT_NPROC, the pids cgroup's pids.max, kernel.threads-max) or memory; nothing was lost (the pages written before the attempt stay pending for the next collect); retry once threads are available",
                    },
                    _ => Error::from_kernel("starting the live-snapshot copy thread", e),
                });
            }
        };
        Ok(LiveSnapshot {
            core,
            range,
            cow,
            addr,
            owed,
            thread: Some(thread),
        })
    }

    /// Pages copied so far, and the total.
    pub fn progress(&self) -> (usize, usize) {
        let st = self.cow.state.lock();
        (st.copied.count_ones(), st.copied.len())
    }

    /// Waits for the background pass and returns the copy, or the reason it is not consistent.
    /// On error the pages written before the instant are handed back to the tracker (the next
    /// collect reports them): nothing is lost.
    pub fn wait(mut self) -> Result<LiveCopy, Error> {
        self.finish()
    }

    fn finish(&mut self) -> Result<LiveCopy, Error> {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Stop copy-on-write under `batch`, so the monitor is not mid-copy.
        uninstall(&self.core, &self.range);
        let mut st = self.cow.state.lock();
        let failed = st.failed.take().or_else(|| {
            (!st.copied.all()).then(|| "the background copy did not finish".to_string())
        });
        if let Some(reason) = failed {
            drop(st);
            self.owed.give_back();
            return Err(Error::LiveSnapshotFailed {
                id: self.range.id,
                reason,
            });
        }
        let data = std::mem::take(&mut st.data);
        drop(st);
        let Some(seg) = self.owed.bits.take() else {
            return Err(Error::Poisoned("live snapshot finished twice".into()));
        };
        let ps = self.core.page_size;
        let dirty_at_instant = DirtySet::from_segments(ps, vec![seg.clone()]);
        Ok(LiveCopy {
            addr: self.addr,
            data,
            dirty_at_instant,
            owed: Owed::new(&self.core, &self.range, seg),
        })
    }
}

impl Drop for LiveSnapshot {
    fn drop(&mut self) {
        if self.thread.is_some() {
            // The copy (if any) is dropped uncommitted: it hands the pages back.
            let _ = self.finish();
        }
        self.owed.give_back();
    }
}

/// Spawns the background copy thread.
fn spawn_copy_thread(f: impl FnOnce() + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("dirtytrack-live-copy".into())
        .spawn(f)
}

/// Removes the range's copy-on-write state, under `batch` so the monitor is not mid-copy.
fn uninstall(core: &TrackerState, range: &RangeState) {
    let _batch = core.batch.lock();
    range.cow.lock().take();
}

/// Allocates the copy buffer for `bytes` bytes. Called before the instant, outside any lock:
/// `vec![0; n]` gets lazily zeroed pages from the allocator, so no writer waits for a zero-fill.
pub(crate) fn alloc_buffer(bytes: usize) -> Result<Vec<u8>, Error> {
    let mut data: Vec<u8> = Vec::new();
    data.try_reserve_exact(bytes)
        .map_err(|_| Error::ResourceExhausted {
            what: "allocating the live snapshot buffer",
            source: std::io::Error::from_raw_os_error(libc::ENOMEM),
            hint: "the snapshot needs as much memory as the range; free memory or snapshot a smaller range",
        })?;
    drop(data);
    Ok(vec![0u8; bytes])
}

/// Installs the copy-on-write state on `range` (caller holds `batch`, right after re-protecting).
pub(crate) fn install(range: &RangeState, data: Vec<u8>, pages: usize) {
    *range.cow.lock() = Some(Arc::new(Cow::new(data, pages)));
}

fn background_pass(core: &TrackerState, range: &RangeState, cow: &Cow, addr: usize) {
    let ps = core.page_size;
    let pages = range.pages(ps);
    let mut i = 0;
    while i < pages {
        let end = (i + CHUNK).min(pages);
        let _batch = core.batch.lock();
        if range.lost.lock().is_some() || range.start() != addr {
            cow.disturbed(i, pages, "an unmap or move of the range");
            return;
        }
        let mut st = cow.state.lock();
        if st.failed.is_some() {
            return;
        }
        // Copy each run of not-yet-copied pages with one process_vm_readv.
        let mut p = i;
        while p < end {
            if st.copied[p] {
                p += 1;
                continue;
            }
            let mut q = p + 1;
            while q < end && !st.copied[q] {
                q += 1;
            }
            let st_ref = &mut *st;
            match mem::read_own_memory(addr + p * ps, &mut st_ref.data[p * ps..q * ps]) {
                Ok(()) => st_ref.copied[p..q].fill(true),
                Err(e) => {
                    st_ref.failed = Some(format!("copying {:#x} failed: {e}", addr + p * ps));
                    return;
                }
            }
            p = q;
        }
        i = end;
    }
}
