//! Fault injection: hostile environments and hostile callers. Each test proves a clear error (or
//! a working fallback), no hang, no panic and no lost write. Anything that changes process-wide
//! state (credentials, seccomp, mount namespace, fd limit, VMA count) runs in a forked child that
//! reports through a pipe and `_exit`s; the parent kills it and fails if it does not finish in
//! time (a hang).

mod common;
use common::{page, skip, Region};
use dirtytrack::{Error, FdSource, Mode, RangeId, Tracker};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Forked children
// ---------------------------------------------------------------------------------------------

/// How a child ended.
#[derive(Debug)]
enum Outcome {
    /// `Ok(report)` from the body.
    Passed(String),
    /// `Err(reason)` from the body, or a panic in it.
    Failed(String),
    /// Still running after the timeout: killed.
    Hung,
    /// Killed by a signal or exited with an unexpected code.
    Died(String),
}

/// Serialises [`in_child`] (see there).
static FORKS: Mutex<()> = Mutex::new(());

/// Runs `body` in a forked child and returns its outcome. The child writes its report to a pipe
/// and leaves with `_exit` (no harness, no destructors of the parent's state).
///
/// Forking a multi-threaded process is only safe if no other thread holds a process-wide lock at
/// the instant of the fork (std's and glibc's thread start/exit bookkeeping, parking_lot's
/// parking table): the child would inherit it locked, and every thread it starts would wait on
/// it forever (seen under TCG: a child with all ten threads in `futex_wait`, none past start).
/// So the tests of this binary create no thread in the parent except here, and this function
/// runs one child at a time ([`FORKS`]): at a fork, the other test threads are waiting for
/// `FORKS`, not starting or ending threads. On a hang, each child thread's state and kernel
/// stack are printed (`thread_states`) before it is killed.
fn in_child(timeout: Duration, body: impl FnOnce() -> Result<String, String>) -> Outcome {
    let _one_child_at_a_time = FORKS.lock().unwrap_or_else(|e| e.into_inner());
    let mut fds = [0; 2];
    // SAFETY: a fresh pipe.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the child runs `body` (which may allocate and start threads: glibc makes malloc
    // safe after fork) and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: closing the read end in the child.
        unsafe { libc::close(fds[0]) };
        // No `set_hook` here: it takes the hook lock for writing, which another test thread may
        // have held (while panicking) at the instant of the fork, forever in this child.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
        let (code, msg) = match result {
            Ok(Ok(m)) => (0, m),
            Ok(Err(m)) => (1, m),
            Err(p) => (
                1,
                format!(
                    "panic: {}",
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default()
                ),
            ),
        };
        let bytes = msg.as_bytes();
        let mut off = 0;
        while off < bytes.len() {
            // SAFETY: writing our buffer to our pipe.
            let n = unsafe {
                libc::write(
                    fds[1],
                    bytes[off..].as_ptr().cast(),
                    (bytes.len() - off).min(60_000),
                )
            };
            if n <= 0 {
                break;
            }
            off += n as usize;
        }
        // SAFETY: leaving the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    // SAFETY: closing the write end in the parent; the read end becomes ours.
    unsafe { libc::close(fds[1]) };
    // SAFETY: a fresh fd we own.
    let mut reader = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fds[0]) });
    // Read concurrently, so a long report cannot block the child on a full pipe.
    let collector = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = reader.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + scaled(timeout);
    let mut status = 0;
    let hung = loop {
        // SAFETY: polling our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break false;
        }
        if Instant::now() > deadline {
            eprintln!(
                "HANG: child {pid} still running; its threads:\n{}",
                thread_states(pid)
            );
            // SAFETY: killing and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            break true;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let msg = collector.join().unwrap_or_default();
    if hung {
        return Outcome::Hung;
    }
    if libc::WIFEXITED(status) {
        match libc::WEXITSTATUS(status) {
            0 => Outcome::Passed(msg),
            1 => Outcome::Failed(msg),
            c => Outcome::Died(format!("exit code {c}: {msg}")),
        }
    } else {
        Outcome::Died(format!(
            "killed by signal {} (a crash or an abort): {msg}",
            libc::WTERMSIG(status)
        ))
    }
}

/// What each thread of `pid` is doing (name, state, kernel wait channel, kernel stack when
/// readable): the evidence a hang report needs to tell a kernel stall from a user-space deadlock.
fn thread_states(pid: i32) -> String {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return "(no /proc entry)".into();
    };
    let mut out = String::new();
    for t in tasks.flatten() {
        let dir = t.path();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let state = read("status")
            .lines()
            .find(|l| l.starts_with("State:"))
            .unwrap_or("")
            .to_string();
        out += &format!(
            "  tid {} {} {} wchan={}\n{}",
            t.file_name().to_string_lossy(),
            read("comm").trim(),
            state,
            read("wchan"),
            read("stack")
                .lines()
                .take(12)
                .map(|l| format!("      {l}\n"))
                .collect::<String>()
        );
    }
    out
}

/// Asserts a child passed and prints its report (`--nocapture` shows it; TESTING.md cites it).
fn expect_pass(what: &str, o: Outcome) -> String {
    match o {
        Outcome::Passed(m) => {
            eprintln!("DIRTYTRACK-FAULT: {what}: {m}");
            m
        }
        Outcome::Failed(m) => panic!("{what}: {m}"),
        Outcome::Hung => panic!("{what}: HANG: the child did not finish in time and was killed"),
        Outcome::Died(m) => panic!("{what}: the child died: {m}"),
    }
}

fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

/// Registers `r`, changes pages `pages` (user writes) and `kernel` (a `read(2)` from a pipe),
/// collects, and checks the result with the shared oracle (exact: private anonymous memory).
fn round_trip(
    t: &Tracker,
    r: &mut Region,
    pages: &[usize],
    kernel: Option<usize>,
) -> Result<RangeId, String> {
    let id = t
        .register(r.ptr(), r.len)
        .map_err(|e| format!("register: {e}"))?;
    r.rebase();
    for &p in pages {
        r.touch(p);
    }
    if let Some(p) = kernel {
        kernel_write(r, p)?;
    }
    let d = t.collect().map_err(|e| format!("collect: {e}"))?;
    let want = pages.len() + kernel.map_or(0, |k| usize::from(!pages.contains(&k)));
    let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.check(&d, true)))
        .map_err(|_| format!("the oracle failed on {d:?}"))?;
    check(got == (want, want), || {
        format!("changed/reported {got:?}, expected {want} each: {d:?}")
    })?;
    Ok(id)
}

/// Changes the first byte of page `p` through `read(2)` from a pipe: a kernel write.
fn kernel_write(r: &Region, p: usize) -> Result<(), String> {
    let mut fds = [0; 2];
    // SAFETY: a fresh pipe, a one-byte write and a one-byte read into our own page.
    unsafe {
        if libc::pipe(fds.as_mut_ptr()) != 0 {
            return Err(format!("pipe: {}", std::io::Error::last_os_error()));
        }
        let v = r.read(p, 0).wrapping_add(1);
        libc::write(fds[1], (&v as *const u8).cast(), 1);
        let n = libc::read(fds[0], r.page_addr(p) as *mut libc::c_void, 1);
        let err = std::io::Error::last_os_error();
        libc::close(fds[0]);
        libc::close(fds[1]);
        check(n == 1, || format!("read(2) into tracked memory: {err}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Unprivileged user
// ---------------------------------------------------------------------------------------------

fn sysctl(name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{}", name.replace('.', "/")))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Becomes uid/gid 65534 with no supplementary groups. `dumpable`: a process that changed its
/// credentials is not dumpable, which makes its own `/proc/self/*` files root's (pagemap
/// unreadable); a process started as that user is dumpable.
fn drop_privileges(dumpable: bool) -> Result<(), String> {
    // SAFETY: changing this (child) process's credentials.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(65534) != 0
            || libc::setuid(65534) != 0
        {
            return Err(format!(
                "dropping privileges: {}",
                std::io::Error::last_os_error()
            ));
        }
        if dumpable {
            libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
        }
    }
    check(unsafe { libc::geteuid() } == 65534, || {
        "still privileged".into()
    })
}

/// Whether this kernel and process can run `mode` (after reporting a skip if not), found out
/// without starting a thread in this process (a `Tracker` would start its monitor thread; see
/// [`in_child`] for why the parent must not).
fn mode_available(mode: Mode) -> bool {
    let caps = dirtytrack::Capabilities::probe();
    let check = match mode {
        Mode::Sync => caps.check_sync(),
        _ => caps.check_async(),
    };
    match check {
        Ok(()) => true,
        Err(e) => {
            common::skip(&e.to_string());
            false
        }
    }
}

/// `false` (after reporting a skip) when this kernel cannot run async mode at all (e.g. 6.1).
fn async_supported() -> bool {
    match dirtytrack::Capabilities::probe().check_async() {
        Ok(()) => true,
        Err(e) => {
            common::skip(&format!("async mode unavailable here: {e}"));
            false
        }
    }
}

/// Child time limits scale with `DIRTYTRACK_TIMEOUT_SCALE` (the kernel matrix runs under TCG).
fn scaled(d: Duration) -> Duration {
    let k = std::env::var("DIRTYTRACK_TIMEOUT_SCALE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(1.0);
    d.mul_f64(k.max(1.0))
}

#[test]
fn unprivileged_user_async_works_and_sync_refuses_with_the_three_fixes() {
    if !async_supported() {
        return;
    }
    if unsafe { libc::geteuid() } != 0 {
        skip("needs root to drop to uid 65534");
        return;
    }
    let unpriv = sysctl("vm.unprivileged_userfaultfd").unwrap_or_else(|| "?".into());
    let report = expect_pass(
        "uid 65534",
        in_child(Duration::from_secs(30), || {
            drop_privileges(true)?;
            let mut out = String::new();
            // Async: a user-mode-only userfaultfd, kernel writes still reported.
            let t = Tracker::builder()
                .mode(Mode::Async)
                .build()
                .map_err(|e| format!("async mode as uid 65534: {e}"))?;
            let caps = t.capabilities();
            out += &format!(
                "async builds (user-mode-only fd: {:?}, full fd: {:?}); ",
                caps.user_mode_only_fd, caps.full_fd
            );
            let mut r = Region::anon(16);
            round_trip(&t, &mut r, &[3, 7], Some(9))?;
            out += "writes and a read(2) into tracked memory reported exactly; ";
            check(
                Tracker::new().map(|t| t.mode()).ok() == Some(Mode::Async),
                || "Mode::Auto must choose async".into(),
            )?;
            drop(t);
            // Sync: refused (unless the sysctl allows full fds), naming the three fixes.
            match Tracker::builder().mode(Mode::Sync).build() {
                Err(Error::Permission(m)) => {
                    for fix in [
                        "CAP_SYS_PTRACE",
                        "vm.unprivileged_userfaultfd",
                        "/dev/userfaultfd",
                    ] {
                        check(m.contains(fix), || {
                            format!("the Permission error does not name {fix}: {m}")
                        })?;
                    }
                    out += &format!("sync refused: {m}");
                }
                Ok(t) => {
                    let mut r = Region::anon(16);
                    round_trip(&t, &mut r, &[1], Some(2))?;
                    out += "sync builds and works (vm.unprivileged_userfaultfd allows full fds)";
                }
                Err(e) => return Err(format!("sync as uid 65534: expected Permission, got {e}")),
            }
            Ok(out)
        }),
    );
    eprintln!("DIRTYTRACK-FAULT: vm.unprivileged_userfaultfd = {unpriv}");
    if unpriv == "0" {
        assert!(report.contains("sync refused"), "{report}");
    }
}

#[test]
fn unprivileged_and_not_dumpable_gets_a_clear_error() {
    if !async_supported() {
        return;
    }
    // A process that dropped root itself without PR_SET_DUMPABLE cannot open its own
    // /proc/self/pagemap (the file stays root's, mode 0400), which async mode needs. The error
    // must say so: not claim that the kernel lacks PAGEMAP_SCAN.
    if unsafe { libc::geteuid() } != 0 {
        skip("needs root to drop to uid 65534");
        return;
    }
    expect_pass(
        "uid 65534, not dumpable",
        in_child(Duration::from_secs(30), || {
            drop_privileges(false)?;
            let pagemap = std::fs::File::open("/proc/self/pagemap").map(drop);
            match Tracker::builder().mode(Mode::Async).build() {
                Ok(t) => {
                    let mut r = Region::anon(8);
                    round_trip(&t, &mut r, &[1], None)?;
                    Ok(format!("pagemap open: {pagemap:?}; async builds and works"))
                }
                Err(e @ Error::UnsupportedKernel { .. }) => Err(format!(
                    "WRONG ERROR: /proc/self/pagemap cannot be opened ({pagemap:?}), but the error blames the kernel: {e}"
                )),
                Err(e) => {
                    let m = e.to_string();
                    check(m.contains("pagemap"), || format!("the error must name /proc/self/pagemap: {m}"))?;
                    Ok(format!("pagemap open: {pagemap:?}; async refused: {m}"))
                }
            }
        }),
    );
}

// ---------------------------------------------------------------------------------------------
// seccomp
// ---------------------------------------------------------------------------------------------

/// Installs a seccomp filter that fails `userfaultfd(2)` with `errno` and allows everything else.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn deny_userfaultfd_syscall(errno: i32) -> Result<(), String> {
    common::seccomp::deny_in_this_thread(
        &[common::seccomp::Deny::Syscall(libc::SYS_userfaultfd)],
        errno,
    )?;
    // The filter works: the system call fails with our errno.
    // SAFETY: userfaultfd(2) takes no pointer; a descriptor it returned would only fail the check.
    let rc = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
    let got = std::io::Error::last_os_error().raw_os_error();
    check(rc == -1 && got == Some(errno), || {
        format!("userfaultfd(2) under the filter: rc {rc}, errno {got:?}")
    })
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn seccomp_fallback(errno: i32) {
    if !async_supported() {
        return;
    }
    if unsafe { libc::geteuid() } != 0 {
        skip("needs root (for /dev/userfaultfd)");
        return;
    }
    expect_pass(
        &format!("seccomp denies userfaultfd(2) with errno {errno}"),
        in_child(Duration::from_secs(30), move || {
            deny_userfaultfd_syscall(errno)?;
            let mut out = String::new();
            for mode in [Mode::Async, Mode::Sync] {
                let t = Tracker::builder()
                    .mode(mode)
                    .build()
                    .map_err(|e| format!("{mode:?} under the filter: {e}"))?;
                let caps = t.capabilities();
                check(
                    caps.full_fd == Some(FdSource::DevUserfaultfd)
                        && caps.user_mode_only_fd == Some(FdSource::DevUserfaultfd),
                    || {
                        format!(
                            "{mode:?}: fd sources {:?} / {:?}, expected /dev/userfaultfd",
                            caps.full_fd, caps.user_mode_only_fd
                        )
                    },
                )?;
                let mut r = Region::anon(16);
                round_trip(&t, &mut r, &[0, 5, 15], Some(8))?;
                out += &format!("{mode:?}: falls back to /dev/userfaultfd, exact; ");
            }
            Ok(out)
        }),
    );
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[test]
fn seccomp_eperm_on_userfaultfd_falls_back_to_dev_userfaultfd() {
    seccomp_fallback(libc::EPERM);
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[test]
fn seccomp_enosys_on_userfaultfd_falls_back_to_dev_userfaultfd() {
    seccomp_fallback(libc::ENOSYS);
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[test]
fn no_userfaultfd_at_all_is_a_permission_error_naming_the_fixes() {
    // The system call denied by seccomp, and /dev/userfaultfd replaced by /dev/null in a private
    // mount namespace (opening it works, USERFAULTFD_IOC_NEW fails with ENOTTY).
    if unsafe { libc::geteuid() } != 0 {
        skip("needs root (mount namespace)");
        return;
    }
    let o = in_child(Duration::from_secs(30), || {
        // SAFETY: a private mount namespace for this (child) process only.
        unsafe {
            let c = |s: &str| std::ffi::CString::new(s).unwrap_or_default();
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Ok(format!(
                    "SKIP: unshare(CLONE_NEWNS): {}",
                    std::io::Error::last_os_error()
                ));
            }
            let root = c("/");
            let none = c("none");
            if libc::mount(
                none.as_ptr(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Ok(format!(
                    "SKIP: making / private: {}",
                    std::io::Error::last_os_error()
                ));
            }
            let (null, dev) = (c("/dev/null"), c("/dev/userfaultfd"));
            if libc::mount(
                null.as_ptr(),
                dev.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ) != 0
            {
                return Ok(format!(
                    "SKIP: bind-mounting /dev/null on /dev/userfaultfd: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        deny_userfaultfd_syscall(libc::EPERM)?;
        let mut out = String::new();
        for mode in [Mode::Async, Mode::Sync, Mode::Auto] {
            match Tracker::builder().mode(mode).build() {
                Err(e @ Error::Permission(_)) => {
                    let m = e.to_string();
                    check(
                        m.contains("/dev/userfaultfd") && m.contains("userfaultfd(2"),
                        || {
                            format!("{mode:?}: the message must say what failed and name /dev/userfaultfd: {m}")
                        },
                    )?;
                    if mode != Mode::Sync {
                        check(m.contains("seccomp"), || {
                            format!("{mode:?}: the message must name seccomp: {m}")
                        })?;
                    }
                    out += &format!("{mode:?}: {m}; ");
                }
                Ok(t) => {
                    return Err(format!(
                        "{mode:?}: built without any userfaultfd?! {:?}",
                        t.capabilities()
                    ))
                }
                Err(e) => return Err(format!("{mode:?}: expected Permission, got {e:?}")),
            }
        }
        let caps = dirtytrack::Capabilities::probe();
        check(
            caps.full_fd.is_none() && caps.user_mode_only_fd.is_none(),
            || format!("{caps:?}"),
        )?;
        Ok(out)
    });
    let m = expect_pass("no userfaultfd at all", o);
    if let Some(reason) = m.strip_prefix("SKIP: ") {
        skip(reason);
    }
}

// ---------------------------------------------------------------------------------------------
// File descriptors exhausted after the tracker exists
// ---------------------------------------------------------------------------------------------

per_mode! {
    fn fds_exhausted_after_build(mode: Mode) {
        if !mode_available(mode) { return; }
        expect_pass(&format!("{mode:?}: fds exhausted"), in_child(Duration::from_secs(30), move || {
            let t = Tracker::builder().mode(mode).build().map_err(|e| e.to_string())?;
            let mut a = Region::anon(16);
            let id = round_trip(&t, &mut a, &[1], None)?;
            // Use up every fd under a small limit.
            let lim = libc::rlimit { rlim_cur: 64, rlim_max: 1 << 20 };
            // SAFETY: lowering our own (child) limit; dup of stdin-or-whatever fd 0... use /dev/null.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
            let null = std::fs::File::open("/dev/null").map_err(|e| e.to_string())?;
            let mut held = Vec::new();
            loop {
                // SAFETY: duplicating an fd we own.
                let fd = unsafe { libc::dup(null.as_raw_fd()) };
                if fd < 0 { break; }
                held.push(fd);
            }
            let mut out = format!("{} fds held; ", held.len());
            // Collect, peek, clear need no new fd: they must work, exactly.
            a.touch(4);
            a.touch(9);
            if let Err(e) = kernel_write(&a, 11) {
                out += &format!("(no pipe for a kernel write: {e}) ");
            }
            let s = t.peek().map_err(|e| format!("peek without fds: {e}"))?;
            let d = t.collect().map_err(|e| format!("collect without fds: {e}"))?;
            check(s.len() == d.len(), || format!("peek {s:?} vs collect {d:?}"))?;
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| a.check(&d, true))).map_err(|_| format!("oracle: {d:?}"))?;
            t.clear().map_err(|e| format!("clear without fds: {e}"))?;
            out += "collect/peek/clear exact; ";
            // Register reads /proc/self/maps: a clear resource error, or success.
            let b = Region::anon(8);
            match t.register(b.ptr(), b.len) {
                Ok(_) => out += "register still works; ",
                Err(e @ Error::ResourceExhausted { .. }) => {
                    check(e.to_string().contains("RLIMIT_NOFILE"), || format!("hint: {e}"))?;
                    check(t.ranges().len() == 1, || "a refused register left a range behind".into())?;
                    out += &format!("register: {e}; ");
                }
                Err(e) => return Err(format!("register without fds: expected ResourceExhausted, got {e:?}")),
            }
            t.unregister(id).map_err(|e| format!("unregister without fds: {e}"))?;
            match Tracker::builder().mode(mode).build() {
                Err(Error::ResourceExhausted { .. }) => out += "a new tracker: ResourceExhausted; ",
                Err(e) => return Err(format!("a new tracker without fds: expected ResourceExhausted, got {e:?}")),
                Ok(_) => return Err("a new tracker without fds?!".into()),
            }
            for fd in held {
                // SAFETY: closing the fds we duplicated.
                unsafe { libc::close(fd) };
            }
            for r in t.ranges() { let _ = t.unregister(r.id); }
            let mut c = Region::anon(8);
            round_trip(&t, &mut c, &[2, 6], Some(7))?;
            out += "after closing them everything works again";
            Ok(out)
        }));
    }
}

// ---------------------------------------------------------------------------------------------
// The VMA limit
// ---------------------------------------------------------------------------------------------

fn map_count() -> usize {
    // [vsyscall] is a gate area, not a VMA.
    std::fs::read_to_string("/proc/self/maps")
        .map(|s| s.lines().filter(|l| !l.ends_with("[vsyscall]")).count())
        .unwrap_or(0)
}

/// Registers pages 1, 3, 5, ... of `r` one by one (each its own VMA) until a register fails or
/// `max` succeeded. Returns the ids and the error.
fn register_every_other_page(t: &Tracker, r: &Region, max: usize) -> (Vec<RangeId>, Option<Error>) {
    let mut ids = Vec::new();
    for p in (1..r.pages()).step_by(2).take(max) {
        match t.register(r.page_addr(p) as *mut u8, page()) {
            Ok(id) => ids.push(id),
            Err(e) => return (ids, Some(e)),
        }
    }
    (ids, None)
}

/// What a register at the VMA limit must say: `ResourceExhausted` (ENOMEM) naming
/// vm.max_map_count, or `MappingNotSupported`. Returns its description.
fn vma_limit_error(e: &Error) -> Result<String, String> {
    match e {
        Error::ResourceExhausted { source, .. } => {
            check(source.raw_os_error() == Some(libc::ENOMEM), || {
                format!("errno: {e}")
            })?;
            check(e.to_string().contains("vm.max_map_count"), || {
                format!("hint: {e}")
            })?;
            Ok(format!("ResourceExhausted: {e}"))
        }
        Error::MappingNotSupported { .. } => Ok(format!("MappingNotSupported: {e}")),
        e => Err(format!(
            "at the VMA limit: expected ResourceExhausted or MappingNotSupported, got {e:?}"
        )),
    }
}

per_mode! {
    fn vma_limit_is_a_clear_resource_error(mode: Mode) {
        if !mode_available(mode) { return; }
        let max: usize = sysctl("vm.max_map_count").and_then(|s| s.parse().ok()).unwrap_or(65530);
        expect_pass(&format!("{mode:?}: VMA limit {max}"), in_child(Duration::from_secs(120), move || {
            let started = Instant::now();
            let t = Tracker::builder().mode(mode).build().map_err(|e| e.to_string())?;
            // Ranges registered before the limit is reached, checked after.
            let mut early: Vec<Region> = (0..3).map(|_| Region::anon(8)).collect();
            for r in &mut early {
                t.register(r.ptr(), r.len).map_err(|e| format!("early register: {e}"))?;
                r.rebase();
            }
            let target = Region::anon(512);
            // Fill the VMA table up to a few entries below the limit, without the tracker:
            // every other page of one mapping made read-only is its own VMA.
            let margin = 16;
            let need = max.saturating_sub(map_count() + margin);
            let frag = Region::anon(need + 2);
            for p in (1..need).step_by(2) {
                // SAFETY: changing the protection of our own mapping.
                if unsafe { libc::mprotect(frag.page_addr(p) as *mut libc::c_void, page(), libc::PROT_READ) } != 0 {
                    break;
                }
            }
            let before = map_count();
            let (ids, err) = register_every_other_page(&t, &target, 200);
            let Some(err) = err else {
                return Err(format!("200 registers at {before} of {max} VMAs all succeeded"));
            };
            let what = vma_limit_error(&err)?;
            check(t.ranges().len() == early.len() + ids.len(), || "a refused register left a range behind".into())?;
            // Everything registered still works: writes reported, exactly.
            for r in &early { r.touch(2); r.touch(5); }
            for &id in &ids { let a = t.range(id).map_err(|e| e.to_string())?.addr; Region::borrowed(a, page()).touch(0); }
            let d = t.collect().map_err(|e| format!("collect at the VMA limit: {e}"))?;
            for r in &mut early {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.check(&d, true))).map_err(|_| format!("oracle: {d:?}"))?;
            }
            check(d.len() == 2 * early.len() + ids.len(), || format!("{} pages reported, expected {}", d.len(), 2 * early.len() + ids.len()))?;
            // Unregistering gives VMAs back (neighbours merge): registering works again.
            for &id in &ids { t.unregister(id).map_err(|e| format!("unregister at the limit: {e}"))?; }
            let (again, err2) = register_every_other_page(&t, &target, 2);
            check(again.len() == 2 && err2.is_none(), || format!("register after unregistering: {err2:?}"))?;
            Ok(format!(
                "{} registers succeeded at {before}/{max} VMAs, then {what}; collects exact; recovered after unregister ({:.1} s)",
                ids.len(),
                started.elapsed().as_secs_f64()
            ))
        }));
    }
}

#[test]
fn vma_limit_reached_by_registrations_alone() {
    // The slow variant: no pre-fragmentation, the tracker's own registrations (every other page,
    // each its own VMA) fill the table. ~32k registers, each reading /proc/self/maps: runs only
    // when DIRTYTRACK_VMA_LIMIT_FULL=1 (see TESTING.md for its duration); otherwise a bounded
    // run of 1000 registrations that reports its rate.
    let full = std::env::var("DIRTYTRACK_VMA_LIMIT_FULL").as_deref() == Ok("1");
    let Some(()) = mode_available(Mode::Async).then_some(()) else {
        return;
    };
    let max: usize = sysctl("vm.max_map_count")
        .and_then(|s| s.parse().ok())
        .unwrap_or(65530);
    let limit = if full { usize::MAX } else { 1000 };
    expect_pass(
        &format!("registrations alone (full: {full})"),
        in_child(
            Duration::from_secs(if full { 1800 } else { 120 }),
            move || {
                let started = Instant::now();
                let t = Tracker::builder()
                    .mode(Mode::Async)
                    .build()
                    .map_err(|e| e.to_string())?;
                // Every other page of the target becomes a registration: a bounded run needs
                // only 2 * limit pages (with its shadow copy, 2 x 2 GiB for the full run on a
                // 16 KiB-page kernel).
                let target = Region::anon(2 * max.min(limit) + 4);
                let (ids, err) = register_every_other_page(&t, &target, limit);
                let secs = started.elapsed().as_secs_f64();
                let what = match &err {
                    Some(e) => vma_limit_error(e)?,
                    None if !full => "no error (bounded run)".into(),
                    None => return Err(format!("{} registers, no error?", ids.len())),
                };
                for &id in ids.iter().step_by(97) {
                    let a = t.range(id).map_err(|e| e.to_string())?.addr;
                    Region::borrowed(a, page()).touch(0);
                }
                let d = t
                    .collect()
                    .map_err(|e| format!("collect with {} ranges: {e}", ids.len()))?;
                check(d.len() == ids.iter().step_by(97).count(), || {
                    format!("{} reported", d.len())
                })?;
                Ok(format!(
                    "{} registers in {secs:.1} s ({:.0} us each, {} VMAs), then {what}",
                    ids.len(),
                    secs * 1e6 / ids.len().max(1) as f64,
                    map_count()
                ))
            },
        ),
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile concurrency
// ---------------------------------------------------------------------------------------------

/// Scales the run length: `DIRTYTRACK_STRESS_SECS` (default 1 second per mode).
fn stress_secs() -> f64 {
    std::env::var("DIRTYTRACK_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

per_mode! {
    fn everything_at_once_on_shared_ranges(mode: Mode) {
        // Six threads register, unregister, collect, peek and clear shared ranges at random
        // while two threads write; one "anchor" range is never unregistered or cleared and its
        // writes are checked against the union of every collect. Only documented errors may
        // appear (UnknownRange, Overlap). Then the tracker is dropped while the writers are
        // still writing (Drop on another thread than the writers; the next test drops it on a
        // thread that just collected).
        if !mode_available(mode) { return; }
        let secs = stress_secs();
        let report = expect_pass(&format!("{mode:?}: everything at once"), in_child(Duration::from_secs_f64(60.0 + 4.0 * secs), move || {
            const SLOTS: usize = 8;
            const PAGES: usize = 16;
            let t = Arc::new(Tracker::builder().mode(mode).build().map_err(|e| e.to_string())?);
            let regions: Arc<Vec<Region>> = Arc::new((0..=SLOTS).map(|_| Region::anon(PAGES)).collect());
            let anchor = SLOTS; // the last region
            t.register(regions[anchor].ptr(), regions[anchor].len).map_err(|e| e.to_string())?;
            // The id last registered in each slot (0 = none); stale ids are fine: that is the point.
            let slots: Arc<Vec<AtomicU64>> = Arc::new((0..SLOTS).map(|_| AtomicU64::new(0)).collect());
            let ids: Arc<Mutex<std::collections::HashMap<u64, RangeId>>> = Arc::default();
            let seen = Arc::new(Mutex::new(dirtytrack::DirtySet::new()));
            let written: Arc<Vec<AtomicBool>> = Arc::new((0..PAGES).map(|_| AtomicBool::new(false)).collect());
            let stop_chaos = Arc::new(AtomicBool::new(false));
            let stop_writers = Arc::new(AtomicBool::new(false));
            let errors: Arc<Vec<AtomicUsize>> = Arc::new((0..4).map(|_| AtomicUsize::new(0)).collect());
            let ops = Arc::new(AtomicU64::new(0));
            let writers: Vec<_> = (0..2).map(|w| {
                let (regions, written, stop) = (regions.clone(), written.clone(), stop_writers.clone());
                std::thread::spawn(move || {
                    let mut x = 0x2545F4914F6CDD1Du64 ^ w;
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                        let slot = (x % (SLOTS as u64 + 1)) as usize;
                        let p = ((x >> 8) % PAGES as u64) as usize;
                        let r = &regions[slot];
                        r.write(p, 8 + w as usize, r.read(p, 8 + w as usize).wrapping_add(1));
                        if slot == anchor { written[p].store(true, Ordering::Release); }
                        n += 1;
                    }
                    n
                })
            }).collect();
            let chaos: Vec<_> = (0..6u64).map(|c| {
                let (t, regions, slots, ids, seen, stop, errors, ops) =
                    (t.clone(), regions.clone(), slots.clone(), ids.clone(), seen.clone(), stop_chaos.clone(), errors.clone(), ops.clone());
                std::thread::spawn(move || -> Result<(), String> {
                    let mut x = 0x9E3779B97F4A7C15u64 ^ (c + 1);
                    while !stop.load(Ordering::Relaxed) {
                        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                        let slot = (x % SLOTS as u64) as usize;
                        let id = ids.lock().unwrap().get(&slots[slot].load(Ordering::Acquire)).copied();
                        let r = &regions[slot];
                        let res: Result<(), Error> = match (x >> 8) % 9 {
                            0 | 1 => t.register(r.ptr(), r.len).map(|id| {
                                let key = (x >> 16) | 1;
                                ids.lock().unwrap().insert(key, id);
                                slots[slot].store(key, Ordering::Release);
                            }),
                            2 => id.map_or(Ok(()), |id| t.unregister(id)),
                            3 => t.collect().map(|d| seen.lock().unwrap().union(&d)),
                            4 => t.peek().map(drop),
                            5 => id.map_or(Ok(()), |id| t.collect_range(id).map(drop)),
                            6 => id.map_or(Ok(()), |id| t.peek_range(id).map(drop)),
                            7 => id.map_or(Ok(()), |id| t.clear_range(id)),
                            _ => { let _ = t.ranges(); id.map_or(Ok(()), |id| t.range(id).map(drop)) }
                        };
                        ops.fetch_add(1, Ordering::Relaxed);
                        match res {
                            Ok(()) => errors[0].fetch_add(1, Ordering::Relaxed),
                            Err(Error::UnknownRange(_)) => errors[1].fetch_add(1, Ordering::Relaxed),
                            Err(Error::Overlap { .. }) => errors[2].fetch_add(1, Ordering::Relaxed),
                            Err(e) => return Err(format!("undocumented error under concurrency: {e:?}")),
                        };
                    }
                    Ok(())
                })
            }).collect();
            std::thread::sleep(Duration::from_secs_f64(secs));
            stop_chaos.store(true, Ordering::Relaxed);
            let mut failure = None;
            for h in chaos {
                match h.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failure = Some(e),
                    Err(_) => failure = Some("a chaos thread panicked".into()),
                }
            }
            if let Some(e) = failure { return Err(e); }
            // The anchor: every page written before the final collect started (the writers still
            // run) is in that collect or an earlier one.
            let before: Vec<bool> = written.iter().map(|w| w.load(Ordering::Acquire)).collect();
            let d = t.collect().map_err(|e| format!("final collect: {e}"))?;
            let mut all = seen.lock().unwrap().clone();
            all.union(&d);
            let lost: Vec<usize> = (0..PAGES)
                .filter(|&p| before[p] && !all.contains(regions[anchor].page_addr(p)))
                .collect();
            // Drop the tracker (the last handle) while the writers may still be writing.
            let t = Arc::try_unwrap(t).map_err(|_| "a chaos thread still holds the tracker".to_string())?;
            drop(t);
            stop_writers.store(true, Ordering::Relaxed);
            let writes: u64 = writers.into_iter().map(|h| h.join().unwrap_or(0)).sum();
            check(lost.is_empty(), || format!("LOST WRITES on the anchor range: pages {lost:?}"))?;
            let e: Vec<usize> = errors.iter().map(|e| e.load(Ordering::Relaxed)).collect();
            Ok(format!(
                "{} operations in {secs} s ({} ok, {} UnknownRange, {} Overlap), {writes} writes, anchor exact-or-over: 0 lost",
                ops.load(Ordering::Relaxed), e[0], e[1], e[2]
            ))
        }));
        assert!(report.contains("0 lost"), "{report}");
    }
}

#[test]
fn writers_faulting_while_another_thread_drops_the_tracker() {
    // Sync mode: a collect re-protects everything and, on the same thread, the tracker is dropped
    // right after it (that thread holds the last handle), while four writers hammer the pages and
    // are therefore mid-fault (blocked until the monitor un-protects). Every writer must finish,
    // and every write must land. 20 rounds.
    if !mode_available(Mode::Sync) {
        return;
    }
    expect_pass(
        "sync drop while writers fault",
        in_child(Duration::from_secs(60), || {
            let mut stores = 0u64;
            for round in 0..20 {
                let t = Arc::new(
                    Tracker::builder()
                        .mode(Mode::Sync)
                        .build()
                        .map_err(|e| e.to_string())?,
                );
                let r = Arc::new(Region::anon(64));
                t.register(r.ptr(), r.len).map_err(|e| e.to_string())?;
                let stop = Arc::new(AtomicBool::new(false));
                let writers: Vec<_> = (0..4usize)
                    .map(|w| {
                        let (r, stop) = (r.clone(), stop.clone());
                        std::thread::spawn(move || {
                            // Writer w owns pages p with p % 4 == w; it writes its counter.
                            let mut v = 0u32;
                            while !stop.load(Ordering::Relaxed) {
                                v = v.wrapping_add(1);
                                for p in (w..64).step_by(4) {
                                    r.write(p, 0, v as u8);
                                    r.write(p, 1, (v >> 8) as u8);
                                }
                            }
                            v
                        })
                    })
                    .collect();
                let dropper = {
                    let t = t.clone();
                    std::thread::spawn(move || {
                        for _ in 0..(5 + round * 3) {
                            let _ = t.collect();
                        }
                        // The last handle: Drop runs here, right after a re-protect.
                        drop(t);
                    })
                };
                drop(t);
                dropper.join().map_err(|_| "the dropping thread panicked")?;
                std::thread::sleep(Duration::from_millis(2));
                stop.store(true, Ordering::Relaxed);
                for (w, h) in writers.into_iter().enumerate() {
                    let v = h.join().map_err(|_| "a writer panicked")?;
                    stores += u64::from(v) * 16;
                    for p in (w..64).step_by(4) {
                        let got = u32::from(r.read(p, 0)) | u32::from(r.read(p, 1)) << 8;
                        check(got == v & 0xffff, || {
                            format!("round {round}: writer {w} page {p}: memory has {got}, last write was {}", v & 0xffff)
                        })?;
                    }
                }
            }
            Ok(format!(
                "20 rounds, {stores} stores, every writer released, every last write in memory"
            ))
        }),
    );
}

// ---------------------------------------------------------------------------------------------
// Live snapshot whose copy thread cannot start
// ---------------------------------------------------------------------------------------------

/// A live snapshot whose background copy thread cannot be spawned (the process is at its
/// `RLIMIT_NPROC`, a real kernel refusal: `clone` answers `EAGAIN`) fails with a clear
/// resource error, hands the pages written before the instant back (the next collect reports
/// them), and leaves no copy-on-write state behind (the next snapshot works).
#[test]
fn live_snapshot_whose_copy_thread_cannot_start_loses_nothing() {
    if dirtytrack::Capabilities::probe().check_sync().is_err() {
        skip("sync mode is unavailable here (live snapshots need it)");
        return;
    }
    let o = in_child(Duration::from_secs(30), || {
        let t = Tracker::builder()
            .mode(Mode::Sync)
            .build()
            .map_err(|e| format!("build: {e}"))?;
        let mut r = Region::anon(256);
        let id = t
            .register(r.ptr(), r.len)
            .map_err(|e| format!("register: {e}"))?;
        r.rebase();
        let written = [0, 7, 100, 255];
        for p in written {
            r.touch(p);
        }
        // uid 65534 (no CAP_SYS_ADMIN or CAP_SYS_RESOURCE, which bypass the limit) with room for
        // no more task than it has: the main thread and the monitor. The hard limit stays, so
        // the soft one can be raised again.
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: reading this child's own resource limit into a local.
        unsafe { libc::getrlimit(libc::RLIMIT_NPROC, &mut old) };
        let lim = libc::rlimit {
            rlim_cur: 1,
            rlim_max: old.rlim_max,
        };
        // SAFETY: setting this child's own resource limit.
        check(
            unsafe { libc::setrlimit(libc::RLIMIT_NPROC, &lim) } == 0,
            || format!("setrlimit: {}", std::io::Error::last_os_error()),
        )?;
        drop_privileges(true)?;
        check(std::thread::Builder::new().spawn(|| ()).is_err(), || {
            "a thread could still be spawned at RLIMIT_NPROC=1".into()
        })?;
        let e = match t.live_snapshot(id) {
            Err(e) => e,
            Ok(_) => return Err("the live snapshot started without a copy thread".into()),
        };
        check(matches!(e, Error::ResourceExhausted { .. }), || {
            format!("expected ResourceExhausted, got: {e}")
        })?;
        let msg = e.to_string();
        check(msg.contains("nothing was lost"), || {
            format!("message: {msg}")
        })?;
        let d = t.collect().map_err(|e| format!("collect: {e}"))?;
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.check(&d, true)))
            .map_err(|_| format!("the oracle failed: pre-instant writes lost? {d:?}"))?;
        check(got == (4, 4), || format!("changed/reported {got:?}"))?;
        // Threads again: the range takes a snapshot (no stale copy-on-write state).
        // SAFETY: as above (back to the old limits).
        unsafe { libc::setrlimit(libc::RLIMIT_NPROC, &old) };
        r.touch(9);
        let mut copy = t
            .live_snapshot(id)
            .map_err(|e| format!("live_snapshot after the limit was raised: {e}"))?
            .wait()
            .map_err(|e| format!("wait: {e}"))?;
        copy.commit();
        let instant: Vec<usize> = copy
            .dirty_at_instant
            .pages()
            .map(|a| (a - r.addr) / page())
            .collect();
        check(instant == [9], || format!("dirty_at_instant {instant:?}"))?;
        Ok(format!("refused with: {msg}"))
    });
    expect_pass("live snapshot without a copy thread", o);
}
