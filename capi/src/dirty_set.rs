//! Dirty sets: the pages a collect or peek reported, read by index into caller buffers.
//!
//! Iteration copies pages or runs into caller buffers by index. The first call on a set builds a
//! run table (one pass over its bitmap, cached until the set changes), after which a call costs
//! O(log runs + items written): iterating a whole set is O(n) whatever the buffer size.

use crate::args::{Out, OutBuf};
use crate::error::{entry, Res};
use crate::handles::{free, insert, lookup, Handle};
use crate::status::status;
use dirtytrack::DirtySet;
use libc::size_t;
use parking_lot::RwLock;
use std::sync::{Arc, OnceLock};

/// A maximal run of contiguous dirty pages: `len` bytes (a multiple of the page size) at
/// address `start`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct run {
    /// Start address (page aligned).
    pub start: usize,
    /// Length in bytes.
    pub len: size_t,
}

/// A set of dirty pages (opaque handle). Created by the collect/peek functions,
/// `dt_dirty_set_new` and `dt_live_copy_dirty_at_instant`; freed by `dt_dirty_set_free`.
pub struct dirty_set {
    _opaque: [u8; 0],
}

/// A dirty set and its run table (built on first iteration, dropped when the set changes).
pub(crate) struct SetObj {
    state: RwLock<SetState>,
}

impl Handle for SetObj {
    const C_NAME: &'static str = "dt_dirty_set";
}

struct SetState {
    set: DirtySet,
    index: OnceLock<RunIndex>,
}

/// The runs of a set, and for each run the index of its first page among all pages.
struct RunIndex {
    runs: Vec<run>,
    first_page: Vec<usize>,
}

impl SetObj {
    fn new(set: DirtySet) -> SetObj {
        SetObj {
            state: RwLock::new(SetState {
                set,
                index: OnceLock::new(),
            }),
        }
    }
}

impl SetState {
    fn index(&self) -> &RunIndex {
        self.index.get_or_init(|| {
            let ps = self.set.page_size();
            let mut runs = Vec::new();
            let mut first_page = Vec::new();
            let mut pages = 0usize;
            for r in self.set.runs() {
                let len = r.end - r.start;
                runs.push(run {
                    start: r.start,
                    len,
                });
                first_page.push(pages);
                pages += len / ps;
            }
            RunIndex { runs, first_page }
        })
    }
}

/// Registers `set` and returns its handle.
pub(crate) fn new_set(set: DirtySet) -> *mut dirty_set {
    insert(SetObj::new(set))
}

fn get_set(s: *const dirty_set) -> Res<Arc<SetObj>> {
    lookup(s)
}

/// Creates an empty dirty set (e.g. to accumulate sets with `dt_dirty_set_union`).
///
/// Ownership: on `DT_OK` the caller owns `*out` (`dt_dirty_set_free`); on error `*out` is NULL.
/// Thread safety: any thread.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `dt_dirty_set *`.
#[no_mangle]
pub unsafe extern "C" fn dt_dirty_set_new(out: *mut *mut dirty_set) -> status {
    entry("dt_dirty_set_new", || {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(new_set(DirtySet::new()));
        Ok(())
    })
}

/// Frees a dirty set. NULL is accepted and ignored (`DT_OK`), like `free(NULL)`.
///
/// Errors: `DT_ERR_INVALID_HANDLE` for a handle that is not a live dirty set (a double free is
/// always detected: handles are never reused).
///
/// Ownership: the handle is invalid afterwards. Thread safety: any thread; calls on the set
/// running in other threads finish normally, later ones get `DT_ERR_INVALID_HANDLE`.
///
/// # Safety
///
/// None: handles are validated, never dereferenced.
#[no_mangle]
pub extern "C" fn dt_dirty_set_free(set: *mut dirty_set) -> status {
    free::<SetObj, _>("dt_dirty_set_free", set)
}

/// Stores the number of dirty pages in `*out`. O(1).
///
/// Ownership: borrows the set. Thread safety: any thread, concurrently with other readers; a
/// concurrent `dt_dirty_set_union` into the set is serialized with it.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn dt_dirty_set_len(set: *const dirty_set, out: *mut size_t) -> status {
    entry("dt_dirty_set_len", || {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(0);
        out.set(get_set(set)?.state.read().set.len());
        Ok(())
    })
}

/// Stores the number of maximal runs of contiguous dirty pages in `*out` (the buffer size that
/// takes all runs of `dt_dirty_set_runs` in one call). Builds the set's run table on first use.
///
/// Ownership: borrows the set. Thread safety: as `dt_dirty_set_len`.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn dt_dirty_set_run_count(set: *const dirty_set, out: *mut size_t) -> status {
    entry("dt_dirty_set_run_count", || {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(0);
        out.set(get_set(set)?.state.read().index().runs.len());
        Ok(())
    })
}

/// Stores in `*out` whether the page containing `addr` is dirty. O(log ranges).
///
/// Ownership: borrows the set. Thread safety: as `dt_dirty_set_len`.
///
/// # Safety
///
/// `out` must be NULL (an error) or valid for a write of a `bool`.
#[no_mangle]
pub unsafe extern "C" fn dt_dirty_set_contains(
    set: *const dirty_set,
    addr: usize,
    out: *mut bool,
) -> status {
    entry("dt_dirty_set_contains", || {
        // SAFETY: `out` is NULL or valid for a write (this function's contract).
        let out = unsafe { Out::new(out, "out")? };
        out.set(false);
        out.set(get_set(set)?.state.read().set.contains(addr));
        Ok(())
    })
}

/// The shared body of `dt_dirty_set_pages` and `dt_dirty_set_runs`: checks the arguments,
/// then `fill` writes the items from the requested index on into `buf` and returns how many.
///
/// # Safety
///
/// `buf` is valid for writes of `cap` `T`s (it may be NULL when `cap` is 0); `out_written` is
/// NULL or valid for a write of a `size_t`.
unsafe fn read_into<T>(
    func: &str,
    set: *const dirty_set,
    buf: *mut T,
    cap: size_t,
    out_written: *mut size_t,
    fill: impl FnOnce(&SetState, &OutBuf<T>) -> usize,
) -> status {
    entry(func, || {
        // SAFETY: forwarded from this function's contract.
        let (out, buf) = unsafe {
            (
                Out::new(out_written, "out_written")?,
                OutBuf::new(buf, cap, "buf")?,
            )
        };
        out.set(0);
        let set = get_set(set)?;
        let state = set.state.read();
        out.set(fill(&state, &buf));
        Ok(())
    })
}

/// Copies the start addresses of dirty pages `start_index`, `start_index + 1`, ... (in
/// ascending address order; index 0 is the lowest page) into `buf`, at most `cap` of them, and
/// stores how many it wrote in `*out_written`: fewer than `cap` only at the end of the set, 0
/// when `start_index >= dt_dirty_set_len`.
///
/// Loop: `for (size_t i = 0, n; dt_dirty_set_pages(s, i, buf, CAP, &n) == DT_OK && n > 0;
/// i += n) { ... }`. The first call builds the set's run table (one pass over its bitmap; 24
/// bytes per run, kept until the set is freed or changed); each call then costs
/// O(log runs + n), so a whole iteration is O(pages) with any buffer size.
///
/// Ownership: `buf` stays the caller's. Thread safety: as `dt_dirty_set_len`; indices refer to
/// the set's current contents, so a `dt_dirty_set_union` into the set between calls changes
/// what they denote.
///
/// # Safety
///
/// `buf` must be valid for writes of `cap` `uintptr_t`s (it may be NULL when `cap` is 0);
/// `out_written` must be NULL (an error) or valid for a write of a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn dt_dirty_set_pages(
    set: *const dirty_set,
    start_index: size_t,
    buf: *mut usize,
    cap: size_t,
    out_written: *mut size_t,
) -> status {
    let fill = |state: &SetState, buf: &OutBuf<usize>| {
        if start_index >= state.set.len() || cap == 0 {
            return 0;
        }
        let ps = state.set.page_size();
        let index = state.index();
        // The run holding page `start_index`: the last one whose first page is <= it.
        let mut r = index
            .first_page
            .partition_point(|&f| f <= start_index)
            .saturating_sub(1);
        let mut offset = start_index - index.first_page.get(r).copied().unwrap_or(0);
        let mut n = 0;
        while n < cap {
            let Some(run) = index.runs.get(r) else { break };
            let pages = run.len / ps;
            while offset < pages && n < cap {
                buf.put(n, run.start + offset * ps);
                n += 1;
                offset += 1;
            }
            if offset >= pages {
                r += 1;
                offset = 0;
            }
        }
        n
    };
    // SAFETY: same contract.
    unsafe { read_into("dt_dirty_set_pages", set, buf, cap, out_written, fill) }
}

/// Copies runs `start_index`, `start_index + 1`, ... of maximal contiguous dirty pages (in
/// ascending address order, coalesced across adjacent ranges) into `buf`, at most `cap` of
/// them, and stores how many it wrote in `*out_written`: fewer than `cap` only at the end, 0
/// when `start_index` is at or past the run count (`dt_dirty_set_run_count`).
///
/// Loop: `for (size_t i = 0, n; dt_dirty_set_runs(s, i, buf, CAP, &n) == DT_OK && n > 0;
/// i += n) { ... }`. The first call builds the set's run table; each call then costs O(n).
///
/// Ownership: `buf` stays the caller's. Thread safety: as `dt_dirty_set_pages`.
///
/// # Safety
///
/// `buf` must be valid for writes of `cap` `dt_run`s (it may be NULL when `cap` is 0);
/// `out_written` must be NULL (an error) or valid for a write of a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn dt_dirty_set_runs(
    set: *const dirty_set,
    start_index: size_t,
    buf: *mut run,
    cap: size_t,
    out_written: *mut size_t,
) -> status {
    let fill = |state: &SetState, buf: &OutBuf<run>| {
        let runs = &state.index().runs;
        let from = start_index.min(runs.len());
        let to = from + cap.min(runs.len() - from);
        for (i, r) in runs[from..to].iter().enumerate() {
            buf.put(i, *r);
        }
        to - from
    };
    // SAFETY: same contract.
    unsafe { read_into("dt_dirty_set_runs", set, buf, cap, out_written, fill) }
}

/// Adds every page of `src` to `dst` (e.g. a dump of a collected set failed: merge it into the
/// next set so nothing is lost). `src` is unchanged; `dst == src` is allowed (no change).
///
/// Errors: `DT_ERR_NULL`, `DT_ERR_INVALID_HANDLE`.
///
/// Ownership: borrows both sets; `src` stays the caller's to free. Thread safety: any thread;
/// serialized with other calls on `dst` (deadlock-free whatever the argument order).
///
/// # Safety
///
/// None: handles are validated, never dereferenced.
#[no_mangle]
pub extern "C" fn dt_dirty_set_union(dst: *mut dirty_set, src: *const dirty_set) -> status {
    entry("dt_dirty_set_union", || {
        let (d, s) = (get_set(dst)?, get_set(src)?);
        if Arc::ptr_eq(&d, &s) {
            return Ok(());
        }
        // Lock in address order, so concurrent union(a, b) and union(b, a) cannot deadlock.
        let (mut dw, sr);
        if Arc::as_ptr(&d) < Arc::as_ptr(&s) {
            dw = d.state.write();
            sr = s.state.read();
        } else {
            sr = s.state.read();
            dw = d.state.write();
        }
        dw.set.union(&sr.set);
        dw.index = OnceLock::new();
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handles::HANDLE_TAG;

    /// Another handle type, to check that a set is not taken for one.
    struct Other;
    impl Handle for Other {
        const C_NAME: &'static str = "dt_other";
    }

    #[test]
    fn handles_are_odd_and_validated() {
        let mut s: *mut dirty_set = std::ptr::null_mut();
        // SAFETY: `s` is a valid out-pointer.
        assert_eq!(unsafe { dt_dirty_set_new(&mut s) }, status::DT_OK);
        assert_eq!(s as usize & 0xf, HANDLE_TAG);
        assert_eq!(
            free::<Other, _>("dt_other_free", s),
            status::DT_ERR_INVALID_HANDLE,
            "a set is not another type"
        );
        assert_eq!(dt_dirty_set_free(s), status::DT_OK);
        assert_eq!(dt_dirty_set_free(s), status::DT_ERR_INVALID_HANDLE);
        assert_eq!(dt_dirty_set_free(std::ptr::null_mut()), status::DT_OK);
    }

    #[test]
    fn page_and_run_iteration_resumes_anywhere() {
        let ps = dirtytrack::page_size();
        let mut set = DirtySet::new();
        let base = 0x1000_0000usize;
        for (a, b) in [(0, 3), (5, 6), (10, 14), (64, 130)] {
            set.insert_range(base + a * ps..base + b * ps);
        }
        let want: Vec<usize> = set.pages().collect();
        let h = new_set(set);
        for cap in [1usize, 2, 3, 7, 64, 1000] {
            let mut got = Vec::new();
            let mut buf = vec![0usize; cap];
            let mut i = 0;
            loop {
                let mut n = 0;
                // SAFETY: `buf` has `cap` elements; `n` is a valid out-pointer.
                let st = unsafe { dt_dirty_set_pages(h, i, buf.as_mut_ptr(), cap, &mut n) };
                assert_eq!(st, status::DT_OK);
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                i += n;
            }
            assert_eq!(got, want, "cap {cap}");
        }
        let mut n = 0;
        // SAFETY: `n` is a valid out-pointer.
        assert_eq!(unsafe { dt_dirty_set_run_count(h, &mut n) }, status::DT_OK);
        assert_eq!(n, 4);
        assert_eq!(dt_dirty_set_free(h), status::DT_OK);
    }
}
