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
        let (base, bytes) = (self.mem.addr(), mapped(&self.mem));
        let mut runs = RunBuilder::default();
        for (i, (now, old)) in bytes
            .chunks_exact(ps)
            .zip(self.saved.chunks_exact_mut(ps))
            .enumerate()
        {
            if now != old {
                runs.push(cp, bytes, base, i, i + 1);
                old.copy_from_slice(now);
            }
        }
        runs.flush(cp, bytes, base);
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
        let ps = page_size();
        let (base, bytes) = (self.mem.addr(), mapped(&self.mem));
        let mut runs = RunBuilder::default();
        for (i, (page, old)) in bytes
            .chunks_exact(ps)
            .zip(self.hashes.iter_mut())
            .enumerate()
        {
            let h = xxh3_64(page);
            if h != *old {
                runs.push(cp, bytes, base, i, i + 1);
                *old = h;
            }
        }
        runs.flush(cp, bytes, base);
    }
}
