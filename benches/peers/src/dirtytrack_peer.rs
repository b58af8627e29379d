//! dirtytrack itself, and the raw kernel primitive under its async mode.

use crate::common::{self, page_size};
use crate::{mapped, Checkpoint, Peer};
use dirtytrack::sys::mem::AnonMapping;
use dirtytrack::{Mode, Tracker};

/// `Tracker::collect()` (async: one `PAGEMAP_SCAN` walk that also re-protects; sync: re-protect
/// with `UFFDIO_WRITEPROTECT`, take the monitor's marks), then one copy per dirty run.
pub struct Dirtytrack {
    name: &'static str,
    // Declared before `mem`: unregistered before the mapping goes.
    tracker: Tracker,
    mem: AnonMapping,
}

impl Dirtytrack {
    /// Panics with the library's error if the mode is unavailable (async needs Linux 6.7).
    pub fn new(mode: Mode, len: usize) -> Dirtytrack {
        let name = match mode {
            Mode::Sync => "dirtytrack_sync",
            _ => "dirtytrack_async",
        };
        let mem = common::map(len);
        common::populate(&mem);
        let tracker = Tracker::builder()
            .mode(mode)
            .build()
            .unwrap_or_else(|e| panic!("{name} tracker: {e}"));
        tracker
            .register(mem.addr() as *mut u8, len)
            .unwrap_or_else(|e| panic!("{name}: register: {e}"));
        Dirtytrack { name, tracker, mem }
    }

    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }
}

impl Peer for Dirtytrack {
    fn name(&self) -> &'static str {
        self.name
    }
    fn mem(&self) -> &AnonMapping {
        &self.mem
    }
    fn harvest(&mut self, cp: &mut Checkpoint) {
        let ps = page_size();
        let set = self.tracker.collect().expect("collect");
        let (base, bytes) = (self.mem.addr(), mapped(&self.mem));
        for r in set.runs() {
            cp.copy(&bytes[r.start - base..r.end - base], r.start, ps);
        }
    }
}

/// The physical limit of async mode: a bare `PAGEMAP_SCAN` loop on `dirtytrack::sys` (its own
/// userfaultfd, no library logic: no registry, no locks, no `DirtySet`), then one copy per
/// returned region.
pub struct RawScan {
    raw: common::RawAsync,
    mem: AnonMapping,
}

impl RawScan {
    pub fn new(len: usize) -> RawScan {
        let mem = common::map(len);
        common::populate(&mem);
        let raw = common::RawAsync::new(mem.addr(), len).expect("raw async uffd (Linux 6.7+)");
        RawScan { raw, mem }
    }
}

impl Peer for RawScan {
    fn name(&self) -> &'static str {
        "raw_pagemap_scan"
    }
    fn mem(&self) -> &AnonMapping {
        &self.mem
    }
    fn harvest(&mut self, cp: &mut Checkpoint) {
        let ps = page_size();
        let regions = self.raw.harvest().expect("PAGEMAP_SCAN");
        let (base, bytes) = (self.mem.addr(), mapped(&self.mem));
        for r in regions {
            let (s, e) = (r.start as usize, r.end as usize);
            cp.copy(&bytes[s - base..e - base], s, ps);
        }
    }
}
