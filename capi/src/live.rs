//! Live snapshots (sync-mode trackers): a consistent copy of a range made while the program
//! keeps writing (`dt_live_snapshot`, started by `dt_tracker_live_snapshot`), and the copy it
//! produces (`dt_live_copy`). The two are one object in its two states: the snapshot in
//! progress becomes the copy when waited on.

use crate::args::Out;
use crate::dirty_set::{dirty_set, new_set};
use crate::error::{entry, fail, Res};
use crate::handles::{free, insert, lookup, take, Handle};
use crate::status::status;
use dirtytrack::{LiveCopy, LiveSnapshot};
use libc::size_t;
use parking_lot::Mutex;
use std::sync::Arc;

/// A live snapshot in progress (opaque handle). Created by `dt_tracker_live_snapshot`; consumed by
/// `dt_live_snapshot_wait` or freed by `dt_live_snapshot_free`.
pub struct live_snapshot {
    _opaque: [u8; 0],
}

/// The result of a live snapshot (opaque handle). Created by `dt_live_snapshot_wait`, freed by
/// `dt_live_copy_free`.
pub struct live_copy {
    _opaque: [u8; 0],
}

/// A live copy handle's object. The copy is behind a lock because committing it mutates it.
pub(crate) struct CopyObj {
    copy: Mutex<LiveCopy>,
}

impl Handle for CopyObj {
    const C_NAME: &'static str = "dt_live_copy";
}

fn get_copy(c: *const live_copy) -> Res<Arc<CopyObj>> {
    lookup(c)
}

/// A live snapshot handle's object: the snapshot until `dt_live_snapshot_wait` takes it.
pub(crate) struct LiveObj {
    snapshot: Mutex<Option<LiveSnapshot>>,
}

impl Handle for LiveObj {
    const C_NAME: &'static str = "dt_live_snapshot";
}

/// Registers a snapshot just started and returns its handle.
pub(crate) fn new_snapshot(snap: LiveSnapshot) -> *mut live_snapshot {
    insert(LiveObj {
        snapshot: Mutex::new(Some(snap)),
    })
}

/// Stores the number of pages copied so far and the total in `*out_copied` and `*out_total`
/// (either may be NULL).
///
/// Ownership: borrows the snapshot. Thread safety: any thread.
///
/// # Safety
///
/// `out_copied` and `out_total` must each be NULL or valid for a write of a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn dt_live_snapshot_progress(
    s: *const live_snapshot,
    out_copied: *mut size_t,
    out_total: *mut size_t,
) -> status {
    entry("dt_live_snapshot_progress", || {
        // SAFETY: each is NULL or valid for a write (this function's contract).
        let (copied, total) = unsafe {
            (
                Out::optional(out_copied, "out_copied")?,
                Out::optional(out_total, "out_total")?,
            )
        };
        let live = lookup::<LiveObj, _>(s)?;
        let guard = live.snapshot.lock();
        let (c, t) = guard.as_ref().map_or((0, 0), LiveSnapshot::progress);
        if let Some(o) = copied {
            o.set(c);
        }
        if let Some(o) = total {
            o.set(t);
        }
        Ok(())
    })
}

/// Waits for the background copy and stores the result in `*out`, or fails with the reason it
/// is not consistent (`DT_ERR_LIVE_SNAPSHOT_FAILED`: take it again; nothing was lost from
/// dirty tracking).
///
/// Ownership: **consumes `s`**: after any return other than `DT_ERR_NULL` and
/// `DT_ERR_INVALID_HANDLE` the snapshot handle is freed (success or not); with those two it is
/// untouched. On `DT_OK` the caller owns `*out`: store the copy, `dt_live_copy_commit` it, then
/// `dt_live_copy_free` it (freed uncommitted, it hands the pre-instant pages back to the
/// tracker); otherwise `*out` is NULL.
///
/// Thread safety: any thread. If two threads wait on the same snapshot, one gets the copy and
/// the other `DT_ERR_INVALID_HANDLE`.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `dt_live_copy *`.
#[no_mangle]
pub unsafe extern "C" fn dt_live_snapshot_wait(
    s: *mut live_snapshot,
    out: *mut *mut live_copy,
) -> status {
    entry("dt_live_snapshot_wait", || {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(std::ptr::null_mut());
        let live = take::<LiveObj, _>(s)?;
        let snap = live.snapshot.lock().take();
        let snap = snap.ok_or_else(|| {
            fail(
                status::DT_ERR_INVALID_HANDLE,
                "this dt_live_snapshot was already waited on",
            )
        })?;
        let copy = snap.wait()?;
        out.set(insert(CopyObj {
            copy: Mutex::new(copy),
        }));
        Ok(())
    })
}

/// Abandons a live snapshot: waits for the background copy and discards it. NULL is accepted
/// and ignored (`DT_OK`).
///
/// Errors: `DT_ERR_INVALID_HANDLE` (not a live snapshot, already waited on or freed).
///
/// Ownership: the handle is invalid afterwards. Thread safety: any thread.
///
/// # Safety
///
/// None: handles are validated, never dereferenced.
#[no_mangle]
pub extern "C" fn dt_live_snapshot_free(s: *mut live_snapshot) -> status {
    // Dropping the snapshot waits for its copy thread, outside every lock.
    free::<LiveObj, _>("dt_live_snapshot_free", s)
}

/// Stores the range's start address at the snapshot instant in `*out`.
///
/// Ownership: borrows the copy. Thread safety: any thread.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `uintptr_t`.
#[no_mangle]
pub unsafe extern "C" fn dt_live_copy_addr(c: *const live_copy, out: *mut usize) -> status {
    entry("dt_live_copy_addr", || {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(0);
        out.set(get_copy(c)?.copy.lock().addr);
        Ok(())
    })
}

/// Stores a pointer to the range's contents at the snapshot instant in `*out_data` and its
/// length in bytes in `*out_len`.
///
/// Ownership: the bytes belong to the copy: read-only, valid until `dt_live_copy_free(c)`; do
/// not free them. Thread safety: any thread; the bytes never change.
///
/// # Safety
///
/// `out_data` must be NULL (an error) or valid for a write of a `const uint8_t *`; `out_len`
/// likewise for a `size_t`. The returned pointer must not be used after the copy is freed.
#[no_mangle]
pub unsafe extern "C" fn dt_live_copy_data(
    c: *const live_copy,
    out_data: *mut *const u8,
    out_len: *mut size_t,
) -> status {
    entry("dt_live_copy_data", || {
        // SAFETY: each is NULL or valid for a write (this function's contract).
        let (data, len) = unsafe {
            (
                Out::new(out_data, "out_data")?,
                Out::new(out_len, "out_len")?,
            )
        };
        data.set(std::ptr::null());
        len.set(0);
        let obj = get_copy(c)?;
        let copy = obj.copy.lock();
        // The Vec lives in the registry's Arc until dt_live_copy_free, and is never mutated
        // (dt_live_copy_commit changes only what the copy owes the tracker).
        data.set(copy.data.as_ptr());
        len.set(copy.data.len());
        Ok(())
    })
}

/// Stores in `*out` a new dirty set holding the pages written between the previous collect (or
/// clear, or register) of the range and the snapshot instant.
///
/// Ownership: on `DT_OK` the caller owns `*out` (`dt_dirty_set_free`), independent of the copy;
/// on error `*out` is NULL. Thread safety: any thread.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `dt_dirty_set *`.
#[no_mangle]
pub unsafe extern "C" fn dt_live_copy_dirty_at_instant(
    c: *const live_copy,
    out: *mut *mut dirty_set,
) -> status {
    entry("dt_live_copy_dirty_at_instant", || {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(std::ptr::null_mut());
        let obj = get_copy(c)?;
        let dirty = obj.copy.lock().dirty_at_instant.clone();
        out.set(new_set(dirty));
        Ok(())
    })
}

/// Says the copy is stored (the caller has written its data and `dirty_at_instant` where they
/// belong): freeing it then no longer hands the pages written before the instant back to the
/// tracker. Without it, `dt_live_copy_free` hands them back and the next collect reports them
/// again (an over-report at worst), so a dump that fails half way loses nothing. Committing
/// twice is harmless.
///
/// Errors: `DT_ERR_NULL`, `DT_ERR_INVALID_HANDLE`.
///
/// Ownership: borrows the copy. Thread safety: any thread.
///
/// # Safety
///
/// None: handles are validated, never dereferenced.
#[no_mangle]
pub extern "C" fn dt_live_copy_commit(c: *mut live_copy) -> status {
    entry("dt_live_copy_commit", || {
        get_copy(c)?.copy.lock().commit();
        Ok(())
    })
}

/// Frees a live copy and its data. NULL is accepted and ignored (`DT_OK`). A copy not
/// committed (`dt_live_copy_commit`) first hands the pages written before the instant back to
/// the tracker: the next collect of the range reports them again.
///
/// Errors: `DT_ERR_INVALID_HANDLE` (not a live copy, or already freed).
///
/// Ownership: the handle and every pointer from `dt_live_copy_data` are invalid afterwards.
/// Thread safety: any thread.
///
/// # Safety
///
/// None: handles are validated, never dereferenced.
#[no_mangle]
pub extern "C" fn dt_live_copy_free(c: *mut live_copy) -> status {
    free::<CopyObj, _>("dt_live_copy_free", c)
}
