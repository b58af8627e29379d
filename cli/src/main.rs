//! `dirtytrack`: the library's capabilities report, and tracking of another process.
//!
//! ```text
//! dirtytrack caps
//! dirtytrack rate PID [--interval S] [--count N] [--top K]
//! dirtytrack predump PID --dir D [--iterations N] [--interval S] [--verify] [--track-shared] [--stop]
//! ```
//!
//! The dump format is in [`dump`].
//!
//! # Signals
//!
//! `SIGINT`, `SIGTERM` and `SIGHUP` never interrupt work on the target: they are noted, and
//! acted on at the next point where the target is consistent (after an injected system call,
//! a registration, a resumed freeze). The CLI then releases the target and exits with 128 + the
//! signal's number. A dump being copied is abandoned (never committed), and the chain's next
//! run, finding the collect that dump was for uncommitted, starts over with a full dump.
//! `SIGKILL` cannot be deferred; the library guarantees the target survives it anyway (see the
//! library's `remote` module).

mod dump;

use dirtytrack::remote::{Change, ChangeCounts, Collection, RemoteTracker};
use dirtytrack::Capabilities;
use dump::DumpError;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage:
  dirtytrack caps
      what this kernel and this process can do (modes, features, remote tracking)
  dirtytrack rate PID [--interval S] [--count N] [--top K] [--keep] [--track-shared]
      pages written per second by process PID, per mapping (default: 1 s, 10 times, top 10)
  dirtytrack predump PID --dir D [--iterations N] [--interval S] [--verify] [--track-shared] [--stop]
      a full dump of PID's memory into D, then N incremental dumps of what changed (default 3,
      1 s apart). A later predump into the same D continues the chain, or says why it cannot
      and starts with a full dump. --verify finally holds PID stopped (under ptrace: the stop
      ends with this command, however it ends), takes the last increment, rebuilds the image
      from the dumps, compares it with PID's memory byte for byte, lets PID go, and exits 1 on
      any difference. Tracking stays in PID afterwards, for the next predump; --stop removes
      it. rate removes it when done, unless --keep.
  --track-shared: track shared mappings (memfd, shmem, MAP_SHARED) by write-protection instead
      of dumping them whole every time (only if nothing else writes them).

One tracker per process: a second one is refused, naming the first (a tracker that died
frees its target by itself; the next run adopts what it left). SIGINT/SIGTERM/SIGHUP are
acted on once the target is consistent (exit 128 + signal).

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
    signals::defer();
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
        Err(Fail(0, msg)) => {
            println!("{msg}");
            ExitCode::SUCCESS
        }
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
        if a == "--help" || a == "-h" {
            return Err(Fail(0, USAGE.to_string()));
        }
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

/// Exits for a deferred termination signal, if one arrived.
fn check_signal() -> Result<(), Fail> {
    match signals::received() {
        Some(sig) => Err(interrupted(sig)),
        None => Ok(()),
    }
}

fn interrupted(sig: i32) -> Fail {
    Fail(
        128u8.saturating_add(sig as u8),
        format!(
            "interrupted by signal {sig} ({}); the target was left running and consistent",
            signals::name(sig)
        ),
    )
}

/// Sleeps `d`, or less if a termination signal arrives.
fn sleep_unless_signalled(d: Duration) {
    let until = Instant::now() + d;
    while signals::received().is_none() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(10)));
    }
}

fn print_notes(t: &RemoteTracker) {
    for n in t.notes() {
        eprintln!("process {}: {n}", t.pid());
    }
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
    print_notes(&t);
    let sampled = sample(&mut t, interval, count, top);
    // Removing tracking is one more injection; a signal meanwhile waits for it.
    let ended = if o.flag("keep") {
        t.detach();
        Ok(())
    } else {
        t.stop_tracking()
    };
    sampled?;
    ended?;
    check_signal()
}

/// The sampling loop of `rate`; stops early on a termination signal.
fn sample(t: &mut RemoteTracker, interval: Duration, count: usize, top: usize) -> Result<(), Fail> {
    let ps = dirtytrack::page_size();
    if count == 0 || signals::received().is_some() {
        return Ok(());
    }
    // The first collect arms everything (and reports it whole); rates start after it.
    let first = t.collect()?;
    eprintln!(
        "tracking process {} ({} mappings, {:.1} MiB{}); sampling every {:.2} s",
        t.pid(),
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
        sleep_unless_signalled(interval);
        if signals::received().is_some() {
            return Ok(());
        }
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
                _ => "  (reported whole)",
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
    Ok(())
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

/// Why the chain in `dir` cannot continue with tracker `t`, if it cannot.
fn chain_broken(
    t: &RemoteTracker,
    state: Option<&dump::State>,
    last: Option<u32>,
) -> Option<String> {
    let s = state?;
    if !t.resumed() || s.fd != t.target_fd() || s.ino != t.uffd_inode() {
        return Some("the chain's tracking userfaultfd is no longer in the process".into());
    }
    if last != Some(s.last_dump) {
        return Some(format!(
            "the last committed dump is {}, the chain's state was saved with dump {:04}",
            last.map_or("none".into(), |n| format!("{n:04}")),
            s.last_dump
        ));
    }
    if s.generation != t.generation() {
        return Some(format!(
            "{} collect(s) happened since dump {:04} whose pages are in no dump of this chain (another tracker collected, or a run was stopped between its collect and its dump)",
            t.generation().wrapping_sub(s.generation),
            s.last_dump
        ));
    }
    None
}

/// The exclusive lock of a dump directory (`D/lock`, `flock`), held while a predump writes
/// into it; the kernel drops it when its holder dies.
struct DirLock(#[allow(dead_code)] File);

impl DirLock {
    fn acquire(dir: &Path) -> Result<DirLock, Fail> {
        let p = dir.join("lock");
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .map_err(|e| Fail(3, format!("{}: {e}", p.display())))?;
        if !signals::try_lock(&f).map_err(|e| Fail(3, format!("flock {}: {e}", p.display())))? {
            let holder = fs::read_to_string(&p).unwrap_or_default();
            return Err(Fail(
                3,
                format!(
                    "{} is in use by another predump (process {}): one predump per directory; wait for it, or use another --dir",
                    dir.display(),
                    holder.trim()
                ),
            ));
        }
        f.set_len(0)
            .and_then(|()| f.write_all(format!("{}\n", std::process::id()).as_bytes()))
            .map_err(|e| Fail(3, format!("{}: {e}", p.display())))?;
        Ok(DirLock(f))
    }
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
    let ps = dirtytrack::page_size();

    // Continue an earlier chain on the same process if its userfaultfd is still there. The
    // directory is created only once the process is attached (a wrong pid leaves nothing).
    let state = dump::read_state(&dir).filter(|s| s.pid == o.pid);
    let mut b = RemoteTracker::builder(o.pid).track_shared(o.flag("track-shared"));
    if let Some(s) = &state {
        b = b.expect_fd(s.fd, s.ino).previous(s.tracked.clone());
    } else {
        b = b.fresh(true);
    }
    let attach_started = Instant::now();
    let mut t = b.attach()?;
    let attach_ms = attach_started.elapsed().as_secs_f64() * 1e3;
    print_notes(&t);
    check_signal()?;
    fs::create_dir_all(&dir).map_err(|e| Fail(3, format!("{}: {e}", dir.display())))?;
    let _dir_lock = DirLock::acquire(&dir)?;
    // Dumps being written when an earlier run died: never committed.
    if let Ok(entries) = fs::read_dir(&dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    let existing = dump::dump_dirs(&dir)?;
    let first_number = existing.last().map_or(0, |(n, _)| n + 1);
    let broken = chain_broken(&t, state.as_ref(), existing.last().map(|(n, _)| *n));
    if let Some(why) = &broken {
        eprintln!(
            "process {}: the chain in {} cannot continue: {why}; starting a new chain with a full dump",
            o.pid,
            dir.display()
        );
        t.restart_chain();
    }
    let mut kind = if t.resumed() && state.is_some() && broken.is_none() && !existing.is_empty() {
        "incremental"
    } else {
        if t.resumed() {
            t.restart_chain();
        }
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
            sleep_unless_signalled(interval);
        }
        check_signal()?;
        if verify_round {
            // Rebuild from the dumps so far while the target still runs; only the last
            // increment is applied with it stopped.
            verify_image = Some(dump::rebuild(&dir).map_err(dump_fail)?);
            check_signal()?;
            stopped_at = Instant::now();
            t.stop_target()?;
        }
        let collect_started = Instant::now();
        let c = match t.collect() {
            Ok(c) => c,
            Err(e) => {
                let _ = t.continue_target();
                // Nothing is known about this interval: the next predump starts a new chain.
                let _ = fs::remove_file(dir.join("state"));
                return Err(e.into());
            }
        };
        let collect_ms = collect_started.elapsed().as_secs_f64() * 1e3;
        let path = dir.join(format!("{next:04}"));
        progress.label = format!("dump {next:04} ({kind})");
        progress.start(c.dirty_bytes());
        let dump_started = Instant::now();
        let written = dump::write_dump(
            &t,
            &c,
            &path,
            kind,
            |n| progress.advance(n),
            || signals::received().is_some(),
        );
        progress.finish();
        let written = match written {
            Ok(w) => w,
            Err(e) => {
                let _ = t.continue_target();
                // The collect re-armed what this dump was to hold: the chain cannot go on
                // (the next run sees the generation moved on and dumps in full).
                let _ = fs::remove_file(dir.join("state"));
                return Err(match (e, signals::received()) {
                    (DumpError::Interrupted, Some(sig)) => interrupted(sig),
                    (e, _) => dump_fail(e),
                });
            }
        };
        dump::write_state(&dir, &t, next)
            .map_err(|e| Fail(3, format!("{}: {e}", dir.join("state").display())))?;
        last_dump = path.clone();
        println!(
            "dump {next:04} {kind:<11} {:>8} pages {:>9.1} MiB  collect {collect_ms:>7.2} ms  write {:>8.1} ms  {}{}",
            written.bytes / ps,
            mib(written.bytes),
            dump_started.elapsed().as_secs_f64() * 1e3,
            describe(&c),
            if written.unreadable > 0 {
                format!("; {} pages unreadable", written.unreadable / ps)
            } else {
                String::new()
            }
        );
        kind = "incremental";
        last_collection = Some(c);
    }
    let mut code = Ok(());
    if o.flag("verify") {
        let Some(c) = last_collection else {
            return Err(Fail(3, "verify: no collection was taken".into()));
        };
        let started = Instant::now();
        let result = match verify_image.take() {
            Some(mut image) => image.apply_dump(&last_dump).map(|()| image),
            None => dump::rebuild(&dir),
        }
        .map_err(dump_fail)
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
            const SHOWN: usize = 20;
            for (page, what) in mismatches.iter().take(SHOWN) {
                println!("verify: page {page:#x}: {what}");
            }
            if mismatches.len() > SHOWN {
                println!("verify: ... and {} more", mismatches.len() - SHOWN);
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
    code?;
    check_signal()
}

fn dump_fail(e: DumpError) -> Fail {
    Fail(3, e.to_string())
}

/// Termination signals deferred to points where the target is consistent.
mod signals {
    use std::sync::atomic::{AtomicI32, Ordering};

    static RECEIVED: AtomicI32 = AtomicI32::new(0);

    extern "C" fn note(sig: libc::c_int) {
        // Async-signal-safe: one atomic store.
        RECEIVED.store(sig, Ordering::SeqCst);
    }

    /// Installs the handler for `SIGINT`, `SIGTERM` and `SIGHUP` (with `SA_RESTART`, so no
    /// system call of the CLI fails with `EINTR` because of them).
    pub fn defer() {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic, which
            // is async-signal-safe; sigaction reads the struct we own.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = note as extern "C" fn(libc::c_int) as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    }

    /// The last termination signal received, if any.
    pub fn received() -> Option<i32> {
        match RECEIVED.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }

    pub fn name(sig: i32) -> &'static str {
        match sig {
            libc::SIGINT => "SIGINT",
            libc::SIGTERM => "SIGTERM",
            libc::SIGHUP => "SIGHUP",
            _ => "signal",
        }
    }

    /// `flock(LOCK_EX | LOCK_NB)`: whether this open file now holds the lock.
    pub fn try_lock(f: &std::fs::File) -> std::io::Result<bool> {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on an fd `f` keeps open for the call.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(false)
        } else {
            Err(e)
        }
    }
}
