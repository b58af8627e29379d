//! What the kernel and this process allow: the `dt_capabilities` struct and the text report
//! (`dt_capabilities_probe`, `dt_capabilities_probe_report`; a tracker's own are
//! `dt_tracker_capabilities` and `dt_tracker_capabilities_report`, in [`crate::tracker`], which
//! uses [`to_c`] and [`write_report`] from here; the report's text is
//! [`crate::message::report`]); and the page size.

use crate::args::{copy_string, fixed_string, Out, OutBuf};
use crate::error::{entry, panic_message, set_last_error, Res};
use crate::message::{report, why_not};
use crate::options::{mode, mode_to_c, prefault, prefault_to_c};
use crate::status::{code_of, status};
use dirtytrack::{Capabilities, Error};
use libc::size_t;
use std::ffi::c_char;
use std::panic::catch_unwind;

/// Size of `dt_capabilities.kernel_release` (the kernel's own limit for `uname -r`, with the
/// NUL).
pub const DT_KERNEL_RELEASE_LEN: usize = 65;

/// Size of `dt_capabilities.async_why_not` and `sync_why_not`, with the NUL. A longer reason is
/// cut (ending in "..."); `dt_capabilities_probe_report` has it in full.
pub const DT_REASON_LEN: usize = 512;

/// What the running kernel and this process's privileges allow, as plain data
/// (`dt_capabilities_probe`, `dt_tracker_capabilities`). Strings are NUL-terminated, in place:
/// nothing to free.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct capabilities {
    /// `uname -r`.
    pub kernel_release: [c_char; DT_KERNEL_RELEASE_LEN],
    /// The `UFFD_FEATURE_*` bits the kernel offers (`uffdio_api.features`, `<linux/userfaultfd.h>`;
    /// e.g. `1 << 15` is `UFFD_FEATURE_WP_ASYNC`).
    pub features: u64,
    /// The `uffdio_api.ioctls` bits (`1 << _UFFDIO_*`).
    pub ioctls: u64,
    /// A full userfaultfd (one that also handles faults from kernel code) can be created; sync
    /// mode needs one.
    pub full_userfaultfd: bool,
    /// At least a `UFFD_USER_MODE_ONLY` userfaultfd can be created (enough for async mode).
    pub user_mode_only_userfaultfd: bool,
    /// The `PAGEMAP_SCAN` ioctl works (Linux 6.7+; async mode needs it).
    pub pagemap_scan: bool,
    /// `MADV_POPULATE_READ` works (Linux 5.14+).
    pub madv_populate_read: bool,
    /// `DT_OK` if async mode can run here, else the code a tracker in `DT_MODE_ASYNC` would fail
    /// with (e.g. `DT_ERR_UNSUPPORTED_KERNEL`, `DT_ERR_PERMISSION`).
    pub async_status: status,
    /// Why async mode cannot run here (empty when `async_status` is `DT_OK`).
    pub async_why_not: [c_char; DT_REASON_LEN],
    /// `DT_OK` if sync mode can run here, else the code a tracker in `DT_MODE_SYNC` would fail
    /// with.
    pub sync_status: status,
    /// Why sync mode cannot run here (empty when `sync_status` is `DT_OK`).
    pub sync_why_not: [c_char; DT_REASON_LEN],
    /// What `DT_MODE_AUTO` resolves to: `DT_MODE_ASYNC`, `DT_MODE_SYNC`, or `DT_MODE_AUTO` when
    /// no mode can run here.
    pub auto_mode: mode,
    /// How sync mode protects never-touched pages here (the best the kernel has; never
    /// `DT_PREFAULT_BEST`).
    pub prefault: prefault,
}

/// The status and C-worded reason of a mode check.
fn availability(check: Result<(), Error>) -> (status, [c_char; DT_REASON_LEN]) {
    match check {
        Ok(()) => (status::DT_OK, [0; DT_REASON_LEN]),
        Err(e) => (code_of(&e), fixed_string(&why_not(&e))),
    }
}

/// The C struct of `caps`.
pub(crate) fn to_c(caps: &Capabilities) -> capabilities {
    let (async_status, async_why_not) = availability(caps.check_async());
    let (sync_status, sync_why_not) = availability(caps.check_sync());
    capabilities {
        kernel_release: fixed_string(&caps.kernel_release),
        features: caps.features,
        ioctls: caps.ioctls,
        full_userfaultfd: caps.full_fd.is_some(),
        user_mode_only_userfaultfd: caps.user_mode_only_fd.is_some(),
        pagemap_scan: caps.pagemap_scan,
        madv_populate_read: caps.madv_populate_read,
        async_status,
        async_why_not,
        sync_status,
        sync_why_not,
        auto_mode: caps.auto_mode().map_or(mode::DT_MODE_AUTO, mode_to_c),
        prefault: prefault_to_c(caps.prefault()),
    }
}

/// Probes the running kernel without creating a tracker and stores what it allows in `*out`:
/// call it to choose a mode, or to explain a failed `dt_tracker_new`.
///
/// Errors: `DT_ERR_NULL`.
///
/// Ownership: `*out` is a plain struct, the caller's. Thread safety: any thread. Cost: it
/// creates and closes a few userfaultfds and maps one page.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `dt_capabilities`.
#[no_mangle]
pub unsafe extern "C" fn dt_capabilities_probe(out: *mut capabilities) -> status {
    entry("dt_capabilities_probe", || {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(to_c(&Capabilities::probe()));
        Ok(())
    })
}

/// The body of the report functions: writes the report of the capabilities `caps` gives into a
/// caller buffer (the buffer rules of `dt_capabilities_probe_report`), failing as `func`.
///
/// # Safety
///
/// As `dt_capabilities_probe_report`.
pub(crate) unsafe fn write_report(
    func: &str,
    caps: impl FnOnce() -> Res<String>,
    buf: *mut c_char,
    cap: size_t,
    out_needed: *mut size_t,
) -> status {
    entry(func, || {
        // SAFETY: the caller guarantees `buf` is valid for `cap` bytes and `out_needed` is NULL
        // or valid (this function's contract).
        let (buf, needed) = unsafe {
            (
                OutBuf::new(buf, cap, "buf")?,
                Out::optional(out_needed, "out_needed")?,
            )
        };
        copy_string(&caps()?, &buf, needed)
    })
}

/// Writes the capability report of the running kernel (what it offers, which modes are
/// available and why not; several lines of text) into `buf`, NUL-terminated, without creating
/// a tracker.
///
/// Buffer rules (snprintf-like): if `out_needed` is not NULL, `*out_needed` is set to the size
/// the text needs including its NUL. If `cap` is too small, the text is truncated to `cap - 1`
/// bytes plus a NUL (nothing is written when `cap` is 0) and `DT_ERR_BUFFER_TOO_SMALL` is
/// returned: call again with `*out_needed` bytes. Pass `buf = NULL, cap = 0` to ask the size.
///
/// Ownership: `buf` stays the caller's (no string is allocated for the caller to free).
/// Thread safety: any thread. Cost: as `dt_capabilities_probe`.
///
/// # Safety
///
/// `buf` must be valid for writes of `cap` bytes (it may be NULL when `cap` is 0);
/// `out_needed` must be NULL or valid for a write of a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn dt_capabilities_probe_report(
    buf: *mut c_char,
    cap: size_t,
    out_needed: *mut size_t,
) -> status {
    let text = || Ok(report(&Capabilities::probe()));
    // SAFETY: same contract.
    unsafe { write_report("dt_capabilities_probe_report", text, buf, cap, out_needed) }
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
    match catch_unwind(dirtytrack::page_size) {
        Ok(ps) => ps,
        Err(payload) => {
            set_last_error(&panic_message("dt_page_size", &*payload));
            std::mem::forget(payload);
            0
        }
    }
}
