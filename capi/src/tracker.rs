//! Trackers (`dt_tracker`): create, register memory, collect, peek, clear, mark dirty, list
//! ranges, report capabilities, start live snapshots. Every function taking a `dt_tracker *` is
//! here, named `dt_tracker_<method>` after the Rust `Tracker` method it calls. Uses the objects
//! it creates ([`crate::dirty_set`], [`crate::live`]) and [`crate::capabilities`]; the builder
//! ([`crate::builder`]) uses this module, not the other way round.

use crate::args::{copy_items, enum_arg, Out, OutBuf};
use crate::capabilities::{capabilities, to_c, write_report};
use crate::dirty_set::{dirty_set, new_set};
use crate::error::{entry, Res};
use crate::handles::{free, insert, lookup, Handle};
use crate::live::{live_snapshot, new_snapshot};
use crate::message::report;
use crate::options::{mode, mode_from_c, mode_to_c, MODE_CHOICES};
use crate::status::status;
use dirtytrack::{DirtySet, Error, RangeId, RangeInfo, Tracker, TrackerBuilder};
use libc::size_t;
use std::ffi::{c_char, c_void};
use std::sync::Arc;

/// Where a registered range lives now (`dt_tracker_range`, `dt_tracker_ranges`).
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

impl Handle for Tracker {
    const C_NAME: &'static str = "dt_tracker";
}

pub(crate) fn get_tracker(t: *const tracker) -> Res<Arc<Tracker>> {
    lookup(t)
}

/// Builds a tracker and stores its handle in `out` (NULL on failure).
pub(crate) fn new_tracker(out: &Out<*mut tracker>, builder: TrackerBuilder) -> Res<()> {
    out.set(std::ptr::null_mut());
    out.set(insert(builder.build()?));
    Ok(())
}

/// The body of `dt_tracker_new` and `dt_tracker_new_with_mode`, failing as `func`.
///
/// # Safety
///
/// `out` is NULL or valid for a write of a `dt_tracker *`.
unsafe fn new_with_mode(func: &str, mode: i32, out: *mut *mut tracker) -> status {
    entry(func, || {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(std::ptr::null_mut());
        let mode = enum_arg(mode, mode_from_c(mode), "dt_mode", MODE_CHOICES)?;
        new_tracker(&out, Tracker::builder().mode(mode))
    })
}

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
    unsafe { new_with_mode("dt_tracker_new", mode::DT_MODE_AUTO as i32, out) }
}

/// Creates a tracker in `mode` (a `dt_mode` value) with the other options at their defaults
/// (`dt_tracker_builder_new` sets them) and stores its handle in `*out`: probes the kernel,
/// opens the userfaultfd and starts the monitor thread.
///
/// Errors: `DT_ERR_INVALID_ARGUMENT` (not a `dt_mode`), `DT_ERR_UNSUPPORTED_KERNEL`,
/// `DT_ERR_PERMISSION` (no userfaultfd: see `dt_capabilities_probe`),
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
    // SAFETY: same contract.
    unsafe { new_with_mode("dt_tracker_new_with_mode", mode, out) }
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
    free::<Tracker, _>("dt_tracker_free", t)
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
    entry("dt_tracker_mode", || {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(mode::DT_MODE_AUTO);
        out.set(mode_to_c(get_tracker(t)?.mode()));
        Ok(())
    })
}

/// Stores in `*out` what the kernel offered when the tracker was built.
///
/// Errors: `DT_ERR_NULL`, `DT_ERR_INVALID_HANDLE`.
///
/// Ownership: `*out` is a plain struct, the caller's. Thread safety: any thread.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `dt_capabilities`.
#[no_mangle]
pub unsafe extern "C" fn dt_tracker_capabilities(
    t: *const tracker,
    out: *mut capabilities,
) -> status {
    entry("dt_tracker_capabilities", || {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(to_c(get_tracker(t)?.capabilities()));
        Ok(())
    })
}

/// Writes the tracker's capability report (what the kernel offered when the tracker was
/// built, and why this mode was chosen; several lines of text) into `buf`, NUL-terminated.
/// Buffer rules as `dt_capabilities_probe_report` (pass `buf = NULL, cap = 0` to ask the
/// size; `DT_ERR_BUFFER_TOO_SMALL` when it does not fit).
///
/// Ownership: `buf` stays the caller's (no string is allocated for the caller to free).
/// Thread safety: any thread.
///
/// # Safety
///
/// `buf` must be valid for writes of `cap` bytes (it may be NULL when `cap` is 0);
/// `out_needed` must be NULL or valid for a write of a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn dt_tracker_capabilities_report(
    t: *const tracker,
    buf: *mut c_char,
    cap: size_t,
    out_needed: *mut size_t,
) -> status {
    let text = || Ok(report(get_tracker(t)?.capabilities()));
    // SAFETY: same contract.
    unsafe { write_report("dt_tracker_capabilities_report", text, buf, cap, out_needed) }
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
/// Ownership: the memory stays the caller's; it must stay mapped until `dt_tracker_unregister` (if it
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
pub unsafe extern "C" fn dt_tracker_register(
    t: *mut tracker,
    addr: *mut c_void,
    len: size_t,
    out_range_id: *mut u64,
) -> status {
    entry("dt_tracker_register", || {
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
pub extern "C" fn dt_tracker_unregister(t: *mut tracker, range_id: u64) -> status {
    entry("dt_tracker_unregister", || {
        Ok(get_tracker(t)?.unregister(RangeId::from_raw(range_id))?)
    })
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
    entry("dt_tracker_range", || {
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
pub unsafe extern "C" fn dt_tracker_ranges(
    t: *const tracker,
    buf: *mut range_info,
    cap: size_t,
    out_count: *mut size_t,
) -> status {
    entry("dt_tracker_ranges", || {
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
    func: &str,
    t: *const tracker,
    out: *mut *mut dirty_set,
    op: impl FnOnce(&Tracker) -> Result<DirtySet, Error>,
) -> status {
    entry(func, || {
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
pub unsafe extern "C" fn dt_tracker_collect(t: *mut tracker, out: *mut *mut dirty_set) -> status {
    // SAFETY: same contract.
    unsafe { harvest_into("dt_tracker_collect", t, out, Tracker::collect) }
}

/// Like `dt_tracker_collect` but resets nothing: the pages written since the last collect or clear.
///
/// Ownership: on `DT_OK` the caller owns `*out` (`dt_dirty_set_free`); on error `*out` is NULL.
/// Thread safety: any thread.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `dt_dirty_set *`.
#[no_mangle]
pub unsafe extern "C" fn dt_tracker_peek(t: *const tracker, out: *mut *mut dirty_set) -> status {
    // SAFETY: same contract.
    unsafe { harvest_into("dt_tracker_peek", t, out, Tracker::peek) }
}

/// Resets every range to clean without reporting.
///
/// Errors: as `dt_tracker_collect`. Ownership: borrows the tracker. Thread safety: any thread.
///
/// # Safety
///
/// None: handles are validated, never dereferenced.
#[no_mangle]
pub extern "C" fn dt_tracker_clear(t: *mut tracker) -> status {
    entry("dt_tracker_clear", || Ok(get_tracker(t)?.clear()?))
}

/// `dt_tracker_collect` for one range (`DT_ERR_UNKNOWN_RANGE` if the id is not registered).
///
/// Ownership: on `DT_OK` the caller owns `*out` (`dt_dirty_set_free`); on error `*out` is NULL.
/// Thread safety: any thread.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `dt_dirty_set *`.
#[no_mangle]
pub unsafe extern "C" fn dt_tracker_collect_range(
    t: *mut tracker,
    range_id: u64,
    out: *mut *mut dirty_set,
) -> status {
    // SAFETY: same contract.
    unsafe {
        harvest_into("dt_tracker_collect_range", t, out, |t| {
            t.collect_range(RangeId::from_raw(range_id))
        })
    }
}

/// `dt_tracker_peek` for one range (`DT_ERR_UNKNOWN_RANGE` if the id is not registered).
///
/// Ownership: on `DT_OK` the caller owns `*out` (`dt_dirty_set_free`); on error `*out` is NULL.
/// Thread safety: any thread.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `dt_dirty_set *`.
#[no_mangle]
pub unsafe extern "C" fn dt_tracker_peek_range(
    t: *const tracker,
    range_id: u64,
    out: *mut *mut dirty_set,
) -> status {
    // SAFETY: same contract.
    unsafe {
        harvest_into("dt_tracker_peek_range", t, out, |t| {
            t.peek_range(RangeId::from_raw(range_id))
        })
    }
}

/// `dt_tracker_clear` for one range (`DT_ERR_UNKNOWN_RANGE` if the id is not registered).
///
/// Ownership: borrows the tracker. Thread safety: any thread.
///
/// # Safety
///
/// None: handles are validated, never dereferenced.
#[no_mangle]
pub extern "C" fn dt_tracker_clear_range(t: *mut tracker, range_id: u64) -> status {
    entry("dt_tracker_clear_range", || {
        Ok(get_tracker(t)?.clear_range(RangeId::from_raw(range_id))?)
    })
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
pub extern "C" fn dt_tracker_mark_dirty(
    t: *mut tracker,
    addr: *const c_void,
    len: size_t,
) -> status {
    entry("dt_tracker_mark_dirty", || {
        Ok(get_tracker(t)?.mark_dirty(addr.cast(), len)?)
    })
}

/// Starts a consistent live snapshot of range `range_id` (sync-mode trackers): a copy of its
/// contents as of one instant, made while the program keeps writing. Returns at the instant;
/// the copy completes in the background. The instant acts as a collect of this range.
///
/// Errors: `DT_ERR_NEEDS_SYNC_MODE`, `DT_ERR_UNKNOWN_RANGE`, `DT_ERR_SNAPSHOT_IN_PROGRESS`,
/// `DT_ERR_RESOURCE_EXHAUSTED` (the copy needs as much memory as the range),
/// `DT_ERR_POISONED`, `DT_ERR_FORKED_CHILD`, `DT_ERR_KERNEL`, `DT_ERR_NULL`,
/// `DT_ERR_INVALID_HANDLE`.
///
/// Ownership: on `DT_OK` the caller owns `*out`: pass it to `dt_live_snapshot_wait` (which
/// consumes it) or `dt_live_snapshot_free`. On error `*out` is NULL.
///
/// Thread safety: any thread.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `dt_live_snapshot *`.
#[no_mangle]
pub unsafe extern "C" fn dt_tracker_live_snapshot(
    t: *mut tracker,
    range_id: u64,
    out: *mut *mut live_snapshot,
) -> status {
    entry("dt_tracker_live_snapshot", || {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(std::ptr::null_mut());
        let snap = get_tracker(t)?.live_snapshot(RangeId::from_raw(range_id))?;
        out.set(new_snapshot(snap));
        Ok(())
    })
}
