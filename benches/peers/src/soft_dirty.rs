//! The kernel's soft-dirty bits: what CRIU and most checkpointers used before uffd-wp.
//!
//! Arm: write `4` to `/proc/self/clear_refs`, which clears the soft-dirty bit of every page of the
//! **whole process** and write-protects it (so every page of the process, not only the tracked
//! region, takes one write fault after each re-arm). Harvest: read the region's
//! `/proc/self/pagemap` entries (8 bytes per page, bit 55 = soft-dirty) with one `pread`, copy
//! the pages whose bit is set, re-arm. Reading and clearing are two steps: a write landing
//! between them is lost (the benches write between harvests, on the same thread, so they never
//! race it).
//!
//! Needs `CONFIG_MEM_SOFT_DIRTY` (x86_64, powerpc, s390; not arm64): [`available`] says whether
//! this kernel has it. The development host's kernel does not; the Debian guest kernels of
//! `scripts/kernel-matrix` do (`scripts/bench-softdirty` runs the soft-dirty bench there).
//!
//! The region gets `MADV_NOHUGEPAGE` before it is populated: soft-dirty is tracked per huge page
//! on a transparent huge page (a one-byte write would report 512 pages), and the Debian guest
//! kernels default THP to `always`.

use crate::common::{self, page_size};
use crate::{mapped, Checkpoint, Peer};
use dirtytrack::sys::mem::{self, AnonMapping};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

/// Bit 55 of a `/proc/PID/pagemap` entry: the page is soft-dirty (Linux 3.11).
pub const PM_SOFT_DIRTY: u64 = 1 << 55;
/// `/proc/PID/clear_refs` command: clear the soft-dirty bits of the whole process.
const CLEAR_SOFT_DIRTY: &[u8] = b"4";

/// The two `/proc` files soft-dirty tracking needs, kept open.
struct Procfs {
    clear_refs: File,
    pagemap: File,
}

impl Procfs {
    fn open() -> Result<Procfs, String> {
        let clear_refs = OpenOptions::new()
            .write(true)
            .open("/proc/self/clear_refs")
            .map_err(|e| format!("cannot open /proc/self/clear_refs for writing: {e}"))?;
        let pagemap = File::open("/proc/self/pagemap")
            .map_err(|e| format!("cannot open /proc/self/pagemap: {e}"))?;
        Ok(Procfs {
            clear_refs,
            pagemap,
        })
    }

    /// Clears the soft-dirty bits of every page of the process (and write-protects them all).
    fn clear(&self) -> io::Result<()> {
        (&self.clear_refs).write_all(CLEAR_SOFT_DIRTY)
    }

    /// Reads the pagemap entries of the pages starting at `addr` into `buf` (8 bytes per page,
    /// native endian), in one `pread` (the kernel fills whole requests).
    fn read_entries(&self, addr: usize, buf: &mut [u8]) -> io::Result<()> {
        let offset = (addr / page_size()) as u64 * 8;
        self.pagemap.read_exact_at(buf, offset)
    }
}

/// The `i`-th pagemap entry in `buf`.
#[inline]
fn entry(buf: &[u8], i: usize) -> u64 {
    let mut e = [0u8; 8];
    e.copy_from_slice(&buf[i * 8..i * 8 + 8]);
    u64::from_ne_bytes(e)
}

/// Whether soft-dirty tracking works on this kernel, checked end to end on a two-page scratch
/// mapping: after a clear neither page is soft-dirty, after writing the first page only that
/// page is. `Err` says why not (the usual reason: a kernel built without `CONFIG_MEM_SOFT_DIRTY`,
/// on which the clear is accepted and does nothing, and bit 55 is never set).
///
/// Clears the soft-dirty bits of the whole process, like every use of soft-dirty.
pub fn available() -> Result<(), String> {
    let ps = page_size();
    let proc = Procfs::open()?;
    let m = AnonMapping::new(2 * ps).map_err(|e| format!("mmap of a scratch page: {e}"))?;
    mem::madvise(m.addr(), m.len(), mem::MADV_NOHUGEPAGE)
        .map_err(|e| format!("MADV_NOHUGEPAGE on a scratch page: {e}"))?;
    mem::madvise(m.addr(), m.len(), mem::MADV_POPULATE_WRITE)
        .map_err(|e| format!("MADV_POPULATE_WRITE on a scratch page: {e}"))?;
    let mut buf = [0u8; 16];
    proc.clear().map_err(|e| {
        format!("writing \"4\" (clear soft-dirty) to /proc/self/clear_refs failed: {e}")
    })?;
    proc.read_entries(m.addr(), &mut buf)
        .map_err(|e| format!("reading /proc/self/pagemap failed: {e}"))?;
    if (entry(&buf, 0) | entry(&buf, 1)) & PM_SOFT_DIRTY != 0 {
        return Err(format!(
            "soft-dirty bit 55 still set right after a clear (pagemap entries {:#x}, {:#x})",
            entry(&buf, 0),
            entry(&buf, 1)
        ));
    }
    common::touch(m.addr(), 1);
    proc.read_entries(m.addr(), &mut buf)
        .map_err(|e| format!("reading /proc/self/pagemap failed: {e}"))?;
    let (written, untouched) = (entry(&buf, 0), entry(&buf, 1));
    if written & PM_SOFT_DIRTY == 0 {
        return Err(format!(
            "a page written after clearing soft-dirty has no soft-dirty bit (pagemap bit 55; \
             entry {written:#x}): this kernel ({}) has no soft-dirty tracking \
             (CONFIG_MEM_SOFT_DIRTY is off, or the architecture lacks it)",
            kernel_release()
        ));
    }
    if untouched & PM_SOFT_DIRTY != 0 {
        return Err(format!(
            "an untouched page is soft-dirty after a clear (entry {untouched:#x}): soft-dirty \
             is not page-exact on this kernel"
        ));
    }
    Ok(())
}

/// `uname -r`, or a placeholder if it cannot be read.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("(unknown kernel: /proc/sys/kernel/osrelease: {e})"))
}

/// Soft-dirty tracking of its own region. Clearing resets the whole process: do not keep another
/// write-protection based peer alive at the same time, and expect every page of the process to
/// fault once after each harvest.
pub struct SoftDirty {
    proc: Procfs,
    /// The region's pagemap entries, read by each harvest (preallocated: 8 bytes per page).
    entries: Vec<u8>,
    mem: AnonMapping,
}

impl SoftDirty {
    /// Maps and populates `len` bytes (no THP) and clears soft-dirty. Panics with the reason if
    /// soft-dirty is unusable (see [`available`]).
    pub fn new(len: usize) -> SoftDirty {
        let proc = Procfs::open().unwrap_or_else(|e| panic!("soft_dirty: {e}"));
        let mem = common::map(len);
        mem::madvise(mem.addr(), mem.len(), mem::MADV_NOHUGEPAGE).expect("MADV_NOHUGEPAGE");
        common::populate(&mem);
        let entries = vec![0u8; len / page_size() * 8];
        proc.clear()
            .unwrap_or_else(|e| panic!("soft_dirty: clear via /proc/self/clear_refs: {e}"));
        SoftDirty { proc, entries, mem }
    }
}

impl Peer for SoftDirty {
    fn name(&self) -> &'static str {
        "soft_dirty"
    }
    fn mem(&self) -> &AnonMapping {
        &self.mem
    }
    fn harvest(&mut self, cp: &mut Checkpoint) {
        let ps = page_size();
        let pages = self.mem.len() / ps;
        self.proc
            .read_entries(self.mem.addr(), &mut self.entries)
            .unwrap_or_else(|e| panic!("soft_dirty: pread of /proc/self/pagemap: {e}"));
        let (base, bytes) = (self.mem.addr(), mapped(&self.mem));
        // One copy per run of soft-dirty pages, in address order.
        let mut i = 0;
        while i < pages {
            if entry(&self.entries, i) & PM_SOFT_DIRTY == 0 {
                i += 1;
                continue;
            }
            let start = i;
            while i < pages && entry(&self.entries, i) & PM_SOFT_DIRTY != 0 {
                i += 1;
            }
            cp.copy(&bytes[start * ps..i * ps], base + start * ps, ps);
        }
        self.proc
            .clear()
            .unwrap_or_else(|e| panic!("soft_dirty: re-arm via /proc/self/clear_refs: {e}"));
    }
}
