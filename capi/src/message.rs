//! The text of a library error in C words, built from the typed error: [`describe`] matches on
//! `dirtytrack::Error`'s variant and writes its fields (addresses, range ids, the mode, the
//! kernel's answer) into a C sentence that names the C function the caller called and the C
//! functions and constants that fix it (`dt_tracker_unregister(t, 7)`, `DT_MODE_SYNC`,
//! `dt_tracker_builder_set_prefault`). Nothing here rewrites the Rust message.
//!
//! Three fields are prose the library writes for every caller: `Permission`'s text, the `hint` of
//! `MappingNotSupported` and `ResourceExhausted`, and the `reason` of `RangeLost`,
//! `LiveSnapshotFailed` and `Poisoned`. They describe the system (what the kernel or the
//! process lacks) and are quoted, with the library's names for its own modes (`Mode::Sync`) and
//! its one probing hint written as C ([`prose`]); `UnsupportedKernel`'s `alternative`, which is
//! advice about Rust calls, is not quoted: the C advice is chosen from the mode and the missing
//! feature.
//!
//! Also the capability report ([`report`]): the library's text of `Capabilities`, with the lines
//! that say why a mode is unavailable and what `DT_MODE_AUTO` picks rebuilt from the typed
//! results of `check_async`, `check_sync` and `auto_mode`.
//!
//! The errors of tracking another process (`dirtytrack::RemoteError`, x86_64 and aarch64) are
//! described the same way ([`describe_remote`]), their prose with the builder options written
//! as the `dt_remote_flags` and functions ([`remote_prose`]).
//!
//! Uses [`crate::options`] (the C names of modes and prefault strategies) and nothing else.

use crate::options::{mode_to_c, prefault_to_c};
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use dirtytrack::RemoteError;
use dirtytrack::{Capabilities, Error, Mode, Prefault, RangeId};
use std::fmt::Write;

/// `DT_MODE_SYNC` etc.: the `dt_mode` constant of a library mode.
fn mode_name(m: Mode) -> String {
    format!("{:?}", mode_to_c(m))
}

/// A range id as a C caller holds it: `range 7`.
fn range(id: RangeId) -> String {
    format!("range {}", id.to_raw())
}

/// How a C caller chooses a mode.
const CHOOSE_MODE: &str = "dt_tracker_new_with_mode or dt_tracker_builder_set_mode";

/// The library's prose (the free-text fields listed in the module docs) as C: it names the
/// library's modes as Rust values (`Mode::Sync`, `Sync mode`: generated here from `Mode` itself
/// and its `Debug` names) and, in
/// `Permission`'s text, the Rust functions that probe the system.
pub(crate) fn prose(text: &str) -> String {
    let mut text = text.replace(
        "Tracker::capabilities() or Capabilities::probe()",
        "dt_tracker_capabilities() or dt_capabilities_probe() (dt_capabilities_probe_report() as text)",
    );
    for m in [Mode::Auto, Mode::Async, Mode::Sync] {
        // `Mode::Sync`, and `Sync mode` (the library's `{mode:?} mode`).
        for rust in [format!("Mode::{m:?}"), format!("{m:?} mode")] {
            if text.contains(&rust) {
                text = text.replace(&rust, &mode_name(m));
            }
        }
    }
    text
}

/// What the C caller can do when `mode` lacks `feature` (`UnsupportedKernel`).
fn unsupported_kernel_fix(mode: Mode, feature: &str, since: &str) -> String {
    // The kernel feature a forced dt_prefault needs (the enum's documentation).
    let forced = match feature {
        "UFFD_FEATURE_WP_UNPOPULATED" => Some(Prefault::Unpopulated),
        "MADV_POPULATE_READ" => Some(Prefault::PopulateRead),
        _ => None,
    };
    if let Some(p) = forced {
        return format!(
            "{:?} needs it: choose another dt_prefault (dt_tracker_builder_set_prefault), or leave DT_PREFAULT_BEST (the best the kernel has)",
            prefault_to_c(p)
        );
    }
    if feature.contains("UFFD_FEATURE_PAGEFAULT_FLAG_WP") {
        return format!(
            "this kernel cannot track writes with userfaultfd in any mode; run Linux {since} or newer"
        );
    }
    match mode {
        Mode::Async => format!(
            "use DT_MODE_SYNC (a monitor thread resolves write faults) or DT_MODE_AUTO ({CHOOSE_MODE}), or run Linux {since} or newer"
        ),
        _ => format!(
            "use another mode ({CHOOSE_MODE}; DT_MODE_AUTO picks one this kernel has, dt_capabilities_probe_report() lists them), or run Linux {since} or newer"
        ),
    }
}

/// The message of `e` for a call of the C function `func`, in C words: what happened and what
/// to do. (`entry` puts `func: ` in front.)
pub(crate) fn describe(e: &Error, func: &str) -> String {
    match e {
        Error::Unaligned {
            what,
            value,
            page_size,
        } => format!(
            "{what} {value:#x} is not a multiple of the page size ({page_size} bytes): round it to a page boundary (dt_page_size() is the base page size)"
        ),
        Error::ZeroLength { addr } => format!(
            "the range at {addr:#x} has length 0: pass at least one page (dt_page_size() bytes)"
        ),
        Error::AddressOverflow { addr, len } => format!(
            "the range {addr:#x} + {len:#x} overflows the address space: pass the start address and the length in bytes of memory this process mapped"
        ),
        Error::NotMapped { start, end, hole } => format!(
            "the range {start:#x}..{end:#x} is not fully mapped (nothing is mapped at {hole:#x}): map the whole range before calling {func}"
        ),
        Error::Overlap {
            start,
            end,
            existing,
            existing_start,
            existing_end,
        } => format!(
            "the range {start:#x}..{end:#x} overlaps {} ({existing_start:#x}..{existing_end:#x}) which this tracker already tracks: unregister it first (dt_tracker_unregister(t, {})), or register only the part not yet tracked",
            range(*existing),
            existing.to_raw()
        ),
        Error::OwnedByAnotherUserfaultfd { start, end } => format!(
            "the range {start:#x}..{end:#x} is already registered with another userfaultfd (EBUSY): another dt_tracker's, or the program's own; one tracker per range: unregister it there (dt_tracker_unregister) or free that tracker (dt_tracker_free) first"
        ),
        Error::MappingNotSupported {
            start,
            end,
            mapping,
            mode,
            source,
            hint,
        } => format!(
            "the kernel refused to track {start:#x}..{end:#x} ({mapping}) in {} ({source}): {}",
            mode_name(*mode),
            prose(hint)
        ),
        Error::UnsupportedKernel {
            mode,
            feature,
            since,
            kernel,
            alternative: _,
        } => format!(
            "{} needs {feature} (Linux {since}+), which kernel {kernel} does not offer: {}",
            mode_name(*mode),
            unsupported_kernel_fix(*mode, feature, since)
        ),
        Error::Permission(text) => prose(text),
        Error::ResourceExhausted { what, source, hint } => {
            format!("{what} failed: {source}: {}", prose(hint))
        }
        Error::UnknownRange(id) => format!(
            "{} is not registered with this tracker (already unregistered, or from another tracker): pass an id dt_tracker_register returned for this tracker (dt_tracker_ranges lists them)",
            range(*id)
        ),
        Error::RangeLost {
            id,
            start,
            end,
            reason,
        } => format!(
            "{} ({start:#x}..{end:#x}) is no longer tracked: {}. Its contents must be treated as changed; unregister it (dt_tracker_unregister(t, {})), and register the new memory (dt_tracker_register) if you still want it tracked",
            range(*id),
            prose(reason),
            id.to_raw()
        ),
        Error::ForkedChild { owner, current } => format!(
            "this tracker belongs to process {owner}, not to this process {current} (a fork child): it is inert here; create a new tracker in the child (dt_tracker_new) if the child needs tracking"
        ),
        Error::Poisoned(reason) => format!(
            "the tracker is poisoned: {}. All ranges were un-protected so no writer hangs; treat every tracked page as changed, free the tracker (dt_tracker_free) and create a new one (dt_tracker_new)",
            prose(reason)
        ),
        Error::LiveSnapshotFailed { id, reason } => format!(
            "the live snapshot of {} is not consistent: {}. Nothing was lost from dirty tracking; take the snapshot again (dt_tracker_live_snapshot)",
            range(*id),
            prose(reason)
        ),
        Error::NeedsSyncMode { what, mode } => format!(
            "{what} needs DT_MODE_SYNC (this tracker runs in {}): create the tracker with dt_tracker_new_with_mode(DT_MODE_SYNC, &t) or dt_tracker_builder_set_mode(b, DT_MODE_SYNC)",
            mode_name(*mode)
        ),
        Error::SnapshotInProgress(id) => format!(
            "a live snapshot of {} is already in progress: wait for it first (dt_live_snapshot_wait), or abandon it (dt_live_snapshot_free)",
            range(*id)
        ),
        Error::Kernel { op, source } => format!("{op} failed: {source}"),
        Error::InvalidPageSize { page_size } => format!(
            "page size {page_size} is not a power of two: pass the granularity of the addresses (4096, 16384, 65536, a huge page size)"
        ),
        Error::NotTracked { start, end, addr } => format!(
            "{start:#x}..{end:#x} is not tracked ({addr:#x} is in no registered range): {func} records changes only for registered memory; register the buffer first (dt_tracker_register), or mark only its registered part"
        ),
        Error::ScanNoProgress { at, walk_end } => format!(
            "PAGEMAP_SCAN made no progress at {at:#x} (walk_end {walk_end:#x}); the unscanned rest was kept as dirty: the next collect reports it"
        ),
        // `Error` is #[non_exhaustive]: a variant added after this match still reaches C with
        // the library's text (and DT_ERR_OTHER) until it gets an arm.
        other => prose(&other.to_string()),
    }
}

/// The library's prose about remote tracking (the free-text fields of `RemoteError`) as C: the
/// builder options and constants it names by their Rust names become the `dt_remote` flags and
/// functions.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn remote_prose(text: &str) -> String {
    const RUST_TO_C: &[(&str, &str)] = &[
        (
            "caller_stops needs adopt(fd)",
            "DT_REMOTE_CALLER_STOPS needs dt_remote_adopt",
        ),
        (
            "pass accept_missed_discards",
            "pass DT_REMOTE_ACCEPT_MISSED_DISCARDS",
        ),
        ("accept_missed_discards", "DT_REMOTE_ACCEPT_MISSED_DISCARDS"),
        ("REMOTE_UFFD_FLAGS", "dt_remote_uffd_flags()"),
        ("and adopt it", "and pass it to dt_remote_adopt"),
        (
            "use dirtytrack::Tracker for in-process tracking",
            "use a dt_tracker (dt_tracker_new) for in-process tracking",
        ),
        ("this library's save_state", "dt_remote_save_state"),
        (
            "start a new chain (fresh)",
            "start a new chain (no state, DT_REMOTE_FRESH)",
        ),
        ("and adopt that", "and pass it to dt_remote_adopt"),
    ];
    let mut text = text.to_owned();
    for (rust, c) in RUST_TO_C {
        if text.contains(rust) {
            text = text.replace(rust, c);
        }
    }
    text
}

/// The message of a remote-tracking error `e` for a call of the C function `func` (a
/// `dt_remote_*` function), in C words: what happened and what to do. (`entry` puts `func: ` in
/// front.)
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn describe_remote(e: &RemoteError, func: &str) -> String {
    match e {
        RemoteError::NoSuchProcess { pid } => format!(
            "no process {pid} (or it is a zombie): check the pid (ps -p {pid}); it may have exited"
        ),
        RemoteError::PtraceRefused { pid, reason, source } => format!(
            "the kernel refused this process access to process {pid} ({source}): {}",
            remote_prose(reason)
        ),
        RemoteError::SeccompDenied {
            pid,
            filters,
            source,
        } => format!(
            "process {pid} runs under a seccomp filter ({filters} filter(s)) that denies userfaultfd(2) ({source}): {func} cannot create a userfaultfd there; create it yourself while the filter is suspended (ptrace with PTRACE_O_SUSPEND_SECCOMP, as CRIU does) and pass it to dt_remote_adopt, or allow userfaultfd in the target's seccomp profile"
        ),
        RemoteError::UserfaultfdFailed { pid, source, hint } => format!(
            "userfaultfd(2) failed inside process {pid} ({source}): {}",
            remote_prose(hint)
        ),
        RemoteError::KernelTooOld { kernel, missing } if missing.contains("discard") => format!(
            "kernel {kernel}'s PAGEMAP_SCAN does not report pages the target discards (MADV_DONTNEED; the 2026 fixes \"fix PAGEMAP_SCAN written state for unpopulated ptes\" are missing), so such pages would be missed: pass DT_REMOTE_ACCEPT_MISSED_DISCARDS to accept that (a checkpointer that dumps only present pages, as CRIU does, may), or run a kernel with the fixes"
        ),
        RemoteError::KernelTooOld { kernel, missing } => format!(
            "tracking another process needs {missing} (Linux 6.7+), which kernel {kernel} does not offer: upgrade the kernel, or use soft-dirty tracking (clear_refs) if it has CONFIG_MEM_SOFT_DIRTY"
        ),
        RemoteError::TargetExited { pid, during } => format!(
            "process {pid} exited during {during}: nothing more can be tracked and the result of {func} is void; free the handle (dt_remote_free)"
        ),
        RemoteError::TrackingLost { pid, fd, reason } => format!(
            "process {pid} no longer holds the tracking userfaultfd (fd {fd}): {}. Treat its whole memory as changed (take a full dump), then free this handle (dt_remote_free) and adopt or attach a new userfaultfd (dt_remote_adopt, dt_remote_attach) without state",
            remote_prose(reason)
        ),
        RemoteError::Injection { pid, step, detail } => format!(
            "injecting a system call into process {pid} failed at {step}: {}; the target was restored and released: retry, or create the userfaultfd in the target yourself and pass it to dt_remote_adopt",
            remote_prose(detail)
        ),
        RemoteError::Kernel { pid, op, source } => {
            format!("{op} on process {pid} failed: {source}")
        }
        RemoteError::TargetBusy { pid, holder, lock } => format!(
            "process {pid} is already tracked by process {holder} (lock {}): one tracker per target; free the other dt_remote (dt_remote_free) or wait for that process to finish (a tracker that died releases the lock by itself: calling {func} again then takes over its tracking)",
            lock.display()
        ),
        RemoteError::NotATrackingFd { pid, fd, reason } => format!(
            "fd {fd} of process {pid} cannot be adopted as its tracking userfaultfd: {}",
            remote_prose(reason)
        ),
        RemoteError::BadState(why) => format!(
            "the state is not one dt_remote_save_state wrote: {}; pass its bytes unchanged, or NULL with DT_REMOTE_FRESH to start a new chain",
            remote_prose(why)
        ),
        RemoteError::Usage(why) => remote_prose(why),
        // `RemoteError` is #[non_exhaustive]: a later variant reaches C with the library's text.
        other => remote_prose(&other.to_string()),
    }
}

/// Why a mode cannot run here, for `dt_capabilities.async_why_not` / `sync_why_not` and the
/// report: the message of the check's error, as `dt_tracker_new_with_mode` in that mode would
/// fail with it (without the `func: ` prefix: the caller asked for capabilities).
pub(crate) fn why_not(e: &Error) -> String {
    describe(e, "dt_tracker_new_with_mode")
}

/// The capability report of `caps` in C words: the library's report, whose lines about the
/// kernel name kernel things only, with its mode lines rebuilt from the typed results.
pub(crate) fn report(caps: &Capabilities) -> String {
    let unavailable = |check: Result<(), Error>| check.err().map(|e| why_not(&e));
    let (async_why, sync_why) = (
        unavailable(caps.check_async()),
        unavailable(caps.check_sync()),
    );
    let auto = match caps.auto_mode() {
        Ok(m) => format!("  DT_MODE_AUTO chooses {}", mode_name(m)),
        Err(_) => "  DT_MODE_AUTO: no mode available".to_owned(),
    };
    let mut out = String::new();
    for line in caps.to_string().lines() {
        let rebuilt = match line {
            l if l.starts_with("  async mode: unavailable: ") => async_why
                .as_ref()
                .map(|why| format!("  async mode: unavailable: {why}")),
            l if l.starts_with("  sync mode:  unavailable: ") => sync_why
                .as_ref()
                .map(|why| format!("  sync mode:  unavailable: {why}")),
            l if l.starts_with("  Mode::Auto") => Some(auto.clone()),
            _ => None,
        };
        if !out.is_empty() {
            out.push('\n');
        }
        let _ = write!(out, "{}", rebuilt.as_deref().unwrap_or(line));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    /// Every variant that can reach C, built by hand.
    fn samples() -> Vec<Error> {
        let id = RangeId::from_raw(7);
        vec![
            Error::Unaligned {
                what: "address",
                value: 0x1,
                page_size: 4096,
            },
            Error::ZeroLength { addr: 0x1000 },
            Error::AddressOverflow {
                addr: usize::MAX - 0xfff,
                len: 0x2000,
            },
            Error::NotMapped {
                start: 0x1000,
                end: 0x3000,
                hole: 0x2000,
            },
            Error::UnknownRange(id),
            Error::SnapshotInProgress(id),
            Error::Overlap {
                start: 0x1000,
                end: 0x2000,
                existing: id,
                existing_start: 0,
                existing_end: 0x1000,
            },
            Error::OwnedByAnotherUserfaultfd {
                start: 0,
                end: 0x1000,
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
                feature: "UFFD_FEATURE_WP_UNPOPULATED",
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
            Error::UnsupportedKernel {
                mode: Mode::Sync,
                feature: "userfaultfd write-protect (UFFD_FEATURE_PAGEFAULT_FLAG_WP)",
                since: "5.7",
                kernel: "5.4".into(),
                alternative: "this kernel cannot track writes with userfaultfd; upgrade the kernel",
            },
            Error::Permission("could not create the userfaultfd for Sync mode (x); see Tracker::capabilities() or Capabilities::probe() for what this process can do".into()),
            Error::Permission("Mode::Sync needs a full userfaultfd, but x (y). Any one of these gives a full fd: run with CAP_SYS_PTRACE. Mode::Async works without them on Linux 6.7+".into()),
            Error::ResourceExhausted {
                what: "creating a userfaultfd",
                source: io::Error::from_raw_os_error(libc::EMFILE),
                hint: "raise RLIMIT_NOFILE",
            },
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
            Error::Kernel {
                op: "UFFDIO_WRITEPROTECT",
                source: io::Error::from_raw_os_error(libc::EINVAL),
            },
            Error::ScanNoProgress {
                at: 0x1000,
                walk_end: 0x1000,
            },
            Error::InvalidPageSize { page_size: 3 },
        ]
    }

    /// Rust names that must not reach a C caller.
    const RUST_NAMES: &[&str] = &[
        "Mode::",
        "Tracker::",
        "Tracker",
        "Capabilities::",
        "Prefault",
        "RangeId",
        "Async mode",
        "Sync mode",
    ];

    /// Every message names no Rust item and has a `:` or `;` before the advice (what to do).
    #[test]
    fn every_variant_has_a_c_message() {
        for e in samples() {
            let text = describe(&e, "dt_tracker_register");
            for rust in RUST_NAMES {
                assert!(!text.contains(rust), "{rust:?} in {text:?}");
            }
            assert!(text.contains(':') || text.contains(';'), "{text:?}");
        }
    }

    #[test]
    fn fields_and_fixes_in_c() {
        let id = RangeId::from_raw(3);
        assert_eq!(
            describe(&Error::UnknownRange(id), "dt_tracker_peek_range"),
            "range 3 is not registered with this tracker (already unregistered, or from another tracker): pass an id dt_tracker_register returned for this tracker (dt_tracker_ranges lists them)"
        );
        let sync = describe(
            &Error::NeedsSyncMode {
                what: "a consistent live snapshot",
                mode: Mode::Async,
            },
            "dt_tracker_live_snapshot",
        );
        assert!(
            sync.contains("(this tracker runs in DT_MODE_ASYNC)"),
            "{sync}"
        );
        assert!(
            sync.ends_with("dt_tracker_builder_set_mode(b, DT_MODE_SYNC)"),
            "{sync}"
        );
        let not_tracked = describe(
            &Error::NotTracked {
                start: 0x1000,
                end: 0x3000,
                addr: 0x2000,
            },
            "dt_tracker_mark_dirty",
        );
        assert!(
            not_tracked
                .contains("dt_tracker_mark_dirty records changes only for registered memory"),
            "{not_tracked}"
        );
        let overlap = describe(
            &Error::Overlap {
                start: 0x1000,
                end: 0x2000,
                existing: RangeId::from_raw(12),
                existing_start: 0,
                existing_end: 0x2000,
            },
            "dt_tracker_register",
        );
        assert!(
            overlap.contains("overlaps range 12 (0x0..0x2000)"),
            "{overlap}"
        );
        assert!(
            overlap.contains("dt_tracker_unregister(t, 12)"),
            "{overlap}"
        );
        let prefault = describe(&samples()[13], "dt_tracker_builder_build");
        assert!(
            prefault.ends_with("DT_PREFAULT_UNPOPULATED needs it: choose another dt_prefault (dt_tracker_builder_set_prefault), or leave DT_PREFAULT_BEST (the best the kernel has)"),
            "{prefault}"
        );
        let async_missing = describe(&samples()[14], "dt_tracker_new_with_mode");
        assert!(
            async_missing.starts_with("DT_MODE_ASYNC needs UFFD_FEATURE_WP_ASYNC (Linux 6.7+)"),
            "{async_missing}"
        );
        assert!(
            async_missing.contains("use DT_MODE_SYNC"),
            "{async_missing}"
        );
        let permission = describe(&samples()[16], "dt_tracker_new");
        assert!(
            permission.contains("for DT_MODE_SYNC (x)")
                && permission.contains("see dt_tracker_capabilities() or dt_capabilities_probe()"),
            "{permission}"
        );
    }

    /// The reasons and the report of this machine (the text of `dt_capabilities_probe_report`)
    /// in C words.
    #[test]
    fn the_probe_report_speaks_c() {
        let caps = Capabilities::probe();
        let mut texts = vec![report(&caps)];
        texts.extend(caps.check_async().err().map(|e| why_not(&e)));
        texts.extend(caps.check_sync().err().map(|e| why_not(&e)));
        for text in &texts {
            for rust in ["Mode::", "Tracker::", "Capabilities::", "Prefault,"] {
                assert!(!text.contains(rust), "{rust:?} in {text:?}");
            }
        }
        assert!(texts[0].contains("DT_MODE_AUTO"), "{}", texts[0]);
        assert_eq!(
            texts[0].lines().count(),
            caps.to_string().lines().count(),
            "one line per line of the library's report"
        );
    }
}
