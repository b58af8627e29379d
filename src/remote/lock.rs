//! One tracker per target: the target lock, and what it records about the target's tracking.
//!
//! The lock is an `flock(2)` on `DIR/PID-STARTTIME` (`DIR` is `$DIRTYTRACK_LOCK_DIR`, else
//! `/run/dirtytrack`, else `/tmp/dirtytrack`; created mode 1777). `flock` locks belong to the
//! open file and the kernel drops them when their holder dies, however it dies: a tracker
//! killed with `SIGKILL` never blocks the next one, and taking over from a dead tracker needs
//! nothing but attaching again. A live holder is named in the error
//! ([`RemoteError::TargetBusy`]).
//!
//! The file (written in place, one `pwrite` of a fixed-size block, so that a tracker killed
//! mid-write leaves the old or the new record) holds:
//! - `holder PID`: the process holding the lock now (for the error message);
//! - `uffd INODE generation N`: the tracking userfaultfd's inode, and how many collects began
//!   on it. A collect bumps the generation *before* it re-arms anything, so a chain (the CLI's
//!   state file) that recorded generation `N` after its last committed dump knows, on finding
//!   another number, that some collect's dirty pages went elsewhere (another tool, or a run
//!   killed before its dump was committed) and that it must start over with a full dump;
//! - `creating INODE...`: written before the injected `userfaultfd(2)` with the inodes of the
//!   userfaultfds the target held then, cleared once the new one is marked. A later attach that
//!   finds it knows which unmarked userfaultfds a killed attach left behind, and closes them.

use super::RemoteError;
use crate::sys::{lock, proc};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::PathBuf;

/// Size of the record block.
const BLOCK: usize = 4096;

/// What the lock file records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Record {
    /// The tracking userfaultfd's inode (0: none yet).
    pub uffd: u64,
    /// Collects begun on it.
    pub generation: u64,
    /// Inodes of the target's userfaultfds before an injected `userfaultfd(2)` not yet
    /// completed (`None`: no creation under way).
    pub creating: Option<Vec<u64>>,
}

/// The held target lock. Dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct TargetLock {
    file: File,
    path: PathBuf,
    pub record: Record,
}

/// The directory of the lock files.
fn lock_dir() -> io::Result<PathBuf> {
    if let Some(d) = std::env::var_os("DIRTYTRACK_LOCK_DIR") {
        let d = PathBuf::from(d);
        fs::create_dir_all(&d)?;
        return Ok(d);
    }
    let mut last = None;
    for d in ["/run/dirtytrack", "/tmp/dirtytrack"] {
        let d = PathBuf::from(d);
        if d.is_dir() {
            return Ok(d);
        }
        match fs::create_dir(&d) {
            Ok(()) => {
                // Any user's tracker may lock its targets here; the sticky bit keeps each
                // file to its owner.
                let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o1777));
                return Ok(d);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(d),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no lock directory")))
}

impl TargetLock {
    /// Takes the lock of process `pid`, or says who holds it.
    pub(crate) fn acquire(pid: i32) -> Result<TargetLock, RemoteError> {
        let kernel = |op: &'static str, source: io::Error| RemoteError::Kernel { pid, op, source };
        let start = proc::start_time(pid).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ESRCH) => RemoteError::NoSuchProcess { pid },
            _ => kernel("read /proc/PID/stat", e),
        })?;
        let dir = lock_dir().map_err(|e| kernel("create the lock directory", e))?;
        remove_stale(&dir);
        let path = dir.join(format!("{pid}-{start}"));
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| kernel("open the target's lock file", e))?;
        let _ = file.set_permissions(fs::Permissions::from_mode(0o666));
        if !lock::try_lock_exclusive(&file).map_err(|e| kernel("flock", e))? {
            let holder = read_text(&file)
                .lines()
                .find_map(|l| l.strip_prefix("holder ").map(str::to_string))
                .unwrap_or_else(|| "?".into());
            return Err(RemoteError::TargetBusy {
                pid,
                holder,
                lock: path,
            });
        }
        let record = parse(&read_text(&file));
        let mut l = TargetLock { file, path, record };
        l.write()
            .map_err(|e| kernel("write the target's lock file", e))?;
        Ok(l)
    }

    /// Writes the record (with this process as the holder).
    pub(crate) fn write(&mut self) -> io::Result<()> {
        let r = &self.record;
        let mut text = format!(
            "holder {}\nuffd {} generation {}\n",
            std::process::id(),
            r.uffd,
            r.generation
        );
        if let Some(c) = &r.creating {
            text.push_str("creating");
            for i in c {
                text.push_str(&format!(" {i}"));
            }
            text.push('\n');
        }
        let mut block = text.into_bytes();
        if block.len() > BLOCK {
            return Err(io::Error::other("lock record too long"));
        }
        // Padding: blank lines, so the whole block is written at once.
        block.resize(BLOCK, b'\n');
        self.file.write_all_at(&block, 0)
    }

    /// The lock file's path (for messages).
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.path
    }
}

/// Removes the lock files of processes that no longer exist (their pid is gone or now names
/// a process with another start time) and that nobody holds; this user's files only (the
/// directory is sticky).
fn remove_stale(dir: &std::path::Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some((pid, start)) = name.to_str().and_then(|n| n.split_once('-')) else {
            continue;
        };
        let (Ok(pid), Ok(start)) = (pid.parse::<i32>(), start.parse::<u64>()) else {
            continue;
        };
        if proc::start_time(pid).is_ok_and(|s| s == start) {
            continue;
        }
        // Held: a tracker still runs (it will find its target gone); leave it.
        let Ok(f) = File::open(e.path()) else {
            continue;
        };
        if lock::try_lock_exclusive(&f).unwrap_or(false) {
            let _ = fs::remove_file(e.path());
        }
    }
}

fn read_text(file: &File) -> String {
    let mut buf = vec![0u8; BLOCK];
    let n = file.read_at(&mut buf, 0).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn parse(text: &str) -> Record {
    let mut r = Record::default();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        match w.next() {
            Some("uffd") => {
                r.uffd = w.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                if w.next() == Some("generation") {
                    r.generation = w.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                }
            }
            Some("creating") => r.creating = Some(w.filter_map(|v| v.parse().ok()).collect()),
            _ => {}
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let r = Record {
            uffd: 77,
            generation: 5,
            creating: Some(vec![1, 2]),
        };
        let text = "holder 1\nuffd 77 generation 5\ncreating 1 2\n\n\n";
        assert_eq!(parse(text), r);
        assert_eq!(parse(""), Record::default());
    }
}
