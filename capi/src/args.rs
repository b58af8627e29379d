//! Checked arguments: out-parameters and caller buffers, and C enum values. Every pointer from C
//! is checked for NULL and alignment before use, and written with `ptr::write` (never through a
//! reference to caller memory, which may be uninitialised); an `int32_t` enum argument is checked
//! against its constants.

use crate::error::{fail, Res};
use crate::status::status;
use libc::size_t;
use std::ffi::c_char;

/// A non-NULL, aligned out-pointer. Invariant (from [`Out::new`]'s contract): valid for one
/// write of a `T`.
pub(crate) struct Out<T>(*mut T);

impl<T> Out<T> {
    /// # Safety
    ///
    /// `p` is NULL or valid for a write of a `T` for as long as the `Out` lives.
    pub(crate) unsafe fn new(p: *mut T, what: &str) -> Res<Out<T>> {
        if p.is_null() {
            return Err(fail(status::DT_ERR_NULL, format!("{what} is NULL")));
        }
        if !p.is_aligned() {
            return Err(fail(
                status::DT_ERR_INVALID_ARGUMENT,
                format!("{what} ({p:p}) is not aligned for its type"),
            ));
        }
        Ok(Out(p))
    }

    /// Like [`Out::new`], but NULL means "not wanted".
    ///
    /// # Safety
    ///
    /// As for [`Out::new`].
    pub(crate) unsafe fn optional(p: *mut T, what: &str) -> Res<Option<Out<T>>> {
        if p.is_null() {
            return Ok(None);
        }
        // SAFETY: forwarded from this function's contract.
        unsafe { Out::new(p, what) }.map(Some)
    }

    pub(crate) fn set(&self, value: T) {
        // SAFETY: non-NULL and aligned (checked in `new`), valid for a write (its contract);
        // `write` does not read or drop the old, possibly uninitialised, contents.
        unsafe { self.0.write(value) }
    }
}

/// A caller buffer of `cap` elements: NULL is allowed only when `cap` is 0.
pub(crate) struct OutBuf<T> {
    ptr: *mut T,
    cap: usize,
}

impl<T> OutBuf<T> {
    /// # Safety
    ///
    /// When `cap > 0`, `ptr` is NULL or valid for writes of `cap` consecutive `T`s for as long
    /// as the `OutBuf` lives.
    pub(crate) unsafe fn new(ptr: *mut T, cap: usize, what: &str) -> Res<OutBuf<T>> {
        if cap > 0 && ptr.is_null() {
            return Err(fail(
                status::DT_ERR_NULL,
                format!("{what} is NULL but its capacity is {cap}"),
            ));
        }
        if cap > 0 && !ptr.is_aligned() {
            return Err(fail(
                status::DT_ERR_INVALID_ARGUMENT,
                format!("{what} ({ptr:p}) is not aligned for its element type"),
            ));
        }
        Ok(OutBuf { ptr, cap })
    }

    pub(crate) fn put(&self, i: usize, value: T) {
        assert!(
            i < self.cap,
            "buffer index {i} out of bounds ({})",
            self.cap
        );
        // SAFETY: i < cap, and the buffer is valid for `cap` writes (the contract of `new`);
        // non-NULL and aligned when cap > 0 (checked in `new`).
        unsafe { self.ptr.add(i).write(value) }
    }
}

/// The value of a C enum argument passed as an `int32_t` (`parsed`: what it stands for, `None`
/// when it is not a `what`), or `DT_ERR_INVALID_ARGUMENT` naming the accepted values.
pub(crate) fn enum_arg<T>(value: i32, parsed: Option<T>, what: &str, choices: &str) -> Res<T> {
    parsed.ok_or_else(|| {
        fail(
            status::DT_ERR_INVALID_ARGUMENT,
            format!("{value} is not a {what}: use {choices}"),
        )
    })
}

/// The error of a buffer with room for `cap` of the `need` items (or bytes) a call has.
fn too_small(cap: usize, need: usize, unit: &str) -> Res<()> {
    if cap >= need {
        return Ok(());
    }
    Err(fail(
        status::DT_ERR_BUFFER_TOO_SMALL,
        format!("the buffer holds {cap} {unit} but {need} are needed; the first {cap} were written: call again with at least {need}"),
    ))
}

/// Copies `text` NUL-terminated into a caller buffer (snprintf-like: truncated to `cap - 1`
/// bytes plus a NUL when too small, which is then `DT_ERR_BUFFER_TOO_SMALL`), and stores the
/// size it needs (with its NUL) in `needed`.
pub(crate) fn copy_string(
    text: &str,
    buf: &OutBuf<c_char>,
    needed: Option<Out<size_t>>,
) -> Res<()> {
    let need = text.len() + 1;
    if let Some(n) = needed {
        n.set(need);
    }
    if buf.cap > 0 {
        let n = text.len().min(buf.cap - 1);
        for (i, &b) in text.as_bytes()[..n].iter().enumerate() {
            buf.put(i, b as c_char);
        }
        buf.put(n, 0);
    }
    too_small(buf.cap, need, "bytes (with the NUL)")
}

/// Copies the first `buf.cap()` of `items` into a caller buffer, stores how many there are in
/// `count`, and fails with `DT_ERR_BUFFER_TOO_SMALL` when they do not all fit.
pub(crate) fn copy_items<T>(items: Vec<T>, buf: &OutBuf<T>, count: &Out<size_t>) -> Res<()> {
    copy_counted(items, buf, count, "entries")
}

/// [`copy_items`] for items counted in `unit` ("bytes" for an opaque blob, "entries", "fds").
pub(crate) fn copy_counted<T>(
    items: Vec<T>,
    buf: &OutBuf<T>,
    count: &Out<size_t>,
    unit: &str,
) -> Res<()> {
    let need = items.len();
    count.set(need);
    for (i, item) in items.into_iter().take(buf.cap).enumerate() {
        buf.put(i, item);
    }
    too_small(buf.cap, need, unit)
}

/// Copies `text` into a fixed-size C char array, NUL-terminated, truncated at a UTF-8 character
/// boundary (with "..." when it had to be cut) if it does not fit.
pub(crate) fn fixed_string<const N: usize>(text: &str) -> [c_char; N] {
    let mut out = [0 as c_char; N];
    let mut text = std::borrow::Cow::Borrowed(text);
    if text.len() >= N {
        let mut cut = N.saturating_sub(4);
        while cut > 0 && !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text = format!("{}...", &text[..cut]).into();
    }
    for (slot, &b) in out
        .iter_mut()
        .zip(text.as_bytes().iter().take(N.saturating_sub(1)))
    {
        *slot = b as c_char;
    }
    out
}
