//! The C API of dirtytrack: `libdirtytrack.a` and `libdirtytrack.so.0`, header
//! `capi/include/dirtytrack.h`. The header is generated from this crate by cbindgen
//! (`capi/cbindgen.toml`; `scripts/check-capi` fails when it is out of date), so the doc comments
//! here are the C documentation. The crate uses only the library's public API (plus its test
//! hooks, with the `testing` feature).
//!
//! One module per kind of object, as the header groups them:
//!
//! - [`status`]: the `dt_status` codes, generated with their `Error` mapping and
//!   `dt_status_name` from one table.
//! - [`error`]: `entry` (every call runs under `catch_unwind`: a panic becomes `DT_ERR_PANIC`,
//!   nothing unwinds into C), the thread-local `dt_last_error_message` (kept until the next
//!   failing call, like `errno`), and the translation of Rust names in messages into C names.
//! - [`handles`]: handles are keys into a registry, never dereferenced: a NULL, garbage, freed
//!   or wrong-type handle is an error, not a crash; freeing a handle another thread is using is
//!   sound.
//! - [`args`]: out-parameters and caller buffers, checked for NULL and alignment, set to NULL /
//!   0 first, written with `ptr::write`; the `DT_ERR_BUFFER_TOO_SMALL` convention.
//! - [`tracker`]: the builder, trackers, ranges, collects. [`dirty_set`]: reading a set by
//!   index. [`live`]: live snapshots. [`capabilities`]: `dt_capabilities`, the text reports,
//!   the page size.
//! - `testing` (feature `testing` only): the hooks `dt__test_panic`, `dt__test_poison`.

#![deny(unsafe_op_in_unsafe_fn)]
#![allow(non_camel_case_types)]
#![warn(missing_docs)]

// Declared in the order the header lists them (cbindgen follows it); one per group, so rustfmt
// keeps the order.
pub mod status;

pub mod error;

pub mod handles;

pub mod capabilities;

pub mod tracker;

pub mod dirty_set;

pub mod live;

pub mod args;

#[cfg(feature = "testing")]
pub mod testing;
