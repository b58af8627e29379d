//! `/proc/PID/...` of another process: its mappings, threads, status fields, and the
//! userfaultfds in its fd table (with the features `fdinfo` prints for them).

use std::fs;
use std::io;
use std::path::PathBuf;

/// One line of `/proc/PID/maps`, with every field.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MapsEntry {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
    /// `rwxp` / `rwxs` as printed.
    pub perms: [u8; 4],
    /// File offset of `start`.
    pub offset: u64,
    /// `major:minor` of the backing file's device, as printed.
    pub dev: String,
    /// Inode of the backing file (0 for anonymous memory).
    pub inode: u64,
    /// Path or pseudo-path (`[heap]`, `[vdso]`, `/memfd:x (deleted)`), may be empty.
    pub path: String,
}

impl MapsEntry {
    /// Parses one maps line; `None` if it is malformed.
    pub fn parse(line: &str) -> Option<MapsEntry> {
        let mut it = line.splitn(6, ' ');
        let range = it.next()?;
        let perms = it.next()?.as_bytes();
        let offset = u64::from_str_radix(it.next()?, 16).ok()?;
        let dev = it.next()?.to_string();
        let inode = it.next()?.parse().ok()?;
        let path = it.next().unwrap_or("").trim_start().to_string();
        let (s, e) = range.split_once('-')?;
        Some(MapsEntry {
            start: usize::from_str_radix(s, 16).ok()?,
            end: usize::from_str_radix(e, 16).ok()?,
            perms: perms.get(..4)?.try_into().ok()?,
            offset,
            dev,
            inode,
            path,
        })
    }
}

fn proc_path(pid: i32, rest: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{rest}"))
}

/// The mappings of process `pid`, ascending. `NotFound` once the process is gone.
pub fn maps(pid: i32) -> io::Result<Vec<MapsEntry>> {
    let text = fs::read_to_string(proc_path(pid, "maps"))?;
    Ok(text.lines().filter_map(MapsEntry::parse).collect())
}

/// The `VmFlags:` of every mapping in `/proc/PID/smaps`, by start address (two-letter codes such
/// as `uw` = registered for userfaultfd write-protect). Walks page tables: not for hot paths.
pub fn vm_flags(pid: i32) -> io::Result<Vec<(usize, Vec<String>)>> {
    let text = fs::read_to_string(proc_path(pid, "smaps"))?;
    let mut out = Vec::new();
    let mut current = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("VmFlags:") {
            if let Some(start) = current.take() {
                out.push((start, rest.split_whitespace().map(str::to_string).collect()));
            }
        } else if let Some(e) = MapsEntry::parse(line) {
            current = Some(e.start);
        }
    }
    Ok(out)
}

/// A field of `/proc/PID/status` (`"TracerPid"`, `"Seccomp"`, `"Uid"`, ...), trimmed.
pub fn status_field(pid: i32, name: &str) -> io::Result<Option<String>> {
    let text = fs::read_to_string(proc_path(pid, "status"))?;
    Ok(text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == name).then(|| v.trim().to_string())
    }))
}

/// The state letter (`R`, `S`, `D`, `T`, `t`, `Z`, `X`...) of process `pid`, or of its thread
/// `tid` (`/proc/PID/task/TID/stat`); `None` once it is gone.
pub fn state(pid: i32, tid: Option<i32>) -> Option<char> {
    let path = match tid {
        Some(tid) => format!("/proc/{pid}/task/{tid}/stat"),
        None => format!("/proc/{pid}/stat"),
    };
    // The command name (in parentheses) may hold any byte: the state follows its last ')'.
    fs::read_to_string(path)
        .ok()?
        .rsplit_once(')')
        .and_then(|(_, r)| r.trim_start().chars().next())
}

/// The thread ids of process `pid` (`/proc/PID/task`), ascending.
pub fn threads(pid: i32) -> io::Result<Vec<i32>> {
    let mut tids: Vec<i32> = fs::read_dir(proc_path(pid, "task"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// The children of every thread of `pid` (`/proc/PID/task/*/children`, needs
/// `CONFIG_PROC_CHILDREN`; empty when absent).
pub fn children(pid: i32) -> io::Result<Vec<i32>> {
    let mut out = Vec::new();
    for tid in threads(pid)? {
        if let Ok(text) = fs::read_to_string(proc_path(pid, &format!("task/{tid}/children"))) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|s| s.parse::<i32>().ok()),
            );
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// One userfaultfd in another process's fd table, from `/proc/PID/fd` and `/proc/PID/fdinfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UffdInfo {
    /// The fd number in that process.
    pub fd: i32,
    /// `ctx->features` (the `API:` line's second field; 0 before `UFFDIO_API`).
    pub features: u64,
    /// The anonymous inode's number (`ino:`), unique per userfaultfd.
    pub ino: u64,
    /// The open flags (`flags:`, octal in fdinfo).
    pub flags: u64,
}

/// The start time of process `pid` (`/proc/PID/stat` field 22, clock ticks since boot): with
/// the pid, it names one process for good (pids are reused, start times with them are not).
pub fn start_time(pid: i32) -> io::Result<u64> {
    let stat = fs::read_to_string(proc_path(pid, "stat"))?;
    // The command name (field 2) may hold spaces and parentheses: fields after the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other(format!("unexpected /proc/{pid}/stat: {stat}")))
}

/// The userfaultfds process `pid` holds.
pub fn userfaultfds(pid: i32) -> io::Result<Vec<UffdInfo>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(proc_path(pid, "fd"))? {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(link) = fs::read_link(entry.path()) else {
            continue;
        };
        if link.as_os_str() != "anon_inode:[userfaultfd]" {
            continue;
        }
        let Ok(info) = fs::read_to_string(proc_path(pid, &format!("fdinfo/{fd}"))) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        let features = field("API:")
            .and_then(|v| v.split(':').nth(1).map(str::to_string))
            .and_then(|v| u64::from_str_radix(&v, 16).ok())
            .unwrap_or(0);
        let ino = field("ino:").and_then(|v| v.parse().ok()).unwrap_or(0);
        let flags = field("flags:")
            .and_then(|v| u64::from_str_radix(&v, 8).ok())
            .unwrap_or(0);
        out.push(UffdInfo {
            fd,
            features,
            ino,
            flags,
        });
    }
    out.sort_by_key(|u| u.fd);
    Ok(out)
}

/// `/proc/sys/kernel/yama/ptrace_scope`, if Yama is built in.
pub fn yama_ptrace_scope() -> Option<u32> {
    fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_lines() {
        let e =
            MapsEntry::parse("7f00a000-7f00c000 rw-s 00002000 00:01 1234    /memfd:x (deleted)")
                .unwrap();
        assert_eq!(
            (e.start, e.end, e.offset, e.inode),
            (0x7f00a000, 0x7f00c000, 0x2000, 1234)
        );
        assert_eq!(
            (&e.perms, e.dev.as_str(), e.path.as_str()),
            (b"rw-s", "00:01", "/memfd:x (deleted)")
        );
        let e = MapsEntry::parse("7f00a000-7f00c000 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!(e.path, "");
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id() as i32;
        assert!(!maps(me).unwrap().is_empty());
        assert!(threads(me).unwrap().contains(&me));
        assert!(status_field(me, "Pid").unwrap().is_some());
    }
}
