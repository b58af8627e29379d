//! Incremental checkpointing with dirtytrack, the job this library exists for.
//!
//! 1. Map an anonymous private region, fill it, register it with a [`Tracker`]; start writer
//!    threads that keep dirtying about `--dirty-percent` random pages per epoch.
//! 2. `clear()` (the chain starts here), then a full dump, while the writers run. With `--live`
//!    (sync mode) a live snapshot replaces clear + copy: its data is the region as of one instant,
//!    and the next collect reports the pages written since that instant.
//! 3. Every epoch (`--epoch-ms` after the previous collect, at once if the dump took longer):
//!    `collect()`, then copy only the dirty runs into an incremental dump.
//! 4. Stop and join the writers; a final `collect()` and incremental dump.
//! 5. Restore into fresh memory (the full dump, then every incremental in order) and compare it
//!    byte for byte with the live region.
//!
//! Why the chain is exact: a page written after the clear (or after collect k returned) is
//! reported by collect k+1 or a later one, and each dump copies its pages after its collect
//! returned. So the last dump holding a page copied it after the page's last write.
//!
//! Memory model: while writers run, the region is accessed only as `&[AtomicU64]` with Relaxed
//! loads and stores (it is page aligned), never as `&[u8]`. Restore and verify run after the
//! writers are joined.
//!
//! Dump format (files `000-full.dump`, `001-incr.dump`, ...; header integers are u64 LE):
//!
//! ```text
//! magic "DTCKPT01" | kind (0 full, 1 incremental) | seq (apply order; the full dump is 0)
//! page_size | region_len | record count
//! record count x { offset from region start | len | len bytes of the memory image }
//! ```

use dirtytrack::{DirtySet, Mode, RangeId, Tracker};
use std::fmt::Display;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
const MAGIC: &[u8; 8] = b"DTCKPT01";
const TABLE: &str = " epoch dirty pages    runs      dumped   of full    collect       dump";
const USAGE: &str = "usage: checkpoint [--size-mib N] [--mode auto|async|sync] [--writers N]
         [--dirty-percent P] [--epochs N] [--epoch-ms MS] [--dir PATH] [--keep] [--live]
defaults: 512 MiB, auto, 2 writers, 2 %, 5 epochs of 200 ms, a fresh directory in $TMPDIR.
--keep keeps the dumps; --live takes the full dump with a live snapshot (sync mode).";

struct Config {
    len: usize,
    mode: Mode,
    writers: usize,
    dirty_percent: f64,
    epochs: usize,
    epoch: Duration,
    dir: Option<PathBuf>,
    keep: bool,
    live: bool,
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`| head`), like other command-line tools, not in a panic.
    // SAFETY: only resets a signal disposition to the default.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cfg = match parse_args(std::env::args().skip(1)) {
        Ok(cfg) => cfg,
        Err(msg) => {
            eprintln!("checkpoint: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (line, code) = match run(&cfg) {
        Ok(verified) => (verified, 0),
        Err(msg) => (format!("FAILED: {msg}"), 1),
    };
    println!("{line}");
    ExitCode::from(code)
}

/// The configuration, or a usage error.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Config, String> {
    let (mut size_mib, mut mode, mut epoch_ms) = (512usize, None, 200u64);
    let mut c = Config {
        len: 0,
        mode: Mode::Auto,
        writers: 2,
        dirty_percent: 2.0,
        epochs: 5,
        epoch: Duration::ZERO,
        dir: None,
        keep: false,
        live: false,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--size-mib" => size_mib = number(&flag, value()?)?,
            "--writers" => c.writers = number(&flag, value()?)?,
            "--dirty-percent" => c.dirty_percent = number(&flag, value()?)?,
            "--epochs" => c.epochs = number(&flag, value()?)?,
            "--epoch-ms" => epoch_ms = number(&flag, value()?)?,
            "--dir" => c.dir = Some(PathBuf::from(value()?)),
            "--keep" => c.keep = true,
            "--live" => c.live = true,
            "--mode" => match value()?.as_str() {
                "auto" => mode = Some(Mode::Auto),
                "async" => mode = Some(Mode::Async),
                "sync" => mode = Some(Mode::Sync),
                other => return Err(format!("--mode: '{other}' is not auto, async or sync")),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument '{flag}'")),
        }
    }
    c.len = size_mib.saturating_mul(MIB);
    let (ps, pct) = (dirtytrack::page_size(), c.dirty_percent);
    require(size_mib > 0, "--size-mib must be at least 1")?;
    require(c.len <= isize::MAX as usize, "--size-mib is too large")?;
    require(
        c.len % ps == 0,
        "--size-mib: not a multiple of the page size",
    )?;
    require(c.writers <= 256, "--writers must be at most 256")?;
    require((0.0..=100.0).contains(&pct), "--dirty-percent: 0 to 100")?;
    require(
        (1..=3_600_000).contains(&epoch_ms),
        "--epoch-ms: 1 to 3600000",
    )?;
    require(
        !c.live || mode != Some(Mode::Async),
        "--live needs sync mode",
    )?;
    c.epoch = Duration::from_millis(epoch_ms);
    let mode = mode.unwrap_or_default();
    c.mode = if c.live { Mode::Sync } else { mode };
    Ok(c)
}

fn number<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag}: '{v}' is not a number"))
}

fn require(ok: bool, problem: &str) -> Result<(), String> {
    ok.then_some(()).ok_or(problem.to_string())
}

/// Adds context to an error: `"what: error"`.
fn ctx<E: Display>(what: &'static str) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

/// A private anonymous mapping, unmapped on drop.
struct Region {
    addr: *mut u8,
    len: usize,
}

impl Region {
    fn map(len: usize) -> io::Result<Region> {
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Region {
            addr: p.cast(),
            len,
        })
    }

    /// The region as words: the only view used while other threads write it.
    fn words(&self) -> &[AtomicU64] {
        // SAFETY: page aligned (so 8-byte aligned) and mapped for `len` bytes while `self`
        // lives; every access through this view is atomic.
        unsafe { std::slice::from_raw_parts(self.addr as *const AtomicU64, self.len / 8) }
    }

    /// # Safety
    /// No thread may write the region while the slice lives.
    unsafe fn bytes(&self) -> &[u8] {
        // SAFETY: mapped for `len` bytes; the caller rules out concurrent writes.
        unsafe { std::slice::from_raw_parts(self.addr, self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `&mut self`: no other view of the mapping exists while the slice lives.
        unsafe { std::slice::from_raw_parts_mut(self.addr, self.len) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: we mapped exactly this range, and no reference into it outlives `self`.
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}

/// Stores a random value into one word of a random page, `pages_per_sec` times a second (in
/// bursts every millisecond), until `stop`. Returns the number of stores.
fn writer(words: &[AtomicU64], pages_per_sec: f64, seed: u64, stop: &AtomicBool) -> u64 {
    let per_page = (dirtytrack::page_size() / 8) as u64;
    let (pages, start) = (words.len() as u64 / per_page, Instant::now());
    let (mut x, mut done) = (seed | 1, 0u64);
    while !stop.load(Relaxed) {
        let due = (start.elapsed().as_secs_f64() * pages_per_sec) as u64;
        while done < due && !stop.load(Relaxed) {
            x ^= x << 13; // xorshift64
            x ^= x >> 7;
            x ^= x << 17;
            let word = (x >> 20) % pages * per_page + x % per_page;
            words[word as usize].store(x, Relaxed);
            done += 1;
        }
        thread::sleep(Duration::from_millis(1));
    }
    done
}

/// Copies the region's bytes at offset `at` (8-byte aligned) into `buf`, word by word.
fn copy_words(words: &[AtomicU64], at: usize, buf: &mut [u8]) {
    for (dst, w) in buf.chunks_exact_mut(8).zip(&words[at / 8..]) {
        dst.copy_from_slice(&w.load(Relaxed).to_ne_bytes());
    }
}

/// Fills a dump buffer with the region's bytes at an offset.
type Fill<'a> = &'a dyn Fn(usize, &mut [u8]);

/// The dump files of one run, in apply order.
struct Dumps {
    dir: PathBuf,
    temporary: bool,
    files: Vec<PathBuf>,
    region_len: usize,
}

impl Dumps {
    /// `--dir` (created if needed), or a fresh directory under the temporary directory.
    fn open(dir: Option<&PathBuf>, region_len: usize) -> Result<Dumps, String> {
        let nanos = std::time::UNIX_EPOCH.elapsed().unwrap_or_default();
        let pid = std::process::id();
        let name = format!("dirtytrack-checkpoint-{pid}-{}", nanos.as_nanos());
        let temporary = dir.is_none();
        let dir = dir.cloned().unwrap_or(std::env::temp_dir().join(name));
        let created = fs::create_dir_all(&dir);
        created.map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let files = Vec::new();
        Ok(Dumps {
            dir,
            temporary,
            files,
            region_len,
        })
    }

    /// Writes the next dump: `records` are (offset, len); `fill(offset, buf)` fills `buf`.
    fn write(&mut self, records: &[(usize, usize)], fill: Fill) -> Result<Duration, String> {
        let (start, seq) = (Instant::now(), self.files.len());
        let kind = if seq == 0 { "full" } else { "incr" };
        let path = self.dir.join(format!("{seq:03}-{kind}.dump"));
        self.files.push(path.clone());
        let ps = dirtytrack::page_size();
        let header = [(seq > 0) as usize, seq, ps, self.region_len, records.len()];
        let mut buf = vec![0u8; 4 * MIB];
        let result = (|| -> io::Result<()> {
            let mut w = BufWriter::with_capacity(MIB, File::create(&path)?);
            w.write_all(MAGIC)?;
            put_u64s(&mut w, &header)?;
            for &(off, len) in records {
                put_u64s(&mut w, &[off, len])?;
                for at in (off..off + len).step_by(buf.len()) {
                    let n = buf.len().min(off + len - at);
                    fill(at, &mut buf[..n]);
                    w.write_all(&buf[..n])?;
                }
            }
            w.flush()
        })();
        result.map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(start.elapsed())
    }

    /// Applies dump `seq` to `into`, checking its header and the bounds of every record.
    fn apply(&self, seq: usize, into: &mut [u8]) -> Result<(), String> {
        let path = &self.files[seq];
        let bad = |what: String| format!("{}: {what}", path.display());
        let io_err = |e: io::Error| bad(e.to_string());
        let mut r = BufReader::with_capacity(MIB, File::open(path).map_err(io_err)?);
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).map_err(io_err)?;
        let expect = [(seq > 0) as usize, seq, dirtytrack::page_size(), into.len()];
        for want in expect {
            if read_u64(&mut r).map_err(io_err)? != want as u64 || &magic != MAGIC {
                return Err(bad("not the expected dump of this region".into()));
            }
        }
        for _ in 0..read_u64(&mut r).map_err(io_err)? {
            let off = read_u64(&mut r).map_err(io_err)? as usize;
            let len = read_u64(&mut r).map_err(io_err)? as usize;
            let dst = (off.checked_add(len).and_then(|end| into.get_mut(off..end)))
                .ok_or_else(|| bad(format!("record {off:#x}+{len:#x} is outside the region")))?;
            r.read_exact(dst).map_err(io_err)?;
        }
        Ok(())
    }

    /// Removes the dump files, and the directory if it is our temporary one.
    fn remove(&self) {
        self.files.iter().for_each(|f| drop(fs::remove_file(f)));
        if self.temporary {
            let _ = fs::remove_dir(&self.dir);
        }
    }
}

fn put_u64s(w: &mut impl Write, values: &[usize]) -> io::Result<()> {
    values
        .iter()
        .try_for_each(|v| w.write_all(&(*v as u64).to_le_bytes()))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut v = [0u8; 8];
    r.read_exact(&mut v).map(|()| u64::from_le_bytes(v))
}

/// One table row: the pages a dump holds, their share of a full dump, and the times.
fn print_row(label: &str, set: &DirtySet, region_len: usize, collect: Duration, dump: Duration) {
    let pct = 100.0 * set.bytes() as f64 / region_len as f64;
    let (pages, runs, dumped) = (set.len(), set.runs().count(), mib(set.bytes()));
    let (c, d) = (dur(collect), dur(dump));
    println!("{label:>6} {pages:>11} {runs:>7} {dumped:>11} {pct:>8.2}% {c:>10} {d:>10}");
}

fn mib(bytes: usize) -> String {
    match bytes {
        b if b < MIB => format!("{} KiB", b / 1024),
        b => format!("{:.2} MiB", b as f64 / MIB as f64),
    }
}

fn dur(d: Duration) -> String {
    match d.as_micros() {
        us if us < 1000 => format!("{us} µs"),
        us => format!("{:.2} ms", us as f64 / 1000.0),
    }
}

/// What the dump steps share.
struct Job<'a> {
    tracker: &'a Tracker,
    id: RangeId,
    region: &'a Region,
    dumps: Dumps,
}

impl Job<'_> {
    /// The full dump that starts the chain: `clear()` then a copy, or a live snapshot (whose
    /// instant acts as the collect; its copy completes in the background as the writers run).
    fn full_dump(&mut self, live: bool) -> Result<(), String> {
        let (start, region, whole) = (Instant::now(), self.region, [(0, self.region.len)]);
        let mut all = DirtySet::new();
        all.insert_range(region.addr as usize..region.addr as usize + region.len);
        if !live {
            self.tracker.clear().map_err(ctx("clear"))?;
            let clear_time = start.elapsed();
            let words = region.words();
            let fill = &|at, buf: &mut [u8]| copy_words(words, at, buf);
            let dump_time = self.dumps.write(&whole, fill)?;
            print_row("full", &all, region.len, clear_time, dump_time);
            return Ok(());
        }
        let snapshot = self.tracker.live_snapshot(self.id);
        let snapshot = snapshot.map_err(ctx("live_snapshot"))?;
        let instant = start.elapsed();
        let mut copy = snapshot.wait().map_err(ctx("live snapshot"))?;
        let background = start.elapsed() - instant;
        if copy.addr != region.addr as usize || copy.data.len() != region.len {
            let (a, n) = (copy.addr, copy.data.len());
            return Err(format!("live snapshot of {a:#x}+{n:#x}, not the region"));
        }
        let data = &copy.data;
        let fill = &|at: usize, buf: &mut [u8]| buf.copy_from_slice(&data[at..][..buf.len()]);
        // If this write fails, `copy` is dropped uncommitted and hands the pages written before
        // the instant back to the tracker: the next incremental dump still has them.
        let dump_time = self.dumps.write(&whole, fill)?;
        copy.commit();
        print_row("live", &all, region.len, instant, background + dump_time);
        let (b, n) = (dur(background), copy.dirty_at_instant.len());
        println!("        (background copy {b}; {n} pages were dirty at the instant)");
        Ok(())
    }

    /// `collect()`, then an incremental dump of the dirty runs.
    fn incremental(&mut self, label: &str) -> Result<(), String> {
        let (start, region) = (Instant::now(), self.region);
        let dirty = self.tracker.collect().map_err(ctx("collect"))?;
        let collect_time = start.elapsed();
        let base = region.addr as usize;
        let records = (dirty.runs())
            .map(|r| match r.start.checked_sub(base) {
                Some(off) if off + r.len() <= region.len => Ok((off, r.len())),
                _ => Err(format!("collect reported {r:#x?}, outside the region")),
            })
            .collect::<Result<Vec<_>, String>>()?;
        let words = region.words();
        let fill = &|at, buf: &mut [u8]| copy_words(words, at, buf);
        let dump_time = self.dumps.write(&records, fill)?;
        print_row(label, &dirty, region.len, collect_time, dump_time);
        Ok(())
    }
}

/// Starts the writers, takes the full dump and one incremental per epoch, then stops and joins
/// the writers. Returns the number of stores they made.
fn dump_while_writing(cfg: &Config, job: &mut Job) -> Result<u64, String> {
    let pages = (job.region.len / dirtytrack::page_size()) as f64;
    let per_writer = pages * cfg.dirty_percent / 100.0 / cfg.writers.max(1) as f64;
    let rate = per_writer / cfg.epoch.as_secs_f64();
    let (stop, words) = (AtomicBool::new(false), job.region.words());
    thread::scope(|s| {
        let stop_writers = StopOnDrop(&stop); // also if the code below panics
        let mut handles = Vec::new();
        let mut result = Ok(());
        for i in 0..cfg.writers {
            let (seed, stop) = (0x9E37_79B9_7F4A_7C15u64.wrapping_mul(i as u64 + 1), &stop);
            let name = format!("writer-{i}");
            let spawned = thread::Builder::new().name(name);
            match spawned.spawn_scoped(s, move || writer(words, rate, seed, stop)) {
                Ok(h) => handles.push(h),
                Err(e) => result = Err(format!("spawning writer {i}: {e}")),
            }
        }
        result = result.and_then(|()| job.full_dump(cfg.live));
        let mut next = Instant::now() + cfg.epoch;
        for epoch in 1..=cfg.epochs {
            if result.is_err() {
                break;
            }
            thread::sleep(next.saturating_duration_since(Instant::now()));
            next = Instant::now() + cfg.epoch;
            result = job.incremental(&epoch.to_string());
        }
        drop(stop_writers);
        let mut stores = 0;
        for h in handles {
            stores += h.join().map_err(|_| "a writer panicked".to_string())?;
        }
        result.map(|()| stores)
    })
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Relaxed);
    }
}

/// Runs the whole demo; `Ok` is the final "verified" line, `Err` what failed.
fn run(cfg: &Config) -> Result<String, String> {
    let ps = dirtytrack::page_size();
    // Declared before the tracker, so dropped after it: unregistered before it is unmapped.
    let region = Region::map(cfg.len).map_err(ctx("mmap of the region"))?;
    let tracker = Tracker::builder().mode(cfg.mode).build();
    let tracker = tracker.map_err(ctx("building the tracker"))?;
    let (c, prefault) = (tracker.capabilities(), tracker.prefault());
    let yes = |ok: bool| if ok { "available" } else { "unavailable" };
    let (a, s) = (yes(c.check_async().is_ok()), yes(c.check_sync().is_ok()));
    let (live, kernel) = (["", " (--live)"][cfg.live as usize], &c.kernel_release);
    println!("mode: {:?}{live}", tracker.mode());
    println!("kernel {kernel}: async mode {a}, sync mode {s} (prefault {prefault:?})");

    let start = Instant::now();
    for (i, w) in region.words().iter().enumerate() {
        w.store((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15), Relaxed);
    }
    let filled = dur(start.elapsed());
    let start = Instant::now();
    let id = tracker.register(region.addr, region.len);
    let id = id.map_err(ctx("register"))?;
    let (size, pages, registered) = (mib(region.len), region.len / ps, dur(start.elapsed()));
    println!("region: {size}, {pages} pages of {ps} B");
    println!("filled in {filled}, registered in {registered}");
    let (w, p, e) = (cfg.writers, cfg.dirty_percent, cfg.epoch.as_millis());
    println!("writers: {w}, together dirtying {p}% of the pages per {e} ms epoch");
    let dumps = Dumps::open(cfg.dir.as_ref(), region.len)?;
    println!("dumps: {}\n\n{TABLE}", dumps.dir.display());

    let mut job = Job {
        tracker: &tracker,
        id,
        region: &region,
        dumps,
    };
    let verdict = (|| {
        let stores = dump_while_writing(cfg, &mut job)?;
        job.incremental("final")?;
        println!("\nwriters stopped after {stores} stores; restoring");
        restore_and_verify(&region, &job.dumps)
    })();
    if cfg.keep || verdict.is_err() {
        println!("dumps kept in {}", job.dumps.dir.display());
    } else {
        job.dumps.remove();
    }
    verdict
}

/// Maps fresh memory, applies every dump in order and compares it with `live` page by page.
fn restore_and_verify(live: &Region, dumps: &Dumps) -> Result<String, String> {
    let (ps, start) = (dirtytrack::page_size(), Instant::now());
    let mut restored = Region::map(live.len).map_err(ctx("mmap for the restore"))?;
    for seq in 0..dumps.files.len() {
        dumps.apply(seq, restored.bytes_mut())?;
    }
    let restore_time = dur(start.elapsed());
    // SAFETY: the writers were joined; nothing writes the live region any more.
    let live_bytes = unsafe { live.bytes() };
    let restored = restored.bytes_mut();
    let (mibs, incrementals, pages) = (live.len / MIB, dumps.files.len() - 1, live.len / ps);
    let differs = |p: &usize| live_bytes[p * ps..][..ps] != restored[p * ps..][..ps];
    let bad: Vec<usize> = (0..pages).filter(differs).collect();
    println!("restore took {restore_time}");
    match bad.first() {
        None => Ok(format!(
            "verified: restored {mibs} MiB from 1 full + {incrementals} incremental dumps \
             match the live region byte for byte"
        )),
        Some(first) => Err(format!(
            "{} of {pages} restored pages differ from the live region (first at offset {:#x})",
            bad.len(),
            first * ps
        )),
    }
}
