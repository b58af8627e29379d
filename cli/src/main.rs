//! `dirtytrack`: the library's capabilities report, and tracking of another process.
//!
//! ```text
//! dirtytrack caps
//! dirtytrack rate PID [--interval S] [--count N] [--top K]
//! dirtytrack predump PID --dir D [--iterations N] [--interval S] [--verify] [--track-shared] [--stop]
//! ```
//!
//! # The dump format (`predump --dir D`)
//!
//! `D/NNNN/` is one dump (`0000`, `0001`, ...), each holding:
//! - `kind`: `full` or `incremental` (an incremental dump applies to the dumps before it, back to
//!   the last `full` one);
//! - `maps`: one line per mapping whose contents the image holds after this dump, as
//!   `start end perms offset dev inode path` (hexadecimal addresses and offset); pages of the
//!   image outside these mappings are dropped;
//! - `pages`: records of `u64 address` (little endian), `u64 length`, then `length` bytes;
//!   a later record for the same page replaces the earlier one;
//! - `unreadable`: `address length` lines (hexadecimal) of pages the kernel refused to read.
//!
//! `D/state` lets the next `predump` on the same process continue the chain: `pid`, the
//! tracking userfaultfd's number and inode in the target, and the tracked mappings.
//!
//! Rebuilding: start from an empty image at the last `full` dump; for each dump in order, drop
//! the pages outside its `maps`, then apply its `pages` and `unreadable`.

use dirtytrack::remote::{Change, ChangeCounts, Collection, Image, Mapping, RemoteTracker};
use dirtytrack::Capabilities;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage:
  dirtytrack caps
      what this kernel and this process can do (modes, features, remote tracking)
  dirtytrack rate PID [--interval S] [--count N] [--top K] [--keep]
      pages written per second by process PID, per mapping (default: 1 s, 10 times, top 10)
  dirtytrack predump PID --dir D [--iterations N] [--interval S] [--verify] [--track-shared] [--stop]
      a full dump of PID's memory into D, then N incremental dumps of what changed (default 3,
      1 s apart). A later predump into the same D continues the chain. --verify finally stops
      PID (SIGSTOP), takes the last increment, rebuilds the image from the dumps, compares it
      with PID's memory byte for byte, resumes PID (SIGCONT), and exits 1 on any difference.
      Tracking stays in PID afterwards, for the next predump; --stop removes it.
      rate removes it when done, unless --keep.
  --track-shared: track shared mappings (memfd, shmem, MAP_SHARED) by write-protection instead
      of dumping them whole every time (only if nothing else writes them).

Needs ptrace permission over PID (same uid and Yama ptrace_scope 0, or CAP_SYS_PTRACE), and
Linux 6.7+ (UFFD_FEATURE_WP_ASYNC and PAGEMAP_SCAN).";

/// Command-line failure: a message and an exit code.
struct Fail(u8, String);

impl<E: std::fmt::Display> From<E> for Fail {
    fn from(e: E) -> Fail {
        Fail(3, e.to_string())
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("caps") => caps(),
        Some("rate") => rate(&args[1..]),
        Some("predump") => predump(&args[1..]),
        Some("-h") | Some("--help") | Some("help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(Fail(2, USAGE.to_string())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            eprintln!("dirtytrack: {msg}");
            ExitCode::from(code)
        }
    }
}

/// Parsed options: the positional pid plus `--name value` and `--flag` options.
struct Opts {
    pid: i32,
    values: BTreeMap<String, String>,
    flags: Vec<String>,
}

fn parse(args: &[String], with_value: &[&str], flags: &[&str]) -> Result<Opts, Fail> {
    let usage = |m: String| Fail(2, format!("{m}\n\n{USAGE}"));
    let mut pid = None;
    let mut values = BTreeMap::new();
    let mut seen_flags = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(name) = a.strip_prefix("--") {
            if with_value.contains(&name) {
                let v = it
                    .next()
                    .ok_or_else(|| usage(format!("--{name} needs a value")))?;
                values.insert(name.to_string(), v.clone());
            } else if flags.contains(&name) {
                seen_flags.push(name.to_string());
            } else {
                return Err(usage(format!("unknown option {a}")));
            }
        } else if pid.is_none() {
            pid = Some(
                a.parse::<i32>()
                    .map_err(|_| usage(format!("not a pid: {a}")))?,
            );
        } else {
            return Err(usage(format!("unexpected argument {a}")));
        }
    }
    Ok(Opts {
        pid: pid.ok_or_else(|| usage("missing PID".into()))?,
        values,
        flags: seen_flags,
    })
}

impl Opts {
    fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, Fail> {
        match self.values.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| Fail(2, format!("--{name}: not a number: {v}"))),
        }
    }
    fn seconds(&self, name: &str, default: f64) -> Result<Duration, Fail> {
        let s: f64 = self.num(name, default)?;
        if !(0.0..=86_400.0).contains(&s) {
            return Err(Fail(2, format!("--{name}: out of range: {s}")));
        }
        Ok(Duration::from_secs_f64(s))
    }
    fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }
}

fn caps() -> Result<(), Fail> {
    let caps = Capabilities::probe();
    println!("{caps}");
    let remote = caps.wp_async() && caps.pagemap_scan;
    println!(
        "  remote tracking (rate, predump): {}",
        match (remote, caps.scan_reports_discards) {
            (true, Some(true)) => "available".to_string(),
            (true, _) => "available, but this kernel's PAGEMAP_SCAN misses discarded pages (refused unless accepted)".to_string(),
            (false, _) => "unavailable: needs UFFD_FEATURE_WP_ASYNC and PAGEMAP_SCAN (Linux 6.7+)".to_string(),
        }
    );
    Ok(())
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn rate(args: &[String]) -> Result<(), Fail> {
    let o = parse(
        args,
        &["interval", "count", "top"],
        &["keep", "track-shared"],
    )?;
    let interval = o.seconds("interval", 1.0)?;
    let count: usize = o.num("count", 10)?;
    let top: usize = o.num("top", 10)?;
    let mut t = RemoteTracker::builder(o.pid)
        .track_shared(o.flag("track-shared"))
        .attach()?;
    let ps = dirtytrack::page_size();
    // The first collect arms everything (and reports it whole); rates start after it.
    let first = t.collect()?;
    eprintln!(
        "tracking process {} ({} mappings, {:.1} MiB{}); sampling every {:.2} s",
        o.pid,
        first.mappings.len(),
        mib(first.mappings.iter().map(|m| m.mapping.len()).sum()),
        if t.resumed() {
            ", resumed an earlier tracker's userfaultfd"
        } else {
            ""
        },
        interval.as_secs_f64()
    );
    let mut last = Instant::now();
    for i in 0..count {
        std::thread::sleep(interval);
        let c = t.collect()?;
        let secs = last.elapsed().as_secs_f64().max(1e-9);
        last = Instant::now();
        let mut rows: Vec<(usize, &dirtytrack::remote::MappingReport)> = c
            .mappings
            .iter()
            .map(|m| (m.dirty_bytes() / ps, m))
            .filter(|(n, _)| *n > 0)
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.0));
        let total: usize = rows.iter().map(|r| r.0).sum();
        println!(
            "sample {}: {:.0} pages/s ({:.1} MiB/s) over {} mappings",
            i + 1,
            total as f64 / secs,
            mib(total * ps) / secs,
            rows.len()
        );
        for (n, m) in rows.iter().take(top) {
            let note = match &m.change {
                Change::Tracked => "",
                Change::New { .. } => "  (new: reported whole)",
                Change::Lost { .. } => "  (replaced: reported whole)",
                Change::Untracked { .. } => "  (not tracked: counted whole)",
            };
            println!("  {:>10.0} pages/s  {}{note}", *n as f64 / secs, m.mapping);
        }
        for g in &c.gone {
            println!("  gone: {g}");
        }
        if !c.children.is_empty() {
            println!("  children (not tracked): {:?}", c.children);
        }
    }
    if o.flag("keep") {
        t.detach();
    } else {
        t.stop_tracking()?;
    }
    Ok(())
}

/// Writes one dump of `c` into `dir` (created), reading the pages from the target.
fn write_dump(
    t: &RemoteTracker,
    c: &Collection,
    dir: &Path,
    kind: &str,
    progress: &mut Progress,
) -> Result<(usize, usize), Fail> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join("kind"), format!("{kind}\n"))?;
    let mut maps = String::new();
    for m in &c.mappings {
        maps.push_str(&m.mapping.to_line());
        maps.push('\n');
    }
    fs::write(dir.join("maps"), maps)?;
    let mut pages = BufWriter::new(File::create(dir.join("pages"))?);
    let mut unreadable = String::new();
    let ps = dirtytrack::page_size();
    let total = c.dirty_bytes();
    progress.start(total);
    let (mut written, mut failed) = (0usize, 0usize);
    // Pages of inaccessible mappings are read as the target's ptracer where the kernel lets only
    // a ptracer read through protection (RemoteTracker::read_dirty).
    t.read_dirty(c, |at, bytes| -> Result<(), Fail> {
        match bytes {
            Some(bytes) => {
                pages.write_all(&(at as u64).to_le_bytes())?;
                pages.write_all(&(bytes.len() as u64).to_le_bytes())?;
                pages.write_all(bytes)?;
                written += bytes.len();
                progress.advance(bytes.len());
            }
            None => {
                unreadable.push_str(&format!("{at:x} {ps:x}\n"));
                failed += ps;
                progress.advance(ps);
            }
        }
        Ok(())
    })?;
    pages.flush()?;
    fs::write(dir.join("unreadable"), unreadable)?;
    progress.finish();
    Ok((written, failed))
}

/// A one-line progress display on stderr for dumps that take a while (only on a terminal).
struct Progress {
    tty: bool,
    label: String,
    total: usize,
    done: usize,
    started: Instant,
    shown: Option<Instant>,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            tty: io::stderr().is_terminal(),
            label: String::new(),
            total: 0,
            done: 0,
            started: Instant::now(),
            shown: None,
        }
    }
    fn start(&mut self, total: usize) {
        self.total = total;
        self.done = 0;
        self.started = Instant::now();
        self.shown = None;
    }
    fn advance(&mut self, n: usize) {
        self.done += n;
        if !self.tty || self.started.elapsed() < Duration::from_millis(300) {
            return;
        }
        if self
            .shown
            .is_some_and(|s| s.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.shown = Some(Instant::now());
        eprint!(
            "\r{}: {:.1} / {:.1} MiB ({:.0} %)   ",
            self.label,
            mib(self.done),
            mib(self.total),
            100.0 * self.done as f64 / self.total.max(1) as f64
        );
    }
    fn finish(&mut self) {
        if self.shown.is_some() {
            eprint!("\r{:60}\r", "");
        }
    }
}

/// What `D/state` holds.
struct State {
    pid: i32,
    fd: i32,
    ino: u64,
    tracked: Vec<Mapping>,
}

fn read_state(dir: &Path) -> Option<State> {
    let text = fs::read_to_string(dir.join("state")).ok()?;
    let mut lines = text.lines();
    let mut head = lines.next()?.split_whitespace();
    let pid = head.next()?.parse().ok()?;
    let fd = head.next()?.parse().ok()?;
    let ino = head.next()?.parse().ok()?;
    let tracked = lines.filter_map(Mapping::from_line).collect();
    Some(State {
        pid,
        fd,
        ino,
        tracked,
    })
}

fn write_state(dir: &Path, t: &RemoteTracker) -> io::Result<()> {
    let mut s = format!("{} {} {}\n", t.pid(), t.target_fd(), t.uffd_inode());
    for m in t.tracked() {
        s.push_str(&m.to_line());
        s.push('\n');
    }
    let tmp = dir.join("state.tmp");
    fs::write(&tmp, s)?;
    fs::rename(tmp, dir.join("state"))
}

fn dump_dirs(dir: &Path) -> io::Result<Vec<(u32, PathBuf)>> {
    let mut out: Vec<(u32, PathBuf)> = fs::read_dir(dir)?
        .filter_map(|e| {
            let e = e.ok()?;
            let n = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((n, e.path()))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Rebuilds the image from the dumps in `dir` (from the last full one).
fn rebuild(dir: &Path) -> Result<Image, Fail> {
    let dumps = dump_dirs(dir)?;
    let first = dumps
        .iter()
        .rposition(|(_, p)| fs::read_to_string(p.join("kind")).is_ok_and(|k| k.trim() == "full"))
        .ok_or_else(|| Fail(3, format!("no full dump in {}", dir.display())))?;
    let mut image = Image::new();
    for (_, p) in &dumps[first..] {
        apply_dump(&mut image, p)?;
    }
    Ok(image)
}

/// Applies one dump directory to `image`: drops the pages outside its `maps`, then sets its
/// `pages` and `unreadable` pages.
fn apply_dump(image: &mut Image, p: &Path) -> Result<(), Fail> {
    let ps = dirtytrack::page_size();
    let maps: Vec<Mapping> = fs::read_to_string(p.join("maps"))?
        .lines()
        .filter_map(Mapping::from_line)
        .collect();
    image.retain_ranges(&maps.iter().map(|m| m.start..m.end).collect::<Vec<_>>());
    let mut data = Vec::new();
    File::open(p.join("pages"))?.read_to_end(&mut data)?;
    let mut at = 0;
    while at < data.len() {
        let bad = || Fail(3, format!("{} is truncated", p.join("pages").display()));
        let word = |i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(data.get(i..i + 8)?.try_into().ok()?))
        };
        let addr = word(at).ok_or_else(bad)? as usize;
        let len = word(at + 8).ok_or_else(bad)? as usize;
        let bytes = data.get(at + 16..at + 16 + len).ok_or_else(bad)?;
        for (i, page) in bytes.chunks(ps).enumerate() {
            image.set_page(addr + i * ps, Some(page.to_vec()));
        }
        at += 16 + len;
    }
    for line in fs::read_to_string(p.join("unreadable"))
        .unwrap_or_default()
        .lines()
    {
        let mut it = line.split_whitespace();
        let (Some(a), Some(l)) = (it.next(), it.next()) else {
            continue;
        };
        let (Ok(a), Ok(l)) = (usize::from_str_radix(a, 16), usize::from_str_radix(l, 16)) else {
            continue;
        };
        for pg in (a..a + l).step_by(ps) {
            image.set_page(pg, None);
        }
    }
    Ok(())
}

fn describe(c: &Collection) -> String {
    let ChangeCounts {
        new,
        lost,
        untracked,
        ..
    } = c.change_counts();
    let mut s = format!(
        "{} mappings ({new} new, {lost} replaced, {untracked} untracked, {} gone)",
        c.mappings.len(),
        c.gone.len()
    );
    if !c.children.is_empty() {
        s.push_str(&format!("; children {:?} are NOT tracked", c.children));
    }
    s
}

fn predump(args: &[String]) -> Result<(), Fail> {
    let o = parse(
        args,
        &["dir", "iterations", "interval"],
        &["verify", "track-shared", "stop"],
    )?;
    let dir = PathBuf::from(
        o.values
            .get("dir")
            .ok_or_else(|| Fail(2, format!("predump needs --dir D\n\n{USAGE}")))?,
    );
    let iterations: usize = o.num("iterations", 3)?;
    let interval = o.seconds("interval", 1.0)?;
    fs::create_dir_all(&dir)?;
    let ps = dirtytrack::page_size();

    // Continue an earlier chain on the same process if its userfaultfd is still there.
    let state = read_state(&dir).filter(|s| s.pid == o.pid);
    let mut b = RemoteTracker::builder(o.pid).track_shared(o.flag("track-shared"));
    if let Some(s) = &state {
        b = b.expect_fd(s.fd, s.ino).previous(s.tracked.clone());
    } else {
        b = b.fresh(true);
    }
    let attach_started = Instant::now();
    let mut t = b.attach()?;
    let attach_ms = attach_started.elapsed().as_secs_f64() * 1e3;
    let existing = dump_dirs(&dir)?;
    let first_number = existing.last().map_or(0, |(n, _)| n + 1);
    let mut kind = if t.resumed() && !existing.is_empty() {
        "incremental"
    } else {
        "full"
    };
    eprintln!(
        "process {}: {} (attach {attach_ms:.1} ms, userfaultfd {} in the target)",
        o.pid,
        if kind == "full" {
            "new chain, full dump first"
        } else {
            "continuing the chain of an earlier predump"
        },
        t.target_fd()
    );
    let mut progress = Progress::new();
    let total_rounds = iterations + 1 + usize::from(o.flag("verify"));
    let mut last_collection = None;
    let mut verify_image = None;
    let mut stopped_at = Instant::now();
    let mut last_dump = PathBuf::new();
    for (round, next) in (0..total_rounds).zip(first_number..) {
        let verify_round = o.flag("verify") && round == total_rounds - 1;
        if round > 0 && !verify_round {
            std::thread::sleep(interval);
        }
        if verify_round {
            // Rebuild from the dumps so far while the target still runs; only the last
            // increment is applied with it stopped.
            verify_image = Some(rebuild(&dir)?);
            stopped_at = Instant::now();
            t.stop_target()?;
        }
        let collect_started = Instant::now();
        let c = match t.collect() {
            Ok(c) => c,
            Err(e) => {
                if verify_round {
                    let _ = t.continue_target();
                }
                // Nothing is known about this interval: the next predump starts a new chain.
                let _ = fs::remove_file(dir.join("state"));
                return Err(e.into());
            }
        };
        let collect_ms = collect_started.elapsed().as_secs_f64() * 1e3;
        let path = dir.join(format!("{next:04}"));
        progress.label = format!("dump {next:04} ({kind})");
        let dump_started = Instant::now();
        let (written, failed) = match write_dump(&t, &c, &path, kind, &mut progress) {
            Ok(x) => x,
            Err(e) => {
                if verify_round {
                    let _ = t.continue_target();
                }
                let _ = fs::remove_dir_all(&path);
                let _ = fs::remove_file(dir.join("state"));
                return Err(e);
            }
        };
        write_state(&dir, &t)?;
        last_dump = path.clone();
        println!(
            "dump {next:04} {kind:<11} {:>8} pages {:>9.1} MiB  collect {collect_ms:>7.2} ms  write {:>8.1} ms  {}{}",
            written / ps,
            mib(written),
            dump_started.elapsed().as_secs_f64() * 1e3,
            describe(&c),
            if failed > 0 {
                format!("; {} pages unreadable", failed / ps)
            } else {
                String::new()
            }
        );
        kind = "incremental";
        last_collection = Some(c);
    }
    let mut code = Ok(());
    if o.flag("verify") {
        let c = last_collection.expect("at least one round ran");
        let started = Instant::now();
        let result = match verify_image.take() {
            Some(mut image) => apply_dump(&mut image, &last_dump).map(|()| image),
            None => rebuild(&dir),
        }
        .and_then(|image| Ok(image.verify(&t, &c)?));
        let _ = t.continue_target();
        let stopped_ms = stopped_at.elapsed().as_secs_f64() * 1e3;
        let mismatches = result?;
        if mismatches.is_empty() {
            println!(
                "verify: the image rebuilt from the dumps equals the memory of process {} ({:.1} MiB compared in {:.0} ms; the process was stopped for {stopped_ms:.0} ms)",
                o.pid,
                mib(c.mappings.iter().map(|m| m.mapping.len()).sum()),
                started.elapsed().as_secs_f64() * 1e3
            );
        } else {
            for m in &mismatches {
                println!("verify: page {:#x}: {}", m.page, m.what);
            }
            code = Err(Fail(
                1,
                format!("verify: {} page(s) differ", mismatches.len()),
            ));
        }
    }
    if o.flag("stop") {
        t.stop_tracking()?;
        let _ = fs::remove_file(dir.join("state"));
    } else {
        t.detach();
    }
    code
}
