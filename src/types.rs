//! The plain types every layer shares: what a tracker is asked to do ([`Mode`], [`Thp`],
//! [`Prefault`]), what it hands out ([`RangeId`]), and what it learns about memory
//! ([`Backing`], [`FdSource`]). No behaviour beyond describing themselves; nothing here depends
//! on any other module of the crate, so every layer above can use them without a cycle.

use std::fmt;

/// How write faults are resolved.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Async when the kernel has it (6.7+), else sync.
    #[default]
    Auto,
    /// `UFFD_FEATURE_WP_ASYNC` + `PAGEMAP_SCAN` (Linux 6.7+): the kernel resolves write faults
    /// itself; a collect is one page-table walk. No thread, no blocked writer.
    Async,
    /// A monitor thread records each first write after a collect and lets it through
    /// (Linux 5.7+). Costs a round trip per first write; needs a full (not user-mode-only)
    /// userfaultfd.
    Sync,
}

/// What to do about transparent huge pages in registered ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Thp {
    /// Leave THP as the system and the mapping have it. A first write to a protected huge page
    /// splits it; dirty pages are still reported at base-page granularity.
    #[default]
    Leave,
    /// `madvise(MADV_NOHUGEPAGE)` each range on register, so it is never collapsed into huge
    /// pages (no splits on first write; `MADV_COLLAPSE` fails on protected ranges anyway).
    Disable,
}

/// What backs a registered range, and so which changes page-table tracking cannot see.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// `MAP_PRIVATE | MAP_ANONYMOUS` (or the heap, stacks): tracked exactly.
    PrivateAnonymous,
    /// `MAP_SHARED` memory (shared anonymous, memfd, shmem, a shared file mapping): writes
    /// through another mapping, another process, or the fd (`pwrite`, `fallocate`, `ftruncate`)
    /// are NOT seen.
    Shared,
    /// A private mapping of a file or memfd: this process's writes are seen; changes to the
    /// file's pages not yet copied privately (`pwrite` to the file) are NOT seen.
    PrivateFile,
    /// hugetlbfs: tracked per huge page (a one-byte write reports the whole huge page).
    Hugetlb {
        /// The huge page size in bytes.
        page_size: usize,
    },
    /// Several kinds of mapping in one range.
    Mixed,
}

impl Backing {
    /// The changes to such memory that no page-table tracker sees (the README's tracking
    /// contract); empty for private anonymous memory.
    pub fn blind_spots(&self) -> &'static [&'static str] {
        match self {
            Backing::PrivateAnonymous => &[],
            Backing::Shared | Backing::Mixed => &[
                "writes through another mapping of the same memory or by another process",
                "writes through the file descriptor (pwrite, write, copy_file_range)",
                "fallocate(PUNCH_HOLE) and ftruncate of the backing object",
            ],
            Backing::PrivateFile => &[
                "changes to the file (pwrite, another process) in pages not yet written privately",
            ],
            Backing::Hugetlb { .. } => &[
                "writes through another mapping of the same hugetlbfs file, or by another process",
            ],
        }
    }
}

/// A registered range. `Copy`, cheap, and only meaningful to the tracker that returned it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RangeId(pub(crate) u64);

impl RangeId {
    /// The id as a number (never 0), for bindings and logs: the C API's `uint64_t` range ids.
    pub fn to_raw(self) -> u64 {
        self.0
    }

    /// The id numbered `raw`. Any number is accepted: one that this tracker did not return is
    /// reported as [`Error::UnknownRange`](crate::Error::UnknownRange) by the call that uses it.
    pub fn from_raw(raw: u64) -> RangeId {
        RangeId(raw)
    }
}

impl fmt::Debug for RangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RangeId({})", self.0)
    }
}

/// Where a userfaultfd came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdSource {
    /// The `userfaultfd(2)` system call.
    Syscall,
    /// `/dev/userfaultfd` with `USERFAULTFD_IOC_NEW` (6.1+).
    DevUserfaultfd,
}

/// How sync mode makes sure the first write to a never-touched page faults.
///
/// Write-protecting a range only protects pages that have a page-table entry; without one of
/// these, the first write to a page never touched before protection is not seen
/// (docs/kernel-facts.md, "Never-touched pages": 22 of 22 lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefault {
    /// `UFFD_FEATURE_WP_UNPOPULATED` (6.4+): the kernel installs markers in empty entries.
    Unpopulated,
    /// `madvise(MADV_POPULATE_READ)` (5.14+) before protecting: maps the zero page, no RSS growth.
    PopulateRead,
    /// Read one byte of every page before protecting (5.7–5.13).
    ReadTouch,
}

impl Prefault {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Prefault::Unpopulated => "UFFD_FEATURE_WP_UNPOPULATED (6.4+) protects never-touched pages",
            Prefault::PopulateRead => "MADV_POPULATE_READ (5.14+) maps never-touched pages before protecting (WP_UNPOPULATED missing)",
            Prefault::ReadTouch => "one byte of each page is read before protecting (no WP_UNPOPULATED, no MADV_POPULATE_READ)",
        }
    }
}
