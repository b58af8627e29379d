//! The on-disk dump format of `predump --dir D`, the chain's state file, and the image rebuilt
//! from the dumps for `--verify`.
//!
//! `D/NNNN/` is one dump (`0000`, `0001`, ...), each holding:
//! - `kind`: `full` or `incremental` (an incremental dump applies to the dumps before it, back
//!   to the last `full` one);
//! - `maps`: one line per mapping whose contents the image holds after this dump, as
//!   `start end perms offset dev inode path` (hexadecimal addresses and offset); pages of the
//!   image outside these mappings are dropped;
//! - `pages`: records of `u64 address` (little endian), `u64 length`, then `length` bytes; a
//!   later record for the same page replaces the earlier one;
//! - `whole`: `start end` lines (hexadecimal) of the ranges this dump reports whole: pages of the
//!   image there are dropped before `pages` is applied; in private anonymous mappings only the
//!   pages that existed are in `pages`, a page of a `whole` range not there reads as zero;
//! - `unreadable`: `address length` lines (hexadecimal) of pages the kernel refused to read;
//! - `complete`: the number of page records and of bytes in `pages`, written last.
//!
//! A dump is written into `D/NNNN.tmp/` and renamed to `D/NNNN` once complete (files synced
//! first), so a dump directory with a number for a name is always whole; a `pages` file that
//! does not match its `complete` record is refused.
//!
//! Rebuilding: start from an empty image at the last `full` dump; for each dump in order, drop
//! the pages outside its `maps` and inside its `whole` ranges, then apply its `pages` and
//! `unreadable`. A page of a private anonymous mapping the image does not hold is zero.
//!
//! `D/state` (replaced atomically) lets the next `predump` on the same process continue the
//! chain: `pid fd inode generation last-dump`, then the tracked mappings. It is written only
//! after the dump it describes is committed; see `main.rs` for how a broken chain is detected.

use dirtytrack::remote::{Collection, Mapping, MappingReport, RemoteError, RemoteTracker};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

/// `start end perms offset dev inode path` (hexadecimal addresses and offset).
pub fn to_line(m: &Mapping) -> String {
    format!(
        "{:x} {:x} {} {:x} {} {} {}",
        m.start, m.end, m.perms, m.offset, m.dev, m.inode, m.path
    )
}

/// Parses [`to_line`].
pub fn from_line(line: &str) -> Option<Mapping> {
    let mut it = line.splitn(7, ' ');
    Some(Mapping::new(
        usize::from_str_radix(it.next()?, 16).ok()?,
        usize::from_str_radix(it.next()?, 16).ok()?,
        it.next()?.to_string(),
        u64::from_str_radix(it.next()?, 16).ok()?,
        it.next()?.to_string(),
        it.next()?.parse().ok()?,
        it.next().unwrap_or("").to_string(),
    ))
}

/// Why a dump could not be written or read.
#[derive(Debug)]
pub enum DumpError {
    /// A file of the dump directory.
    Io(PathBuf, io::Error),
    /// The target (reading its memory).
    Remote(RemoteError),
    /// A termination signal arrived during the copy: the dump was abandoned.
    Interrupted,
    /// A dump that is not whole.
    Corrupt(PathBuf, String),
}

impl std::fmt::Display for DumpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DumpError::Io(p, e) => write!(f, "{}: {e}", p.display()),
            DumpError::Remote(e) => write!(f, "{e}"),
            DumpError::Interrupted => write!(f, "interrupted by a signal"),
            DumpError::Corrupt(p, what) => write!(
                f,
                "{} is not a whole dump ({what}): start a new chain in another directory",
                p.display()
            ),
        }
    }
}

impl From<RemoteError> for DumpError {
    fn from(e: RemoteError) -> DumpError {
        DumpError::Remote(e)
    }
}

fn io_at(p: &Path) -> impl Fn(io::Error) -> DumpError + '_ {
    move |e| DumpError::Io(p.to_path_buf(), e)
}

/// What one dump held.
pub struct Written {
    /// Bytes of pages copied.
    pub bytes: usize,
    /// Bytes of pages that could not be read.
    pub unreadable: usize,
}

/// Writes dump `path` (as `path.tmp`, renamed when whole) of collection `c`, reading the pages
/// from the target. `interrupted` is polled between pieces: `true` abandons the dump.
pub fn write_dump(
    t: &RemoteTracker,
    c: &Collection,
    path: &Path,
    kind: &str,
    mut progress: impl FnMut(usize),
    interrupted: impl Fn() -> bool,
) -> Result<Written, DumpError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_dir_all(&tmp);
    let result = write_into(t, c, &tmp, kind, &mut progress, &interrupted);
    match result {
        Ok(w) => {
            fs::rename(&tmp, path).map_err(io_at(path))?;
            if let Some(parent) = path.parent() {
                let _ = File::open(parent).and_then(|d| d.sync_all());
            }
            Ok(w)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn write_into(
    t: &RemoteTracker,
    c: &Collection,
    dir: &Path,
    kind: &str,
    progress: &mut impl FnMut(usize),
    interrupted: &impl Fn() -> bool,
) -> Result<Written, DumpError> {
    fs::create_dir_all(dir).map_err(io_at(dir))?;
    let put = |name: &str, text: String| -> Result<(), DumpError> {
        let p = dir.join(name);
        let mut f = File::create(&p).map_err(io_at(&p))?;
        f.write_all(text.as_bytes()).map_err(io_at(&p))?;
        f.sync_all().map_err(io_at(&p))
    };
    put("kind", format!("{kind}\n"))?;
    let mut maps = String::new();
    for m in &c.mappings {
        maps.push_str(&to_line(&m.mapping));
        maps.push('\n');
    }
    put("maps", maps)?;
    let mut whole = String::new();
    for m in &c.mappings {
        for r in m.whole() {
            whole.push_str(&format!("{:x} {:x}\n", r.start, r.end));
        }
    }
    put("whole", whole)?;
    let pages_path = dir.join("pages");
    let mut pages = BufWriter::new(File::create(&pages_path).map_err(io_at(&pages_path))?);
    let mut unreadable = String::new();
    let ps = dirtytrack::page_size();
    let (mut bytes, mut failed, mut records) = (0usize, 0usize, 0usize);
    t.read_dirty(c, |at, data| -> Result<(), DumpError> {
        if interrupted() {
            return Err(DumpError::Interrupted);
        }
        match data {
            Some(data) => {
                let w = |e| DumpError::Io(pages_path.clone(), e);
                pages.write_all(&(at as u64).to_le_bytes()).map_err(w)?;
                pages
                    .write_all(&(data.len() as u64).to_le_bytes())
                    .map_err(|e| DumpError::Io(pages_path.clone(), e))?;
                pages
                    .write_all(data)
                    .map_err(|e| DumpError::Io(pages_path.clone(), e))?;
                bytes += data.len();
                records += 1;
                progress(data.len());
            }
            None => {
                unreadable.push_str(&format!("{at:x} {ps:x}\n"));
                failed += ps;
                progress(ps);
            }
        }
        Ok(())
    })?;
    let f = pages
        .into_inner()
        .map_err(|e| e.into_error())
        .map_err(io_at(&pages_path))?;
    f.sync_all().map_err(io_at(&pages_path))?;
    put("unreadable", unreadable)?;
    put("complete", format!("{records} {}\n", records * 16 + bytes))?;
    Ok(Written {
        bytes,
        unreadable: failed,
    })
}

/// The numbered (committed) dumps of `dir`, ascending.
pub fn dump_dirs(dir: &Path) -> io::Result<Vec<(u32, PathBuf)>> {
    let mut out: Vec<(u32, PathBuf)> = match fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    .filter_map(|e| {
        let e = e.ok()?;
        let n = e.file_name().to_str()?.parse::<u32>().ok()?;
        Some((n, e.path()))
    })
    .collect();
    out.sort();
    Ok(out)
}

/// What `D/state` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub pid: i32,
    pub fd: i32,
    pub ino: u64,
    /// [`RemoteTracker::generation`] after the collect of `last_dump`.
    pub generation: u64,
    /// The number of the dump this state was committed with.
    pub last_dump: u32,
    pub tracked: Vec<Mapping>,
}

/// Reads `D/state`; `None` if absent or not in this version's format.
pub fn read_state(dir: &Path) -> Option<State> {
    let text = fs::read_to_string(dir.join("state")).ok()?;
    let mut lines = text.lines();
    let mut head = lines.next()?.split_whitespace();
    Some(State {
        pid: head.next()?.parse().ok()?,
        fd: head.next()?.parse().ok()?,
        ino: head.next()?.parse().ok()?,
        generation: head.next()?.parse().ok()?,
        last_dump: head.next()?.parse().ok()?,
        tracked: lines.filter_map(from_line).collect(),
    })
}

/// Replaces `D/state` atomically (written to `state.tmp`, synced, renamed).
pub fn write_state(dir: &Path, t: &RemoteTracker, last_dump: u32) -> io::Result<()> {
    let mut s = format!(
        "{} {} {} {} {last_dump}\n",
        t.pid(),
        t.target_fd(),
        t.uffd_inode(),
        t.generation()
    );
    for m in t.tracked() {
        s.push_str(&to_line(m));
        s.push('\n');
    }
    let tmp = dir.join("state.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(s.as_bytes())?;
    f.sync_all()?;
    fs::rename(tmp, dir.join("state"))
}

/// `start end` lines (hexadecimal) as ranges.
fn parse_ranges(text: &str) -> Vec<std::ops::Range<usize>> {
    text.lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(' ')?;
            Some(usize::from_str_radix(a, 16).ok()?..usize::from_str_radix(b.trim(), 16).ok()?)
        })
        .collect()
}

/// A memory image: page address → contents (`None`: unreadable when dumped).
#[derive(Default)]
pub struct Image {
    pages: BTreeMap<usize, Option<Vec<u8>>>,
}

/// Rebuilds the image from the dumps in `dir` (from the last full one).
pub fn rebuild(dir: &Path) -> Result<Image, DumpError> {
    let dumps = dump_dirs(dir).map_err(io_at(dir))?;
    let first = dumps
        .iter()
        .rposition(|(_, p)| fs::read_to_string(p.join("kind")).is_ok_and(|k| k.trim() == "full"))
        .ok_or_else(|| DumpError::Corrupt(dir.to_path_buf(), "no full dump".into()))?;
    let mut image = Image::default();
    for (_, p) in &dumps[first..] {
        image.apply_dump(p)?;
    }
    Ok(image)
}

impl Image {
    /// Applies one dump directory: drops the pages outside its `maps`, then sets its `pages`
    /// and `unreadable` pages. A dump whose `pages` does not match its `complete` record is
    /// refused.
    pub fn apply_dump(&mut self, p: &Path) -> Result<(), DumpError> {
        let ps = dirtytrack::page_size();
        let corrupt = |what: String| DumpError::Corrupt(p.to_path_buf(), what);
        let complete = fs::read_to_string(p.join("complete"))
            .map_err(|e| corrupt(format!("no complete record: {e}")))?;
        let mut it = complete.split_whitespace();
        let (Some(Ok(records)), Some(Ok(len))) = (
            it.next().map(str::parse::<usize>),
            it.next().map(str::parse::<usize>),
        ) else {
            return Err(corrupt(format!("bad complete record {complete:?}")));
        };
        let maps: Vec<Mapping> = fs::read_to_string(p.join("maps"))
            .map_err(io_at(p))?
            .lines()
            .filter_map(from_line)
            .collect();
        let ranges: Vec<_> = maps.iter().map(|m| m.start..m.end).collect();
        self.pages
            .retain(|&a, _| ranges.iter().any(|r| r.start <= a && a < r.end));
        for r in parse_ranges(&fs::read_to_string(p.join("whole")).map_err(io_at(p))?) {
            let keys: Vec<usize> = self.pages.range(r).map(|(k, _)| *k).collect();
            for k in keys {
                self.pages.remove(&k);
            }
        }
        let pages_path = p.join("pages");
        let file = File::open(&pages_path).map_err(io_at(&pages_path))?;
        let size = file.metadata().map_err(io_at(&pages_path))?.len() as usize;
        if size != len {
            return Err(corrupt(format!(
                "pages holds {size} bytes, {len} were written (truncated)"
            )));
        }
        // Record by record: the CLI holds the image, not the image and the file.
        let mut r = io::BufReader::with_capacity(1 << 20, file);
        let mut data = Vec::new();
        let (mut at, mut seen) = (0usize, 0usize);
        while at < size {
            let bad = || corrupt("pages is truncated".into());
            let mut head = [0u8; 16];
            r.read_exact(&mut head).map_err(|_| bad())?;
            let addr = u64::from_le_bytes(head[..8].try_into().unwrap_or_default()) as usize;
            let n = u64::from_le_bytes(head[8..].try_into().unwrap_or_default()) as usize;
            if n > size - at - 16 {
                return Err(bad());
            }
            data.resize(n, 0);
            r.read_exact(&mut data).map_err(|_| bad())?;
            for (i, page) in data.chunks(ps).enumerate() {
                self.pages.insert(addr + i * ps, Some(page.to_vec()));
            }
            at += 16 + n;
            seen += 1;
        }
        if seen != records {
            return Err(corrupt(format!(
                "{seen} page records, {records} were written"
            )));
        }
        for line in fs::read_to_string(p.join("unreadable"))
            .map_err(io_at(p))?
            .lines()
        {
            let mut it = line.split_whitespace();
            let (Some(a), Some(l)) = (it.next(), it.next()) else {
                continue;
            };
            let (Ok(a), Ok(l)) = (usize::from_str_radix(a, 16), usize::from_str_radix(l, 16))
            else {
                continue;
            };
            for pg in (a..a + l).step_by(ps) {
                self.pages.insert(pg, None);
            }
        }
        Ok(())
    }

    /// Compares the image with the target's memory over every mapping of `c` (the last
    /// collection, taken with the target stopped). Returns every difference (the count is
    /// exact), as `(page, what)`. Pages of inaccessible mappings a plain read refuses are read
    /// again as the target's ptracer.
    pub fn verify(
        &self,
        t: &RemoteTracker,
        c: &Collection,
    ) -> Result<Vec<(usize, String)>, RemoteError> {
        let ps = dirtytrack::page_size();
        let mut out = Vec::new();
        let mut page = vec![0u8; ps];
        let mut chunk = vec![0u8; 1 << 20];
        let mut refused = Vec::new();
        for m in &c.mappings {
            let mut a = m.mapping.start;
            while a < m.mapping.end {
                let n = (m.mapping.end - a).min(chunk.len());
                let whole = match t.read_memory(a, &mut chunk[..n]) {
                    Ok(()) => true,
                    Err(
                        e @ (RemoteError::TargetExited { .. } | RemoteError::TrackingLost { .. }),
                    ) => return Err(e),
                    Err(_) => false,
                };
                for p in (a..a + n).step_by(ps) {
                    let live = if whole {
                        Some(&chunk[p - a..p - a + ps])
                    } else {
                        t.read_memory(p, &mut page).ok().map(|()| &page[..])
                    };
                    match live {
                        None if !m.mapping.is_readable() => refused.push((p, m)),
                        live => self.compare_page(p, live, m, &mut out),
                    }
                }
                a += n;
            }
        }
        let addrs: Vec<usize> = refused.iter().map(|(a, _)| *a).collect();
        for ((a, m), live) in refused.iter().zip(t.read_pages_as_tracer(&addrs)?) {
            self.compare_page(*a, live.as_deref(), m, &mut out);
        }
        Ok(out)
    }

    fn compare_page(
        &self,
        a: usize,
        live: Option<&[u8]>,
        m: &MappingReport,
        out: &mut Vec<(usize, String)>,
    ) {
        let dumped = self.pages.get(&a).map(|p| p.as_deref());
        let Some(what) = dirtytrack::remote::page_mismatch(dumped, live, &m.mapping) else {
            return;
        };
        out.push((a, what));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_lines_round_trip() {
        for x in [
            Mapping::new(
                0x1000,
                0x3000,
                "rw-p".into(),
                0,
                "00:00".into(),
                0,
                String::new(),
            ),
            Mapping::new(
                0x7f00_0000,
                0x7f10_0000,
                "rw-s".into(),
                0x2000,
                "fe:01".into(),
                42,
                "/memfd:a b (deleted)".into(),
            ),
        ] {
            assert_eq!(from_line(&to_line(&x)), Some(x));
        }
        assert_eq!(from_line("zz"), None);
    }
}
