//! The atomics of the crate's lock-free code: std's, or loom's when the unit tests are built with
//! `--cfg loom` for the models in `loom_models` (`scripts/loom`).
//!
//! Every atomic the crate uses comes from here, so the loom models check the production code
//! itself, not a copy: the bitmap summary protocol (`bitmap::AtomicBitmap`), the range index's
//! move counter (`range::Moves`) and a range's start and `gone` flag (`range::RangeState`).
//! The only code that differs under loom is how the bitmap's words are allocated (loom's atomics
//! cannot be allocated zeroed), see `bitmap::zeroed_atomics`.

#[cfg(all(test, loom))]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(all(test, loom)))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
