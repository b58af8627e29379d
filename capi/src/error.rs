//! Failures on their way to C: the status code, this thread's last error message, the
//! translation of the library's Rust wording into C names, and `entry`, the wrapper every entry
//! point runs in (no panic crosses the boundary).
//!
//! The message follows `errno`'s rule: it is replaced by the next *failing* call on the same
//! thread and survives successful ones, so cleanup code (`goto fail; ... dt_dirty_set_free(s);
//! dt_tracker_free(t);`) does not erase the explanation before the program prints it.

use crate::status::{code_of, status};
use dirtytrack::Error;
use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// An error on its way to C: the code and the text for `dt_last_error_message`.
pub(crate) struct Failure {
    pub(crate) code: status,
    pub(crate) message: String,
}

pub(crate) type Res<T> = Result<T, Failure>;

pub(crate) fn fail(code: status, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        fail(code_of(&e), c_words(&e.to_string()))
    }
}

/// Rust names in the library's messages and what a C programmer calls them, longest first
/// where one contains another. `RangeId(N)` is handled by [`c_words`] itself.
const C_NAMES: &[(&str, &str)] = &[
    (
        "Tracker::builder().mode(Mode::Sync)",
        "dt_tracker_new_with_mode(DT_MODE_SYNC, &t) or dt_tracker_builder_set_mode(b, DT_MODE_SYNC)",
    ),
    (
        "Tracker::capabilities() or Capabilities::probe()",
        "dt_tracker_capabilities() or dt_probe_capabilities() (dt_probe_report() as text)",
    ),
    (
        "create a new Tracker in the child",
        "create a new tracker (dt_tracker_new) in the child",
    ),
    (
        "create a new Tracker",
        "free it and create a new tracker (dt_tracker_free, dt_tracker_new)",
    ),
    (
        "choose another Prefault",
        "choose another dt_prefault (dt_tracker_builder_set_prefault)",
    ),
    ("Tracker::builder()", "dt_tracker_builder_new()"),
    ("Tracker::capabilities()", "dt_tracker_capabilities()"),
    ("Capabilities::probe()", "dt_probe_capabilities()"),
    ("Tracker::collect_range", "dt_collect_range"),
    ("Tracker::clear_range", "dt_clear_range"),
    ("Tracker::live_snapshot", "dt_live_snapshot_start"),
    ("Tracker::mark_dirty", "dt_mark_dirty"),
    ("mark_dirty records", "dt_mark_dirty records"),
    ("Tracker::unregister", "dt_unregister"),
    ("Tracker::register", "dt_register"),
    ("Tracker::collect", "dt_collect"),
    ("Tracker::peek_range", "dt_peek_range"),
    ("Tracker::peek", "dt_peek"),
    ("Tracker::clear", "dt_clear"),
    ("Tracker::ranges", "dt_ranges"),
    ("Tracker::range", "dt_tracker_range"),
    ("chooses Async", "chooses DT_MODE_ASYNC"),
    ("chooses Sync", "chooses DT_MODE_SYNC"),
    ("Mode::Async", "DT_MODE_ASYNC"),
    ("Mode::Sync", "DT_MODE_SYNC"),
    ("Mode::Auto", "DT_MODE_AUTO"),
    // `{mode:?} mode` in the library's messages.
    ("Async mode", "async mode"),
    ("Sync mode", "sync mode"),
];

/// A library message in C words: Rust paths become the C functions and constants that do the
/// same thing, and `RangeId(7)` becomes `range 7` (the `uint64_t` id a C caller holds).
pub(crate) fn c_words(message: &str) -> String {
    let mut text = message.to_owned();
    for (rust, c) in C_NAMES {
        if text.contains(rust) {
            text = text.replace(rust, c);
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find("RangeId(") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "RangeId(".len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with(')') {
            out.push_str("range ");
            out.push_str(&after[..digits]);
            rest = &after[digits + 1..];
        } else {
            out.push_str("RangeId(");
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

thread_local! {
    /// The message of the last failed call on this thread (`None` before the first failure).
    /// Replaced only by the next failing call.
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Replaces this thread's message. Never panics (a NUL in the text is escaped; a thread being
/// torn down simply keeps no message).
pub(crate) fn set_last_error(message: &str) {
    let c = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    let _ = LAST_ERROR.try_with(|slot| {
        if let Ok(mut slot) = slot.try_borrow_mut() {
            *slot = Some(c);
        }
    });
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    format!("internal error: a Rust panic was caught at the C API boundary: {what}; the handles used by this call may be inconsistent, free them")
}

/// Runs `f` under `catch_unwind` and turns its result into a status; a failure (or a panic)
/// replaces this thread's message, a success leaves it alone.
pub(crate) fn entry(f: impl FnOnce() -> Res<()>) -> status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => status::DT_OK,
        Ok(Err(e)) => {
            set_last_error(&e.message);
            e.code
        }
        Err(payload) => {
            set_last_error(&panic_message(&*payload));
            // A payload whose destructor panics must not unwind out of here either.
            if let Err(again) = catch_unwind(AssertUnwindSafe(|| drop(payload))) {
                std::mem::forget(again);
            }
            status::DT_ERR_PANIC
        }
    }
}

/// The explanation of the most recent *failed* call on this thread: what happened and what to
/// do about it, in C terms (the functions and constants of this header). Empty (never NULL)
/// before the first failure. Like `errno`, successful calls leave it alone: check the status
/// first, then read the message; cleanup calls after a failure do not erase it.
///
/// Ownership: the string belongs to the library; do not free it. It stays valid until the next
/// failing `dt_` call on this thread; copy it to keep it longer.
///
/// Thread safety: each thread has its own message; errors on one thread never change another's.
///
/// # Safety
///
/// None: it takes no arguments. The returned pointer must not be used after the next failing
/// `dt_` call on this thread.
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

#[cfg(test)]
mod tests {
    use super::*;
    use dirtytrack::{Mode, RangeId};
    use std::io;

    /// Every message of the library's `Error` that can reach C, with Rust-only names absent.
    #[test]
    fn messages_speak_c() {
        let id = RangeId::from_raw(7);
        let errors = vec![
            Error::UnknownRange(id),
            Error::SnapshotInProgress(id),
            Error::Overlap {
                start: 0x1000,
                end: 0x2000,
                existing: id,
                existing_start: 0,
                existing_end: 0x1000,
            },
            Error::RangeLost {
                id,
                start: 0,
                end: 0x1000,
                reason: "unmapped".into(),
            },
            Error::LiveSnapshotFailed {
                id,
                reason: "x".into(),
            },
            Error::NeedsSyncMode {
                what: "a consistent live snapshot",
                mode: Mode::Async,
            },
            Error::ForkedChild {
                owner: 1,
                current: 2,
            },
            Error::Poisoned("the monitor thread panicked".into()),
            Error::UnsupportedKernel {
                mode: Mode::Sync,
                feature: "f",
                since: "6.4",
                kernel: "6.1".into(),
                alternative: "choose another Prefault, or leave the default (the best the kernel has)",
            },
            Error::UnsupportedKernel {
                mode: Mode::Async,
                feature: "UFFD_FEATURE_WP_ASYNC",
                since: "6.7",
                kernel: "6.1".into(),
                alternative: "use Mode::Sync (a monitor thread resolves write faults) or Mode::Auto, or run Linux 6.7 or newer",
            },
            Error::Permission("could not create the userfaultfd for Sync mode (x); see Tracker::capabilities() or Capabilities::probe() for what this process can do".into()),
            Error::NotTracked {
                start: 0x1000,
                end: 0x3000,
                addr: 0x2000,
            },
            Error::MappingNotSupported {
                start: 0,
                end: 0x1000,
                mapping: "file".into(),
                mode: Mode::Sync,
                source: io::Error::from_raw_os_error(libc::EINVAL),
                hint: "sync mode tracks anonymous, shmem/memfd and hugetlbfs memory only; use Mode::Async (Linux 6.7+) for regular file mappings",
            },
        ];
        for e in errors {
            let text = Failure::from(e).message;
            for rust in [
                "Mode::",
                "Tracker::",
                "Capabilities::",
                "RangeId",
                "Prefault,",
                "Async mode",
                "Sync mode",
                " Tracker",
                " mark_dirty",
            ] {
                assert!(!text.contains(rust), "{rust:?} in {text:?}");
            }
        }
        assert_eq!(
            c_words("RangeId(12) overlaps RangeId(3), RangeId(x)"),
            "range 12 overlaps range 3, RangeId(x)"
        );
        assert_eq!(
            c_words("Tracker::peek_range(RangeId(3)), Tracker::peek, Tracker::live_snapshot"),
            "dt_peek_range(range 3), dt_peek, dt_live_snapshot_start"
        );
        assert!(c_words(
            "needs Mode::Sync: build a tracker with Tracker::builder().mode(Mode::Sync)"
        )
        .ends_with("dt_tracker_builder_set_mode(b, DT_MODE_SYNC)"));
    }

    /// The capability report of this machine (the text of `dt_probe_report`) in C words.
    #[test]
    fn the_probe_report_speaks_c() {
        let caps = dirtytrack::Capabilities::probe();
        let mut texts = vec![c_words(&caps.to_string())];
        texts.extend(caps.check_async().err().map(|e| Failure::from(e).message));
        texts.extend(caps.check_sync().err().map(|e| Failure::from(e).message));
        for text in texts {
            for rust in ["Mode::", "Tracker::", "Capabilities::", "Prefault,"] {
                assert!(!text.contains(rust), "{rust:?} in {text:?}");
            }
        }
    }

    #[test]
    fn a_success_keeps_the_last_failure_message() {
        assert_eq!(
            entry(|| Err(fail(status::DT_ERR_NULL, "first"))),
            status::DT_ERR_NULL
        );
        assert_eq!(entry(|| Ok(())), status::DT_OK);
        // SAFETY: dt_last_error_message returns a NUL-terminated string valid until the next
        // failing call on this thread.
        let text = unsafe { std::ffi::CStr::from_ptr(dt_last_error_message()) };
        assert_eq!(text.to_str().ok(), Some("first"));
    }
}
