//! The `mprotect` + `SIGSEGV` tracker: what Boehm GC and Wine fall back to.
//!
//! The region is `PROT_READ`; a `SIGSEGV` handler marks the faulting page in a static bitmap and
//! `mprotect`s that page back to read-write. Harvest = scan the bitmap, copy, clear, `mprotect`
//! the whole region `PROT_READ` again (timed, as dirtytrack's collect includes its re-protection).
//! Its state is static (a signal handler has no context pointer): one such tracker at a time.

use crate::common::{self, page_size};
use crate::{mapped, Checkpoint, Peer};
use dirtytrack::sys::mem::AnonMapping;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Once;

/// Bitmap capacity: 1 GiB of 4 KiB pages (32 KiB of bits).
const MAX_PAGES: usize = (1 << 30) / 4096;
static BITMAP: [AtomicU64; MAX_PAGES / 64] = [const { AtomicU64::new(0) }; MAX_PAGES / 64];
static START: AtomicUsize = AtomicUsize::new(0);
/// 0 while no region is tracked: every fault is then foreign.
static LEN: AtomicUsize = AtomicUsize::new(0);
static PAGE: AtomicUsize = AtomicUsize::new(4096);
static ACTIVE: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

/// The `SIGSEGV` handler. Async-signal-safety: it only does lock-free atomic loads and
/// `fetch_or`s on statics, and the `mprotect`, `signal` and `abort` system calls. POSIX does not
/// list `mprotect` as async-signal-safe, but on Linux it is a plain system call with no
/// user-space state (no lock, no allocation), which is what Boehm GC and Wine rely on.
///
/// A fault outside the tracked region (a real crash, or a stack overflow that std's own handler,
/// replaced here, would have reported) resets `SIGSEGV` to its default action and returns: the
/// faulting instruction re-executes and the process dies of `SIGSEGV` as it would have anyway.
extern "C" fn segv_handler(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid `siginfo_t` to an `SA_SIGINFO` handler, and `si_addr` is
    // the field that `SIGSEGV` fills in.
    let addr = unsafe { (*info).si_addr() } as usize;
    let (start, len) = (START.load(Ordering::Acquire), LEN.load(Ordering::Acquire));
    if addr < start || addr - start >= len {
        // SAFETY: `signal` is async-signal-safe; resetting the disposition to default is sound.
        unsafe { libc::signal(libc::SIGSEGV, libc::SIG_DFL) };
        return;
    }
    let ps = PAGE.load(Ordering::Relaxed);
    let i = (addr - start) / ps;
    BITMAP[i / 64].fetch_or(1 << (i % 64), Ordering::Relaxed);
    let page = start + i * ps;
    // SAFETY: `page` is a page of the tracked region, a live anonymous mapping the tracker owns
    // (it is only unmapped after the tracker is dropped, which empties LEN first); making it
    // writable again is what lets the interrupted write complete.
    let r = unsafe {
        libc::mprotect(
            page as *mut libc::c_void,
            ps,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
    if r != 0 {
        // SAFETY: `abort` is async-signal-safe and takes no arguments.
        unsafe { libc::abort() };
    }
}

fn install() {
    // SAFETY: `sigaction` is plain old data; all-zero is a valid empty action (empty mask).
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = segv_handler as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: installs a valid `SA_SIGINFO` handler with the matching signature; the old action
    // is not needed (see `segv_handler` for foreign faults).
    let r = unsafe { libc::sigaction(libc::SIGSEGV, &sa, std::ptr::null_mut()) };
    assert_eq!(r, 0, "sigaction: {}", io::Error::last_os_error());
}

/// `mprotect` the whole of `mem`.
fn protect(mem: &AnonMapping, prot: libc::c_int) {
    // SAFETY: the whole of a live anonymous mapping we own; only protections change. With
    // PROT_READ, writes into it fault into `segv_handler`, which un-protects the page.
    let r = unsafe { libc::mprotect(mem.addr() as *mut libc::c_void, mem.len(), prot) };
    assert_eq!(r, 0, "mprotect: {}", io::Error::last_os_error());
}

pub struct MprotectSegv {
    mem: AnonMapping,
    words: usize,
}

impl MprotectSegv {
    /// Panics if another one is alive, or if `len` is over 1 GiB of 4 KiB pages.
    pub fn new(len: usize) -> MprotectSegv {
        assert!(
            !ACTIVE.swap(true, Ordering::AcqRel),
            "only one mprotect tracker at a time"
        );
        let ps = page_size();
        let pages = len / ps;
        assert!(pages <= MAX_PAGES, "mprotect peer: region over its bitmap");
        let mem = common::map(len);
        common::populate(&mem);
        BITMAP.iter().for_each(|w| w.store(0, Ordering::Relaxed));
        PAGE.store(ps, Ordering::Relaxed);
        START.store(mem.addr(), Ordering::Release);
        LEN.store(len, Ordering::Release);
        INSTALL.call_once(install);
        protect(&mem, libc::PROT_READ);
        MprotectSegv {
            mem,
            words: pages.div_ceil(64),
        }
    }
}

impl Drop for MprotectSegv {
    fn drop(&mut self) {
        protect(&self.mem, libc::PROT_READ | libc::PROT_WRITE);
        LEN.store(0, Ordering::Release);
        ACTIVE.store(false, Ordering::Release);
    }
}

impl Peer for MprotectSegv {
    fn name(&self) -> &'static str {
        "mprotect_sigsegv"
    }
    fn mem(&self) -> &AnonMapping {
        &self.mem
    }
    fn harvest(&mut self, cp: &mut Checkpoint) {
        let (base, bytes) = (self.mem.addr(), mapped(&self.mem));
        cp.copy_bitmap_runs(bytes, base, self.words, |w| {
            BITMAP[w].swap(0, Ordering::Relaxed)
        });
        protect(&self.mem, libc::PROT_READ);
    }
}
