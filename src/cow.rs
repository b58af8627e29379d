//! The copy-on-write state of a range during a live snapshot: the copy buffer, which pages are
//! copied, and why the copy failed if it did. The monitor thread copies a page here before it
//! lets the first write through; the live-snapshot background pass (`live`) copies the
//! rest. The orchestration (instant, background pass, hand-back of marks) lives in
//! `live`; this module only keeps the state consistent.

use crate::sys::mem;
use bitvec::prelude::*;
use parking_lot::Mutex;

/// The copy-on-write state of a range during a live snapshot.
pub(crate) struct Cow {
    /// Written (a page copied, `failed` set) only while the tracker's `batch` lock is held
    /// (monitor, background pass); [`LiveSnapshot::progress`] and the final read in `finish`
    /// lock it without `batch` to read (after `finish` removed the state from the range under
    /// `batch`, nobody writes it any more). Lock order: `batch` → `Cow::state`.
    pub(crate) state: Mutex<CowState>,
}

pub(crate) struct CowState {
    /// The copy: page `i` of the range at the instant, once `copied[i]`.
    pub(crate) data: Vec<u8>,
    /// Pages copied so far (each exactly once).
    pub(crate) copied: BitVec<u64, Lsb0>,
    /// Why the copy cannot be consistent any more (first reason wins).
    pub(crate) failed: Option<String>,
}

impl Cow {
    /// A state with nothing copied yet into `data` (one range's worth of bytes, `pages` pages).
    pub(crate) fn new(data: Vec<u8>, pages: usize) -> Cow {
        Cow {
            state: Mutex::new(CowState {
                data,
                copied: bitvec![u64, Lsb0; 0; pages],
                failed: None,
            }),
        }
    }

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
