//! What a tool does when the kernel gives nothing: compare every page with what it was at the
//! last checkpoint. Both see content changes only (a write of the same value is invisible); the
//! benches write a new value every cycle.

use crate::common::{self, page_size};
use crate::{mapped, Checkpoint, Peer, RunBuilder};
use dirtytrack::sys::mem::AnonMapping;
use xxhash_rust::xxh3::xxh3_64;

/// `memcmp` of every page against a saved copy (100 % memory overhead); changed pages are copied
/// out and into the saved copy.
pub struct Memcmp {
    mem: AnonMapping,
    saved: Vec<u8>,
}

impl Memcmp {
    pub fn new(len: usize) -> Memcmp {
        let mem = common::map(len);
        common::populate(&mem);
        let saved = mapped(&mem).to_vec();
        Memcmp { mem, saved }
    }
}

impl Peer for Memcmp {
    fn name(&self) -> &'static str {
        "memcmp"
    }
    fn mem(&self) -> &AnonMapping {
        &self.mem
    }
    fn harvest(&mut self, cp: &mut Checkpoint) {
        let ps = page_size();
        let saved = &mut self.saved;
        copy_changed(cp, &self.mem, |i, now| {
            let old = &mut saved[i * ps..(i + 1) * ps];
            let changed = now != old;
            if changed {
                old.copy_from_slice(now);
            }
            changed
        });
    }
}

/// A 64-bit xxh3 hash per page (0.2 % memory overhead); pages whose hash changed are copied out.
pub struct Xxh3 {
    mem: AnonMapping,
    hashes: Vec<u64>,
}

impl Xxh3 {
    pub fn new(len: usize) -> Xxh3 {
        let mem = common::map(len);
        common::populate(&mem);
        let hashes = mapped(&mem)
            .chunks_exact(page_size())
            .map(xxh3_64)
            .collect();
        Xxh3 { mem, hashes }
    }
}

impl Peer for Xxh3 {
    fn name(&self) -> &'static str {
        "xxh3_per_page"
    }
    fn mem(&self) -> &AnonMapping {
        &self.mem
    }
    fn harvest(&mut self, cp: &mut Checkpoint) {
        let hashes = &mut self.hashes;
        copy_changed(cp, &self.mem, |i, page| {
            let h = xxh3_64(page);
            let changed = h != hashes[i];
            hashes[i] = h;
            changed
        });
    }
}

/// Visits every page of `mem` in order with `changed(index, bytes)` (which also updates the
/// peer's saved state) and copies the pages it says changed, one copy per run.
fn copy_changed(
    cp: &mut Checkpoint,
    mem: &AnonMapping,
    mut changed: impl FnMut(usize, &[u8]) -> bool,
) {
    let (base, bytes) = (mem.addr(), mapped(mem));
    let mut runs = RunBuilder::default();
    for (i, page) in bytes.chunks_exact(page_size()).enumerate() {
        if changed(i, page) {
            runs.push(cp, bytes, base, i, i + 1);
        }
    }
    runs.flush(cp, bytes, base);
}
