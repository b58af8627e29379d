//! A straightforward sync uffd-wp tracker on the `userfaultfd` crate's safe API: what a user of
//! the design card's crate would write first.
//!
//! A monitor thread waits (poll) on the uffd and a stop eventfd, reads one event at a time
//! (`Uffd::read_event`), marks the faulting page in a bitmap and removes the write protection of
//! that page, waking the writer. Harvest = re-protect the whole range (`write_protect`), swap the
//! bitmap out word by word, copy the marked pages. The writes are not concurrent with the
//! harvest in the benches, so this simple order loses nothing here (a tracker for concurrent
//! writers needs dirtytrack's care: see `src/core.rs`).

use crate::common::{self, page_size};
use crate::{mapped, Checkpoint, Peer};
use dirtytrack::sys::mem::{self, AnonMapping};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use userfaultfd::{Event, FaultKind, FeatureFlags, IoctlFlags, RegisterMode, Uffd, UffdBuilder};

pub struct UffdCrate {
    uffd: Arc<Uffd>,
    bitmap: Arc<[AtomicU64]>,
    stop: OwnedFd,
    monitor: Option<JoinHandle<()>>,
    // Declared last: unmapped after the monitor is gone and the uffd is closed.
    mem: AnonMapping,
}

impl UffdCrate {
    pub fn new(len: usize) -> UffdCrate {
        let ps = page_size();
        let mem = common::map(len);
        common::populate(&mem);
        let uffd = UffdBuilder::new()
            .close_on_exec(true)
            .non_blocking(true)
            .require_features(FeatureFlags::PAGEFAULT_FLAG_WP)
            // Not `.require_ioctls(IoctlFlags::WRITE_PROTECT)`: UFFDIO_API reports the fd's
            // ioctls only (REGISTER, UNREGISTER, API); WRITEPROTECT is a range ioctl, reported
            // by UFFDIO_REGISTER (checked below).
            .create()
            .unwrap_or_else(|e| panic!("userfaultfd crate: create: {e}"));
        let start = mem.addr() as *mut libc::c_void;
        let ioctls = uffd
            .register_with_mode(start, len, RegisterMode::WRITE_PROTECT)
            .unwrap_or_else(|e| panic!("userfaultfd crate: register: {e}"));
        assert!(
            ioctls.contains(IoctlFlags::WRITE_PROTECT),
            "userfaultfd crate: range has no WRITEPROTECT ioctl: {ioctls:?}"
        );
        uffd.write_protect(start, len)
            .unwrap_or_else(|e| panic!("userfaultfd crate: write_protect: {e}"));
        let uffd = Arc::new(uffd);
        let bitmap: Arc<[AtomicU64]> = (0..(len / ps).div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        let stop = mem::eventfd().expect("eventfd");
        let monitor = {
            let (uffd, bitmap) = (uffd.clone(), bitmap.clone());
            let stop = stop.try_clone().expect("dup eventfd");
            let base = mem.addr();
            std::thread::Builder::new()
                .name("uffd-crate-monitor".into())
                .spawn(move || monitor(&uffd, &bitmap, &stop, base))
                .expect("spawn monitor")
        };
        UffdCrate {
            uffd,
            bitmap,
            stop,
            monitor: Some(monitor),
            mem,
        }
    }
}

fn monitor(uffd: &Uffd, bitmap: &[AtomicU64], stop: &OwnedFd, base: usize) {
    let ps = page_size();
    loop {
        let [ready, stopped] = mem::poll_in2(uffd.as_fd(), stop.as_fd(), -1).expect("poll");
        if stopped {
            return;
        }
        if !ready {
            continue;
        }
        match uffd.read_event() {
            Ok(Some(Event::Pagefault {
                kind: FaultKind::WriteProtected,
                addr,
                ..
            })) => {
                let page = addr as usize & !(ps - 1);
                let i = (page - base) / ps;
                // Marked before the un-protect wakes the writer.
                bitmap[i / 64].fetch_or(1 << (i % 64), Ordering::Relaxed);
                uffd.remove_write_protection(page as *mut libc::c_void, ps, true)
                    .unwrap_or_else(|e| panic!("userfaultfd crate: un-protect: {e}"));
            }
            Ok(_) => {}
            Err(e) => panic!("userfaultfd crate: read_event: {e}"),
        }
    }
}

impl Drop for UffdCrate {
    fn drop(&mut self) {
        let _ = self
            .uffd
            .unregister(self.mem.addr() as *mut libc::c_void, self.mem.len());
        let _ = mem::eventfd_signal(self.stop.as_fd());
        if let Some(t) = self.monitor.take() {
            if t.join().is_err() {
                eprintln!("userfaultfd-crate monitor panicked");
            }
        }
    }
}

impl Peer for UffdCrate {
    fn name(&self) -> &'static str {
        "userfaultfd_crate"
    }
    fn mem(&self) -> &AnonMapping {
        &self.mem
    }
    fn harvest(&mut self, cp: &mut Checkpoint) {
        self.uffd
            .write_protect(self.mem.addr() as *mut libc::c_void, self.mem.len())
            .expect("userfaultfd crate: re-protect");
        let (base, bytes) = (self.mem.addr(), mapped(&self.mem));
        let bitmap = &self.bitmap;
        cp.copy_bitmap_runs(bytes, base, bitmap.len(), |w| {
            bitmap[w].swap(0, Ordering::Relaxed)
        });
    }
}
