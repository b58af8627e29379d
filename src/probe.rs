//! Capability probing: what this kernel and this process can do, found out on throwaway fds.
//!
//! `UFFDIO_API` can be called only once per userfaultfd, so probing never touches the fd a
//! tracker later uses. The result, [`Capabilities`], is public and prints as a short report
//! saying which modes are available and, for each one that is not, why.

use crate::sys::{self, mem, pagemap, uffd};
use crate::types::{FdSource, Prefault};
use crate::{Error, Mode};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

/// What the running kernel and this process's privileges allow. Print it (`{}`) for a report.
#[derive(Debug, Clone)]
pub struct Capabilities {
    /// `uname -r`.
    pub kernel_release: String,
    /// How a full userfaultfd (one that also handles faults from kernel code) can be had, if at all.
    pub full_fd: Option<FdSource>,
    /// Why no full userfaultfd could be had (`None` if one could).
    pub full_fd_error: Option<String>,
    /// How a `UFFD_USER_MODE_ONLY` userfaultfd can be had, if at all.
    pub user_mode_only_fd: Option<FdSource>,
    /// Why no userfaultfd at all could be had (`None` if one could).
    pub user_mode_only_fd_error: Option<String>,
    /// `uffdio_api.features` the kernel offers (`UFFD_FEATURE_*` bits), after any test mask.
    pub features: u64,
    /// `uffdio_api.ioctls` (bit `1 << _UFFDIO_*`).
    pub ioctls: u64,
    /// `PAGEMAP_SCAN` on `/proc/self/pagemap` works (6.7+).
    pub pagemap_scan: bool,
    /// Why `/proc/self/pagemap` could not be opened, if it could not (then `pagemap_scan` is
    /// unknown, not absent).
    pub pagemap_error: Option<String>,
    /// `MADV_POPULATE_READ` works (5.14+).
    pub madv_populate_read: bool,
    /// Start-up self-test (async-capable kernels only): does `PAGEMAP_SCAN` itself report an
    /// anonymous page discarded with `MADV_DONTNEED` as written? `Some(true)` on kernels with the
    /// 2026 "PAGEMAP_SCAN written state for unpopulated ptes" fixes. The library does not depend
    /// on it: it reports discards from `UFFD_EVENT_REMOVE` in both modes.
    pub scan_reports_discards: Option<bool>,
    /// `MADV_GUARD_INSTALL` works (6.13+): guard regions can zap pages of a tracked range with no
    /// userfaultfd event.
    pub guard_pages: bool,
    /// Start-up self-test (kernels with guard pages and `PAGEMAP_SCAN`): does a read-only
    /// `PAGEMAP_SCAN` of a write-protected (sync-style) range report pages zapped by a guard
    /// region, and again after the guard is removed? Sync-mode collects rely on it to report
    /// guard-zapped pages (no event is sent for them). `None` where the kernel has no guard
    /// pages; `Some(false)` means sync mode cannot see guard zaps on this kernel (async mode
    /// can): the capabilities report says so.
    pub scan_reports_guard_zaps: Option<bool>,
    /// errno of the failed attempt to create any userfaultfd (to tell `EMFILE` from `EPERM`).
    pub(crate) open_errno: Option<i32>,
}

fn errno_text(e: &io::Error) -> String {
    format!("{e}")
}

impl Capabilities {
    /// Probes the running kernel. Creates and closes a few userfaultfds and one page of memory.
    pub fn probe() -> Capabilities {
        let kernel_release = sys::kernel_release().unwrap_or_else(|_| "unknown".into());
        let base = libc::O_CLOEXEC | libc::O_NONBLOCK;

        let mut full_errno = None;
        let (full, full_fd_error) = match open_fd(base) {
            Ok((fd, src)) => (Some((fd, src)), None),
            Err((sys_err, dev_err)) => (
                None,
                Some(format!(
                    "userfaultfd(2): {}; /dev/userfaultfd: {}",
                    errno_text(&sys_err),
                    errno_text(&dev_err)
                ))
                .inspect(|_| full_errno = sys_err.raw_os_error()),
            ),
        };
        let mut open_errno = None;
        let (umo, user_mode_only_fd_error) = match open_fd(base | uffd::UFFD_USER_MODE_ONLY) {
            Ok((fd, src)) => (Some((fd, src)), None),
            Err((sys_err, dev_err)) => (
                None,
                Some(format!(
                    "userfaultfd(2, UFFD_USER_MODE_ONLY): {}; /dev/userfaultfd: {}",
                    errno_text(&sys_err),
                    errno_text(&dev_err)
                ))
                .inspect(|_| open_errno = sys_err.raw_os_error()),
            ),
        };

        // Before 5.11 the kernel rejects UFFD_USER_MODE_ONLY with EINVAL whatever the fd limit:
        // then the full fd's attempt is the one that tells an fd limit (EMFILE/ENFILE).
        if matches!(full_errno, Some(libc::EMFILE | libc::ENFILE)) {
            open_errno = full_errno;
        }
        let pagemap = probe_pagemap_scan();
        let api = full
            .as_ref()
            .or(umo.as_ref())
            .and_then(|(fd, _)| uffd::api(fd.as_fd(), 0).ok());

        let mut caps = Capabilities {
            kernel_release,
            full_fd: full.as_ref().map(|(_, s)| *s),
            full_fd_error,
            user_mode_only_fd: umo.as_ref().map(|(_, s)| *s),
            user_mode_only_fd_error,
            features: api.map_or(0, |a| a.features),
            ioctls: api.map_or(0, |a| a.ioctls),
            pagemap_scan: pagemap.as_ref().is_ok_and(|b| *b),
            pagemap_error: pagemap.err().map(|e| {
                let fix = match e.raw_os_error() {
                    Some(libc::EACCES) | Some(libc::EPERM) => "the process is not dumpable (it changed its uid or gid, or called prctl(PR_SET_DUMPABLE, 0)), so /proc/self/pagemap belongs to root: call prctl(PR_SET_DUMPABLE, 1) before creating the tracker",
                    Some(libc::ENOENT) => "/proc is not mounted: mount it",
                    _ => "make /proc/self/pagemap readable",
                };
                format!("cannot open /proc/self/pagemap ({e}): {fix}")
            }),
            madv_populate_read: probe_populate_read(),
            scan_reports_discards: None,
            guard_pages: probe_guard_pages(),
            scan_reports_guard_zaps: None,
            open_errno,
        };
        if caps.wp_async() && caps.pagemap_scan {
            caps.scan_reports_discards =
                probe_discard_reporting(caps.has(uffd::FEATURE_PAGEFAULT_FLAG_WP));
        }
        if caps.guard_pages && caps.pagemap_scan && caps.write_protect() {
            caps.scan_reports_guard_zaps = Some(probe_guard_zap_reporting());
        }
        caps
    }

    /// The same capabilities with some `UFFD_FEATURE_*` bits hidden (to force fallbacks in tests,
    /// through the `testing` feature's `hide_features` knobs).
    pub(crate) fn without_features(mut self, mask: u64) -> Capabilities {
        self.features &= !mask;
        self
    }

    /// Whether a feature bit (`sys::uffd::FEATURE_*`) is offered.
    pub fn has(&self, feature: u64) -> bool {
        self.features & feature == feature
    }

    /// Uffd write-protect (5.7+).
    pub fn write_protect(&self) -> bool {
        self.has(uffd::FEATURE_PAGEFAULT_FLAG_WP)
    }

    /// `UFFD_FEATURE_WP_ASYNC` (6.7+).
    pub fn wp_async(&self) -> bool {
        self.has(uffd::FEATURE_WP_ASYNC)
    }

    /// `UFFD_FEATURE_WP_UNPOPULATED` (6.4+).
    pub fn wp_unpopulated(&self) -> bool {
        self.has(uffd::FEATURE_WP_UNPOPULATED)
    }

    /// How sync mode protects never-touched pages on this kernel (best available).
    pub fn prefault(&self) -> Prefault {
        if self.wp_unpopulated() {
            Prefault::Unpopulated
        } else if self.madv_populate_read {
            Prefault::PopulateRead
        } else {
            Prefault::ReadTouch
        }
    }

    /// `Ok` if async mode can run here, else the error naming what is missing.
    pub fn check_async(&self) -> Result<(), Error> {
        let missing = |feature, since, alternative| Error::UnsupportedKernel {
            mode: Mode::Async,
            feature,
            since,
            kernel: self.kernel_release.clone(),
            alternative,
        };
        if self.full_fd.is_none() && self.user_mode_only_fd.is_none() {
            if let Some(e @ (libc::EMFILE | libc::ENFILE)) = self.open_errno {
                return Err(Error::from_kernel(
                    "creating a userfaultfd",
                    io::Error::from_raw_os_error(e),
                ));
            }
            return Err(Error::Permission(format!(
                "no userfaultfd could be created ({}): the kernel lacks CONFIG_USERFAULTFD, or a seccomp filter or LSM denies it; allow the userfaultfd syscall, or give this user read-write access to /dev/userfaultfd (Linux 6.1+)",
                self.user_mode_only_fd_error.as_deref().unwrap_or("")
            )));
        }
        if !self.write_protect() {
            return Err(missing(
                "userfaultfd write-protect (UFFD_FEATURE_PAGEFAULT_FLAG_WP)",
                "5.7",
                "this kernel cannot track writes with userfaultfd at all; upgrade the kernel",
            ));
        }
        if !self.wp_async() {
            return Err(missing(
                "UFFD_FEATURE_WP_ASYNC",
                "6.7",
                "use Mode::Sync (a monitor thread resolves write faults) or Mode::Auto, or run Linux 6.7 or newer",
            ));
        }
        if let Some(why) = &self.pagemap_error {
            return Err(Error::Permission(format!(
                "async mode harvests through /proc/self/pagemap, but {why}; Mode::Sync does not need it"
            )));
        }
        if !self.pagemap_scan {
            return Err(missing(
                "the PAGEMAP_SCAN ioctl on /proc/self/pagemap",
                "6.7",
                "use Mode::Sync or Mode::Auto, or run Linux 6.7 or newer (and mount /proc)",
            ));
        }
        Ok(())
    }

    /// `Ok` if sync mode can run here, else the error naming what is missing.
    pub fn check_sync(&self) -> Result<(), Error> {
        if self.full_fd.is_none() {
            if let Some(e @ (libc::EMFILE | libc::ENFILE)) = self.open_errno {
                return Err(Error::from_kernel(
                    "creating a userfaultfd",
                    io::Error::from_raw_os_error(e),
                ));
            }
            let why = if self.user_mode_only_fd.is_some() {
                "only a UFFD_USER_MODE_ONLY userfaultfd can be created, and in sync mode such an fd makes every kernel write into tracked memory (read(2), recvmsg, pread, io_uring) fail with EFAULT"
            } else {
                "no userfaultfd can be created at all"
            };
            return Err(Error::Permission(format!(
                "Mode::Sync needs a full userfaultfd, but {why} ({}). Any one of these gives a full fd: run with CAP_SYS_PTRACE, set the sysctl vm.unprivileged_userfaultfd=1, or give this user read-write access to /dev/userfaultfd (Linux 6.1+). Mode::Async works without them on Linux 6.7+",
                self.full_fd_error.as_deref().unwrap_or("")
            )));
        }
        if !self.write_protect() {
            return Err(Error::UnsupportedKernel {
                mode: Mode::Sync,
                feature: "userfaultfd write-protect (UFFD_FEATURE_PAGEFAULT_FLAG_WP)",
                since: "5.7",
                kernel: self.kernel_release.clone(),
                alternative: "this kernel cannot track writes with userfaultfd; upgrade the kernel",
            });
        }
        Ok(())
    }

    /// The mode `Mode::Auto` resolves to here: async when possible, else sync.
    pub fn auto_mode(&self) -> Result<Mode, Error> {
        match (self.check_async(), self.check_sync()) {
            (Ok(()), _) => Ok(Mode::Async),
            (Err(_), Ok(())) => Ok(Mode::Sync),
            (Err(a), Err(_)) => Err(a),
        }
    }

    /// Names of the offered feature bits.
    pub fn feature_names(&self) -> Vec<&'static str> {
        uffd::FEATURE_NAMES
            .iter()
            .filter(|(bit, _)| self.features & bit != 0)
            .map(|(_, name)| *name)
            .collect()
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let src = |s: Option<FdSource>| match s {
            Some(FdSource::Syscall) => "yes (userfaultfd syscall)",
            Some(FdSource::DevUserfaultfd) => "yes (/dev/userfaultfd)",
            None => "no",
        };
        writeln!(f, "kernel {}", self.kernel_release)?;
        writeln!(f, "  full userfaultfd:           {}", src(self.full_fd))?;
        if let Some(e) = &self.full_fd_error {
            writeln!(f, "    why not: {e}")?;
        }
        writeln!(
            f,
            "  user-mode-only userfaultfd: {}",
            src(self.user_mode_only_fd)
        )?;
        writeln!(
            f,
            "  features {:#x}: {}",
            self.features,
            self.feature_names().join(" ")
        )?;
        writeln!(
            f,
            "  PAGEMAP_SCAN: {}   MADV_POPULATE_READ: {}",
            match (&self.pagemap_error, self.pagemap_scan) {
                (Some(_), _) => "unknown (/proc/self/pagemap cannot be opened)",
                (None, true) => "yes",
                (None, false) => "no",
            },
            if self.madv_populate_read { "yes" } else { "no" }
        )?;
        match self.scan_reports_discards {
            Some(true) => writeln!(f, "  discards: PAGEMAP_SCAN reports discarded pages itself; UFFD_EVENT_REMOVE reports them too")?,
            Some(false) => writeln!(f, "  discards: PAGEMAP_SCAN misses discarded pages on this kernel (no 2026 fix); the library reports them from UFFD_EVENT_REMOVE")?,
            None => writeln!(f, "  discards: reported from UFFD_EVENT_REMOVE")?,
        }
        match (self.guard_pages, self.scan_reports_guard_zaps) {
            (false, _) => writeln!(f, "  guard pages (MADV_GUARD_INSTALL, 6.13+): no")?,
            (true, Some(true)) => writeln!(f, "  guard pages: yes; their zaps are reported in both modes (sync mode finds them with a read-only PAGEMAP_SCAN at each collect)")?,
            (true, _) => writeln!(f, "  guard pages: yes; sync mode CANNOT see pages zapped by a guard region on this kernel (no event is sent and PAGEMAP_SCAN does not show them): do not install guard regions in ranges tracked in sync mode")?,
        }
        match self.check_async() {
            Ok(()) => writeln!(
                f,
                "  async mode: available (WP_ASYNC + PAGEMAP_SCAN; kernel resolves write faults)"
            )?,
            Err(e) => writeln!(f, "  async mode: unavailable: {e}")?,
        }
        match self.check_sync() {
            Ok(()) => writeln!(
                f,
                "  sync mode:  available (monitor thread); never-touched pages: {}",
                self.prefault().describe()
            )?,
            Err(e) => writeln!(f, "  sync mode:  unavailable: {e}")?,
        }
        match self.auto_mode() {
            Ok(m) => write!(f, "  Mode::Auto chooses {m:?}"),
            Err(_) => write!(f, "  Mode::Auto: no mode available"),
        }
    }
}

/// Opens a userfaultfd with `flags`: the system call first, then `/dev/userfaultfd`.
/// On failure returns both errors.
pub(crate) fn open_fd(flags: i32) -> Result<(OwnedFd, FdSource), (io::Error, io::Error)> {
    match uffd::userfaultfd(flags) {
        Ok(fd) => Ok((fd, FdSource::Syscall)),
        Err(sys_err) => match uffd::userfaultfd_from_dev(flags) {
            Ok(fd) => Ok((fd, FdSource::DevUserfaultfd)),
            Err(dev_err) => Err((sys_err, dev_err)),
        },
    }
}

/// Two written pages, write-protected through a throwaway user-mode-only userfaultfd set up
/// with `features` (no events, so nothing ever blocks), for the start-up self-tests. Nothing
/// writes the protected pages afterwards, so no fault ever waits for a reader. Dropped in field
/// order: the fd (unregistering everything), then the mapping.
struct ProtectedPages {
    _fd: OwnedFd,
    m: mem::AnonMapping,
    pagemap: File,
}

impl ProtectedPages {
    fn new(features: u64) -> Option<ProtectedPages> {
        let ps = sys::page_size();
        let (fd, _) =
            open_fd(libc::O_CLOEXEC | libc::O_NONBLOCK | uffd::UFFD_USER_MODE_ONLY).ok()?;
        uffd::api(fd.as_fd(), features).ok()?;
        let m = mem::AnonMapping::new(2 * ps).ok()?;
        mem::madvise(m.addr(), 2 * ps, mem::MADV_POPULATE_WRITE).ok()?;
        uffd::register(fd.as_fd(), m.addr(), 2 * ps, uffd::REGISTER_MODE_WP).ok()?;
        uffd::writeprotect(fd.as_fd(), m.addr(), 2 * ps, uffd::WRITEPROTECT_MODE_WP).ok()?;
        let pagemap = File::open("/proc/self/pagemap").ok()?;
        Some(ProtectedPages {
            _fd: fd,
            m,
            pagemap,
        })
    }

    /// Changes the first page with `advice`.
    fn zap_first(&self, advice: i32) -> Option<()> {
        // SAFETY: the probe's own fresh mapping, referenced by nothing else.
        unsafe { mem::madvise_destructive(self.m.addr(), sys::page_size(), advice) }.ok()
    }

    /// Whether a read-only `PAGEMAP_SCAN` (exact `PAGE_IS_WRITTEN` masks, these `flags`) reports
    /// the first page as written.
    fn first_written(&self, flags: u64) -> Option<bool> {
        let addr = self.m.addr() as u64;
        let req = pagemap::ScanRequest {
            flags,
            start: addr,
            end: addr + self.m.len() as u64,
            category_mask: pagemap::PAGE_IS_WRITTEN,
            return_mask: pagemap::PAGE_IS_WRITTEN,
            ..Default::default()
        };
        let mut out = [pagemap::PageRegion::default(); 2];
        let res = pagemap::scan(&self.pagemap, &req, &mut out);
        res.result.ok()?;
        Some(
            out[..res.regions.min(2)]
                .iter()
                .any(|r| r.start <= addr && addr < r.end),
        )
    }
}

/// Async-style protection of two written pages, one discarded: does `PAGEMAP_SCAN` call it
/// written?
fn probe_discard_reporting(wp: bool) -> Option<bool> {
    if !wp {
        return None;
    }
    let p = ProtectedPages::new(uffd::FEATURE_WP_ASYNC | uffd::FEATURE_WP_UNPOPULATED)?;
    p.zap_first(libc::MADV_DONTNEED)?;
    p.first_written(pagemap::PM_SCAN_CHECK_WPASYNC)
}

/// `Ok(true)` if `PAGEMAP_SCAN` works, `Ok(false)` if the kernel lacks it (`ENOTTY`), `Err` if
/// `/proc/self/pagemap` cannot be opened or the probe scan failed in any other way (so the
/// answer is unknown: never guessed to be "works").
fn probe_pagemap_scan() -> io::Result<bool> {
    let pm = File::open("/proc/self/pagemap")?;
    // An empty scan: 0 on 6.7+, ENOTTY before.
    let req = pagemap::ScanRequest {
        category_mask: pagemap::PAGE_IS_WRITTEN,
        return_mask: pagemap::PAGE_IS_WRITTEN,
        ..Default::default()
    };
    let mut out = [pagemap::PageRegion::default(); 1];
    match pagemap::scan(&pm, &req, &mut out).result {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOTTY) => Ok(false),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("an empty PAGEMAP_SCAN probe failed unexpectedly: {e}"),
        )),
    }
}

/// Whether `MADV_GUARD_INSTALL` (6.13+) works, on a throwaway page.
fn probe_guard_pages() -> bool {
    let ps = sys::page_size();
    match mem::AnonMapping::new(ps) {
        // SAFETY: the probe's own fresh mapping, referenced by nothing else.
        Ok(m) => unsafe { mem::madvise_destructive(m.addr(), ps, mem::MADV_GUARD_INSTALL) }.is_ok(),
        Err(_) => false,
    }
}

/// Sync-style protection (no `WP_ASYNC`) of two written pages; a guard region installed over
/// one: does a read-only `PAGEMAP_SCAN` report it while guarded, and again once the guard is
/// removed?
fn probe_guard_zap_reporting() -> bool {
    let run = || -> Option<bool> {
        let p =
            ProtectedPages::new(uffd::FEATURE_PAGEFAULT_FLAG_WP | uffd::FEATURE_WP_UNPOPULATED)?;
        p.zap_first(mem::MADV_GUARD_INSTALL)?;
        let while_guarded = p.first_written(0)?;
        p.zap_first(mem::MADV_GUARD_REMOVE)?;
        Some(while_guarded && p.first_written(0)?)
    };
    run().unwrap_or(false)
}

fn probe_populate_read() -> bool {
    let ps = sys::page_size();
    match mem::AnonMapping::new(ps) {
        Ok(m) => mem::madvise(m.addr(), ps, mem::MADV_POPULATE_READ).is_ok(),
        Err(_) => false,
    }
}
