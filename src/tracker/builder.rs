//! [`TrackerBuilder`]: choosing the mode and the never-touched-page strategy, probing the
//! kernel, and building a [`Tracker`] (its userfaultfd, scanner and monitor thread).

use super::Tracker;
use crate::backend::{self, async_wp, monitor::Monitor, sync_wp, Harvest};
use crate::probe::{self, Capabilities};
use crate::state::TrackerState;
use crate::sys::{self, uffd};
use crate::types::{Mode, Prefault, Thp};
use crate::Error;
use parking_lot::{Mutex, RwLock};
use std::os::fd::AsFd;
use std::sync::Arc;

/// Configures and builds a [`Tracker`].
///
/// ```no_run
/// use dirtytrack::{Mode, Tracker};
/// # fn main() -> Result<(), dirtytrack::Error> {
/// let tracker = Tracker::builder().mode(Mode::Async).build()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct TrackerBuilder {
    mode: Mode,
    prefault: Option<Prefault>,
    hidden_features: u64,
    thp: Thp,
    scan_limits: Option<(usize, u64)>,
}

impl TrackerBuilder {
    /// The mode to use (default [`Mode::Auto`]).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Forces sync mode's never-touched-page strategy instead of the best the kernel has.
    /// Asking for one the kernel lacks is an error at `build`.
    pub fn prefault(mut self, prefault: Prefault) -> Self {
        self.prefault = Some(prefault);
        self
    }

    /// Pretends the kernel lacks these `UFFD_FEATURE_*` bits (see [`crate::features`]); for
    /// testing fallbacks (e.g. hide `WP_UNPOPULATED` to exercise the sync prefault paths).
    /// Feature `testing` only.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn hide_features(mut self, features: u64) -> Self {
        self.hidden_features |= features;
        self
    }

    /// What to do about transparent huge pages (default [`Thp::Leave`]).
    pub fn thp(mut self, thp: Thp) -> Self {
        self.thp = thp;
        self
    }

    /// Test knob: `PAGEMAP_SCAN` output vector length and `max_pages` per call, to exercise the
    /// `walk_end` continuation with tiny limits. Never use `max_pages` with hugetlb ranges.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn scan_limits(mut self, vec_len: usize, max_pages: u64) -> Self {
        self.scan_limits = Some((vec_len.max(1), max_pages));
        self
    }

    /// Probes the kernel, opens the userfaultfd and starts the monitor thread.
    pub fn build(self) -> Result<Tracker, Error> {
        let caps = Capabilities::probe().without_features(self.hidden_features);
        let mode = match self.mode {
            Mode::Auto => caps.auto_mode()?,
            Mode::Async => caps.check_async().map(|()| Mode::Async)?,
            Mode::Sync => caps.check_sync().map(|()| Mode::Sync)?,
        };
        let prefault = match mode {
            Mode::Sync => self.prefault.unwrap_or_else(|| caps.prefault()),
            _ => Prefault::Unpopulated,
        };
        if mode == Mode::Sync {
            check_prefault(&caps, prefault)?;
        }
        let events = caps.features & backend::EVENT_FEATURES;
        let shmem_hugetlb = caps.features & uffd::FEATURE_WP_HUGETLBFS_SHMEM;
        let (flags, features) = match mode {
            Mode::Sync => (sync_wp::FD_FLAGS, sync_wp::features(prefault)),
            _ => (async_wp::FD_FLAGS, async_wp::FEATURES),
        };
        let (fd, _) = probe::open_fd(flags).map_err(|(sys_err, dev_err)| {
            match sys_err.raw_os_error() {
                Some(libc::EMFILE) | Some(libc::ENFILE) => {
                    Error::from_kernel("creating the userfaultfd", sys_err)
                }
                _ => Error::Permission(format!(
                    "could not create the userfaultfd for {mode:?} mode (userfaultfd(2): {sys_err}; /dev/userfaultfd: {dev_err}); see Tracker::capabilities() or Capabilities::probe() for what this process can do"
                )),
            }
        })?;
        uffd::api(fd.as_fd(), features | events | shmem_hugetlb)
            .map_err(|e| Error::from_kernel("UFFDIO_API", e))?;
        // Sync mode scans too where the kernel can show pages changed with no event (guard
        // regions; see `backend::sync_wp`).
        let zap_scan = caps.scan_reports_guard_zaps == Some(true);
        let scanner = match mode {
            Mode::Sync if !zap_scan => None,
            _ => Some(
                async_wp::Scanner::open(self.scan_limits)
                    .map_err(|e| Error::from_kernel("opening /proc/self/pagemap", e))?,
            ),
        };
        let moves = crate::range::Moves::new();
        let core = Arc::new(TrackerState {
            mode,
            caps,
            page_size: sys::page_size(),
            prefault,
            no_thp: self.thp == Thp::Disable,
            owner_pid: sys::getpid(),
            uffd: fd,
            registry: Mutex::new(crate::range::Registry::new(moves.clone())),
            ranges: RwLock::new(crate::range::RangeList::new(moves.clone())),
            moves,
            batch: Mutex::new(()),
            poisoned: Mutex::new(None),
        });
        let monitor = Monitor::start(core.clone())
            .map_err(|e| Error::from_kernel("starting the monitor thread", e))?;
        Ok(Tracker {
            core,
            harvest: Mutex::new(Harvest {
                scanner,
                ranges: Vec::new(),
                segments: Vec::new(),
            }),
            monitor: Some(monitor),
        })
    }
}

fn check_prefault(caps: &Capabilities, p: Prefault) -> Result<(), Error> {
    let missing = |feature, since| Error::UnsupportedKernel {
        mode: Mode::Sync,
        feature,
        since,
        kernel: caps.kernel_release.clone(),
        alternative: "choose another Prefault, or leave the default (the best the kernel has)",
    };
    match p {
        Prefault::Unpopulated if !caps.wp_unpopulated() => {
            Err(missing("UFFD_FEATURE_WP_UNPOPULATED", "6.4"))
        }
        Prefault::PopulateRead if !caps.madv_populate_read => {
            Err(missing("MADV_POPULATE_READ", "5.14"))
        }
        _ => Ok(()),
    }
}
