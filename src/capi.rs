//! The C API (feature `capi`). The header, `include/dirtytrack.h`, is generated from this module
//! by cbindgen (`cbindgen.toml`; `scripts/check-capi` fails when it is out of date), so the doc
//! comments here are the C documentation.
//!
//! Design:
//!
//! - **Handles are registry keys, not addresses.** `dt_tracker *`, `dt_dirty_set *`,
//!   `dt_live_snapshot *` and `dt_live_copy *` are opaque values the library never dereferences:
//!   each is looked up in a process-wide registry (`id * 16 + 0xd`, an odd number, so no real
//!   pointer to an object ever matches; ids are never reused). So a NULL, garbage, freed
//!   (double free included) or wrong-type handle is reported as `DT_ERR_NULL` /
//!   `DT_ERR_INVALID_HANDLE`, always, without touching memory. The registry holds an `Arc` per
//!   object and every call clones it for its duration, so freeing a handle while another thread
//!   is inside a call on it is sound too: the object goes away when the last call returns.
//! - **Status codes.** Every fallible function returns a [`status`] (`DT_OK` = 0, one negative
//!   code per [`Error`] variant, plus C-API codes) and leaves the Rust error's `Display` text in
//!   a thread-local buffer read with [`dt_last_error_message`].
//! - **No unwinding across the boundary.** Every entry point runs under `catch_unwind`; a panic
//!   becomes `DT_ERR_PANIC`.
//! - **Out-parameters** are checked for NULL and alignment, set to NULL / 0 first, and written
//!   with `ptr::write` (never through a reference to caller memory).
//! - **Iteration** copies pages or runs into caller buffers by index. The first call on a set
//!   builds a run table (one pass over its bitmap, cached until the set changes), after which a
//!   call costs O(log runs + items written): iterating a whole set is O(n) whatever the buffer
//!   size.

#![allow(non_camel_case_types)]

use crate::{Capabilities, DirtySet, Error, LiveCopy, LiveSnapshot, Mode, RangeId, Tracker};
use libc::size_t;
use parking_lot::{Mutex, RwLock};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

// ---------------------------------------------------------------------------------------------
// Types visible to C
// ---------------------------------------------------------------------------------------------

/// Result of every fallible `dt_` function: `DT_OK` (0) or a negative error code.
/// `dt_last_error_message()` gives the explanation, `dt_status_name()` the constant's name.
/// Codes -1 to -19 correspond one to one to the variants of the Rust `dirtytrack::Error`;
/// codes from -100 on belong to the C API.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum status {
    /// Success.
    DT_OK = 0,
    /// An address or length is not a multiple of the page size.
    DT_ERR_UNALIGNED = -1,
    /// A zero-length range.
    DT_ERR_ZERO_LENGTH = -2,
    /// `addr + len` wraps around the address space.
    DT_ERR_ADDRESS_OVERFLOW = -3,
    /// Part of the range is not mapped in this process.
    DT_ERR_NOT_MAPPED = -4,
    /// The range overlaps a range this tracker already tracks.
    DT_ERR_OVERLAP = -5,
    /// Another userfaultfd (another tracker, or a VMM's own) already owns the memory.
    DT_ERR_OWNED_BY_ANOTHER_USERFAULTFD = -6,
    /// The kernel refused to write-protect this kind of mapping in this mode.
    DT_ERR_MAPPING_NOT_SUPPORTED = -7,
    /// The running kernel lacks a feature the requested mode needs.
    DT_ERR_UNSUPPORTED_KERNEL = -8,
    /// No userfaultfd could be had, or not one of the kind the mode needs.
    DT_ERR_PERMISSION = -9,
    /// Out of file descriptors or memory.
    DT_ERR_RESOURCE_EXHAUSTED = -10,
    /// The range id is not (or no longer) registered with this tracker.
    DT_ERR_UNKNOWN_RANGE = -11,
    /// A range's registration vanished (unmapped, replaced, moved): its pages were reported
    /// dirty once more; unregister it.
    DT_ERR_RANGE_LOST = -12,
    /// The tracker was created by another process (this one is a fork child).
    DT_ERR_FORKED_CHILD = -13,
    /// The tracker's monitor thread died; create a new tracker.
    DT_ERR_POISONED = -14,
    /// A live snapshot could not produce a consistent copy; take it again.
    DT_ERR_LIVE_SNAPSHOT_FAILED = -15,
    /// The operation needs a tracker in `DT_MODE_SYNC`.
    DT_ERR_NEEDS_SYNC_MODE = -16,
    /// A live snapshot of the range is already running.
    DT_ERR_SNAPSHOT_IN_PROGRESS = -17,
    /// A kernel call failed in a way the library has no better name for.
    DT_ERR_KERNEL = -18,
    /// `PAGEMAP_SCAN` stopped making progress (the unscanned rest was kept as dirty).
    DT_ERR_SCAN_NO_PROGRESS = -19,
    /// `dt_mark_dirty` named memory that no registered range covers.
    DT_ERR_NOT_TRACKED = -20,
    /// A required pointer argument (handle, out-parameter or buffer) is NULL.
    DT_ERR_NULL = -100,
    /// A handle is not a live handle of the expected type: never returned by this library,
    /// already freed (double free included), or a handle of another type.
    DT_ERR_INVALID_HANDLE = -101,
    /// An internal error (a Rust panic) was caught at the boundary. The handles used by the
    /// call may be in an inconsistent state: free them.
    DT_ERR_PANIC = -102,
    /// An argument has a value outside its domain (e.g. an unknown mode), or an out-parameter
    /// is misaligned.
    DT_ERR_INVALID_ARGUMENT = -103,
    /// A caller buffer is too small for a string; see `dt_capabilities_report`.
    DT_ERR_BUFFER_TOO_SMALL = -104,
}

/// How write faults are resolved. Pass to `dt_tracker_new_with_mode` (as an `int32_t`, so an
/// out-of-range value is an error, not undefined behaviour); `dt_tracker_mode` reports
/// `DT_MODE_ASYNC` or `DT_MODE_SYNC`, never `DT_MODE_AUTO`.
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

/// A maximal run of contiguous dirty pages: `len` bytes (a multiple of the page size) at
/// address `start`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct run {
    /// Start address (page aligned).
    pub start: usize,
    /// Length in bytes.
    pub len: size_t,
}

/// Where a registered range lives now (see `dt_tracker_range`).
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

/// A tracker (opaque handle). Created by `dt_tracker_new*`, freed by `dt_tracker_free`.
pub struct tracker {
    _opaque: [u8; 0],
}

/// A set of dirty pages (opaque handle). Created by the collect/snapshot functions,
/// `dt_dirty_set_new` and `dt_live_copy_dirty_at_instant`; freed by `dt_dirty_set_free`.
pub struct dirty_set {
    _opaque: [u8; 0],
}

/// A live snapshot in progress (opaque handle). Created by `dt_live_snapshot_start`; consumed by
/// `dt_live_snapshot_wait` or freed by `dt_live_snapshot_free`.
pub struct live_snapshot {
    _opaque: [u8; 0],
}

/// The result of a live snapshot (opaque handle). Created by `dt_live_snapshot_wait`, freed by
/// `dt_live_copy_free`.
pub struct live_copy {
    _opaque: [u8; 0],
}

// ---------------------------------------------------------------------------------------------
// Errors and the thread-local message
// ---------------------------------------------------------------------------------------------

/// An error on its way to C: the code and the text for `dt_last_error_message`.
struct Failure {
    code: status,
    message: String,
}

type Res<T> = Result<T, Failure>;

fn fail(code: status, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

fn code_of(e: &Error) -> status {
    use status::*;
    // Exhaustive on purpose: a new `Error` variant does not compile until it has a code.
    match e {
        Error::Unaligned { .. } => DT_ERR_UNALIGNED,
        Error::ZeroLength { .. } => DT_ERR_ZERO_LENGTH,
        Error::AddressOverflow { .. } => DT_ERR_ADDRESS_OVERFLOW,
        Error::NotMapped { .. } => DT_ERR_NOT_MAPPED,
        Error::Overlap { .. } => DT_ERR_OVERLAP,
        Error::OwnedByAnotherUserfaultfd { .. } => DT_ERR_OWNED_BY_ANOTHER_USERFAULTFD,
        Error::MappingNotSupported { .. } => DT_ERR_MAPPING_NOT_SUPPORTED,
        Error::UnsupportedKernel { .. } => DT_ERR_UNSUPPORTED_KERNEL,
        Error::Permission(_) => DT_ERR_PERMISSION,
        Error::ResourceExhausted { .. } => DT_ERR_RESOURCE_EXHAUSTED,
        Error::UnknownRange(_) => DT_ERR_UNKNOWN_RANGE,
        Error::RangeLost { .. } => DT_ERR_RANGE_LOST,
        Error::ForkedChild { .. } => DT_ERR_FORKED_CHILD,
        Error::Poisoned(_) => DT_ERR_POISONED,
        Error::LiveSnapshotFailed { .. } => DT_ERR_LIVE_SNAPSHOT_FAILED,
        Error::NeedsSyncMode { .. } => DT_ERR_NEEDS_SYNC_MODE,
        Error::SnapshotInProgress(_) => DT_ERR_SNAPSHOT_IN_PROGRESS,
        Error::Kernel { .. } => DT_ERR_KERNEL,
        Error::ScanNoProgress { .. } => DT_ERR_SCAN_NO_PROGRESS,
        Error::NotTracked { .. } => DT_ERR_NOT_TRACKED,
        Error::InvalidPageSize { .. } => DT_ERR_INVALID_ARGUMENT,
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        fail(code_of(&e), e.to_string())
    }
}

thread_local! {
    /// The message of the last failed call on this thread (`None` after a successful one).
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Replaces this thread's message. Never panics (a NUL in the text is escaped; a thread being
/// torn down simply keeps no message).
fn set_last_error(message: Option<&str>) {
    let c = message.map(|m| CString::new(m.replace('\0', "\\0")).unwrap_or_default());
    let _ = LAST_ERROR.try_with(|slot| {
        if let Ok(mut slot) = slot.try_borrow_mut() {
            *slot = c;
        }
    });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    format!("internal error: a Rust panic was caught at the C API boundary: {what}; the handles used by this call may be inconsistent, free them")
}

/// Runs `f` under `catch_unwind` and turns its result into a status and this thread's message.
fn entry(f: impl FnOnce() -> Res<()>) -> status {
    set_last_error(None);
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => status::DT_OK,
        Ok(Err(e)) => {
            set_last_error(Some(&e.message));
            e.code
        }
        Err(payload) => {
            set_last_error(Some(&panic_message(&*payload)));
            // A payload whose destructor panics must not unwind out of here either.
            if let Err(again) = catch_unwind(AssertUnwindSafe(|| drop(payload))) {
                std::mem::forget(again);
            }
            status::DT_ERR_PANIC
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The handle registry
// ---------------------------------------------------------------------------------------------

/// A dirty set and its run table (built on first iteration, dropped when the set changes).
struct SetObj {
    state: RwLock<SetState>,
}

struct SetState {
    set: DirtySet,
    index: OnceLock<RunIndex>,
}

/// The runs of a set, and for each run the index of its first page among all pages.
struct RunIndex {
    runs: Vec<run>,
    first_page: Vec<usize>,
}

impl SetObj {
    fn new(set: DirtySet) -> SetObj {
        SetObj {
            state: RwLock::new(SetState {
                set,
                index: OnceLock::new(),
            }),
        }
    }
}

impl SetState {
    fn index(&self) -> &RunIndex {
        self.index.get_or_init(|| {
            let ps = self.set.page_size();
            let mut runs = Vec::new();
            let mut first_page = Vec::new();
            let mut pages = 0usize;
            for r in self.set.runs() {
                let len = r.end - r.start;
                runs.push(run {
                    start: r.start,
                    len,
                });
                first_page.push(pages);
                pages += len / ps;
            }
            RunIndex { runs, first_page }
        })
    }
}

struct LiveObj {
    snapshot: Mutex<Option<LiveSnapshot>>,
}

#[derive(Clone)]
enum Object {
    Tracker(Arc<Tracker>),
    Set(Arc<SetObj>),
    Live(Arc<LiveObj>),
    Copy(Arc<LiveCopy>),
}

impl Object {
    fn kind(&self) -> &'static str {
        match self {
            Object::Tracker(_) => "dt_tracker",
            Object::Set(_) => "dt_dirty_set",
            Object::Live(_) => "dt_live_snapshot",
            Object::Copy(_) => "dt_live_copy",
        }
    }
}

struct Registry {
    last_id: u64,
    objects: BTreeMap<usize, Object>,
}

static REGISTRY: RwLock<Registry> = RwLock::new(Registry {
    last_id: 0,
    objects: BTreeMap::new(),
});

/// Odd, so that no pointer to a real (aligned) object is ever mistaken for a handle.
const HANDLE_TAG: usize = 0xd;

fn encode(id: u64) -> Option<usize> {
    usize::try_from(id)
        .ok()?
        .checked_mul(16)?
        .checked_add(HANDLE_TAG)
}

/// Registers `obj` and returns its handle value (never 0, never reused unless the id space
/// of a 32-bit process wraps, and then never one that is live).
fn insert(obj: Object) -> usize {
    let mut reg = REGISTRY.write();
    loop {
        reg.last_id = reg.last_id.wrapping_add(1);
        match encode(reg.last_id) {
            Some(h) if !reg.objects.contains_key(&h) => {
                reg.objects.insert(h, obj);
                return h;
            }
            Some(_) => continue,
            None => reg.last_id = 0,
        }
    }
}

fn invalid(handle: usize, want: &str, found: Option<&Object>) -> Failure {
    match found {
        Some(other) => fail(
            status::DT_ERR_INVALID_HANDLE,
            format!("handle {handle:#x} is a {}, not a {want}", other.kind()),
        ),
        None => fail(
            status::DT_ERR_INVALID_HANDLE,
            format!("{handle:#x} is not a live {want} handle: it was never returned by dirtytrack, or it was already freed"),
        ),
    }
}

fn null_handle(want: &str) -> Failure {
    fail(status::DT_ERR_NULL, format!("the {want} handle is NULL"))
}

/// Looks up a handle of the type `pick` accepts, returning a clone of its `Arc`.
fn lookup<T>(handle: usize, want: &'static str, pick: impl Fn(&Object) -> Option<T>) -> Res<T> {
    if handle == 0 {
        return Err(null_handle(want));
    }
    let reg = REGISTRY.read();
    let found = reg.objects.get(&handle);
    found
        .and_then(&pick)
        .ok_or_else(|| invalid(handle, want, found))
}

/// Removes a handle of the type `pick` accepts; a handle of another type stays registered.
fn take<T>(handle: usize, want: &'static str, pick: impl Fn(&Object) -> Option<T>) -> Res<T> {
    if handle == 0 {
        return Err(null_handle(want));
    }
    let mut reg = REGISTRY.write();
    let found = reg.objects.get(&handle);
    let got = found
        .and_then(&pick)
        .ok_or_else(|| invalid(handle, want, found))?;
    reg.objects.remove(&handle);
    Ok(got)
    // The object itself is dropped by the caller, after the registry lock is released.
}

fn pick_tracker(o: &Object) -> Option<Arc<Tracker>> {
    match o {
        Object::Tracker(t) => Some(t.clone()),
        _ => None,
    }
}
fn pick_set(o: &Object) -> Option<Arc<SetObj>> {
    match o {
        Object::Set(s) => Some(s.clone()),
        _ => None,
    }
}
fn pick_live(o: &Object) -> Option<Arc<LiveObj>> {
    match o {
        Object::Live(s) => Some(s.clone()),
        _ => None,
    }
}
fn pick_copy(o: &Object) -> Option<Arc<LiveCopy>> {
    match o {
        Object::Copy(c) => Some(c.clone()),
        _ => None,
    }
}

fn get_tracker(t: *const tracker) -> Res<Arc<Tracker>> {
    lookup(t as usize, "dt_tracker", pick_tracker)
}
fn get_set(s: *const dirty_set) -> Res<Arc<SetObj>> {
    lookup(s as usize, "dt_dirty_set", pick_set)
}

// ---------------------------------------------------------------------------------------------
// Checked out-parameters
// ---------------------------------------------------------------------------------------------

/// A non-NULL, aligned out-pointer. Invariant (from [`Out::new`]'s contract): valid for one
/// write of a `T`.
struct Out<T>(*mut T);

impl<T> Out<T> {
    /// # Safety
    ///
    /// `p` is NULL or valid for a write of a `T` for as long as the `Out` lives.
    unsafe fn new(p: *mut T, what: &str) -> Res<Out<T>> {
        if p.is_null() {
            return Err(fail(status::DT_ERR_NULL, format!("{what} is NULL")));
        }
        if !p.is_aligned() {
            return Err(fail(
                status::DT_ERR_INVALID_ARGUMENT,
                format!("{what} ({p:p}) is not aligned for its type"),
            ));
        }
        Ok(Out(p))
    }

    /// Like [`Out::new`], but NULL means "not wanted".
    ///
    /// # Safety
    ///
    /// As for [`Out::new`].
    unsafe fn optional(p: *mut T, what: &str) -> Res<Option<Out<T>>> {
        if p.is_null() {
            return Ok(None);
        }
        // SAFETY: forwarded from this function's contract.
        unsafe { Out::new(p, what) }.map(Some)
    }

    fn set(&self, value: T) {
        // SAFETY: non-NULL and aligned (checked in `new`), valid for a write (its contract);
        // `write` does not read or drop the old, possibly uninitialised, contents.
        unsafe { self.0.write(value) }
    }
}

/// A caller buffer of `cap` elements: NULL is allowed only when `cap` is 0.
struct OutBuf<T> {
    ptr: *mut T,
    cap: usize,
}

impl<T> OutBuf<T> {
    /// # Safety
    ///
    /// When `cap > 0`, `ptr` is NULL or valid for writes of `cap` consecutive `T`s for as long
    /// as the `OutBuf` lives.
    unsafe fn new(ptr: *mut T, cap: usize, what: &str) -> Res<OutBuf<T>> {
        if cap > 0 && ptr.is_null() {
            return Err(fail(
                status::DT_ERR_NULL,
                format!("{what} is NULL but its capacity is {cap}"),
            ));
        }
        if cap > 0 && !ptr.is_aligned() {
            return Err(fail(
                status::DT_ERR_INVALID_ARGUMENT,
                format!("{what} ({ptr:p}) is not aligned for its element type"),
            ));
        }
        Ok(OutBuf { ptr, cap })
    }

    fn put(&self, i: usize, value: T) {
        assert!(
            i < self.cap,
            "buffer index {i} out of bounds ({})",
            self.cap
        );
        // SAFETY: i < cap, and the buffer is valid for `cap` writes (the contract of `new`);
        // non-NULL and aligned when cap > 0 (checked in `new`).
        unsafe { self.ptr.add(i).write(value) }
    }
}

/// Copies `text` NUL-terminated into a caller buffer; see `dt_capabilities_report`.
fn copy_string(text: &str, buf: &OutBuf<c_char>, needed: Option<Out<size_t>>) -> Res<()> {
    let need = text.len() + 1;
    if let Some(n) = needed {
        n.set(need);
    }
    if buf.cap > 0 {
        let n = text.len().min(buf.cap - 1);
        for (i, &b) in text.as_bytes()[..n].iter().enumerate() {
            buf.put(i, b as c_char);
        }
        buf.put(n, 0);
    }
    if buf.cap < need {
        return Err(fail(
            status::DT_ERR_BUFFER_TOO_SMALL,
            format!(
                "the buffer holds {} bytes but the text needs {need} (with its NUL); it was truncated: call again with at least {need} bytes",
                buf.cap
            ),
        ));
    }
    Ok(())
}

fn mode_from_c(m: i32) -> Res<Mode> {
    match m {
        0 => Ok(Mode::Auto),
        1 => Ok(Mode::Async),
        2 => Ok(Mode::Sync),
        _ => Err(fail(
            status::DT_ERR_INVALID_ARGUMENT,
            format!(
                "{m} is not a dt_mode: use DT_MODE_AUTO (0), DT_MODE_ASYNC (1) or DT_MODE_SYNC (2)"
            ),
        )),
    }
}

fn mode_to_c(m: Mode) -> mode {
    match m {
        Mode::Auto => mode::DT_MODE_AUTO,
        Mode::Async => mode::DT_MODE_ASYNC,
        Mode::Sync => mode::DT_MODE_SYNC,
    }
}

fn new_set(set: DirtySet) -> *mut dirty_set {
    insert(Object::Set(Arc::new(SetObj::new(set)))) as *mut dirty_set
}

// ---------------------------------------------------------------------------------------------
// Errors, versions, page size
// ---------------------------------------------------------------------------------------------

/// The explanation of the most recent failed call on this thread: the same text as the Rust
/// error's `Display` (what happened and what to do about it). Empty (never NULL) if the most
/// recent call that returns a `dt_status` succeeded.
///
/// Ownership: the string belongs to the library; do not free it. It stays valid until the next
/// `dt_` call on this thread (other than `dt_last_error_message`, `dt_status_name`,
/// `dt_page_size` and `dt_open_handles`); copy it to keep it.
///
/// Thread safety: each thread has its own message; errors on one thread never change another's.
///
/// # Safety
///
/// None: it takes no arguments. The returned pointer must not be used after the next `dt_` call
/// on this thread.
#[no_mangle]
pub extern "C" fn dt_last_error_message() -> *const c_char {
    let got = catch_unwind(|| {
        LAST_ERROR
            .try_with(|slot| {
                slot.try_borrow()
                    .ok()
                    .and_then(|s| s.as_ref().map(|c| c.as_ptr()))
            })
            .ok()
            .flatten()
    });
    match got {
        Ok(Some(p)) => p,
        _ => c"".as_ptr(),
    }
}

/// The name of a status code as a string ("DT_OK", "DT_ERR_NOT_MAPPED", ...), or
/// "DT_ERR_UNKNOWN_CODE" for a value that is not a `dt_status`. Takes an `int32_t` so any value
/// is safe to pass.
///
/// Ownership: a static string; do not free it. Thread safety: any thread.
///
/// # Safety
///
/// None: it takes no pointer.
#[no_mangle]
pub extern "C" fn dt_status_name(code: i32) -> *const c_char {
    let name = match code {
        0 => c"DT_OK",
        -1 => c"DT_ERR_UNALIGNED",
        -2 => c"DT_ERR_ZERO_LENGTH",
        -3 => c"DT_ERR_ADDRESS_OVERFLOW",
        -4 => c"DT_ERR_NOT_MAPPED",
        -5 => c"DT_ERR_OVERLAP",
        -6 => c"DT_ERR_OWNED_BY_ANOTHER_USERFAULTFD",
        -7 => c"DT_ERR_MAPPING_NOT_SUPPORTED",
        -8 => c"DT_ERR_UNSUPPORTED_KERNEL",
        -9 => c"DT_ERR_PERMISSION",
        -10 => c"DT_ERR_RESOURCE_EXHAUSTED",
        -11 => c"DT_ERR_UNKNOWN_RANGE",
        -12 => c"DT_ERR_RANGE_LOST",
        -13 => c"DT_ERR_FORKED_CHILD",
        -14 => c"DT_ERR_POISONED",
        -15 => c"DT_ERR_LIVE_SNAPSHOT_FAILED",
        -16 => c"DT_ERR_NEEDS_SYNC_MODE",
        -17 => c"DT_ERR_SNAPSHOT_IN_PROGRESS",
        -18 => c"DT_ERR_KERNEL",
        -19 => c"DT_ERR_SCAN_NO_PROGRESS",
        -20 => c"DT_ERR_NOT_TRACKED",
        -100 => c"DT_ERR_NULL",
        -101 => c"DT_ERR_INVALID_HANDLE",
        -102 => c"DT_ERR_PANIC",
        -103 => c"DT_ERR_INVALID_ARGUMENT",
        -104 => c"DT_ERR_BUFFER_TOO_SMALL",
        _ => c"DT_ERR_UNKNOWN_CODE",
    };
    name.as_ptr()
}

/// The page size of this process in bytes (every address and length the library deals in is a
/// multiple of it). Returns 0 only if an internal error occurred (then see
/// `dt_last_error_message`).
///
/// Thread safety: any thread.
///
/// # Safety
///
/// None: it takes no pointer.
#[no_mangle]
pub extern "C" fn dt_page_size() -> size_t {
    match catch_unwind(crate::page_size) {
        Ok(ps) => ps,
        Err(payload) => {
            set_last_error(Some(&panic_message(&*payload)));
            std::mem::forget(payload);
            0
        }
    }
}

/// How many handles of all four types this process holds and has not freed yet (a leak check
/// for tests: it should be 0 once a program has freed everything).
///
/// Thread safety: any thread; the count is a snapshot.
///
/// # Safety
///
/// None: it takes no pointer.
#[no_mangle]
pub extern "C" fn dt_open_handles() -> size_t {
    catch_unwind(|| REGISTRY.read().objects.len()).unwrap_or(0)
}

/// Writes the capability report of the running kernel (what it offers, which modes are
/// available and why not) into `buf`, without creating a tracker: call it to explain a failed
/// `dt_tracker_new`. Same buffer rules as `dt_capabilities_report`.
///
/// Ownership: `buf` stays the caller's. Thread safety: any thread. Cost: it creates and closes
/// a few userfaultfds and maps one page.
///
/// # Safety
///
/// `buf` must be valid for writes of `cap` bytes (it may be NULL when `cap` is 0);
/// `out_needed` must be NULL or valid for a write of a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn dt_probe_report(
    buf: *mut c_char,
    cap: size_t,
    out_needed: *mut size_t,
) -> status {
    entry(|| {
        // SAFETY: the caller guarantees `buf` is valid for `cap` bytes and `out_needed` is NULL
        // or valid (this function's contract).
        let (buf, needed) = unsafe {
            (
                OutBuf::new(buf, cap, "buf")?,
                Out::optional(out_needed, "out_needed")?,
            )
        };
        copy_string(&Capabilities::probe().to_string(), &buf, needed)
    })
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

/// Creates a tracker in `mode` (a `dt_mode` value) and stores its handle in `*out`: probes the
/// kernel, opens the userfaultfd and starts the monitor thread.
///
/// Errors: `DT_ERR_INVALID_ARGUMENT` (not a `dt_mode`), `DT_ERR_UNSUPPORTED_KERNEL`,
/// `DT_ERR_PERMISSION` (no userfaultfd: see `dt_probe_report`), `DT_ERR_RESOURCE_EXHAUSTED`,
/// `DT_ERR_KERNEL`, `DT_ERR_NULL`.
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
        let t = Tracker::builder().mode(mode_from_c(mode)?).build()?;
        out.set(insert(Object::Tracker(Arc::new(t))) as *mut tracker);
        Ok(())
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
    entry(|| {
        if t.is_null() {
            return Ok(());
        }
        let tracker = take(t as usize, "dt_tracker", pick_tracker)?;
        drop(tracker); // outside the registry lock: joining the monitor thread takes a while
        Ok(())
    })
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

/// Writes the tracker's capability report (what the kernel offered when the tracker was
/// built, and why this mode was chosen; several lines of text) into `buf`, NUL-terminated.
///
/// Buffer rules (snprintf-like): if `out_needed` is not NULL, `*out_needed` is set to the size
/// the text needs including its NUL. If `cap` is too small, the text is truncated to `cap - 1`
/// bytes plus a NUL (nothing is written when `cap` is 0) and `DT_ERR_BUFFER_TOO_SMALL` is
/// returned: call again with `*out_needed` bytes. Pass `buf = NULL, cap = 0` to ask the size.
///
/// Ownership: `buf` stays the caller's (no string is allocated for the caller to free).
/// Thread safety: any thread.
///
/// # Safety
///
/// `buf` must be valid for writes of `cap` bytes (it may be NULL when `cap` is 0);
/// `out_needed` must be NULL or valid for a write of a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn dt_capabilities_report(
    t: *const tracker,
    buf: *mut c_char,
    cap: size_t,
    out_needed: *mut size_t,
) -> status {
    entry(|| {
        // SAFETY: the caller guarantees `buf` is valid for `cap` bytes and `out_needed` is NULL
        // or valid (this function's contract).
        let (buf, needed) = unsafe {
            (
                OutBuf::new(buf, cap, "buf")?,
                Out::optional(out_needed, "out_needed")?,
            )
        };
        let t = get_tracker(t)?;
        copy_string(&t.capabilities().to_string(), &buf, needed)
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
        out.set(id.0);
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
/// collects, snapshots and clears.
///
/// # Safety
///
/// None: handles are validated, never dereferenced.
#[no_mangle]
pub extern "C" fn dt_unregister(t: *mut tracker, range_id: u64) -> status {
    entry(|| Ok(get_tracker(t)?.unregister(RangeId(range_id))?))
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
        let info = get_tracker(t)?.range(RangeId(range_id))?;
        out.set(range_info {
            id: info.id.0,
            addr: info.addr,
            len: info.len,
            registered_addr: info.registered_addr,
            lost: info.lost.is_some(),
        });
        Ok(())
    })
}

/// The shared body of the collect and snapshot functions.
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
/// Thread safety: any thread; collects, snapshots, clears and unregisters run one at a time.
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
pub unsafe extern "C" fn dt_snapshot(t: *const tracker, out: *mut *mut dirty_set) -> status {
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
    unsafe { harvest_into(t, out, |t| t.collect_range(RangeId(range_id))) }
}

/// `dt_snapshot` for one range (`DT_ERR_UNKNOWN_RANGE` if the id is not registered).
///
/// Ownership: on `DT_OK` the caller owns `*out` (`dt_dirty_set_free`); on error `*out` is NULL.
/// Thread safety: any thread.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `dt_dirty_set *`.
#[no_mangle]
pub unsafe extern "C" fn dt_snapshot_range(
    t: *const tracker,
    range_id: u64,
    out: *mut *mut dirty_set,
) -> status {
    // SAFETY: same contract.
    unsafe { harvest_into(t, out, |t| t.peek_range(RangeId(range_id))) }
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
    entry(|| Ok(get_tracker(t)?.clear_range(RangeId(range_id))?))
}

// ---------------------------------------------------------------------------------------------
// Dirty sets
// ---------------------------------------------------------------------------------------------

/// Creates an empty dirty set (e.g. to accumulate sets with `dt_dirty_set_union`).
///
/// Ownership: on `DT_OK` the caller owns `*out` (`dt_dirty_set_free`); on error `*out` is NULL.
/// Thread safety: any thread.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `dt_dirty_set *`.
#[no_mangle]
pub unsafe extern "C" fn dt_dirty_set_new(out: *mut *mut dirty_set) -> status {
    entry(|| {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(new_set(DirtySet::new()));
        Ok(())
    })
}

/// Frees a dirty set. NULL is accepted and ignored (`DT_OK`), like `free(NULL)`.
///
/// Errors: `DT_ERR_INVALID_HANDLE` for a handle that is not a live dirty set (a double free is
/// always detected: handles are never reused).
///
/// Ownership: the handle is invalid afterwards. Thread safety: any thread; calls on the set
/// running in other threads finish normally, later ones get `DT_ERR_INVALID_HANDLE`.
///
/// # Safety
///
/// None: handles are validated, never dereferenced.
#[no_mangle]
pub extern "C" fn dt_dirty_set_free(set: *mut dirty_set) -> status {
    entry(|| {
        if set.is_null() {
            return Ok(());
        }
        drop(take(set as usize, "dt_dirty_set", pick_set)?);
        Ok(())
    })
}

/// Stores the number of dirty pages in `*out`. O(1).
///
/// Ownership: borrows the set. Thread safety: any thread, concurrently with other readers; a
/// concurrent `dt_dirty_set_union` into the set is serialized with it.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn dt_dirty_set_len(set: *const dirty_set, out: *mut size_t) -> status {
    entry(|| {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(0);
        out.set(get_set(set)?.state.read().set.len());
        Ok(())
    })
}

/// Stores the number of maximal runs of contiguous dirty pages in `*out` (the buffer size that
/// takes all runs of `dt_dirty_set_runs` in one call). Builds the set's run table on first use.
///
/// Ownership: borrows the set. Thread safety: as `dt_dirty_set_len`.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn dt_dirty_set_run_count(set: *const dirty_set, out: *mut size_t) -> status {
    entry(|| {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(0);
        out.set(get_set(set)?.state.read().index().runs.len());
        Ok(())
    })
}

/// Stores in `*out` whether the page containing `addr` is dirty. O(log ranges).
///
/// Ownership: borrows the set. Thread safety: as `dt_dirty_set_len`.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `bool`.
#[no_mangle]
pub unsafe extern "C" fn dt_dirty_set_contains(
    set: *const dirty_set,
    addr: usize,
    out: *mut bool,
) -> status {
    entry(|| {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(false);
        out.set(get_set(set)?.state.read().set.contains(addr));
        Ok(())
    })
}

/// Copies the start addresses of dirty pages `start_index`, `start_index + 1`, ... (in
/// ascending address order; index 0 is the lowest page) into `buf`, at most `cap` of them, and
/// stores how many it wrote in `*out_written`: fewer than `cap` only at the end of the set, 0
/// when `start_index >= dt_dirty_set_len`.
///
/// Loop: `for (size_t i = 0, n; dt_dirty_set_pages(s, i, buf, CAP, &n) == DT_OK && n > 0;
/// i += n) { ... }`. The first call builds the set's run table (one pass over its bitmap; 24
/// bytes per run, kept until the set is freed or changed); each call then costs
/// O(log runs + n), so a whole iteration is O(pages) with any buffer size.
///
/// Ownership: `buf` stays the caller's. Thread safety: as `dt_dirty_set_len`; indices refer to
/// the set's current contents, so a `dt_dirty_set_union` into the set between calls changes
/// what they denote.
///
/// # Safety
///
/// `buf` must be valid for writes of `cap` `uintptr_t`s (it may be NULL when `cap` is 0);
/// `out_written` must be NULL (an error) or valid for a write of a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn dt_dirty_set_pages(
    set: *const dirty_set,
    start_index: size_t,
    buf: *mut usize,
    cap: size_t,
    out_written: *mut size_t,
) -> status {
    entry(|| {
        // SAFETY: the caller guarantees `buf` is valid for `cap` elements and `out_written` is
        // NULL or valid (this function's contract).
        let (out, buf) = unsafe {
            (
                Out::new(out_written, "out_written")?,
                OutBuf::new(buf, cap, "buf")?,
            )
        };
        out.set(0);
        let set = get_set(set)?;
        let state = set.state.read();
        if start_index >= state.set.len() || cap == 0 {
            return Ok(());
        }
        let ps = state.set.page_size();
        let index = state.index();
        // The run holding page `start_index`: the last one whose first page is <= it.
        let mut r = index
            .first_page
            .partition_point(|&f| f <= start_index)
            .saturating_sub(1);
        let mut offset = start_index - index.first_page.get(r).copied().unwrap_or(0);
        let mut n = 0;
        while n < cap {
            let Some(run) = index.runs.get(r) else { break };
            let pages = run.len / ps;
            while offset < pages && n < cap {
                buf.put(n, run.start + offset * ps);
                n += 1;
                offset += 1;
            }
            if offset >= pages {
                r += 1;
                offset = 0;
            }
        }
        out.set(n);
        Ok(())
    })
}

/// Copies runs `start_index`, `start_index + 1`, ... of maximal contiguous dirty pages (in
/// ascending address order, coalesced across adjacent ranges) into `buf`, at most `cap` of
/// them, and stores how many it wrote in `*out_written`: fewer than `cap` only at the end, 0
/// when `start_index` is at or past the run count (`dt_dirty_set_run_count`).
///
/// Loop: `for (size_t i = 0, n; dt_dirty_set_runs(s, i, buf, CAP, &n) == DT_OK && n > 0;
/// i += n) { ... }`. The first call builds the set's run table; each call then costs O(n).
///
/// Ownership: `buf` stays the caller's. Thread safety: as `dt_dirty_set_pages`.
///
/// # Safety
///
/// `buf` must be valid for writes of `cap` `dt_run`s (it may be NULL when `cap` is 0);
/// `out_written` must be NULL (an error) or valid for a write of a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn dt_dirty_set_runs(
    set: *const dirty_set,
    start_index: size_t,
    buf: *mut run,
    cap: size_t,
    out_written: *mut size_t,
) -> status {
    entry(|| {
        // SAFETY: the caller guarantees `buf` is valid for `cap` elements and `out_written` is
        // NULL or valid (this function's contract).
        let (out, buf) = unsafe {
            (
                Out::new(out_written, "out_written")?,
                OutBuf::new(buf, cap, "buf")?,
            )
        };
        out.set(0);
        let set = get_set(set)?;
        let state = set.state.read();
        let runs = &state.index().runs;
        let from = start_index.min(runs.len());
        let to = from + cap.min(runs.len() - from);
        for (i, r) in runs[from..to].iter().enumerate() {
            buf.put(i, *r);
        }
        out.set(to - from);
        Ok(())
    })
}

/// Adds every page of `src` to `dst` (e.g. a dump of a collected set failed: merge it into the
/// next set so nothing is lost). `src` is unchanged; `dst == src` is allowed (no change).
///
/// Errors: `DT_ERR_NULL`, `DT_ERR_INVALID_HANDLE`.
///
/// Ownership: borrows both sets; `src` stays the caller's to free. Thread safety: any thread;
/// serialized with other calls on `dst` (deadlock-free whatever the argument order).
///
/// # Safety
///
/// None: handles are validated, never dereferenced.
#[no_mangle]
pub extern "C" fn dt_dirty_set_union(dst: *mut dirty_set, src: *const dirty_set) -> status {
    entry(|| {
        let (d, s) = (get_set(dst)?, get_set(src)?);
        if Arc::ptr_eq(&d, &s) {
            return Ok(());
        }
        // Lock in address order, so concurrent union(a, b) and union(b, a) cannot deadlock.
        let (mut dw, sr);
        if Arc::as_ptr(&d) < Arc::as_ptr(&s) {
            dw = d.state.write();
            sr = s.state.read();
        } else {
            sr = s.state.read();
            dw = d.state.write();
        }
        dw.set.union(&sr.set);
        dw.index = OnceLock::new();
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Live snapshots
// ---------------------------------------------------------------------------------------------

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
pub unsafe extern "C" fn dt_live_snapshot_start(
    t: *mut tracker,
    range_id: u64,
    out: *mut *mut live_snapshot,
) -> status {
    entry(|| {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(std::ptr::null_mut());
        let snap = get_tracker(t)?.live_snapshot(RangeId(range_id))?;
        let obj = LiveObj {
            snapshot: Mutex::new(Some(snap)),
        };
        out.set(insert(Object::Live(Arc::new(obj))) as *mut live_snapshot);
        Ok(())
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
    entry(|| {
        // SAFETY: each is NULL or valid for a write (this function's contract).
        let (copied, total) = unsafe {
            (
                Out::optional(out_copied, "out_copied")?,
                Out::optional(out_total, "out_total")?,
            )
        };
        let live = lookup(s as usize, "dt_live_snapshot", pick_live)?;
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
/// untouched. On `DT_OK` the caller owns `*out` (`dt_live_copy_free`); otherwise `*out` is
/// NULL.
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
    entry(|| {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(std::ptr::null_mut());
        let live = take(s as usize, "dt_live_snapshot", pick_live)?;
        let snap = live.snapshot.lock().take();
        let snap = snap.ok_or_else(|| invalid(s as usize, "dt_live_snapshot", None))?;
        let copy = snap.wait()?;
        out.set(insert(Object::Copy(Arc::new(copy))) as *mut live_copy);
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
    entry(|| {
        if s.is_null() {
            return Ok(());
        }
        let live = take(s as usize, "dt_live_snapshot", pick_live)?;
        let snap = live.snapshot.lock().take();
        drop(snap); // waits for the copy thread, outside every lock
        Ok(())
    })
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
    entry(|| {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(0);
        out.set(lookup(c as usize, "dt_live_copy", pick_copy)?.addr);
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
    entry(|| {
        // SAFETY: each is NULL or valid for a write (this function's contract).
        let (data, len) = unsafe {
            (
                Out::new(out_data, "out_data")?,
                Out::new(out_len, "out_len")?,
            )
        };
        data.set(std::ptr::null());
        len.set(0);
        let copy = lookup(c as usize, "dt_live_copy", pick_copy)?;
        // The Vec lives in the registry's Arc until dt_live_copy_free, and is never mutated.
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
    entry(|| {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(std::ptr::null_mut());
        let copy = lookup(c as usize, "dt_live_copy", pick_copy)?;
        out.set(new_set(copy.dirty_at_instant.clone()));
        Ok(())
    })
}

/// Frees a live copy and its data. NULL is accepted and ignored (`DT_OK`).
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
    entry(|| {
        if c.is_null() {
            return Ok(());
        }
        drop(take(c as usize, "dt_live_copy", pick_copy)?);
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Test hooks (exported, left out of the header; declared by examples/c/test_capi.c)
// ---------------------------------------------------------------------------------------------

/// Test hook: panics inside the boundary, to check that the panic becomes `DT_ERR_PANIC`. Not
/// part of the API.
///
/// # Safety
///
/// None: it takes no pointer.
#[cfg(feature = "testing")]
#[doc(hidden)]
#[no_mangle]
pub extern "C" fn dt__test_panic() -> status {
    entry(|| panic!("dt__test_panic was called"))
}

/// Test hook: makes the tracker's monitor thread panic the next time it wakes up (the tracker
/// then reports `DT_ERR_POISONED`). Not part of the API.
///
/// # Safety
///
/// None: handles are validated, never dereferenced.
#[cfg(feature = "testing")]
#[doc(hidden)]
#[no_mangle]
pub extern "C" fn dt__test_poison(t: *mut tracker) -> status {
    entry(|| {
        get_tracker(t)?.__panic_monitor_for_test();
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_odd_and_validated() {
        let mut s: *mut dirty_set = std::ptr::null_mut();
        // SAFETY: `s` is a valid out-pointer.
        assert_eq!(unsafe { dt_dirty_set_new(&mut s) }, status::DT_OK);
        assert_eq!(s as usize & 0xf, HANDLE_TAG);
        assert_eq!(
            dt_tracker_free(s.cast()),
            status::DT_ERR_INVALID_HANDLE,
            "a set is not a tracker"
        );
        assert_eq!(dt_dirty_set_free(s), status::DT_OK);
        assert_eq!(dt_dirty_set_free(s), status::DT_ERR_INVALID_HANDLE);
        assert_eq!(dt__test_panic(), status::DT_ERR_PANIC);
    }

    #[test]
    fn page_and_run_iteration_resumes_anywhere() {
        let ps = crate::page_size();
        let mut set = DirtySet::new();
        let base = 0x1000_0000usize;
        for (a, b) in [(0, 3), (5, 6), (10, 14), (64, 130)] {
            set.insert_range(base + a * ps..base + b * ps);
        }
        let want: Vec<usize> = set.pages().collect();
        let h = new_set(set);
        for cap in [1usize, 2, 3, 7, 64, 1000] {
            let mut got = Vec::new();
            let mut buf = vec![0usize; cap];
            let mut i = 0;
            loop {
                let mut n = 0;
                // SAFETY: `buf` has `cap` elements; `n` is a valid out-pointer.
                let st = unsafe { dt_dirty_set_pages(h, i, buf.as_mut_ptr(), cap, &mut n) };
                assert_eq!(st, status::DT_OK);
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                i += n;
            }
            assert_eq!(got, want, "cap {cap}");
        }
        let mut n = 0;
        // SAFETY: `n` is a valid out-pointer.
        assert_eq!(unsafe { dt_dirty_set_run_count(h, &mut n) }, status::DT_OK);
        assert_eq!(n, 4);
        assert_eq!(dt_dirty_set_free(h), status::DT_OK);
    }
}
