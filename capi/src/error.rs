//! Failures on their way to C: the status code, this thread's last error message, and `entry`,
//! the wrapper every entry point runs in (no panic crosses the boundary). A failure of the
//! library stays a typed `dirtytrack::Error` until `entry`, which knows the C function that was
//! called, turns it into text ([`crate::message::describe`]).
//!
//! The message follows `errno`'s rule: it is replaced by the next *failing* call on the same
//! thread and survives successful ones, so cleanup code (`goto fail; ... dt_dirty_set_free(s);
//! dt_tracker_free(t);`) does not erase the explanation before the program prints it.

use crate::message::describe;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use crate::message::describe_remote;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use crate::status::remote_code_of;
use crate::status::{code_of, status};
use dirtytrack::Error;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use dirtytrack::RemoteError;
use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// An error on its way to C: the code, and what `dt_last_error_message` will say.
pub(crate) struct Failure {
    pub(crate) code: status,
    why: Why,
}

/// What a failure says: text of the C API itself, or a library error, described in C words
/// once the name of the called function is known (in [`entry`]).
enum Why {
    Text(String),
    Library(Error),
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    Remote(RemoteError),
}

pub(crate) type Res<T> = Result<T, Failure>;

/// A failure of the C API itself (a NULL or wrong handle, a bad argument, a small buffer).
pub(crate) fn fail(code: status, message: impl Into<String>) -> Failure {
    Failure {
        code,
        why: Why::Text(message.into()),
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure {
            code: code_of(&e),
            why: Why::Library(e),
        }
    }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
impl From<RemoteError> for Failure {
    fn from(e: RemoteError) -> Failure {
        Failure {
            code: remote_code_of(&e),
            why: Why::Remote(e),
        }
    }
}

impl Failure {
    /// The text of `dt_last_error_message` for a failure of `func`: `func: what happened and
    /// what to do`.
    pub(crate) fn message(&self, func: &str) -> String {
        match &self.why {
            Why::Text(text) => format!("{func}: {text}"),
            Why::Library(e) => format!("{func}: {}", describe(e, func)),
            #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
            Why::Remote(e) => format!("{func}: {}", describe_remote(e, func)),
        }
    }
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

/// The message of a panic caught in the C function `func`.
pub(crate) fn panic_message(func: &str, payload: &(dyn std::any::Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    format!("{func}: internal error: a Rust panic was caught at the C API boundary: {what}; the handles used by this call may be inconsistent, free them")
}

/// Runs the body `f` of the C function `func` under `catch_unwind` and turns its result into a
/// status; a failure (or a panic) replaces this thread's message, which starts with `func`, a
/// success leaves it alone. `func` is the exported name (a unit test checks every entry point
/// passes its own).
pub(crate) fn entry(func: &str, f: impl FnOnce() -> Res<()>) -> status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => status::DT_OK,
        Ok(Err(e)) => {
            set_last_error(&e.message(func));
            e.code
        }
        Err(payload) => {
            set_last_error(&panic_message(func, &*payload));
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
    use dirtytrack::RangeId;
    use std::ffi::CStr;

    fn last() -> String {
        // SAFETY: dt_last_error_message returns a NUL-terminated string valid until the next
        // failing call on this thread.
        unsafe { CStr::from_ptr(dt_last_error_message()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_success_keeps_the_last_failure_message() {
        assert_eq!(
            entry("dt_f", || Err(fail(status::DT_ERR_NULL, "first"))),
            status::DT_ERR_NULL
        );
        assert_eq!(entry("dt_g", || Ok(())), status::DT_OK);
        assert_eq!(last(), "dt_f: first");
    }

    #[test]
    fn a_library_error_is_described_for_the_called_function() {
        let st = entry("dt_tracker_peek_range", || {
            Err(Error::UnknownRange(RangeId::from_raw(5)).into())
        });
        assert_eq!(st, status::DT_ERR_UNKNOWN_RANGE);
        assert!(
            last().starts_with("dt_tracker_peek_range: range 5 is not registered"),
            "{}",
            last()
        );
    }

    /// Every exported function passes its own name to `entry` (or to the helper that calls it:
    /// `free`, `harvest_into`, ...), so that its messages name the function the caller called.
    #[test]
    fn every_entry_point_names_itself() {
        let sources = [
            include_str!("builder.rs"),
            include_str!("capabilities.rs"),
            include_str!("dirty_set.rs"),
            include_str!("error.rs"),
            include_str!("handles.rs"),
            include_str!("live.rs"),
            include_str!("remote.rs"),
            include_str!("testing.rs"),
            include_str!("tracker.rs"),
        ];
        // Functions that cannot fail with a message of their own.
        let silent = [
            "dt_last_error_message",
            "dt_open_handles",
            "dt_remote_uffd_flags",
        ];
        let mut seen = 0;
        for src in sources {
            for part in src.split("extern \"C\" fn ").skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let body = &part[..part.find("\n}\n").unwrap_or(part.len())];
                let named: Vec<&str> = body
                    .split("(\"dt_")
                    .skip(1)
                    .filter_map(|rest| rest.split('"').next())
                    .filter(|n| n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                    .collect();
                if silent.contains(&name.as_str()) {
                    assert!(named.is_empty(), "{name}");
                    continue;
                }
                assert!(!named.is_empty(), "{name} passes no name");
                for n in named {
                    assert_eq!(format!("dt_{n}"), name, "in the body of {name}");
                }
                seen += 1;
            }
        }
        assert_eq!(seen, 57, "entry points checked");
    }

    #[test]
    fn a_panic_names_the_function() {
        assert_eq!(entry("dt_h", || panic!("boom")), status::DT_ERR_PANIC);
        assert!(last().starts_with("dt_h: internal error"), "{}", last());
        assert!(last().contains("boom"));
    }
}
