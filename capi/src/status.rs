//! Status codes: the `dt_status` enum, the mapping from the library's `Error` variants to codes,
//! and `dt_status_name`, all generated from the one table at the bottom of this file, so a code
//! cannot be added to one and forgotten in another. A row may also stand for variants of
//! `dirtytrack::RemoteError` (tracking another process, `dt_remote_*`: `remote(pattern)`), on the
//! architectures that have it; the codes themselves exist everywhere.

use dirtytrack::Error;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use dirtytrack::RemoteError;
use std::ffi::c_char;

/// Expands the status table into the `status` enum, `code_of` (Error variant -> code) and
/// `dt_status_name` (code -> name), and `remote_code_of` (RemoteError variant -> code). A row is
/// `/// doc` `NAME = code`, then for codes that stand for `RemoteError` variants `remote(pattern)`,
/// and for codes that stand for an `Error` variant `from` the variant's pattern.
macro_rules! status_table {
    ($( $(#[doc = $doc:literal])* $name:ident = $code:literal $(remote($rpat:pat))? $(from $pat:pat)? ,)*) => {
        /// Result of every fallible `dt_` function: `DT_OK` (0) or a negative error code.
        /// `dt_last_error_message()` gives the explanation, `dt_status_name()` the constant's
        /// name. Codes -1 to -99 stand for errors of the library (the Rust `dirtytrack::Error`
        /// variants); codes from -100 on belong to the C API.
        #[repr(C)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum status {
            $( $(#[doc = $doc])* $name = $code, )*
        }

        /// The code of a library error. `Error` is `#[non_exhaustive]`: a variant added to the
        /// library after this table was written maps to `DT_ERR_OTHER` (its message still says
        /// what happened) until it gets a row.
        pub(crate) fn code_of(e: &Error) -> status {
            match e {
                $($( $pat => status::$name, )?)*
                _ => status::DT_ERR_OTHER,
            }
        }

        /// The code of an error of remote tracking (`RemoteError` is `#[non_exhaustive]` too:
        /// a variant added later maps to `DT_ERR_OTHER` until it gets a row).
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        pub(crate) fn remote_code_of(e: &RemoteError) -> status {
            match e {
                $($( $rpat => status::$name, )?)*
                _ => status::DT_ERR_OTHER,
            }
        }

        /// The name of a status code as a string ("DT_OK", "DT_ERR_NOT_MAPPED", ...), or
        /// "DT_ERR_UNKNOWN_CODE" for a value that is not a `dt_status`. Takes an `int32_t` so
        /// any value is safe to pass.
        ///
        /// Ownership: a static string; do not free it. Thread safety: any thread.
        ///
        /// # Safety
        ///
        /// None: it takes no pointer.
        #[no_mangle]
        pub extern "C" fn dt_status_name(code: i32) -> *const c_char {
            let name: &'static str = match code {
                $( $code => concat!(stringify!($name), "\0"), )*
                _ => "DT_ERR_UNKNOWN_CODE\0",
            };
            name.as_ptr().cast()
        }
    };
}

status_table! {
    /// Success.
    DT_OK = 0,
    /// An address or length is not a multiple of the page size.
    DT_ERR_UNALIGNED = -1 from Error::Unaligned { .. },
    /// A zero-length range.
    DT_ERR_ZERO_LENGTH = -2 from Error::ZeroLength { .. },
    /// `addr + len` wraps around the address space.
    DT_ERR_ADDRESS_OVERFLOW = -3 from Error::AddressOverflow { .. },
    /// Part of the range is not mapped in this process.
    DT_ERR_NOT_MAPPED = -4 from Error::NotMapped { .. },
    /// The range overlaps a range this tracker already tracks.
    DT_ERR_OVERLAP = -5 from Error::Overlap { .. },
    /// Another userfaultfd (another tracker, or a VMM's own) already owns the memory.
    DT_ERR_OWNED_BY_ANOTHER_USERFAULTFD = -6 from Error::OwnedByAnotherUserfaultfd { .. },
    /// The kernel refused to write-protect this kind of mapping in this mode.
    DT_ERR_MAPPING_NOT_SUPPORTED = -7 from Error::MappingNotSupported { .. },
    /// The running kernel lacks a feature the requested mode needs.
    DT_ERR_UNSUPPORTED_KERNEL = -8
        remote(RemoteError::KernelTooOld { .. })
        from Error::UnsupportedKernel { .. },
    /// No userfaultfd could be had, or not one of the kind the mode needs.
    DT_ERR_PERMISSION = -9
        remote(RemoteError::UserfaultfdFailed { .. })
        from Error::Permission(_),
    /// Out of file descriptors or memory.
    DT_ERR_RESOURCE_EXHAUSTED = -10 from Error::ResourceExhausted { .. },
    /// The range id is not (or no longer) registered with this tracker.
    DT_ERR_UNKNOWN_RANGE = -11 from Error::UnknownRange(_),
    /// A range's registration vanished (unmapped, replaced, moved): its pages were reported
    /// dirty once more; unregister it.
    DT_ERR_RANGE_LOST = -12 from Error::RangeLost { .. },
    /// The tracker was created by another process (this one is a fork child).
    DT_ERR_FORKED_CHILD = -13 from Error::ForkedChild { .. },
    /// The tracker's monitor thread died; create a new tracker.
    DT_ERR_POISONED = -14 from Error::Poisoned(_),
    /// A live snapshot could not produce a consistent copy; take it again.
    DT_ERR_LIVE_SNAPSHOT_FAILED = -15 from Error::LiveSnapshotFailed { .. },
    /// The operation needs a tracker in `DT_MODE_SYNC`.
    DT_ERR_NEEDS_SYNC_MODE = -16 from Error::NeedsSyncMode { .. },
    /// A live snapshot of the range is already running.
    DT_ERR_SNAPSHOT_IN_PROGRESS = -17 from Error::SnapshotInProgress(_),
    /// A kernel call failed in a way the library has no better name for.
    DT_ERR_KERNEL = -18
        remote(RemoteError::Kernel { .. } | RemoteError::Injection { .. })
        from Error::Kernel { .. },
    /// `PAGEMAP_SCAN` stopped making progress (the unscanned rest was kept as dirty).
    DT_ERR_SCAN_NO_PROGRESS = -19 from Error::ScanNoProgress { .. },
    /// `dt_tracker_mark_dirty` named memory that no registered range covers.
    DT_ERR_NOT_TRACKED = -20 from Error::NotTracked { .. },
    /// `dt_remote_*`: no process has this pid (or it is a zombie).
    DT_ERR_NO_SUCH_PROCESS = -21 remote(RemoteError::NoSuchProcess { .. }),
    /// `dt_remote_*`: the target exited (or is exiting) during the call; the call's result is
    /// void.
    DT_ERR_TARGET_EXITED = -22 remote(RemoteError::TargetExited { .. }),
    /// `dt_remote_*`: the target no longer holds the tracking userfaultfd (it executed a new
    /// program, or closed the fd): treat its whole memory as changed (take a full dump), then
    /// adopt or attach a new one.
    DT_ERR_TRACKING_LOST = -23 remote(RemoteError::TrackingLost { .. }),
    /// `dt_remote_*`: no ptrace access to the target (another uid, Yama, already traced).
    DT_ERR_PTRACE_REFUSED = -24 remote(RemoteError::PtraceRefused { .. }),
    /// `dt_remote_attach`: the target's seccomp filter refuses `userfaultfd(2)`.
    DT_ERR_SECCOMP_DENIED = -25 remote(RemoteError::SeccompDenied { .. }),
    /// `dt_remote_adopt`: the fd is not a userfaultfd this library may use for the target (not a
    /// userfaultfd, below `DT_REMOTE_MARK_FD_BASE`, the target's own, or a copy inherited from
    /// its parent).
    DT_ERR_NOT_A_TRACKING_FD = -26 remote(RemoteError::NotATrackingFd { .. }),
    /// `dt_remote_*`: a state blob (`dt_remote_save_state`) that this library cannot read.
    DT_ERR_BAD_STATE = -27 remote(RemoteError::BadState(_)),
    /// `dt_remote_attach`, `dt_remote_adopt`: another tracker (another `dt_remote`, or another
    /// process such as the dirtytrack CLI) tracks the target now: one tracker per target.
    DT_ERR_TARGET_BUSY = -28 remote(RemoteError::TargetBusy { .. }),
    /// An error of the library that this version of the C API has no dedicated code for; the
    /// message says what happened and what to do.
    DT_ERR_OTHER = -99,
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
    DT_ERR_INVALID_ARGUMENT = -103
        remote(RemoteError::Usage(_))
        from Error::InvalidPageSize { .. },
    /// A caller buffer is too small (for a string, or for `dt_tracker_ranges`); the call says how
    /// big it must be.
    DT_ERR_BUFFER_TOO_SMALL = -104,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn name(code: i32) -> &'static str {
        // SAFETY: dt_status_name returns a pointer to a static NUL-terminated string.
        unsafe { CStr::from_ptr(dt_status_name(code)) }
            .to_str()
            .unwrap_or("?")
    }

    #[test]
    fn names_and_codes_come_from_one_table() {
        assert_eq!(name(status::DT_OK as i32), "DT_OK");
        assert_eq!(name(status::DT_ERR_NOT_MAPPED as i32), "DT_ERR_NOT_MAPPED");
        assert_eq!(name(-104), "DT_ERR_BUFFER_TOO_SMALL");
        assert_eq!(name(-99), "DT_ERR_OTHER");
        assert_eq!(name(1), "DT_ERR_UNKNOWN_CODE");
        assert_eq!(
            code_of(&Error::UnknownRange(dirtytrack::RangeId::from_raw(3))),
            status::DT_ERR_UNKNOWN_RANGE
        );
        assert_eq!(
            code_of(&Error::Poisoned("x".into())),
            status::DT_ERR_POISONED
        );
    }
}
