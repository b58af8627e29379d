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

use crate::core::Core;
use crate::dirty_set::DirtySet;
use crate::range::RangeState;
use crate::sys::mem;
use crate::Error;
use bitvec::prelude::*;
use parking_lot::Mutex;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Pages the background pass copies per hold of the `batch` lock (writers wait at most this long).
const CHUNK: usize = 64;

/// The copy-on-write state of a range during a live snapshot.
pub(crate) struct Cow {
    /// Locked only while the `batch` lock is held (monitor or background pass).
    state: Mutex<CowState>,
}

struct CowState {
    data: Vec<u8>,
    copied: BitVec<u64, Lsb0>,
    failed: Option<String>,
}

impl Cow {
    /// Copies page `i` (at `addr`) if it has not been copied yet. Caller holds `batch`.
    pub(crate) fn copy_page(&self, i: usize, addr: usize, page_size: usize) {
        let mut st = self.state.lock();
        let st = &mut *st;
        if st.failed.is_some() || st.copied.get(i).is_none_or(|b| *b) {
            return;
        }
        let dst = &mut st.data[i * page_size..(i + 1) * page_size];
        match mem::read_own_memory(addr, dst) {
            Ok(()) => st.copied.set(i, true),
            Err(e) => st.failed = Some(format!("copying page {addr:#x} failed: {e}")),
        }
    }

    /// A discard, unmap or move hit `[from, to)` pages (indices): fails the snapshot if any of
    /// them was not copied yet. Caller holds `batch`.
    pub(crate) fn disturbed(&self, from: usize, to: usize, what: &str) {
        let mut st = self.state.lock();
        let to = to.min(st.copied.len());
        if from < to && !st.copied[from..to].all() && st.failed.is_none() {
            st.failed = Some(format!(
                "{what} changed pages of the range before they were copied, so their contents at the snapshot instant are gone"
            ));
        }
    }
}

/// A live snapshot in progress; [`LiveSnapshot::wait`] gives the copy.
#[must_use = "wait() returns the copy; dropping the handle waits for the copy and discards it"]
pub struct LiveSnapshot {
    core: Arc<Core>,
    range: Arc<RangeState>,
    cow: Arc<Cow>,
    addr: usize,
    dirty_at_instant: Option<DirtySet>,
    thread: Option<JoinHandle<()>>,
}

/// The result of a live snapshot.
#[derive(Debug)]
pub struct LiveCopy {
    /// The range's start address at the instant.
    pub addr: usize,
    /// The range's contents at the instant.
    pub data: Vec<u8>,
    /// The pages written between the previous collect (or clear, or register) and the instant:
    /// the instant acts as a collect of this range. `collect_range` afterwards reports the pages
    /// written since the instant, so incremental dumps chain from the copy.
    pub dirty_at_instant: DirtySet,
}

impl LiveSnapshot {
    pub(crate) fn start(
        core: Arc<Core>,
        range: Arc<RangeState>,
        dirty_at_instant: DirtySet,
        addr: usize,
    ) -> Result<LiveSnapshot, Error> {
        let cow = range
            .cow
            .lock()
            .clone()
            .ok_or_else(|| Error::Poisoned("live snapshot state missing".into()))?;
        let (c, r, w) = (core.clone(), range.clone(), cow.clone());
        let thread = std::thread::Builder::new()
            .name("dirtytrack-live-copy".into())
            .spawn(move || background_pass(&c, &r, &w, addr))
            .map_err(|e| Error::from_kernel("starting the live-snapshot copy thread", e))?;
        Ok(LiveSnapshot {
            core,
            range,
            cow,
            addr,
            dirty_at_instant: Some(dirty_at_instant),
            thread: Some(thread),
        })
    }

    /// Pages copied so far, and the total.
    pub fn progress(&self) -> (usize, usize) {
        let st = self.cow.state.lock();
        (st.copied.count_ones(), st.copied.len())
    }

    /// Waits for the background pass and returns the copy, or the reason it is not consistent.
    pub fn wait(mut self) -> Result<LiveCopy, Error> {
        self.finish()
    }

    fn finish(&mut self) -> Result<LiveCopy, Error> {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Stop copy-on-write under `batch`, so the monitor is not mid-copy.
        {
            let _batch = self.core.batch.lock();
            self.range.cow.lock().take();
        }
        let mut st = self.cow.state.lock();
        let failed = st.failed.take().or_else(|| {
            (!st.copied.all()).then(|| "the background copy did not finish".to_string())
        });
        if let Some(reason) = failed {
            return Err(Error::LiveSnapshotFailed {
                id: self.range.id,
                reason,
            });
        }
        Ok(LiveCopy {
            addr: self.addr,
            data: std::mem::take(&mut st.data),
            dirty_at_instant: self.dirty_at_instant.take().unwrap_or_default(),
        })
    }
}

impl Drop for LiveSnapshot {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.finish();
        }
    }
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
    *range.cow.lock() = Some(Arc::new(Cow {
        state: Mutex::new(CowState {
            data,
            copied: bitvec![u64, Lsb0; 0; pages],
            failed: None,
        }),
    }));
}

fn background_pass(core: &Core, range: &RangeState, cow: &Cow, addr: usize) {
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
