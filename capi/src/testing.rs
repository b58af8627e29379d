//! Test hooks, only with the `testing` feature (scripts/check-capi builds the test library with
//! it): exported, left out of the header, declared by `capi/tests/test_capi.c`. Never in a
//! shipped library.

use crate::error::entry;
use crate::status::status;
use crate::tracker::{get_tracker, tracker};

/// Test hook: panics inside the boundary, to check that the panic becomes `DT_ERR_PANIC`.
///
/// # Safety
///
/// None: it takes no pointer.
#[no_mangle]
pub extern "C" fn dt__test_panic() -> status {
    entry("dt__test_panic", || panic!("dt__test_panic was called"))
}

/// Test hook: makes the tracker's monitor thread panic the next time it wakes up (the tracker
/// then reports `DT_ERR_POISONED`).
///
/// # Safety
///
/// None: handles are validated, never dereferenced.
#[no_mangle]
pub extern "C" fn dt__test_poison(t: *mut tracker) -> status {
    entry("dt__test_poison", || {
        get_tracker(t)?.__panic_monitor_for_test();
        Ok(())
    })
}
