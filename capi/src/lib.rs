//! The C API of dirtytrack: `libdirtytrack.a` and `libdirtytrack.so.0`, header
//! `capi/include/dirtytrack.h`. The header is generated from this crate by cbindgen
//! (`capi/cbindgen.toml`; `scripts/check-capi` fails when it is out of date), so the doc comments
//! here are the C documentation. The crate uses only the library's public API (plus its test
//! hooks, with the `testing` feature).
//!
//! Names: `dt_<object>_<verb>`. A function whose first argument is an object is named after the
//! object's C type and the Rust method it calls (`dt_tracker_collect_range(t, ...)` is
//! `Tracker::collect_range`, `dt_dirty_set_union`, `dt_live_snapshot_wait`,
//! `dt_live_copy_commit`); so are the functions that create one (`dt_tracker_new`,
//! `dt_dirty_set_new`, `dt_capabilities_probe`), or free it (`dt_<object>_free`). A builder's
//! setters are `dt_tracker_builder_set_<option>` (`dt_tracker_mode` is the getter). Functions of
//! no object keep a plain name: `dt_status_name`, `dt_last_error_message`, `dt_open_handles`,
//! `dt_page_size`.
//!
//! One module per C object (as wasmtime's `crates/c-api`), and the `use`s go one way: each
//! module below uses only modules listed before it (`grep -n 'use crate::' capi/src/*.rs`).
//!
//! 1. [`status`]: the `dt_status` codes, generated with their `Error` mapping and
//!    `dt_status_name` from one table. Uses nothing.
//! 2. [`options`]: the `dt_mode`, `dt_thp` and `dt_prefault` enums and their conversions. Uses
//!    nothing.
//! 3. [`message`]: a library `Error` in C words, built from the variant and its fields for the
//!    C function called; the capability report in C words. Uses `options`.
//! 4. [`error`]: `entry` (every call runs under `catch_unwind`: a panic becomes `DT_ERR_PANIC`,
//!    nothing unwinds into C; the entry point passes its own name, which starts its message),
//!    and the thread-local `dt_last_error_message` (kept until the next failing call, like
//!    `errno`). Uses `status`, `message`.
//! 5. [`args`]: out-parameters and caller buffers, checked for NULL and alignment, set to NULL /
//!    0 first, written with `ptr::write`; the `DT_ERR_BUFFER_TOO_SMALL` convention; C enum
//!    arguments. Uses `error`, `status`.
//! 6. [`handles`]: handles are keys into a registry, never dereferenced: a NULL, garbage, freed
//!    or wrong-type handle is an error, not a crash; freeing a handle another thread is using is
//!    sound. Knows no object type: each object's module implements `Handle` for its own.
//!    Uses `error`, `status`.
//! 7. [`capabilities`]: `dt_capabilities`, `dt_capabilities_probe`, the probe's text report,
//!    the page size. Uses `args`, `error`, `message`, `options`, `status`.
//! 8. [`dirty_set`]: `dt_dirty_set`, read by index. Uses `args`, `error`, `handles`, `status`.
//! 9. [`live`]: `dt_live_snapshot` and the `dt_live_copy` it becomes. Uses `args`, `dirty_set`,
//!    `error`, `handles`, `status`.
//! 10. [`tracker`]: `dt_tracker`: every function on a tracker (collects, ranges, its
//!     capabilities, starting a live snapshot). Uses `args`, `capabilities`, `dirty_set`,
//!     `error`, `handles`, `live`, `message`, `options`, `status`.
//! 11. [`builder`]: `dt_tracker_builder`, which builds trackers. Uses `args`, `error`,
//!     `handles`, `options`, `status`, `tracker`.
//! 12. [`remote`] (x86_64 and aarch64 only, where the library's `remote` exists): `dt_remote`,
//!     tracking another process; its collects are `dt_dirty_set`s. Uses `args`, `dirty_set`,
//!     `error`, `handles`, `message`, `status`.
//! 13. `testing` (feature `testing` only): the hooks `dt__test_panic`, `dt__test_poison`. Uses
//!     `error`, `status`, `tracker`.

#![deny(unsafe_op_in_unsafe_fn)]
#![allow(non_camel_case_types)]
#![warn(missing_docs)]

// Declared in the order the header lists their functions (cbindgen follows the declaration
// order; the modules without functions come last); one per group, so rustfmt keeps the order.
// The dependency order is the one in the docs above.
pub mod status;

pub mod error;

pub mod handles;

pub mod capabilities;

pub mod builder;

pub mod tracker;

pub mod dirty_set;

pub mod live;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub mod remote;

pub mod options;

pub mod message;

pub mod args;

#[cfg(feature = "testing")]
pub mod testing;
