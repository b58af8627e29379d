//! Seccomp filters for the tests: fail chosen system calls, or chosen `ioctl` requests, with an
//! errno, and allow everything else. A filter applies to the calling thread and the threads it
//! starts later (no `SECCOMP_FILTER_FLAG_TSYNC`); a forked child inherits it.

/// What a filter denies.
#[derive(Clone, Copy, Debug)]
pub enum Deny {
    /// A system call, by number (`libc::SYS_*`).
    Syscall(i64),
    /// An `ioctl(2)` request (compared on its low 32 bits, as the kernel passes it).
    Ioctl(u64),
}

/// `AUDIT_ARCH_*` of `<linux/audit.h>` for this build: `EM_*` | `__AUDIT_ARCH_64BIT` |
/// `__AUDIT_ARCH_LE`.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// Installs a filter on the calling thread that makes every call in `denied` fail with `errno`.
/// Sets `PR_SET_NO_NEW_PRIVS` first (needed without `CAP_SYS_ADMIN`).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub fn deny_in_this_thread(denied: &[Deny], errno: i32) -> Result<(), String> {
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    let ld = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let jeq = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    let syscalls: Vec<u32> = denied
        .iter()
        .filter_map(|d| match d {
            Deny::Syscall(nr) => Some(*nr as u32),
            Deny::Ioctl(_) => None,
        })
        .collect();
    let requests: Vec<u32> = denied
        .iter()
        .filter_map(|d| match d {
            Deny::Ioctl(r) => Some(*r as u32),
            Deny::Syscall(_) => None,
        })
        .collect();
    // (code, k, jump-if-true target, jump-if-false target); targets are `Allow`, `Deny` or the
    // next instruction, resolved to relative offsets below.
    #[derive(Clone, Copy)]
    enum To {
        Next,
        Allow,
        Deny,
    }
    let mut body: Vec<(u16, u32, To, To)> = vec![
        (ld, 4, To::Next, To::Next), // seccomp_data.arch
        (jeq, AUDIT_ARCH, To::Next, To::Allow),
        (ld, 0, To::Next, To::Next), // seccomp_data.nr
    ];
    for nr in syscalls {
        body.push((jeq, nr, To::Deny, To::Next));
    }
    if !requests.is_empty() {
        body.push((jeq, libc::SYS_ioctl as u32, To::Next, To::Allow));
        // seccomp_data.args[1] (the request), low 32 bits (little endian).
        body.push((ld, 24, To::Next, To::Next));
        for r in requests {
            body.push((jeq, r, To::Deny, To::Next));
        }
    }
    let (allow, deny) = (body.len(), body.len() + 1);
    let offset = |at: usize, to: To| -> u8 {
        match to {
            To::Next => 0,
            To::Allow => (allow - at - 1) as u8,
            To::Deny => (deny - at - 1) as u8,
        }
    };
    let mut prog: Vec<libc::sock_filter> = body
        .iter()
        .enumerate()
        .map(|(i, &(code, k, jt, jf))| libc::sock_filter {
            code,
            jt: offset(i, jt),
            jf: offset(i, jf),
            k,
        })
        .collect();
    for k in [RET_ALLOW, RET_ERRNO | (errno as u32 & 0xffff)] {
        prog.push(libc::sock_filter {
            code: ret,
            jt: 0,
            jf: 0,
            k,
        });
    }
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: PR_SET_NO_NEW_PRIVS and the filter apply to this thread (and what it starts
    // later); `fprog` and the program it points to outlive the call.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(format!(
                "PR_SET_NO_NEW_PRIVS: {}",
                std::io::Error::last_os_error()
            ));
        }
        if libc::syscall(
            libc::SYS_seccomp,
            1, /* SECCOMP_SET_MODE_FILTER */
            0,
            &fprog,
        ) != 0
        {
            return Err(format!("seccomp: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub fn deny_in_this_thread(_: &[Deny], _: i32) -> Result<(), String> {
    Err("the tests' seccomp filter knows x86_64 and aarch64 only".into())
}
