//! The handle registry. `dt_tracker *`, `dt_tracker_builder *`, `dt_dirty_set *`,
//! `dt_live_snapshot *`, `dt_live_copy *` and `dt_remote *` are keys into one process-wide map,
//! never addresses:
//! the library never dereferences a handle, so a NULL, garbage, freed (double free included) or
//! wrong-type handle is reported (`DT_ERR_NULL`, `DT_ERR_INVALID_HANDLE`), always.
//!
//! A handle is `id * 16 + 0xd`: odd, so no pointer to a real (aligned) object ever matches, and
//! ids are never reused. The registry holds an `Arc` per object and every call clones it for its
//! duration, so freeing a handle while another thread is inside a call on it is sound: the
//! object goes away when the last call returns.
//!
//! This module knows no object type: the registry holds `Arc<dyn Any + Send + Sync>` with the C
//! name of its type, and each object's module implements [`Handle`] for its own type (so the
//! object modules use this one, never the reverse).

use crate::error::{entry, fail, Failure, Res};
use crate::status::status;
use libc::size_t;
use parking_lot::RwLock;
use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A type whose objects live behind handles. Each object's module implements it for its own
/// type (this module knows no object type).
pub(crate) trait Handle: Any + Send + Sync + Sized {
    /// The C type name, for error messages (`"dt_tracker"`).
    const C_NAME: &'static str;
}

/// An object in the registry and the C name of its type.
#[derive(Clone)]
struct Object {
    obj: Arc<dyn Any + Send + Sync>,
    c_name: &'static str,
}

impl Object {
    /// The object if it is a `T`.
    fn pick<T: Handle>(&self) -> Option<Arc<T>> {
        self.obj.clone().downcast::<T>().ok()
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
pub(crate) const HANDLE_TAG: usize = 0xd;

fn encode(id: u64) -> Option<usize> {
    usize::try_from(id)
        .ok()?
        .checked_mul(16)?
        .checked_add(HANDLE_TAG)
}

/// Registers `obj` and returns its handle as a `P` (never NULL, never reused unless the id
/// space of a 32-bit process wraps, and then never one that is live).
pub(crate) fn insert<T: Handle, P>(obj: T) -> *mut P {
    let obj = Object {
        obj: Arc::new(obj),
        c_name: T::C_NAME,
    };
    let mut reg = REGISTRY.write();
    loop {
        reg.last_id = reg.last_id.wrapping_add(1);
        match encode(reg.last_id) {
            Some(h) if !reg.objects.contains_key(&h) => {
                reg.objects.insert(h, obj);
                return h as *mut P;
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
            format!("handle {handle:#x} is a {}, not a {want}", other.c_name),
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

/// The object behind a handle of type `T` (a clone of its `Arc`, for the duration of a call).
pub(crate) fn lookup<T: Handle, P>(handle: *const P) -> Res<Arc<T>> {
    let handle = handle as usize;
    if handle == 0 {
        return Err(null_handle(T::C_NAME));
    }
    let reg = REGISTRY.read();
    let found = reg.objects.get(&handle);
    found
        .and_then(Object::pick::<T>)
        .ok_or_else(|| invalid(handle, T::C_NAME, found))
}

/// Removes a handle of type `T` and returns its object; a handle of another type stays
/// registered. The caller drops the object after the registry lock is released.
pub(crate) fn take<T: Handle, P>(handle: *const P) -> Res<Arc<T>> {
    let handle = handle as usize;
    if handle == 0 {
        return Err(null_handle(T::C_NAME));
    }
    let mut reg = REGISTRY.write();
    let found = reg.objects.get(&handle);
    let got = found
        .and_then(Object::pick::<T>)
        .ok_or_else(|| invalid(handle, T::C_NAME, found))?;
    reg.objects.remove(&handle);
    Ok(got)
}

/// The body of every `dt_*_free`: NULL is accepted and ignored, like `free(NULL)`; anything
/// else must be a live handle of type `T`. The object is destroyed outside the registry lock
/// (a tracker joins its monitor thread, a live snapshot its copy thread), or when the last call
/// still using it in another thread returns.
pub(crate) fn free<T: Handle, P>(func: &str, handle: *mut P) -> status {
    entry(func, || {
        if !handle.is_null() {
            drop(take::<T, P>(handle)?);
        }
        Ok(())
    })
}

/// How many handles of all types this process holds and has not freed yet (a leak check for
/// tests: it should be 0 once a program has freed everything).
///
/// Thread safety: any thread; the count is as of the call.
///
/// # Safety
///
/// None: it takes no pointer.
#[no_mangle]
pub extern "C" fn dt_open_handles() -> size_t {
    std::panic::catch_unwind(|| REGISTRY.read().objects.len()).unwrap_or(0)
}
