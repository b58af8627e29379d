//! `/proc/self/maps`: which mappings cover an address range, and of what kind.

use std::io;

/// One line of `/proc/self/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vma {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
    /// `rwxp` / `rwxs` flags as printed.
    pub perms: [u8; 4],
    /// Inode of the backing file (0 for anonymous memory).
    pub inode: u64,
    /// Path or pseudo-path (`[heap]`, `/memfd:x (deleted)`, `/anon_hugepage (deleted)`), may be empty.
    pub path: String,
}

impl Vma {
    /// `MAP_SHARED` (the fourth flag is `s`).
    pub fn is_shared(&self) -> bool {
        self.perms[3] == b's'
    }
    /// Backed by a file, memfd or shmem object (anything with an inode).
    pub fn is_file_backed(&self) -> bool {
        self.inode != 0
    }
}

/// Parses one maps line; `None` if it is malformed.
pub fn parse_line(line: &str) -> Option<Vma> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.as_bytes();
    let _offset = it.next()?;
    let _dev = it.next()?;
    let inode = it.next()?.parse().ok()?;
    let path = it.next().unwrap_or("").trim_start().to_string();
    let (s, e) = range.split_once('-')?;
    Some(Vma {
        start: usize::from_str_radix(s, 16).ok()?,
        end: usize::from_str_radix(e, 16).ok()?,
        perms: perms.get(..4)?.try_into().ok()?,
        inode,
        path,
    })
}

/// The mappings of this process that overlap `[start, end)`, ascending.
pub fn vmas_in(start: usize, end: usize) -> io::Result<Vec<Vma>> {
    let text = std::fs::read_to_string("/proc/self/maps")?;
    Ok(text
        .lines()
        .filter_map(parse_line)
        .filter(|v| v.end > start && v.start < end)
        .collect())
}

/// The first address in `[start, end)` not covered by any of `vmas` (sorted), if any.
pub fn first_hole(vmas: &[Vma], start: usize, end: usize) -> Option<usize> {
    let mut at = start;
    for v in vmas {
        if v.start > at {
            return Some(at);
        }
        at = at.max(v.end);
        if at >= end {
            return None;
        }
    }
    (at < end).then_some(at)
}

/// `HUGETLBFS_MAGIC` from `<linux/magic.h>`.
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;

/// The kernel page size of the mapping that contains `addr`, from `/proc/self/smaps`
/// (`KernelPageSize`), if the mapping is found. Reads smaps, which walks page tables: call it
/// only for mappings that look like hugetlbfs (see [`looks_hugetlb`]).
pub fn kernel_page_size(addr: usize) -> io::Result<Option<usize>> {
    let text = std::fs::read_to_string("/proc/self/smaps")?;
    let mut inside = false;
    for line in text.lines() {
        if let Some(v) = parse_line(line) {
            inside = v.start <= addr && addr < v.end;
        } else if inside {
            if let Some(rest) = line.strip_prefix("KernelPageSize:") {
                let kb: usize = rest
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .unwrap_or(0);
                return Ok((kb > 0).then_some(kb * 1024));
            }
        }
    }
    Ok(None)
}

/// Whether a mapping is backed by hugetlbfs (`MAP_HUGETLB` or a file on a hugetlbfs mount).
pub fn looks_hugetlb(v: &Vma) -> bool {
    if v.path.starts_with("/anon_hugepage") {
        return true;
    }
    if !v.is_file_backed() || !v.path.starts_with('/') {
        return false;
    }
    let Ok(path) = std::ffi::CString::new(v.path.trim_end_matches(" (deleted)")) else {
        return false;
    };
    // SAFETY: `statfs` is plain old data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is a valid, exclusively borrowed out-parameter.
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == HUGETLBFS_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_anon_and_file_lines() {
        let v = parse_line("7f00a000-7f00c000 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!((v.start, v.end, v.inode), (0x7f00a000, 0x7f00c000, 0));
        assert!(!v.is_shared());
        let v =
            parse_line("7f00a000-7f00c000 rw-s 00000000 00:01 1234    /memfd:x (deleted)").unwrap();
        assert!(v.is_shared() && v.is_file_backed());
        assert_eq!(v.path, "/memfd:x (deleted)");
    }

    #[test]
    fn finds_holes() {
        let v = |s, e| Vma {
            start: s,
            end: e,
            perms: *b"rw-p",
            inode: 0,
            path: String::new(),
        };
        assert_eq!(first_hole(&[v(0, 10), v(10, 20)], 0, 20), None);
        assert_eq!(first_hole(&[v(0, 10), v(12, 20)], 0, 20), Some(10));
        assert_eq!(first_hole(&[v(0, 10)], 0, 20), Some(10));
        assert_eq!(first_hole(&[v(5, 10)], 0, 10), Some(0));
        assert_eq!(first_hole(&[], 0, 10), Some(0));
    }
}
