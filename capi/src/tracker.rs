//! Trackers and their builder: create, configure, register memory, collect.

use crate::args::{copy_items, Out, OutBuf};
use crate::dirty_set::{dirty_set, new_set};
use crate::error::{entry, fail, Res};
use crate::handles::{free, insert, lookup};
use crate::status::status;
use dirtytrack::{DirtySet, Error, Mode, Prefault, RangeId, RangeInfo, Thp, Tracker};
use libc::size_t;
use parking_lot::Mutex;
use std::ffi::c_void;
use std::sync::Arc;

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

/// Where a registered range lives now (`dt_tracker_range`, `dt_ranges`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct range_info {
    /// The range id.
    pub id: u64,
    /// Its current start address (it changes when `mremap` moves the memory).
    pub addr: usize,
    /// Its length in bytes.
    pub len: size_t,
    /// Its start address when it was registered.
    pub registered_addr: usize,
    /// True when its registration vanished (`DT_ERR_RANGE_LOST`): unregister it.
    pub lost: bool,
}

/// A tracker (opaque handle). Created by `dt_tracker_new*` or `dt_tracker_builder_build`, freed
/// by `dt_tracker_free`.
pub struct tracker {
    _opaque: [u8; 0],
}

/// A tracker's configuration (opaque handle). Created by `dt_tracker_builder_new`, freed by
/// `dt_tracker_builder_free`.
pub struct tracker_builder {
    _opaque: [u8; 0],
}

/// The options a builder handle holds; `TrackerBuilder` is made from them at build time.
#[derive(Default)]
pub(crate) struct BuilderObj {
    options: Mutex<Options>,
}

#[derive(Default, Clone, Copy)]
struct Options {
    mode: Mode,
    thp: Thp,
    prefault: Option<Prefault>,
}

fn invalid_value(value: i32, what: &str, choices: &str) -> Res<()> {
    Err(fail(
        status::DT_ERR_INVALID_ARGUMENT,
        format!("{value} is not a {what}: use {choices}"),
    ))
}

fn mode_from_c(m: i32) -> Res<Mode> {
    match m {
        0 => Ok(Mode::Auto),
        1 => Ok(Mode::Async),
        2 => Ok(Mode::Sync),
        _ => invalid_value(
            m,
            "dt_mode",
            "DT_MODE_AUTO (0), DT_MODE_ASYNC (1) or DT_MODE_SYNC (2)",
        )
        .map(|()| Mode::Auto),
    }
}

pub(crate) fn mode_to_c(m: Mode) -> mode {
    match m {
        Mode::Async => mode::DT_MODE_ASYNC,
        Mode::Sync => mode::DT_MODE_SYNC,
        _ => mode::DT_MODE_AUTO,
    }
}

pub(crate) fn prefault_to_c(p: Prefault) -> prefault {
    match p {
        Prefault::Unpopulated => prefault::DT_PREFAULT_UNPOPULATED,
        Prefault::PopulateRead => prefault::DT_PREFAULT_POPULATE_READ,
        Prefault::ReadTouch => prefault::DT_PREFAULT_READ_TOUCH,
    }
}

fn build(options: Options) -> Result<Tracker, Error> {
    let mut b = Tracker::builder().mode(options.mode).thp(options.thp);
    if let Some(p) = options.prefault {
        b = b.prefault(p);
    }
    b.build()
}

pub(crate) fn get_tracker(t: *const tracker) -> Res<Arc<Tracker>> {
    lookup(t)
}

fn get_builder(b: *const tracker_builder) -> Res<Arc<BuilderObj>> {
    lookup(b)
}

/// Stores a new tracker built from `options` in `out` (NULL on failure).
fn new_tracker(out: &Out<*mut tracker>, options: Options) -> Res<()> {
    out.set(std::ptr::null_mut());
    out.set(insert(build(options)?));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Builder
// ---------------------------------------------------------------------------------------------

/// Creates a tracker builder with the defaults (`DT_MODE_AUTO`, `DT_THP_LEAVE`,
/// `DT_PREFAULT_BEST`) and stores it in `*out`.
///
/// Ownership: on `DT_OK` the caller owns `*out` (`dt_tracker_builder_free`); on error `*out` is
/// NULL. Thread safety: any thread; a builder may be shared (its setters are serialized).
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `dt_tracker_builder *`.
#[no_mangle]
pub unsafe extern "C" fn dt_tracker_builder_new(out: *mut *mut tracker_builder) -> status {
    entry(|| {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(insert(BuilderObj::default()));
        Ok(())
    })
}

/// Sets the mode (a `dt_mode` value; default `DT_MODE_AUTO`).
///
/// Errors: `DT_ERR_INVALID_ARGUMENT` (not a `dt_mode`; the builder is unchanged), `DT_ERR_NULL`,
/// `DT_ERR_INVALID_HANDLE`.
///
/// # Safety
///
/// None: handles are validated, never dereferenced.
#[no_mangle]
pub extern "C" fn dt_tracker_builder_set_mode(b: *mut tracker_builder, mode: i32) -> status {
    entry(|| {
        let b = get_builder(b)?;
        b.options.lock().mode = mode_from_c(mode)?;
        Ok(())
    })
}

/// Sets what to do about transparent huge pages (a `dt_thp` value; default `DT_THP_LEAVE`).
///
/// Errors: `DT_ERR_INVALID_ARGUMENT` (not a `dt_thp`), `DT_ERR_NULL`, `DT_ERR_INVALID_HANDLE`.
///
/// # Safety
///
/// None: handles are validated, never dereferenced.
#[no_mangle]
pub extern "C" fn dt_tracker_builder_set_thp(b: *mut tracker_builder, thp: i32) -> status {
    entry(|| {
        let b = get_builder(b)?;
        b.options.lock().thp = match thp {
            0 => Thp::Leave,
            1 => Thp::Disable,
            _ => return invalid_value(thp, "dt_thp", "DT_THP_LEAVE (0) or DT_THP_DISABLE (1)"),
        };
        Ok(())
    })
}

/// Forces sync mode's never-touched-page strategy (a `dt_prefault` value; default
/// `DT_PREFAULT_BEST`, the best the kernel has). Asking for one the kernel lacks makes
/// `dt_tracker_builder_build` fail with `DT_ERR_UNSUPPORTED_KERNEL`. Ignored in async mode.
///
/// Errors: `DT_ERR_INVALID_ARGUMENT` (not a `dt_prefault`), `DT_ERR_NULL`,
/// `DT_ERR_INVALID_HANDLE`.
///
/// # Safety
///
/// None: handles are validated, never dereferenced.
#[no_mangle]
pub extern "C" fn dt_tracker_builder_set_prefault(
    b: *mut tracker_builder,
    prefault: i32,
) -> status {
    entry(|| {
        let b = get_builder(b)?;
        b.options.lock().prefault = match prefault {
            0 => None,
            1 => Some(Prefault::Unpopulated),
            2 => Some(Prefault::PopulateRead),
            3 => Some(Prefault::ReadTouch),
            _ => return invalid_value(
                prefault,
                "dt_prefault",
                "DT_PREFAULT_BEST (0), DT_PREFAULT_UNPOPULATED (1), DT_PREFAULT_POPULATE_READ (2) or DT_PREFAULT_READ_TOUCH (3)",
            ),
        };
        Ok(())
    })
}

/// Creates a tracker with the builder's options and stores it in `*out`. The builder is not
/// consumed: it may build more trackers, and is freed with `dt_tracker_builder_free`.
///
/// Errors: as `dt_tracker_new_with_mode`.
///
/// Ownership: on `DT_OK` the caller owns `*out` (`dt_tracker_free`); on error `*out` is NULL.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `dt_tracker *`.
#[no_mangle]
pub unsafe extern "C" fn dt_tracker_builder_build(
    b: *const tracker_builder,
    out: *mut *mut tracker,
) -> status {
    entry(|| {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(std::ptr::null_mut());
        let options = *get_builder(b)?.options.lock();
        new_tracker(&out, options)
    })
}

/// Frees a builder (trackers built from it are independent). NULL is accepted and ignored.
///
/// Errors: `DT_ERR_INVALID_HANDLE` (not a live builder; double frees are detected).
///
/// # Safety
///
/// None: handles are validated, never dereferenced.
#[no_mangle]
pub extern "C" fn dt_tracker_builder_free(b: *mut tracker_builder) -> status {
    free::<BuilderObj, _>(b)
}

// ---------------------------------------------------------------------------------------------
// Trackers
// ---------------------------------------------------------------------------------------------

/// Creates a tracker in `DT_MODE_AUTO` (async if the kernel has it, else sync) and stores its
/// handle in `*out`. See `dt_tracker_new_with_mode`.
///
/// Ownership: on `DT_OK` the caller owns `*out` and frees it with `dt_tracker_free`; on error
/// `*out` is set to NULL. Thread safety: any thread.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `dt_tracker *`.
#[no_mangle]
pub unsafe extern "C" fn dt_tracker_new(out: *mut *mut tracker) -> status {
    // SAFETY: same contract.
    unsafe { dt_tracker_new_with_mode(mode::DT_MODE_AUTO as i32, out) }
}

/// Creates a tracker in `mode` (a `dt_mode` value) with the other options at their defaults
/// (`dt_tracker_builder_new` sets them) and stores its handle in `*out`: probes the kernel,
/// opens the userfaultfd and starts the monitor thread.
///
/// Errors: `DT_ERR_INVALID_ARGUMENT` (not a `dt_mode`), `DT_ERR_UNSUPPORTED_KERNEL`,
/// `DT_ERR_PERMISSION` (no userfaultfd: see `dt_probe_capabilities`),
/// `DT_ERR_RESOURCE_EXHAUSTED`, `DT_ERR_KERNEL`, `DT_ERR_NULL`.
///
/// Ownership: on `DT_OK` the caller owns `*out` and frees it with `dt_tracker_free`; on error
/// `*out` is set to NULL. Several trackers may live in one process; each range belongs to one.
///
/// Thread safety: any thread. The tracker may then be used from any thread, concurrently.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `dt_tracker *`.
#[no_mangle]
pub unsafe extern "C" fn dt_tracker_new_with_mode(mode: i32, out: *mut *mut tracker) -> status {
    entry(|| {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(std::ptr::null_mut());
        let options = Options {
            mode: mode_from_c(mode)?,
            ..Options::default()
        };
        new_tracker(&out, options)
    })
}

/// Frees a tracker: un-protects and forgets every range, stops the monitor thread, closes the
/// userfaultfd. NULL is accepted and ignored (`DT_OK`), like `free(NULL)`.
///
/// Errors: `DT_ERR_INVALID_HANDLE` for a handle that is not a live tracker (a double free is
/// always detected: handles are never reused).
///
/// Ownership: the handle is invalid afterwards. Dirty sets, live snapshots and live copies
/// obtained from the tracker are independent handles and stay valid (a live snapshot still in
/// progress fails its `dt_live_snapshot_wait`).
///
/// Thread safety: any thread. Calls on the tracker still running in other threads finish
/// normally; the tracker is destroyed when the last of them returns. Later calls get
/// `DT_ERR_INVALID_HANDLE`.
///
/// # Safety
///
/// None: handles are validated, never dereferenced.
#[no_mangle]
pub extern "C" fn dt_tracker_free(t: *mut tracker) -> status {
    free::<Tracker, _>(t)
}

/// Stores the tracker's mode in `*out`: `DT_MODE_ASYNC` or `DT_MODE_SYNC`, never
/// `DT_MODE_AUTO`.
///
/// Ownership: borrows the tracker. Thread safety: any thread.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `dt_mode`.
#[no_mangle]
pub unsafe extern "C" fn dt_tracker_mode(t: *const tracker, out: *mut mode) -> status {
    entry(|| {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(mode::DT_MODE_AUTO);
        out.set(mode_to_c(get_tracker(t)?.mode()));
        Ok(())
    })
}

/// Starts tracking `[addr, addr + len)`, which must be page aligned and fully mapped; stores
/// the new range's id in `*out_range_id` (never 0). Every page counts as clean when this
/// returns. Registering never changes the memory's contents.
///
/// Errors: `DT_ERR_UNALIGNED`, `DT_ERR_ZERO_LENGTH`, `DT_ERR_ADDRESS_OVERFLOW`,
/// `DT_ERR_NOT_MAPPED`, `DT_ERR_OVERLAP`, `DT_ERR_OWNED_BY_ANOTHER_USERFAULTFD`,
/// `DT_ERR_MAPPING_NOT_SUPPORTED`, `DT_ERR_RESOURCE_EXHAUSTED`, `DT_ERR_POISONED`,
/// `DT_ERR_FORKED_CHILD`, `DT_ERR_NULL`, `DT_ERR_INVALID_HANDLE`.
///
/// Ownership: the memory stays the caller's; it must stay mapped until `dt_unregister` (if it
/// goes away, the range is reported lost: `DT_ERR_RANGE_LOST`). In sync mode, do not register
/// memory the allocator or the library writes (e.g. malloc heap pages): use memory you mapped.
///
/// Thread safety: any thread; registrations run one at a time.
///
/// # Safety
///
/// `out_range_id` must be NULL (an error) or valid for a write of a `uint64_t`. `addr` is not
/// dereferenced by this call; the library validates that the range is mapped.
#[no_mangle]
pub unsafe extern "C" fn dt_register(
    t: *mut tracker,
    addr: *mut c_void,
    len: size_t,
    out_range_id: *mut u64,
) -> status {
    entry(|| {
        // SAFETY: `out_range_id` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out_range_id, "out_range_id")? };
        out.set(0);
        let id = get_tracker(t)?.register(addr.cast(), len)?;
        out.set(id.to_raw());
        Ok(())
    })
}

/// Stops tracking a range: un-protects it and forgets its pending dirty pages. A lost range is
/// unregistered the same way.
///
/// Errors: `DT_ERR_UNKNOWN_RANGE`, `DT_ERR_POISONED`, `DT_ERR_FORKED_CHILD`, `DT_ERR_KERNEL`,
/// `DT_ERR_NULL`, `DT_ERR_INVALID_HANDLE`.
///
/// Ownership: the memory stays the caller's. Thread safety: any thread; serialized with
/// collects, peeks and clears.
///
/// # Safety
///
/// None: handles are validated, never dereferenced.
#[no_mangle]
pub extern "C" fn dt_unregister(t: *mut tracker, range_id: u64) -> status {
    entry(|| Ok(get_tracker(t)?.unregister(RangeId::from_raw(range_id))?))
}

fn range_info_of(info: &RangeInfo) -> range_info {
    range_info {
        id: info.id.to_raw(),
        addr: info.addr,
        len: info.len,
        registered_addr: info.registered_addr,
        lost: info.lost.is_some(),
    }
}

/// Stores in `*out_info` where a range lives now (after `mremap` its address changes) and
/// whether it is lost.
///
/// Errors: `DT_ERR_UNKNOWN_RANGE`, `DT_ERR_POISONED`, `DT_ERR_FORKED_CHILD`, `DT_ERR_NULL`,
/// `DT_ERR_INVALID_HANDLE`.
///
/// Ownership: `*out_info` is a plain struct, the caller's. Thread safety: any thread.
///
/// # Safety
///
/// `out_info` must be NULL (an error) or valid for a write of a `dt_range_info`.
#[no_mangle]
pub unsafe extern "C" fn dt_tracker_range(
    t: *const tracker,
    range_id: u64,
    out_info: *mut range_info,
) -> status {
    entry(|| {
        // SAFETY: `out_info` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out_info, "out_info")? };
        let info = get_tracker(t)?.range(RangeId::from_raw(range_id))?;
        out.set(range_info_of(&info));
        Ok(())
    })
}

/// Lists every registered range, in registration order: copies the first `cap` of them into
/// `buf` and stores how many there are in `*out_count`. If `cap` is smaller than that count,
/// the first `cap` are written and `DT_ERR_BUFFER_TOO_SMALL` is returned: call again with
/// `*out_count` entries. Pass `buf = NULL, cap = 0` to ask the count.
///
/// Errors: `DT_ERR_BUFFER_TOO_SMALL`, `DT_ERR_NULL`, `DT_ERR_INVALID_HANDLE`.
///
/// Ownership: `buf` stays the caller's. Thread safety: any thread; the list is as of the call
/// (another thread may register or unregister right after).
///
/// # Safety
///
/// `buf` must be valid for writes of `cap` `dt_range_info`s (it may be NULL when `cap` is 0);
/// `out_count` must be NULL (an error) or valid for a write of a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn dt_ranges(
    t: *const tracker,
    buf: *mut range_info,
    cap: size_t,
    out_count: *mut size_t,
) -> status {
    entry(|| {
        // SAFETY: the caller guarantees `buf` is valid for `cap` elements and `out_count` is
        // NULL or valid (this function's contract).
        let (count, buf) = unsafe {
            (
                Out::new(out_count, "out_count")?,
                OutBuf::new(buf, cap, "buf")?,
            )
        };
        count.set(0);
        let ranges = get_tracker(t)?.ranges();
        copy_items(ranges.iter().map(range_info_of).collect(), &buf, &count)
    })
}

/// The shared body of the collect and peek functions.
///
/// # Safety
///
/// `out` is NULL or valid for a write of a `dt_dirty_set *`.
unsafe fn harvest_into(
    t: *const tracker,
    out: *mut *mut dirty_set,
    op: impl FnOnce(&Tracker) -> Result<DirtySet, Error>,
) -> status {
    entry(|| {
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { Out::new(out, "out")? };
        out.set(std::ptr::null_mut());
        let set = op(&*get_tracker(t)?)?;
        out.set(new_set(set));
        Ok(())
    })
}

/// Collects: stores in `*out` a new set of the pages written since the last collect or clear
/// (or register), in all ranges, and resets them to clean, atomically per page (a write racing
/// the collect is reported by this collect or the next, never by neither).
///
/// Errors: `DT_ERR_RANGE_LOST` (unregister that range; nothing was lost for the others),
/// `DT_ERR_POISONED`, `DT_ERR_FORKED_CHILD`, `DT_ERR_KERNEL`, `DT_ERR_SCAN_NO_PROGRESS`,
/// `DT_ERR_RESOURCE_EXHAUSTED`, `DT_ERR_NULL`, `DT_ERR_INVALID_HANDLE`. On error nothing is
/// lost: what was taken from the kernel is reported by the next successful collect.
///
/// Ownership: on `DT_OK` the caller owns `*out` (free it with `dt_dirty_set_free`); on error
/// `*out` is NULL. If dumping the set fails, merge it into the next one (`dt_dirty_set_union`).
///
/// Thread safety: any thread; collects, peeks, clears and unregisters run one at a time.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `dt_dirty_set *`.
#[no_mangle]
pub unsafe extern "C" fn dt_collect(t: *mut tracker, out: *mut *mut dirty_set) -> status {
    // SAFETY: same contract.
    unsafe { harvest_into(t, out, Tracker::collect) }
}

/// Like `dt_collect` but resets nothing: the pages written since the last collect or clear.
///
/// Ownership: on `DT_OK` the caller owns `*out` (`dt_dirty_set_free`); on error `*out` is NULL.
/// Thread safety: any thread.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `dt_dirty_set *`.
#[no_mangle]
pub unsafe extern "C" fn dt_peek(t: *const tracker, out: *mut *mut dirty_set) -> status {
    // SAFETY: same contract.
    unsafe { harvest_into(t, out, Tracker::peek) }
}

/// Resets every range to clean without reporting.
///
/// Errors: as `dt_collect`. Ownership: borrows the tracker. Thread safety: any thread.
///
/// # Safety
///
/// None: handles are validated, never dereferenced.
#[no_mangle]
pub extern "C" fn dt_clear(t: *mut tracker) -> status {
    entry(|| Ok(get_tracker(t)?.clear()?))
}

/// `dt_collect` for one range (`DT_ERR_UNKNOWN_RANGE` if the id is not registered).
///
/// Ownership: on `DT_OK` the caller owns `*out` (`dt_dirty_set_free`); on error `*out` is NULL.
/// Thread safety: any thread.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `dt_dirty_set *`.
#[no_mangle]
pub unsafe extern "C" fn dt_collect_range(
    t: *mut tracker,
    range_id: u64,
    out: *mut *mut dirty_set,
) -> status {
    // SAFETY: same contract.
    unsafe { harvest_into(t, out, |t| t.collect_range(RangeId::from_raw(range_id))) }
}

/// `dt_peek` for one range (`DT_ERR_UNKNOWN_RANGE` if the id is not registered).
///
/// Ownership: on `DT_OK` the caller owns `*out` (`dt_dirty_set_free`); on error `*out` is NULL.
/// Thread safety: any thread.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `dt_dirty_set *`.
#[no_mangle]
pub unsafe extern "C" fn dt_peek_range(
    t: *const tracker,
    range_id: u64,
    out: *mut *mut dirty_set,
) -> status {
    // SAFETY: same contract.
    unsafe { harvest_into(t, out, |t| t.peek_range(RangeId::from_raw(range_id))) }
}

/// `dt_clear` for one range (`DT_ERR_UNKNOWN_RANGE` if the id is not registered).
///
/// Ownership: borrows the tracker. Thread safety: any thread.
///
/// # Safety
///
/// None: handles are validated, never dereferenced.
#[no_mangle]
pub extern "C" fn dt_clear_range(t: *mut tracker, range_id: u64) -> status {
    entry(|| Ok(get_tracker(t)?.clear_range(RangeId::from_raw(range_id))?))
}

/// Records `[addr, addr + len)` as changed: the next collect (or peek) reports every page
/// it overlaps, in addition to what the page tables show. For changes page tables cannot show:
/// a direct-I/O read (`O_DIRECT`, io_uring or AIO on an `O_DIRECT` file, RDMA: anything that
/// pins the buffer and writes it later) that was in flight across a collect, or a write through
/// another mapping of shared memory or through its file descriptor. Call it once such a write
/// has completed. `addr` and `len` need not be page aligned (every page the span touches is
/// marked); `len` 0 does nothing. Cheap (a lock and a few atomic ORs): fine for every I/O
/// completion.
///
/// Errors: `DT_ERR_NOT_TRACKED` (part of the span is in no registered range; nothing was
/// marked), `DT_ERR_ADDRESS_OVERFLOW`, `DT_ERR_RANGE_LOST` (its pages are already reported),
/// `DT_ERR_POISONED`, `DT_ERR_FORKED_CHILD`, `DT_ERR_NULL`, `DT_ERR_INVALID_HANDLE`.
///
/// Ownership: `addr` is not dereferenced; the memory stays the caller's. Thread safety: any
/// thread, concurrently with collects (a mark racing a collect is reported by it or the next).
///
/// # Safety
///
/// None: handles are validated, never dereferenced; `addr` is only compared with the
/// registered ranges.
#[no_mangle]
pub extern "C" fn dt_mark_dirty(t: *mut tracker, addr: *const c_void, len: size_t) -> status {
    entry(|| Ok(get_tracker(t)?.mark_dirty(addr.cast(), len)?))
}
