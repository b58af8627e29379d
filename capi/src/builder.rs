//! Tracker builders (`dt_tracker_builder`): a tracker's options (mode, THP, prefault), set one
//! by one, then built into trackers. Uses [`crate::tracker`] (a built tracker is registered as a
//! `dt_tracker`).

use crate::args::{enum_arg, Out};
use crate::error::{entry, Res};
use crate::handles::{free, insert, lookup, Handle};
use crate::options::{
    mode_from_c, prefault_from_c, thp_from_c, MODE_CHOICES, PREFAULT_CHOICES, THP_CHOICES,
};
use crate::status::status;
use crate::tracker::{new_tracker, tracker};
use dirtytrack::{Mode, Prefault, Thp, Tracker};
use parking_lot::Mutex;
use std::sync::Arc;

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

impl Handle for BuilderObj {
    const C_NAME: &'static str = "dt_tracker_builder";
}

#[derive(Default, Clone, Copy)]
struct Options {
    mode: Mode,
    thp: Thp,
    prefault: Option<Prefault>,
}

fn get_builder(b: *const tracker_builder) -> Res<Arc<BuilderObj>> {
    lookup(b)
}

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
    entry("dt_tracker_builder_new", || {
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
    entry("dt_tracker_builder_set_mode", || {
        let b = get_builder(b)?;
        b.options.lock().mode = enum_arg(mode, mode_from_c(mode), "dt_mode", MODE_CHOICES)?;
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
    entry("dt_tracker_builder_set_thp", || {
        let b = get_builder(b)?;
        b.options.lock().thp = enum_arg(thp, thp_from_c(thp), "dt_thp", THP_CHOICES)?;
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
    entry("dt_tracker_builder_set_prefault", || {
        let b = get_builder(b)?;
        b.options.lock().prefault = enum_arg(
            prefault,
            prefault_from_c(prefault),
            "dt_prefault",
            PREFAULT_CHOICES,
        )?;
        Ok(())
    })
}

/// Creates a tracker with the builder's options and stores it in `*out`. The builder is not
/// consumed: it may build more trackers, and is freed with `dt_tracker_builder_free`.
///
/// Errors: as `dt_tracker_new_with_mode`, and `DT_ERR_UNSUPPORTED_KERNEL` for a forced
/// `dt_prefault` the kernel lacks.
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
    entry("dt_tracker_builder_build", || {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(std::ptr::null_mut());
        let o = *get_builder(b)?.options.lock();
        let mut builder = Tracker::builder().mode(o.mode).thp(o.thp);
        if let Some(p) = o.prefault {
            builder = builder.prefault(p);
        }
        new_tracker(&out, builder)
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
    free::<BuilderObj, _>("dt_tracker_builder_free", b)
}
