//! `/proc/self/maps`: which mappings cover an address range, and of what kind.
//!
//! On Linux 6.11+ the mappings around a range are asked for one at a time with the
//! `PROCMAP_QUERY` ioctl on an open `/proc/self/maps` (cost independent of how many mappings the
//! process has); older kernels answer `ENOTTY` and the whole file is read and parsed (cost
//! proportional to the number of mappings: 13.8 ms per call with 20 000 of them).

use super::{cvt, ioc, IOC_READ, IOC_WRITE};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

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

/// `struct procmap_query` of `<linux/fs.h>` (Linux 6.11).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}
const _: () = assert!(std::mem::size_of::<ProcmapQuery>() == 104);

/// `PROCMAP_QUERY = _IOWR(PROCFS_IOCTL_MAGIC = 'f', 17, struct procmap_query)` (Linux 6.11).
const PROCMAP_QUERY: u64 = ioc(
    IOC_READ | IOC_WRITE,
    b'f' as u64,
    17,
    std::mem::size_of::<ProcmapQuery>() as u64,
);
/// `procmap_query_flags` (Linux 6.11): output `vma_flags` bits, and the query flag that returns
/// the mapping covering `query_addr` or else the next one above it.
const PROCMAP_QUERY_VMA_READABLE: u64 = 0x01;
const PROCMAP_QUERY_VMA_WRITABLE: u64 = 0x02;
const PROCMAP_QUERY_VMA_EXECUTABLE: u64 = 0x04;
const PROCMAP_QUERY_VMA_SHARED: u64 = 0x08;
const PROCMAP_QUERY_COVERING_OR_NEXT_VMA: u64 = 0x10;

/// Longest name asked for (`PATH_MAX`).
const NAME_MAX: usize = 4096;

/// One `PROCMAP_QUERY` on an open `/proc/self/maps`: the mapping covering `addr`, or else the
/// next one above it; `Ok(None)` when there is none (`ENOENT`). `ENOTTY` before Linux 6.11.
fn query_covering_or_next(
    maps: &File,
    addr: usize,
    name: &mut [u8; NAME_MAX],
) -> io::Result<Option<Vma>> {
    let mut q = ProcmapQuery {
        size: std::mem::size_of::<ProcmapQuery>() as u64,
        query_flags: PROCMAP_QUERY_COVERING_OR_NEXT_VMA,
        query_addr: addr as u64,
        vma_name_size: NAME_MAX as u32,
        vma_name_addr: name.as_mut_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: `q` is a valid `procmap_query` with `size` set; `vma_name_addr`/`vma_name_size`
    // describe `name`, an exclusively borrowed buffer of exactly `NAME_MAX` bytes that outlives
    // the call; `build_id_size` is 0, so the kernel writes no build id.
    let ret = unsafe { libc::ioctl(maps.as_raw_fd(), PROCMAP_QUERY as _, &mut q) };
    match cvt(ret as _) {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    }
    // `vma_name_size` is the name's length with its NUL, or 0 for an unnamed mapping.
    let len = (q.vma_name_size as usize).saturating_sub(1).min(NAME_MAX);
    let flag = |bit: u64, c: u8| if q.vma_flags & bit != 0 { c } else { b'-' };
    Ok(Some(Vma {
        start: q.vma_start as usize,
        end: q.vma_end as usize,
        perms: [
            flag(PROCMAP_QUERY_VMA_READABLE, b'r'),
            flag(PROCMAP_QUERY_VMA_WRITABLE, b'w'),
            flag(PROCMAP_QUERY_VMA_EXECUTABLE, b'x'),
            if q.vma_flags & PROCMAP_QUERY_VMA_SHARED != 0 {
                b's'
            } else {
                b'p'
            },
        ],
        inode: q.inode,
        path: String::from_utf8_lossy(&name[..len]).into_owned(),
    }))
}

/// The mappings of this process that overlap `[start, end)`, ascending: by `PROCMAP_QUERY`
/// (6.11+, one query per mapping), else by reading `/proc/self/maps`.
///
/// `PROCMAP_QUERY` does not return the gate area (`[vsyscall]`), which `/proc/self/maps` lists:
/// when the query leaves a hole, the file is read to confirm it (an error path, so its cost does
/// not matter), and both ways give the same answer (found by fuzzing: `[vsyscall]` was "not
/// mapped" by query, "mapped but not registrable" by the file).
pub fn vmas_in(start: usize, end: usize) -> io::Result<Vec<Vma>> {
    match vmas_in_by_query(start, end) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY) | Some(libc::EINVAL)) => {
            vmas_in_by_parsing(start, end)
        }
        Ok(vmas) if first_hole(&vmas, start, end).is_some() => vmas_in_by_parsing(start, end),
        other => other,
    }
}

/// [`vmas_in`] by `PROCMAP_QUERY` (Linux 6.11+; `ENOTTY` before).
pub fn vmas_in_by_query(start: usize, end: usize) -> io::Result<Vec<Vma>> {
    let maps = File::open("/proc/self/maps")?;
    let mut name = Box::new([0u8; NAME_MAX]);
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        match query_covering_or_next(&maps, at, &mut name)? {
            Some(v) if v.start < end && v.end > at => {
                at = v.end;
                out.push(v);
            }
            _ => break,
        }
    }
    Ok(out)
}

/// [`vmas_in`] by reading and parsing all of `/proc/self/maps`.
pub fn vmas_in_by_parsing(start: usize, end: usize) -> io::Result<Vec<Vma>> {
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
    fn query_and_parsing_agree() {
        let ps = crate::sys::page_size();
        let m = crate::sys::mem::AnonMapping::new(8 * ps).unwrap();
        // Split it into three mappings: rw, r, rw.
        // SAFETY: the page lies inside `m`, which nothing references.
        let rc = unsafe { libc::mprotect((m.addr() + 3 * ps) as *mut _, ps, libc::PROT_READ) };
        assert_eq!(rc, 0);
        let all = (m.addr() - 64 * ps, m.addr() + 64 * ps);
        for (start, end) in [
            (m.addr(), m.addr() + 8 * ps),
            (m.addr() + ps, m.addr() + 4 * ps),
            all,
        ] {
            // Other test threads map and unmap memory next to `m` (the `all` window covers its
            // neighbours), which can change between two reads: compare reads taken back to back,
            // a few times, and require that they agree once.
            let agree = (0..20).any(|_| {
                let parsed = vmas_in_by_parsing(start, end).unwrap();
                let queried = match vmas_in_by_query(start, end) {
                    Ok(queried) => queried,
                    Err(e) => {
                        assert_eq!(e.raw_os_error(), Some(libc::ENOTTY), "{e}");
                        parsed.clone()
                    }
                };
                queried == parsed && vmas_in(start, end).unwrap() == parsed
            });
            assert!(
                agree,
                "PROCMAP_QUERY and /proc/self/maps disagree on {start:#x}..{end:#x}"
            );
        }
        let inside = vmas_in(m.addr(), m.addr() + 8 * ps).unwrap();
        assert_eq!(inside.len(), 3);
        assert_eq!(&inside[1].perms, b"r--p");
        // The process's own executable and libraries (they do not change while the test runs):
        // same names, inodes and flags both ways.
        let files = |v: Vec<Vma>| -> Vec<Vma> {
            v.into_iter()
                .filter(|v| v.path.starts_with('/') && v.inode != 0)
                .collect()
        };
        if let Ok(queried) = vmas_in_by_query(0, usize::MAX) {
            let parsed = files(vmas_in_by_parsing(0, usize::MAX).unwrap());
            assert!(!parsed.is_empty());
            assert_eq!(files(queried), parsed);
        }
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
