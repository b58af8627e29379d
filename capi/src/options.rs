//! The option enums, `dt_mode`, `dt_thp` and `dt_prefault`, and their conversions to and from
//! the library's `Mode`, `Thp` and `Prefault`. Plain values: this module uses no other module of
//! the crate (the builder, the tracker, the capabilities and the error messages all use it).

use dirtytrack::{Mode, Prefault, Thp};

/// How write faults are resolved. Passed as an `int32_t` (so an out-of-range value is an
/// error, not undefined behaviour); `dt_tracker_mode` reports `DT_MODE_ASYNC` or
/// `DT_MODE_SYNC`, never `DT_MODE_AUTO`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum mode {
    /// Async when the kernel has it (Linux 6.7+), else sync.
    DT_MODE_AUTO = 0,
    /// `UFFD_FEATURE_WP_ASYNC` + `PAGEMAP_SCAN` (Linux 6.7+): no thread, no blocked writer.
    DT_MODE_ASYNC = 1,
    /// A monitor thread records each first write after a collect (Linux 5.7+).
    DT_MODE_SYNC = 2,
}

/// What to do about transparent huge pages in registered ranges
/// (`dt_tracker_builder_set_thp`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum thp {
    /// Leave THP as the system and the mapping have it (the default). A first write to a
    /// protected huge page splits it; dirty pages are still reported per base page.
    DT_THP_LEAVE = 0,
    /// `madvise(MADV_NOHUGEPAGE)` each range on register: never collapsed into huge pages.
    DT_THP_DISABLE = 1,
}

/// How sync mode makes the first write to a never-touched page fault
/// (`dt_tracker_builder_set_prefault`; `dt_capabilities.prefault` is the best one the kernel
/// has). Async mode needs none.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum prefault {
    /// The best the kernel has (the default).
    DT_PREFAULT_BEST = 0,
    /// `UFFD_FEATURE_WP_UNPOPULATED` (6.4+): the kernel protects empty page-table entries.
    DT_PREFAULT_UNPOPULATED = 1,
    /// `madvise(MADV_POPULATE_READ)` (5.14+) before protecting: maps the zero page.
    DT_PREFAULT_POPULATE_READ = 2,
    /// Read one byte of every page before protecting (5.7-5.13).
    DT_PREFAULT_READ_TOUCH = 3,
}

/// The accepted `dt_mode` values, for error messages.
pub(crate) const MODE_CHOICES: &str = "DT_MODE_AUTO (0), DT_MODE_ASYNC (1) or DT_MODE_SYNC (2)";
/// The accepted `dt_thp` values, for error messages.
pub(crate) const THP_CHOICES: &str = "DT_THP_LEAVE (0) or DT_THP_DISABLE (1)";
/// The accepted `dt_prefault` values, for error messages.
pub(crate) const PREFAULT_CHOICES: &str = "DT_PREFAULT_BEST (0), DT_PREFAULT_UNPOPULATED (1), DT_PREFAULT_POPULATE_READ (2) or DT_PREFAULT_READ_TOUCH (3)";

/// The mode a `dt_mode` value stands for (`None`: not a `dt_mode`).
pub(crate) fn mode_from_c(m: i32) -> Option<Mode> {
    match m {
        0 => Some(Mode::Auto),
        1 => Some(Mode::Async),
        2 => Some(Mode::Sync),
        _ => None,
    }
}

/// The THP policy a `dt_thp` value stands for (`None`: not a `dt_thp`).
pub(crate) fn thp_from_c(t: i32) -> Option<Thp> {
    match t {
        0 => Some(Thp::Leave),
        1 => Some(Thp::Disable),
        _ => None,
    }
}

/// The strategy a `dt_prefault` value stands for: `Some(None)` is `DT_PREFAULT_BEST` (the
/// library's default), `None` not a `dt_prefault`.
pub(crate) fn prefault_from_c(p: i32) -> Option<Option<Prefault>> {
    match p {
        0 => Some(None),
        1 => Some(Some(Prefault::Unpopulated)),
        2 => Some(Some(Prefault::PopulateRead)),
        3 => Some(Some(Prefault::ReadTouch)),
        _ => None,
    }
}

/// The `dt_mode` of a library mode (`Mode` is `#[non_exhaustive]`: a mode added later reads as
/// `DT_MODE_AUTO` until it gets a constant).
pub(crate) fn mode_to_c(m: Mode) -> mode {
    match m {
        Mode::Async => mode::DT_MODE_ASYNC,
        Mode::Sync => mode::DT_MODE_SYNC,
        _ => mode::DT_MODE_AUTO,
    }
}

/// The `dt_prefault` of a library strategy.
pub(crate) fn prefault_to_c(p: Prefault) -> prefault {
    match p {
        Prefault::Unpopulated => prefault::DT_PREFAULT_UNPOPULATED,
        Prefault::PopulateRead => prefault::DT_PREFAULT_POPULATE_READ,
        Prefault::ReadTouch => prefault::DT_PREFAULT_READ_TOUCH,
    }
}
