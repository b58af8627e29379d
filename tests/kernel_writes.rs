//! Writes the kernel makes into tracked memory on the process's behalf (`read`, `pread`,
//! `readv`, `recvmsg`, `getrandom`, `process_vm_writev` from another process, `/proc/self/mem`)
//! are reported like user writes, in both modes. In sync mode these syscalls must also succeed:
//! the library never uses `UFFD_USER_MODE_ONLY` there, so the kernel's own fault on a protected
//! page waits for the monitor like a user fault does (with it, they would fail with `EFAULT`).
//!
//! The one exception is `/proc/PID/mem` in sync mode: the kernel's remote access cannot wait for
//! a userfaultfd, so a write to a protected page fails with `EIO` and changes nothing (nothing to
//! report, nothing lost). Documented in the README's tracking contract.

mod common;
use common::{page, tracker, Region};
#[allow(unused_imports)]
use dirtytrack::Mode;
use dirtytrack::{DirtySet, Tracker};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A tracker and 8 registered pages of private anonymous memory: pages 0..4 populated (with
/// `1`s), pages 4..8 never touched. The shadow is rebased after registering.
fn setup(mode: Mode) -> Option<(Tracker, Region)> {
    let t = tracker(mode)?;
    let mut r = Region::anon(8);
    for i in 0..4 {
        r.write(i, 0, 1);
    }
    t.register(r.ptr(), r.len).unwrap();
    r.rebase();
    assert!(t.collect().unwrap().is_empty());
    Some((t, r))
}

/// `len` bytes of a pattern that differs from every byte the regions hold (0 or 1).
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| 0x80 | (i as u8 ^ seed)).collect()
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two fds.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh fds we own.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn write_all(fd: &OwnedFd, data: &[u8]) {
    // SAFETY: `data` is a valid buffer.
    let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    assert_eq!(
        n,
        data.len() as isize,
        "write: {}",
        std::io::Error::last_os_error()
    );
}

/// Reads `len` bytes from `fd` into tracked memory at `addr` with `read(2)`.
fn read_into(fd: &OwnedFd, addr: usize, len: usize) -> isize {
    // SAFETY: `addr..addr + len` is inside a live mapping of the test.
    unsafe { libc::read(fd.as_raw_fd(), addr as *mut libc::c_void, len) }
}

/// `d` reports exactly pages `want` of `r`, and nothing outside `r`.
fn assert_reports(d: &DirtySet, r: &Region, want: &[usize], what: &str) {
    assert_eq!(r.reported_pages(d), want, "{what}: the pages reported");
    assert_eq!(d.len(), want.len(), "{what}: nothing outside the region");
}

/// An iovec of `len` bytes at `addr`.
fn iovec(addr: usize, len: usize) -> libc::iovec {
    libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: len,
    }
}

/// One round of a kernel-write case: `write` makes the kernel write into the pages of
/// [`setup`] (asserting each syscall's result); the collect after it must report exactly
/// `pages` (the oracle: exactly the changed pages).
struct Round {
    write: fn(&Region, Mode),
    pages: &'static [usize],
}

/// The body every kernel-write case runs: [`setup`], then each round: its write, a collect,
/// the oracle (exact), the pages reported.
fn kernel_writes(mode: Mode, rounds: &[Round]) {
    let Some((t, mut r)) = setup(mode) else {
        return;
    };
    for (n, round) in rounds.iter().enumerate() {
        (round.write)(&r, mode);
        let d = t.collect().unwrap();
        let (want, what) = (round.pages.len(), format!("{mode:?} round {n}"));
        assert_eq!(
            r.check(&d, true),
            (want, want),
            "{what}: (changed, reported)"
        );
        assert_reports(&d, &r, round.pages, &what);
    }
}

/// `read(2)` from a pipe: 64 bytes into a populated page (1) and a never-touched page (5).
fn by_pipe_read_64_bytes(r: &Region, _: Mode) {
    let (rd, wr) = pipe();
    for i in [1, 5] {
        write_all(&wr, &pattern(64, i as u8));
        assert_eq!(
            read_into(&rd, r.page_addr(i) + 100, 64),
            64,
            "read: errno {}",
            errno()
        );
    }
}

/// `read(2)` from a pipe: a whole page (2).
fn by_pipe_read_whole_page(r: &Region, _: Mode) {
    let ps = page();
    let (rd, wr) = pipe();
    write_all(&wr, &pattern(ps, 9));
    assert_eq!(
        read_into(&rd, r.page_addr(2), ps),
        ps as isize,
        "read: errno {}",
        errno()
    );
}

/// `read(2)` from a pipe across page boundaries: pages 3 (populated) and 4 (never touched);
/// 2 bytes into pages 6 and 7 (both never touched).
fn by_pipe_read_across_pages(r: &Region, _: Mode) {
    let ps = page();
    let (rd, wr) = pipe();
    write_all(&wr, &pattern(100, 3));
    assert_eq!(
        read_into(&rd, r.page_addr(3) + ps - 50, 100),
        100,
        "read: errno {}",
        errno()
    );
    write_all(&wr, &pattern(2, 4));
    assert_eq!(
        read_into(&rd, r.page_addr(6) + ps - 1, 2),
        2,
        "read: errno {}",
        errno()
    );
}

/// `pread(2)` from a file: two whole pages from file offset `ps` (pages 2 and 3: populated),
/// and 10 bytes straddling pages 4 and 5 (never touched).
fn by_pread(r: &Region, mode: Mode) {
    let ps = page();
    let path = std::env::temp_dir().join(format!(
        "dirtytrack-kw-pread-{}-{:?}",
        std::process::id(),
        mode
    ));
    std::fs::write(&path, pattern(3 * ps, 7)).unwrap();
    let f = std::fs::File::open(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    // SAFETY: the destinations are inside the tracked mapping.
    let n = unsafe {
        libc::pread(
            f.as_raw_fd(),
            r.page_addr(2) as *mut libc::c_void,
            2 * ps,
            ps as i64,
        )
    };
    assert_eq!(n, 2 * ps as isize, "pread: errno {}", errno());
    // SAFETY: as above.
    let n = unsafe {
        libc::pread(
            f.as_raw_fd(),
            (r.page_addr(5) - 5) as *mut libc::c_void,
            10,
            0,
        )
    };
    assert_eq!(n, 10, "pread: errno {}", errno());
}

/// `readv(2)` from a pipe into pages 0 and 7.
fn by_readv(r: &Region, _: Mode) {
    let (rd, wr) = pipe();
    write_all(&wr, &pattern(300, 11));
    let iov = [
        iovec(r.page_addr(0) + 8, 100),
        iovec(r.page_addr(7) + 8, 200),
    ];
    // SAFETY: both iovecs point into the tracked mapping.
    let n = unsafe { libc::readv(rd.as_raw_fd(), iov.as_ptr(), 2) };
    assert_eq!(n, 300, "readv: errno {}", errno());
}

/// `recvmsg(2)` from a socketpair into pages 1 and 2 (page - 96 + 200 crosses from page 1 into
/// page 2) and 6.
fn by_recvmsg(r: &Region, _: Mode) {
    let mut sv = [0; 2];
    // SAFETY: `sv` has room for two fds.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            sv.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0);
    // SAFETY: fresh fds we own.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
    write_all(&a, &pattern(500, 13));
    let mut iov = [
        iovec(r.page_addr(1) + page() - 96, 200), // crosses into page 2 at any page size
        iovec(r.page_addr(6) + 8, 300),
    ];
    // SAFETY: zeroed msghdr with our iovecs; both point into the tracked mapping.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = 2;
    // SAFETY: as above.
    let n = unsafe { libc::recvmsg(b.as_raw_fd(), &mut msg, libc::MSG_WAITALL) };
    assert_eq!(n, 500, "recvmsg: errno {}", errno());
}

/// `getrandom(2)` into pages 2 and 4.
fn by_getrandom(r: &Region, _: Mode) {
    for i in [2, 4] {
        // 256 bytes: getrandom never returns short for requests this small.
        // SAFETY: the destination is inside the tracked mapping.
        let n = unsafe { libc::getrandom((r.page_addr(i) + 16) as *mut libc::c_void, 256, 0) };
        assert_eq!(n, 256, "getrandom: errno {}", errno());
    }
}

/// `process_vm_writev(2)` from a forked child: 32 bytes into page 1 (populated), a whole page
/// plus 32 bytes into pages 5 and 6 (never touched).
fn by_process_vm_writev_in_a_child(r: &Region, _: Mode) {
    let ps = page();
    let parent = std::process::id() as libc::pid_t;
    // Everything the child needs exists before the fork: it only makes syscalls.
    let data = pattern(ps + 64, 17);
    let local = [iovec(data.as_ptr() as usize, data.len())];
    let remote = [
        iovec(r.page_addr(1) + 64, 32),
        iovec(r.page_addr(5), ps + 32),
    ];
    // SAFETY: the child only calls process_vm_writev and _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: errno {}", errno());
    if pid == 0 {
        // SAFETY: iovecs valid in the child (copied address space) and in the parent.
        let n =
            unsafe { libc::process_vm_writev(parent, local.as_ptr(), 1, remote.as_ptr(), 2, 0) };
        let code = if n == (ps + 64) as isize {
            0
        } else if n < 0 {
            100 + errno().min(100)
        } else {
            1
        };
        // SAFETY: leave the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    let code = libc::WEXITSTATUS(status);
    assert_eq!(
        code, 0,
        "process_vm_writev in the child failed (code {code}: 1 = short write, 100 + errno)"
    );
}

/// `/proc/self/mem` writes (async mode only, see below): a populated page (2), a never-touched
/// page (4), and 2 bytes straddling pages 6 and 7.
fn by_proc_self_mem(r: &Region, _: Mode) {
    let mem = open_proc_self_mem();
    assert_eq!(
        proc_mem_write(&mem, r.page_addr(2) + 5, &pattern(10, 1)),
        Ok(10)
    );
    assert_eq!(
        proc_mem_write(&mem, r.page_addr(4), &pattern(10, 2)),
        Ok(10)
    );
    assert_eq!(
        proc_mem_write(&mem, r.page_addr(7) - 1, &pattern(2, 3)),
        Ok(2)
    );
}

// The table: one `#[test]` per kernel-write kind and per mode.
per_case! { kernel_writes:
    pipe_read_into_one_page => &[
        Round { write: by_pipe_read_64_bytes, pages: &[1, 5] },
        Round { write: by_pipe_read_whole_page, pages: &[2] },
    ],
    pipe_read_spanning_two_pages => &[Round { write: by_pipe_read_across_pages, pages: &[3, 4, 6, 7] }],
    pread_from_a_file => &[Round { write: by_pread, pages: &[2, 3, 4, 5] }],
    readv_into_two_pages => &[Round { write: by_readv, pages: &[0, 7] }],
    recvmsg_from_a_socketpair => &[Round { write: by_recvmsg, pages: &[1, 2, 6] }],
    getrandom_into_pages => &[Round { write: by_getrandom, pages: &[2, 4] }],
    process_vm_writev_from_a_child => &[Round { write: by_process_vm_writev_in_a_child, pages: &[1, 5, 6] }],
}

fn open_proc_self_mem() -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/proc/self/mem")
        .unwrap()
}

/// `pwrite` to `/proc/self/mem` at `addr`.
fn proc_mem_write(mem: &std::fs::File, addr: usize, data: &[u8]) -> Result<usize, i32> {
    // SAFETY: `data` is a valid buffer; the kernel writes our own memory at `addr`.
    let n = unsafe {
        libc::pwrite(
            mem.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            addr as i64,
        )
    };
    if n < 0 {
        Err(errno())
    } else {
        Ok(n as usize)
    }
}

/// Async mode: `/proc/self/mem` writes are reported like any other write (the table's body, in
/// async mode only).
#[test]
fn proc_self_mem_write_is_reported_in_async_mode() {
    kernel_writes(
        Mode::Async,
        &[Round {
            write: by_proc_self_mem,
            pages: &[2, 4, 6, 7],
        }],
    );
}

/// Sync mode, documented limitation: a `/proc/self/mem` write to a write-protected page fails
/// with `EIO` (populated or never-touched page alike) and changes nothing, so nothing is lost.
/// Once the program itself has written the page since the last collect (it is un-protected
/// until the next collect), the same write succeeds and the page is reported (it was already).
#[test]
fn proc_self_mem_write_fails_with_eio_in_sync_mode_documented() {
    let Some((t, mut r)) = setup(Mode::Sync) else {
        return;
    };
    let mem = open_proc_self_mem();
    assert_eq!(
        proc_mem_write(&mem, r.page_addr(2) + 5, &pattern(10, 1)),
        Err(libc::EIO)
    );
    assert_eq!(
        proc_mem_write(&mem, r.page_addr(4), &pattern(10, 2)),
        Err(libc::EIO)
    );
    assert_eq!(
        r.changed(),
        Vec::<usize>::new(),
        "a failed write changed nothing"
    );
    let d = t.collect().unwrap();
    assert_eq!(r.check(&d, true), (0, 0));
    // The tracker is unaffected: user writes are still reported.
    r.touch(2);
    // Page 2 is un-protected now: /proc/self/mem can write it; page 3 is still protected.
    assert_eq!(
        proc_mem_write(&mem, r.page_addr(2) + 5, &pattern(10, 4)),
        Ok(10)
    );
    assert_eq!(
        proc_mem_write(&mem, r.page_addr(3), &pattern(10, 5)),
        Err(libc::EIO)
    );
    let d = t.collect().unwrap();
    assert_eq!(r.check(&d, true), (1, 1));
    assert_reports(&d, &r, &[2], "Sync");
    // After the collect, page 2 is protected again.
    assert_eq!(
        proc_mem_write(&mem, r.page_addr(2), &pattern(10, 6)),
        Err(libc::EIO)
    );
    assert_eq!(r.check(&t.collect().unwrap(), true), (0, 0));
}
