//! The `PAGEMAP_SCAN` `walk_end` continuation loop (`scan_loop`) against a fake kernel that
//! answers from the fuzz input: arbitrary regions (at most the vector's length, like the kernel),
//! a `walk_end` anywhere (at or before `at`, past `end`, huge) and optionally an errno.
//!
//! Checks: the loop terminates (it never calls again after an answer that does not advance or
//! that failed, and each call starts where the previous one said the walk ended); it never
//! panics; every non-empty region the fake wrote is marked, clamped to the range; after a failure
//! everything from the failed call's `at` to `end` is marked, and the error is reported; after a
//! success exactly the reported regions are marked.

#![no_main]

use arbitrary::Arbitrary;
use dirtytrack::fuzz_api::{scan_loop, PageRegion, ScanOutcome};
use dirtytrack_fuzz::{check_set, model_mark, page_size, Coord, Model, Place, RegionSpec};
use libfuzzer_sys::fuzz_target;
use std::io;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum WalkEnd {
    /// `at + pages * ps + byte % ps` (0 pages and 0 bytes: no progress).
    Advance { pages: u8, byte: u16 },
    /// Exactly the end of the range (the kernel's answer for a complete walk).
    End,
    /// Relative to the range, or absolute (before `at`, past `end`, huge, ...).
    At(Coord),
}

#[derive(Arbitrary, Debug, Clone)]
struct Answer {
    regions: Vec<RegionSpec>,
    walk_end: WalkEnd,
    /// `Some(errno)`: the call fails (after writing `regions`, as a failed scan may).
    errno: Option<u8>,
}

#[derive(Arbitrary, Debug)]
struct Input {
    page_size: u8,
    place: Place,
    pages: u16,
    vec_len: u8,
    answers: Vec<Answer>,
}

const ERRNOS: [i32; 8] = [
    libc::EPERM,
    libc::EINVAL,
    libc::EFAULT,
    libc::EINTR,
    libc::ENOMEM,
    libc::EAGAIN,
    libc::ENOTTY,
    libc::EIO,
];

/// What the fake saw and did.
#[derive(Default)]
struct Log {
    calls: usize,
    /// The `at` the next call must have (the previous `walk_end`).
    next_at: usize,
    /// The loop must not call again (the last answer failed or did not advance).
    must_stop: bool,
    /// `Some((at, kernel_error))` when the last answer failed (errno) or did not advance.
    failed: Option<(usize, bool)>,
    model: Model,
}

fuzz_target!(|input: Input| {
    let ps = page_size(input.page_size);
    let pages = 1 + input.pages as usize % 1000;
    let start = input.place.start(ps, pages);
    let end = start + pages * ps;
    let vec_len = input.vec_len as usize % 40;
    let (lo, hi) = (start as u128, end as u128);

    let mut log = Log {
        next_at: start,
        ..Log::default()
    };
    let answers = &input.answers[..input.answers.len().min(200)];
    let (set, err) = scan_loop(ps, start, end, vec_len, |at, buf: &mut [PageRegion]| {
        assert!(!log.must_stop, "scan_loop called again after a failed or stuck answer");
        assert_eq!(at, log.next_at, "call {} does not start at the previous walk_end", log.calls);
        assert!(at >= start && at < end, "call at {at:#x} outside [{start:#x}, {end:#x})");
        assert_eq!(buf.len(), vec_len.max(1), "output vector length");
        let i = log.calls;
        log.calls += 1;
        let Some(a) = answers.get(i) else {
            // Input exhausted: the kernel finishes the walk.
            log.next_at = end;
            return ScanOutcome {
                regions: 0,
                walk_end: end as u64,
                result: Ok(()),
            };
        };
        // Write at most `buf.len()` entries, as the kernel does.
        let n = a.regions.len().min(buf.len());
        for (slot, r) in buf.iter_mut().zip(&a.regions[..n]) {
            *slot = r.resolve(start, end, ps);
            if slot.end > slot.start {
                model_mark(&mut log.model, ps, lo, hi, slot.start as u128, slot.end as u128);
            }
        }
        let walk_end = match a.walk_end {
            WalkEnd::Advance { pages, byte } => (at as u64)
                .wrapping_add(pages as u64 * ps as u64)
                .wrapping_add(byte as u64 % ps as u64),
            WalkEnd::End => end as u64,
            WalkEnd::At(c) => c.resolve(start as u64, end as u64, ps as u64),
        };
        if let Some(e) = a.errno {
            log.must_stop = true;
            log.failed = Some((at, true));
            return ScanOutcome {
                regions: 0,
                walk_end,
                result: Err(io::Error::from_raw_os_error(ERRNOS[e as usize % ERRNOS.len()])),
            };
        }
        if walk_end <= at as u64 {
            log.must_stop = true;
            log.failed = Some((at, false));
        }
        log.next_at = walk_end as usize;
        ScanOutcome {
            regions: n,
            walk_end,
            result: Ok(()),
        }
    });

    assert!(log.calls >= 1, "no call for a non-empty range");
    assert!(log.calls <= answers.len() + 1, "more calls than answers");
    let mut model = log.model;
    match (log.failed, &err) {
        (None, None) => {}
        (Some((at, kernel)), Some(msg)) => {
            assert_eq!(msg.starts_with("kernel:"), kernel, "error kind: {msg}");
            // Everything from the failed call's start to the end counts as dirty.
            model_mark(&mut model, ps, lo, hi, at as u128, hi);
        }
        (failed, err) => panic!("fake failed: {failed:?}, scan_loop error: {err:?}"),
    }
    check_set("scan_loop result", &set, &model, ps, &[start, end - 1]);
});
