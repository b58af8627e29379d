//! Remote tracking on the real kernel, against real programs not written for it: python3, and C
//! programs compiled here with `cc`. The oracle: dumps rebuilt into an `Image` must equal
//! `/proc/PID/mem` byte for byte with the target stopped.

mod common;

use dirtytrack::remote::{Change, Collection, Image, RemoteError, RemoteTracker};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A child process killed on drop.
struct Target {
    child: Child,
    /// The line the target printed when ready.
    ready: String,
}

impl Target {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    /// Spawns `cmd` and waits for it to print a line containing `ready`.
    fn spawn(mut cmd: Command) -> Target {
        cmd.stdin(Stdio::null());
        Self::spawn_with_stdin(cmd)
    }

    /// [`Target::spawn`], leaving stdin as `cmd` has it.
    fn spawn_with_stdin(mut cmd: Command) -> Target {
        cmd.stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn target");
        let out = child.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        let ready = loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("ready") => break l,
                Some(Ok(_)) => continue,
                other => panic!("target did not get ready: {other:?}"),
            }
        };
        // Keep draining stdout so the target never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Target { child, ready }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python_available() -> bool {
    Command::new("python3")
        .arg("-c")
        .arg("pass")
        .status()
        .is_ok_and(|s| s.success())
}

/// python3 mutating the first 4 MiB of a 64 MiB bytearray, a dict and a list in a loop, and two
/// threads writing their own buffers.
const PYTHON_LOOP: &str = r#"
import random, sys, threading, time
def worker(n):
    mine = bytearray(8 << 20)
    while True:
        for off in range(0, len(mine), 4096 * 7):
            mine[off] = (mine[off] + n) & 255
        time.sleep(0.002)
for n in range(2):
    threading.Thread(target=worker, args=(n + 1,), daemon=True).start()
buf = bytearray(64 << 20)
d = {}
l = []
i = 0
print("ready", flush=True)
while True:
    i += 1
    off = random.randrange(0, 4 << 20)
    buf[off:off + 64] = random.randbytes(64)
    d[i % 5000] = str(i) * (i % 7)
    if i % 100 == 0:
        l.append(bytes(1000))
    if len(l) > 2000:
        l.clear()
    if i % 1000 == 0:
        time.sleep(0.001)
"#;

fn python_target() -> Option<Target> {
    if !python_available() {
        common::skip("python3 is not installed");
        return None;
    }
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(PYTHON_LOOP);
    Some(Target::spawn(cmd))
}

/// The error attaching to `pid` gives (the test expects a refusal); `None` (after a loud skip)
/// when the kernel cannot track another process at all, which attach checks first.
fn refusal_or_skip(pid: i32) -> Option<RemoteError> {
    match RemoteTracker::attach(pid) {
        Ok(_) => panic!("attaching to {pid} succeeded; a refusal was expected"),
        Err(e @ RemoteError::KernelTooOld { .. }) => {
            common::skip(&e.to_string());
            None
        }
        Err(e) => Some(e),
    }
}

fn attach_or_skip(pid: i32) -> Option<RemoteTracker> {
    match RemoteTracker::attach(pid) {
        Ok(t) => Some(t),
        Err(e @ RemoteError::KernelTooOld { .. }) => {
            common::skip(&e.to_string());
            None
        }
        Err(e) => panic!("attach to {pid} failed: {e}"),
    }
}

/// Full dump, `increments` incremental ones while the target runs, a final one with the target
/// stopped, then the comparison. Returns the pages copied per dump.
fn predump_and_verify(t: &mut RemoteTracker, increments: usize, pause: Duration) -> Vec<usize> {
    let mut image = Image::new();
    let mut copied = Vec::new();
    let c = t.collect().expect("first collect");
    copied.push(image.apply(t, &c).unwrap());
    for _ in 0..increments {
        std::thread::sleep(pause);
        let c = t.collect().expect("collect");
        copied.push(image.apply(t, &c).unwrap());
    }
    copied.push(final_dump_and_verify(t, &mut image));
    copied
}

/// The last dump, with the target stopped, then the byte-for-byte comparison of the image with
/// its memory (the target runs again after). Returns the pages the last dump copied.
fn final_dump_and_verify(t: &mut RemoteTracker, image: &mut Image) -> usize {
    t.stop_target().unwrap();
    let last = t.collect().expect("final collect");
    let copied = image.apply(t, &last).unwrap();
    let mismatches = image.verify(t, &last).unwrap();
    t.continue_target().unwrap();
    assert!(
        mismatches.is_empty(),
        "{} page(s) differ, first: {:?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(5)]
    );
    copied
}

fn tracked_total(c: &Collection) -> usize {
    c.mappings.iter().map(|m| m.mapping.len()).sum()
}

#[test]
fn python_predump_matches_memory() {
    let Some(target) = python_target() else {
        return;
    };
    let Some(mut t) = attach_or_skip(target.pid()) else {
        return;
    };
    assert!(!t.resumed());
    let copied = predump_and_verify(&mut t, 4, Duration::from_millis(200));
    eprintln!("python3: pages per dump {copied:?}");
    // The increments are much smaller than the full dump (python writes a few MiB per 200 ms).
    assert!(copied[1] < copied[0] / 2, "{copied:?}");
    t.stop_tracking().unwrap();
}

#[test]
fn first_collect_reports_everything_then_only_changes() {
    let Some(target) = python_target() else {
        return;
    };
    let Some(mut t) = attach_or_skip(target.pid()) else {
        return;
    };
    let c = t.collect().unwrap();
    // Every mapping reported whole: all of it, except the pages of private anonymous memory
    // that were never populated (they read as zero).
    for m in &c.mappings {
        let whole = std::iter::once(m.mapping.start..m.mapping.end).collect::<Vec<_>>();
        assert_eq!(m.whole(), whole, "{}", m.mapping);
        if !m.mapping.is_private_anonymous() {
            assert_eq!(m.dirty_bytes(), m.mapping.len(), "{}", m.mapping);
        }
    }
    // The 64 MiB bytearray is populated (bytearray(n) zero-fills it).
    assert!(c.dirty_bytes() >= 64 << 20);
    assert!(tracked_total(&c) >= 64 << 20);
    target_quiet_check(&mut t);
}

/// With the target stopped, two collects in a row: the second reports nothing.
fn target_quiet_check(t: &mut RemoteTracker) {
    t.stop_target().unwrap();
    let _ = t.collect().unwrap();
    let c = t.collect().unwrap();
    t.continue_target().unwrap();
    let dirty: Vec<_> = c
        .mappings
        .iter()
        .filter(|m| !matches!(m.change, Change::Untracked { .. }) && m.dirty_bytes() > 0)
        .map(|m| (m.mapping.to_string(), m.dirty.clone(), m.change.clone()))
        .collect();
    assert!(dirty.is_empty(), "a stopped target wrote: {dirty:?}");
}

/// Compiles `tests/remote/NAME.c` with `cc` into a temporary directory; `None` (after a skip)
/// without a C compiler.
fn compile(name: &str) -> Option<PathBuf> {
    // Prebuilt (the kernel matrix's guests have no compiler; scripts/kernel-matrix builds them).
    if let Some(dir) = std::env::var_os("DIRTYTRACK_REMOTE_TARGETS") {
        let exe = Path::new(&dir).join(name);
        assert!(
            exe.is_file(),
            "DIRTYTRACK_REMOTE_TARGETS is set but has no {}",
            exe.display()
        );
        return Some(exe);
    }
    // Tests run in parallel: compile each program once (a binary rewritten while another test
    // runs it would fail to start, or crash).
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, p)) = built.iter().find(|(n, _)| n == name) {
        return Some(p.clone());
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/remote/{name}.c"));
    let dir = std::env::temp_dir().join(format!("dirtytrack-remote-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(name);
    match Command::new("cc")
        .arg("-O2")
        .arg("-pthread")
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
    {
        Ok(s) if s.success() => {
            built.push((name.to_string(), out.clone()));
            Some(out)
        }
        Ok(s) => panic!("cc {} failed: {s}", src.display()),
        Err(e) => {
            common::skip(&format!("no C compiler (cc): {e}"));
            None
        }
    }
}

/// The C target `name` with a pipe for its stdin (`target.child.stdin`), started and ready; its
/// output lines after "ready".
fn stdin_target(
    name: &str,
) -> Option<(Target, std::io::Lines<BufReader<std::process::ChildStdout>>)> {
    let exe = compile(name)?;
    let mut cmd = Command::new(&exe);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.next().unwrap().unwrap();
    assert!(ready.contains("ready"), "{ready}");
    Some((Target { child, ready }, lines))
}

fn state_of(pid: i32) -> (char, String) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let state = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .trim_start()
        .chars()
        .next()
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let tracer = status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .unwrap()
        .trim()
        .to_string();
    (state, tracer)
}

/// The target is running and nobody traces it (the injector left nothing behind).
fn assert_released(pid: i32) {
    let (state, tracer) = state_of(pid);
    assert_eq!(tracer, "0", "process {pid} is still traced");
    assert!(
        !matches!(state, 't' | 'T' | 'Z' | 'X'),
        "process {pid} is in state {state}"
    );
}

#[test]
fn churning_c_program_predump_matches_memory() {
    let Some(exe) = compile("churn") else { return };
    let target = Target::spawn(Command::new(&exe));
    let Some(mut t) = attach_or_skip(target.pid()) else {
        return;
    };
    assert_released(target.pid());
    let mut image = Image::new();
    let (mut new, mut lost, mut gone, mut untracked, mut children) = (0, 0, 0, 0, 0);
    let mut copied = Vec::new();
    for i in 0..30 {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(15));
        }
        let c = t.collect().expect("collect");
        if i > 0 {
            let n = c.change_counts();
            (new, lost, untracked) = (new + n.new, lost + n.lost, untracked + n.untracked);
            gone += c.gone.len();
        }
        children += c.children.len();
        copied.push(image.apply(&t, &c).unwrap());
    }
    eprintln!("churn: pages per dump {copied:?}; new {new}, lost {lost}, gone {gone}, untracked {untracked}, children seen {children}");
    final_dump_and_verify(&mut t, &mut image);
    // The address space really changed under the tracker, and each change was reported.
    assert!(
        new > 0 && lost > 0 && gone > 0 && untracked > 0,
        "new {new} lost {lost} gone {gone} untracked {untracked}"
    );
}

/// Registering a mapping must not split it: the target may grow it (mremap) between the
/// tracker's read of `/proc/PID/maps` and its `UFFDIO_REGISTER`, and a split mapping can no longer
/// be moved with one mremap (EFAULT in the target). The target moves one mapping to a fresh place
/// (so the tracker registers it again) and grows it in place, round after round, as fast as it
/// can; the tracker collects as fast as it can. The target exits with status 2 or 3 if a move or
/// grow fails, and prints its maps near the mapping and its last calls.
///
/// Two races are caught here. Before the registration stop, a mapping grown between the scan
/// and the registration was split: it failed within ~0.5 s every time. With the stop, a mapping
/// whose old parts were scanned could be replaced, before the stop, by another of the same
/// bounds (this target alternates between two places, with lengths repeating every four
/// rounds): registering only its new parts split it. That failed in 7 of 20 runs of 3 s under
/// the whole suite's load, 0 of 20 with the recheck in the stop. `DIRTYTRACK_RESIZE_SECS` sets
/// the length (default 2 s).
#[test]
fn registering_never_splits_a_mapping_the_target_resizes() {
    let Some(exe) = compile("resize") else { return };
    let mut target = Target::spawn(Command::new(&exe));
    let Some(mut t) = attach_or_skip(target.pid()) else {
        return;
    };
    let started = std::time::Instant::now();
    let (mut collects, mut registered, mut deferred, mut replaced) = (0, 0, 0, 0);
    let secs = std::env::var("DIRTYTRACK_RESIZE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.0);
    while started.elapsed() < Duration::from_secs_f64(secs) {
        match t.collect() {
            Ok(c) => {
                collects += 1;
                for m in &c.mappings {
                    match m.change {
                        Change::Lost { ref reason } if reason.contains("registration stop") => {
                            replaced += 1
                        }
                        Change::New { .. } | Change::Lost { .. } => registered += 1,
                        Change::Untracked { .. } if !m.mapping.is_shared() => deferred += 1,
                        _ => {}
                    }
                }
            }
            Err(e) => {
                // An exiting target may not be reapable yet: give it a second.
                let status = (0..100).find_map(|_| {
                    let s = target.child.try_wait().ok().flatten();
                    if s.is_none() {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    s
                });
                panic!("collect {collects} failed: {e}; the target: {status:?} (exit status 2 or 3: its mremap failed, see its message above)");
            }
        }
    }
    let status = target.child.try_wait().expect("try_wait");
    assert!(
        status.is_none(),
        "the target exited ({status:?}) after {collects} collects: a registration split its mapping"
    );
    eprintln!("resize: {collects} collects, {registered} mappings registered while the target resized them, {deferred} deferred (changed between the scan and the stop), {replaced} replaced between the scan and the stop");
    assert!(
        registered > 0 && registered + deferred > 10,
        "{registered} registrations and {deferred} deferred ones in {collects} collects: the race was not exercised"
    );
}

/// `tests/remote/replace.c`, attached, dumped once, its mapping grown (so the next collect has
/// a part to register), with `ask` to send it a command and read its answer.
struct GrownTarget {
    target: Target,
    t: RemoteTracker,
    image: Image,
    /// The mapping's start, and L (it is 2L long now).
    b: usize,
    l: usize,
    ask: Ask,
}

type Ask = std::sync::Arc<dyn Fn(&str) -> String + Send + Sync>;

fn grown_target() -> Option<GrownTarget> {
    let (mut target, lines) = stdin_target("replace")?;
    let mut words = target.ready.split_whitespace().skip(1);
    let b = usize::from_str_radix(words.next().unwrap(), 16).unwrap();
    let l: usize = words.next().unwrap().parse().unwrap();
    let mut t = attach_or_skip(target.pid())?;
    let io = std::sync::Mutex::new((target.child.stdin.take().unwrap(), lines));
    let ask: Ask = std::sync::Arc::new(move |cmd: &str| -> String {
        use std::io::Write;
        let mut io = io.lock().unwrap();
        writeln!(io.0, "{cmd}").unwrap();
        io.0.flush().unwrap();
        io.1.next().unwrap().unwrap()
    });
    let mut image = Image::new();
    let c = t.collect().unwrap();
    image.apply(&t, &c).unwrap();
    assert_eq!(ask("grow"), "ok");
    Some(GrownTarget {
        target,
        t,
        image,
        b,
        l,
        ask,
    })
}

impl GrownTarget {
    /// A collect during which the target runs `cmd` between the scan and the registration stop
    /// (through the test hook).
    fn collect_with_between(&mut self, cmd: &'static str) -> Collection {
        let sent = std::sync::Arc::new(AtomicBool::new(false));
        let (flag, ask) = (sent.clone(), self.ask.clone());
        self.t.set_before_registration_stop(move || {
            if !flag.swap(true, Ordering::SeqCst) {
                assert_eq!(ask(cmd), "ok");
            }
        });
        let c = self.t.collect().unwrap();
        assert!(
            sent.load(Ordering::SeqCst),
            "the collect registered nothing: the grown part was not seen as new"
        );
        c
    }

    /// The report of the mapping at `b` in `c`.
    fn report<'c>(&self, c: &'c Collection) -> &'c dirtytrack::remote::MappingReport {
        c.mappings
            .iter()
            .find(|m| m.mapping.start == self.b)
            .unwrap_or_else(|| {
                panic!(
                    "no report for the mapping at {:#x}: {:?}",
                    self.b, c.mappings
                )
            })
    }

    /// Asserts that the target's mapping at `b` is one VMA `len` long, registered as a whole
    /// ("uw" in its smaps `VmFlags`).
    fn assert_one_registered_vma(&self, len: usize) {
        use dirtytrack::sys::proc;
        let (pid, b) = (self.target.pid(), self.b);
        let maps = proc::maps(pid).unwrap();
        let vma = maps
            .iter()
            .find(|e| e.start <= b && b < e.end)
            .unwrap_or_else(|| panic!("{b:#x} is not mapped"));
        assert_eq!(
            (vma.start, vma.end),
            (b, b + len),
            "the mapping was split (or has another length)"
        );
        let flags = proc::vm_flags(pid).unwrap();
        let (_, flags) = flags.iter().find(|(s, _)| *s == b).unwrap();
        assert!(flags.iter().any(|f| f == "uw"), "not registered: {flags:?}");
    }
}

/// The race behind the resize test's second failure, on purpose: a mapping with a tracked part
/// and a new part (grown) is scanned, then replaced by another mapping of the same bounds before
/// the registration stop (the test hook runs in that window). The collect must report it lost
/// and whole (its old part's scan was of the mapping that is gone: the replacement's empty
/// pages held data before), register all of it (registering only the new part would split it:
/// the target's next `mremap` of it fails with `EFAULT`), and the dumps must equal memory.
#[test]
fn a_mapping_replaced_between_the_scan_and_the_stop_is_reported_whole_and_not_split() {
    let Some(mut g) = grown_target() else {
        return;
    };
    let c = g.collect_with_between("replace");
    let (b, l) = (g.b, g.l);
    let report = g.report(&c);
    assert_eq!(report.mapping.end, b + 2 * l, "{report:?}");
    assert!(
        matches!(&report.change, Change::Lost { reason } if reason.contains("replaced")),
        "the replacement was not noticed: {report:?}"
    );
    assert_eq!(
        report.dirty_bytes(),
        2 * l,
        "not reported whole: {report:?}"
    );
    assert!(c.gone.iter().all(|m| m.start != b), "{:?}", c.gone);
    g.image.apply(&g.t, &c).unwrap();
    g.assert_one_registered_vma(2 * l);
    assert_eq!(
        (g.ask)("move"),
        "ok",
        "the target could not mremap its mapping"
    );
    final_dump_and_verify(&mut g.t, &mut g.image);
}

/// A mapping that changes bounds between the scan and the registration stop (grown again) is
/// not registered in that stop: it is reported whole, and it is not "gone" (it is still
/// there); the next collect registers it whole, unsplit, and the dumps equal memory.
#[test]
fn a_mapping_grown_between_the_scan_and_the_stop_is_reported_whole_not_gone() {
    let Some(mut g) = grown_target() else {
        return;
    };
    let c = g.collect_with_between("move");
    let (b, l) = (g.b, g.l);
    let report = g.report(&c);
    assert!(
        matches!(&report.change, Change::Untracked { reason } if reason.contains("changed while being registered")),
        "{report:?}"
    );
    assert_eq!(
        report.dirty_bytes(),
        report.mapping.len(),
        "not reported whole: {report:?}"
    );
    assert!(
        c.gone.iter().all(|m| m.start != b),
        "a mapping still there was listed as gone: {:?}",
        c.gone
    );
    g.image.apply(&g.t, &c).unwrap();
    // The next collect registers it, grown to 3L in place, as one VMA.
    let c = g.t.collect().unwrap();
    let report = g.report(&c);
    assert_eq!(report.mapping.end, b + 3 * l, "{report:?}");
    assert!(matches!(report.change, Change::New { .. }), "{report:?}");
    g.image.apply(&g.t, &c).unwrap();
    g.assert_one_registered_vma(3 * l);
    final_dump_and_verify(&mut g.t, &mut g.image);
}

/// A mapping made inaccessible (`PROT_NONE`, as a JIT or a garbage collector does) keeps its
/// contents, and the dumps must hold them: the page written just before is dumped with its
/// bytes, and the pages dumped while readable still equal memory. Kernels built with
/// `CONFIG_PROC_MEM_FORCE_PTRACE` (Debian's since 6.12, the kernel matrix's guests) read
/// through the protection only for the target's ptracer: a plain read of `/proc/PID/mem` fails
/// there, and the dump had recorded the written page as unreadable (and the verify had found
/// every page "readable when dumped, unreadable now").
#[test]
fn an_inaccessible_mapping_is_dumped_with_its_contents() {
    let Some(mut g) = grown_target() else {
        return;
    };
    assert_eq!((g.ask)("hide"), "ok");
    let c = g.t.collect().unwrap();
    let written = g.b + 2 * dirtytrack::page_size();
    assert!(
        g.report(&c).dirty.iter().any(|r| r.contains(&written)),
        "the page written before the mprotect is not reported: {:?}",
        g.report(&c)
    );
    g.image.apply(&g.t, &c).unwrap();
    assert_eq!(
        g.image.page(written),
        Some(Some(&vec![0xdd_u8; dirtytrack::page_size()][..])),
        "the written page of the PROT_NONE mapping is not in the image with its contents"
    );
    final_dump_and_verify(&mut g.t, &mut g.image);
}

/// A target with many threads, some of them created and exiting all the time while collects
/// register their stacks and mappings (every thread is stopped for that: the stop must reach a
/// fixed point while threads appear and exit, and let every one go). Dumps match memory, and
/// the target lives on.
#[test]
fn threads_appearing_and_exiting_during_collects() {
    let Some(exe) = compile("threads") else {
        return;
    };
    let mut target = Target::spawn(Command::new(&exe));
    let Some(mut t) = attach_or_skip(target.pid()) else {
        return;
    };
    let copied = predump_and_verify(&mut t, 40, Duration::from_millis(10));
    eprintln!("threads: pages per dump {copied:?}");
    assert!(
        target.child.try_wait().expect("try_wait").is_none(),
        "the target died"
    );
    assert_released(target.pid());
}

/// A target stopped by job control (`SIGSTOP` from someone else) stays stopped through attach
/// and a collect that registers every mapping (the registration stops every thread under
/// ptrace and lets it go again), and runs again on `SIGCONT`.
#[test]
fn a_stopped_target_stays_stopped_through_attach_and_registration() {
    let Some(exe) = compile("resize") else { return };
    let target = Target::spawn(Command::new(&exe));
    let pid = target.pid();
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while state_of(pid).0 != 'T' {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGSTOP did not stop {pid}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let Some(mut t) = attach_or_skip(pid) else {
        return;
    };
    let c = t.collect().expect("collect");
    assert!(
        c.mappings
            .iter()
            .any(|m| matches!(m.change, Change::New { .. })),
        "the first collect registers the mappings"
    );
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        state_of(pid),
        ('T', "0".to_string()),
        "still stopped, not traced"
    );
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while state_of(pid).0 == 'T' {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGCONT did not resume {pid}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_released(pid);
    // It runs and moves its mapping: the next collects see it.
    std::thread::sleep(Duration::from_millis(50));
    let c = t.collect().expect("collect after SIGCONT");
    assert!(c.dirty_bytes() > 0);
}

#[test]
fn target_exiting_mid_dump_is_reported() {
    let Some(exe) = compile("churn") else { return };
    let mut cmd = Command::new(&exe);
    // Its lifetime in ms: long enough to be attached to on a slow machine (TCG guests, the
    // sanitizer runs); the collects then run until it exits.
    let scale: u64 = std::env::var("DIRTYTRACK_TIMEOUT_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    cmd.arg((2000 * scale.max(1)).to_string());
    let target = Target::spawn(cmd);
    let Some(mut t) = attach_or_skip(target.pid()) else {
        return;
    };
    let mut image = Image::new();
    let mut ok = 0;
    let err = loop {
        match t.collect() {
            Ok(c) => match image.apply(&t, &c) {
                Ok(_) => ok += 1,
                Err(e) => break e,
            },
            Err(e) => break e,
        }
        assert!(ok < 100_000, "the target never exited");
    };
    assert!(
        matches!(err, RemoteError::TargetExited { .. }),
        "expected TargetExited after {ok} collects, got {err:?}"
    );
    assert!(t.has_exited());
    assert!(matches!(t.collect(), Err(RemoteError::TargetExited { .. })));
}

#[test]
fn no_such_process() {
    // Above every pid_max (at most 2^22).
    let pid = i32::MAX - 1;
    let e = RemoteTracker::attach(pid).unwrap_err();
    assert!(matches!(e, RemoteError::NoSuchProcess { .. }), "{e:?}");
    assert!(e.to_string().contains("no process"), "{e}");
    assert!(matches!(
        RemoteTracker::attach(0),
        Err(RemoteError::NoSuchProcess { .. })
    ));
    assert!(matches!(
        RemoteTracker::attach(-5),
        Err(RemoteError::NoSuchProcess { .. })
    ));
}

#[test]
fn already_traced_target_is_refused() {
    let Some(exe) = compile("traced") else { return };
    let target = Target::spawn(Command::new(&exe));
    let child: i32 = target
        .ready
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let Some(e) = refusal_or_skip(child) else {
        return;
    };
    match &e {
        RemoteError::PtraceRefused { reason, .. } => {
            assert!(reason.contains("already traced by process"), "{e}")
        }
        other => panic!("expected PtraceRefused, got {other:?}"),
    }
    let _ = Command::new("kill")
        .arg("-9")
        .arg(child.to_string())
        .status();
}

#[test]
fn seccomp_denial_is_reported_and_target_left_running() {
    let Some(exe) = compile("seccomp") else {
        return;
    };
    let target = Target::spawn(Command::new(&exe));
    let Some(e) = refusal_or_skip(target.pid()) else {
        return;
    };
    assert!(
        matches!(e, RemoteError::SeccompDenied { filters: 1, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("seccomp"), "{e}");
    std::thread::sleep(Duration::from_millis(20));
    assert_released(target.pid());
}

#[test]
fn kernel_without_wp_async_is_refused_before_touching_the_target() {
    let Some(target) = python_target() else {
        return;
    };
    let e = RemoteTracker::builder(target.pid())
        .hide_features(dirtytrack::features::WP_ASYNC)
        .attach()
        .unwrap_err();
    assert!(matches!(e, RemoteError::KernelTooOld { .. }), "{e:?}");
    assert!(e.to_string().contains("6.7"), "{e}");
    let fds = std::fs::read_dir(format!("/proc/{}/fd", target.pid())).unwrap();
    for f in fds {
        let link = std::fs::read_link(f.unwrap().path()).unwrap_or_default();
        assert_ne!(link.to_string_lossy(), "anon_inode:[userfaultfd]");
    }
}

/// A tracker without privilege (uid 65534, no capabilities) attaching to a root process: refused,
/// with the uids named. The attach runs in this test binary started again as uid 65534.
#[test]
fn unprivileged_tracker_is_refused() {
    // In the child: this test binary started again as uid 65534 for this one test (a fresh
    // process rather than a fork of the multi-threaded harness).
    const CHILD: &str = "DIRTYTRACK_TEST_CHILD_UNPRIVILEGED_TARGET";
    if let Some(pid) = std::env::var(CHILD)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    {
        let code = match RemoteTracker::attach(pid) {
            Err(RemoteError::PtraceRefused { reason, .. })
                if reason.contains("uid 0") && reason.contains("uid 65534") =>
            {
                0
            }
            // The kernel is checked before permissions (see the test on it).
            Err(e @ RemoteError::KernelTooOld { .. }) => {
                eprintln!("{e}");
                6
            }
            Err(e @ RemoteError::PtraceRefused { .. }) => {
                eprintln!("refused, but the reason lacks the uids: {e}");
                3
            }
            Err(e) => {
                eprintln!("another error: {e:?}");
                4
            }
            Ok(_) => 5,
        };
        std::process::exit(code);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        common::skip("needs root to run a process as uid 65534");
        return;
    }
    let Some(exe) = compile("resize") else { return };
    let target = Target::spawn(Command::new(&exe));
    let pid = target.pid();
    use std::os::unix::process::CommandExt;
    let out = common::this_test_again("unprivileged_tracker_is_refused")
        .env(CHILD, pid.to_string())
        .uid(65534)
        .gid(65534)
        .output()
        .expect("start the test binary again as uid 65534");
    if out.status.code() == Some(6) {
        common::skip(String::from_utf8_lossy(&out.stderr).trim());
        return;
    }
    assert_eq!(
        out.status.code(),
        Some(0),
        "3: refusal without the uids, 4: another error, 5: attached; child stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_released(pid);
}

#[test]
fn reattach_resumes_the_chain_and_stop_tracking_removes_it() {
    let Some(target) = python_target() else {
        return;
    };
    let pid = target.pid();
    let Some(mut t) = attach_or_skip(pid) else {
        return;
    };
    let mut image = Image::new();
    let c = t.collect().unwrap();
    let full = image.apply(&t, &c).unwrap();
    let fd = t.target_fd();
    assert!(fd >= dirtytrack::remote::MARK_FD_BASE);
    t.detach();
    assert_released(pid);
    std::thread::sleep(Duration::from_millis(200));

    // A second tracker (as in a second run of a pre-dump tool) finds the same userfaultfd and
    // reports only what changed since the first tracker's collect.
    let mut t = RemoteTracker::attach(pid).unwrap();
    assert!(t.resumed());
    assert_eq!(t.target_fd(), fd);
    let c = t.collect().unwrap();
    let inc = image.apply(&t, &c).unwrap();
    assert!(inc < full / 2, "increment {inc} pages vs full {full}");
    final_dump_and_verify(&mut t, &mut image);

    t.stop_tracking().unwrap();
    assert_released(pid);
    let has_uffd = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .any(|f| {
            std::fs::read_link(f.unwrap().path())
                .is_ok_and(|l| l.to_string_lossy() == "anon_inode:[userfaultfd]")
        });
    assert!(!has_uffd, "the userfaultfd is still in the target");
    let t = RemoteTracker::attach(pid).unwrap();
    assert!(!t.resumed());
    t.stop_tracking().unwrap();
}

/// Threads blocked in system calls (a pipe `read`, `nanosleep`) while the injector borrows one
/// and while a collect stops them all: the interrupted calls are restarted and complete normally
/// (a C target, which does not retry on `EINTR` itself, so a call cut short shows).
#[test]
fn blocked_system_calls_resume_after_attach() {
    let Some((mut target, mut lines)) = stdin_target("blocked") else {
        return;
    };
    std::thread::sleep(Duration::from_millis(100));
    let pid = target.pid();
    // The injection stops the main thread (in read); the collect registers every mapping, which
    // stops both threads (the other one in nanosleep).
    let Some(mut t) = attach_or_skip(pid) else {
        return;
    };
    assert_released(pid);
    t.collect().unwrap();
    assert_released(pid);
    t.stop_tracking().unwrap();
    use std::io::Write;
    target
        .child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello\n")
        .unwrap();
    let mut out: Vec<String> = lines.by_ref().take(2).map(|l| l.unwrap()).collect();
    out.sort();
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0], "got hello", "the read did not resume: {out:?}");
    let slept: f64 = out[1]
        .strip_prefix("slept ")
        .unwrap_or_else(|| panic!("the sleep did not resume: {out:?}"))
        .parse()
        .unwrap();
    assert!(slept >= 0.599, "the sleep was cut short: {slept}");
}

/// exec replaces the address space and closes the (close-on-exec) userfaultfd: never silent.
#[test]
fn exec_is_reported_as_tracking_lost() {
    if !python_available() {
        common::skip("python3 is not installed");
        return;
    }
    let script = r#"
import os, sys, time
print("ready", flush=True)
sys.stdin.readline()
os.execv(sys.executable, [sys.executable, "-c", "import time\nprint('ready', flush=True)\ntime.sleep(60)"])
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).stdin(Stdio::piped());
    let mut target = Target::spawn_with_stdin(cmd);
    let Some(mut t) = attach_or_skip(target.pid()) else {
        return;
    };
    t.collect().unwrap();
    use std::io::Write;
    target
        .child
        .stdin
        .take()
        .unwrap()
        .write_all(b"go\n")
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let err = loop {
        match t.collect() {
            Ok(_) => assert!(std::time::Instant::now() < deadline, "exec never noticed"),
            Err(e) => break e,
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(matches!(err, RemoteError::TrackingLost { .. }), "{err:?}");
    assert!(err.to_string().contains("full dump"), "{err}");
}

/// Attaching to processes that exit at about the same time: each attach succeeds or says the
/// process is gone; the collects after a successful attach end with `TargetExited`; nothing
/// hangs or reports anything else.
#[test]
fn attach_racing_exit() {
    let Some(exe) = compile("churn") else { return };
    let (mut at_attach, mut at_collect) = (0, 0);
    for i in 0..30 {
        let target = Target {
            child: Command::new(&exe)
                .arg(format!("{}", 1 + 2 * (i % 10)))
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
            ready: String::new(),
        };
        let pid = target.pid();
        std::thread::sleep(Duration::from_millis(i % 15));
        match RemoteTracker::attach(pid) {
            Ok(mut t) => {
                let mut n = 0;
                let e = loop {
                    match t.collect() {
                        Ok(_) => n += 1,
                        Err(e) => break e,
                    }
                    assert!(n < 1_000_000, "process {pid} never exited");
                };
                assert!(matches!(e, RemoteError::TargetExited { .. }), "{e:?}");
                at_collect += 1;
            }
            Err(RemoteError::TargetExited { .. } | RemoteError::NoSuchProcess { .. }) => {
                at_attach += 1
            }
            Err(RemoteError::KernelTooOld { .. }) => {
                common::skip("kernel too old");
                return;
            }
            Err(e) => panic!("attach to exiting process {pid}: {e:?}"),
        }
        drop(target);
    }
    eprintln!("attach racing exit: gone at attach {at_attach}, during collects {at_collect}");
}

/// Memory the target registered with a userfaultfd of its own cannot be registered again
/// (`EBUSY`): it is reported whole at every collect, and the dumps stay exact.
#[test]
fn memory_owned_by_the_targets_own_userfaultfd_is_reported_whole() {
    let Some(exe) = compile("own_uffd") else {
        return;
    };
    let target = Target::spawn(Command::new(&exe));
    let addr = usize::from_str_radix(
        target
            .ready
            .split_whitespace()
            .nth(1)
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    let Some(mut t) = attach_or_skip(target.pid()) else {
        return;
    };
    let mut image = Image::new();
    for _ in 0..3 {
        let c = t.collect().unwrap();
        let m = c
            .mappings
            .iter()
            .find(|m| m.mapping.start <= addr && addr < m.mapping.end)
            .expect("the mapping is reported");
        match &m.change {
            Change::Untracked { reason } => {
                assert!(reason.contains("another userfaultfd"), "{reason}")
            }
            other => panic!("expected Untracked, got {other:?}"),
        }
        assert_eq!(m.dirty_bytes(), m.mapping.len());
        image.apply(&t, &c).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    final_dump_and_verify(&mut t, &mut image);
    // Our userfaultfd is not the target's.
    assert!(t.target_fd() >= dirtytrack::remote::MARK_FD_BASE);
}

/// Signals arriving while the injector or a collect holds threads are neither lost nor delivered
/// early: a C target counting SIGUSR1 keeps counting through attach, collect and stop_tracking,
/// and stays healthy.
#[test]
fn signals_during_injection_are_kept() {
    let Some((mut target, mut lines)) = stdin_target("signals") else {
        return;
    };
    let pid = target.pid();
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let sent = std::sync::Arc::new(AtomicU64::new(0));
    // A signal every 50 µs (times DIRTYTRACK_TIMEOUT_SCALE on slow, emulated machines, where a
    // ptrace round trip takes longer than that and the injection would never get a turn).
    let every = Duration::from_micros(
        50 * std::env::var("DIRTYTRACK_TIMEOUT_SCALE")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(1)
            .max(1),
    );
    let sender = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: kill(2) has no memory-safety preconditions.
                if unsafe { libc::kill(pid, libc::SIGUSR1) } == 0 {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(every);
            }
        })
    };
    // Signals flow before, during and after every attach.
    while sent.load(Ordering::Relaxed) < 5 {
        std::thread::sleep(Duration::from_millis(1));
    }
    for _ in 0..5 {
        let Some(mut t) = attach_or_skip(pid) else {
            return;
        };
        t.collect().unwrap();
        t.stop_tracking().unwrap();
        assert_released(pid);
    }
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let sent = sent.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(100));
    use std::io::Write;
    target.child.stdin.take().unwrap().write_all(b"\n").unwrap();
    let line = lines.next().unwrap().unwrap();
    let got: u64 = line.strip_prefix("count ").unwrap().parse().unwrap();
    eprintln!("SIGUSR1: {sent} sent, {got} handled");
    // Standard signals coalesce while pending, so fewer may be handled than sent; but some must
    // have been, and the process must have survived to print this.
    assert!(sent > 0 && got > 0, "sent {sent}, handled {got}");
}

/// The tracker is killed (`SIGKILL`, which no handler can defer) just before each of its ptrace
/// requests in turn, through attach (the injected `userfaultfd`, `fcntl` and `close`), a collect
/// that registers every mapping (every thread stopped), `stop_target`, a collect with the target
/// stopped, `continue_target` and `stop_tracking` (the injected `close`). After each kill the
/// target must be running, untraced, with its signal mask as it was, its computations right
/// (victim.c checks every result: registers or vector state left wrong show) and its signal
/// handler working. A later tracker then finds the leftovers of all those runs and closes them:
/// no userfaultfd stays in the target.
#[test]
fn killing_the_tracker_at_any_ptrace_step_leaves_the_target_unharmed() {
    if cfg!(target_arch = "aarch64") {
        // Known gap (issue #29, open): the aarch64 injector still runs the call at a plain
        // `svc` and restores the registers itself, so a tracker killed mid-injection can leave
        // the thread with wrong registers. Skipped loudly, and failing unless skips are allowed.
        common::skip("aarch64 injection is not yet safe against the tracker's death (see src/remote/inject.rs)");
        return;
    }
    const CHILD: &str = "DIRTYTRACK_TEST_CHILD_KILL_AT";
    if let Some((pid, n)) = std::env::var(CHILD).ok().and_then(|v| {
        let (p, n) = v.split_once(':')?;
        Some((p.parse::<i32>().ok()?, n.parse::<usize>().ok()?))
    }) {
        use dirtytrack::sys::ptrace::kill_hook;
        kill_hook::set(n);
        let run = || -> Result<(), RemoteError> {
            let mut t = RemoteTracker::attach(pid)?;
            for note in t.notes() {
                println!("note: {note}");
            }
            t.collect()?;
            t.stop_target()?;
            t.collect()?;
            t.continue_target()?;
            t.stop_tracking()
        };
        let code = match run() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("tracker error: {e}");
                7
            }
        };
        println!("steps {}", kill_hook::count());
        std::process::exit(code);
    }
    let Some((mut target, mut lines)) = stdin_target("victim") else {
        return;
    };
    let pid = target.pid();
    let mut stdin = target.child.stdin.take().unwrap();
    let mut ping = move || -> (u64, u64, u64) {
        use std::io::Write;
        stdin.write_all(b"ping\n").expect("the target is gone");
        let line = lines
            .next()
            .expect("the target is gone")
            .expect("read the target's answer");
        let v: Vec<u64> = line
            .strip_prefix("pong ")
            .unwrap_or_else(|| panic!("unexpected answer: {line}"))
            .split(' ')
            .map(|x| x.parse().unwrap())
            .collect();
        (v[0], v[1], v[2])
    };
    let tracker = |n: usize| {
        common::this_test_again("killing_the_tracker_at_any_ptrace_step_leaves_the_target_unharmed")
            .env(CHILD, format!("{pid}:{n}"))
            .output()
            .expect("run the tracker")
    };
    let blocked = |pid: i32| -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| {
                let status = std::fs::read_to_string(t.ok()?.path().join("status")).ok()?;
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("SigBlk:"))
                    .map(|v| v.trim().to_string())
            })
            .collect()
    };
    // A clean run first: how many ptrace requests there are.
    let out = tracker(0);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if out.status.code() == Some(7) && String::from_utf8_lossy(&out.stderr).contains("Linux 6.7+") {
        common::skip(String::from_utf8_lossy(&out.stderr).trim());
        return;
    }
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let steps: usize = stdout
        .rsplit("steps ")
        .next()
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("the step count");
    assert!(steps > 20, "only {steps} ptrace requests?");
    let (mut rounds, errors, mut handled) = ping();
    assert_eq!(errors, 0);
    // Both threads are in their loops now (a thread being created has every signal blocked).
    let mask_before = blocked(pid);
    let uffds = |pid: i32| -> Vec<std::ffi::OsString> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|f| {
                let f = f.ok()?;
                std::fs::read_link(f.path())
                    .ok()
                    .filter(|l| l.to_string_lossy() == "anon_inode:[userfaultfd]")
                    .map(|_| f.file_name())
            })
            .collect()
    };
    // Every step on the host; every `DIRTYTRACK_KILL_SWEEP_STRIDE`th (and the last) where each
    // step is slow (the kernel matrix's TCG guests re-run this binary for seconds per step).
    let stride: usize = std::env::var("DIRTYTRACK_KILL_SWEEP_STRIDE")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&k| k > 0)
        .unwrap_or(1);
    let tried: Vec<usize> = (1..=steps)
        .filter(|n| (n - 1) % stride == 0 || *n == steps)
        .collect();
    let (mut killed, mut harmed, mut notes) = (0, Vec::new(), 0);
    for &n in &tried {
        let out = tracker(n);
        use std::os::unix::process::ExitStatusExt;
        match out.status.signal() {
            Some(libc::SIGKILL) => killed += 1,
            None if out.status.success() => {}
            _ => panic!(
                "tracker run {n}: {:?}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
        // The kernel released the tracee when its tracer died.
        let (state, tracer) = state_of(pid);
        let mut wrong = Vec::new();
        if tracer != "0" || matches!(state, 't' | 'T' | 'Z' | 'X') {
            wrong.push(format!("state {state}, tracer {tracer}"));
        }
        if blocked(pid) != mask_before {
            wrong.push(format!(
                "signal masks {:?}, were {mask_before:?}",
                blocked(pid)
            ));
        }
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(pid, libc::SIGUSR1) };
        // Both must show within 5 s (other tests load the machine).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let (r, e, h) = loop {
            std::thread::sleep(Duration::from_millis(10));
            let (r, e, h) = ping();
            if (r > rounds && h > handled) || std::time::Instant::now() > deadline {
                break (r, e, h);
            }
        };
        if e != 0 {
            wrong.push(format!("{e} wrong results"));
        }
        if r <= rounds {
            wrong.push(format!("the main thread stopped computing ({r} rounds)"));
        }
        if h <= handled {
            wrong.push("SIGUSR1 not handled".into());
        }
        (rounds, handled) = (r, h);
        // A later tracker adopts or closes what the killed one left, and its stop_tracking
        // leaves no userfaultfd behind; the next kill then starts from a clean target again.
        let out = tracker(0);
        let stdout = String::from_utf8_lossy(&out.stdout);
        notes += stdout.matches("note: closed").count() + stdout.matches("note: adopted").count();
        if !out.status.success() {
            wrong.push(format!(
                "the next tracker failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        if !uffds(pid).is_empty() {
            wrong.push(format!("userfaultfds left: {:?}", uffds(pid)));
        }
        if !wrong.is_empty() {
            harmed.push(format!("killed before request {n}: {}", wrong.join(", ")));
        }
    }
    eprintln!(
        "kill sweep: {steps} ptrace requests in a clean run, {} tried (stride {stride}), {killed} runs killed, {} target(s) harmed, {notes} leftover(s) adopted or closed by the next run",
        tried.len(),
        harmed.len()
    );
    assert!(harmed.is_empty(), "{harmed:#?}");
    assert!(
        killed + 2 >= tried.len(),
        "only {killed} of {} runs were killed",
        tried.len()
    );
    assert!(notes > 0, "no run found leftovers to adopt or close");
    assert_eq!(ping().1, 0);
}

/// A full dump copies what exists, not what is mapped: python3 with 16 threads (their stacks,
/// glibc's per-thread arena reservations) and a 512 MiB private anonymous mapping of which
/// 1 MiB is written.
/// The image (where a private anonymous page not dumped reads as zero) still equals memory.
#[test]
fn a_full_dump_holds_only_populated_memory() {
    if !python_available() {
        common::skip("python3 is not installed");
        return;
    }
    let script = r#"
import threading, time
def worker():
    d = {i: str(i) for i in range(1000)}
    while True:
        time.sleep(0.01)
for _ in range(16):
    threading.Thread(target=worker, daemon=True).start()
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
big = libc.mmap(None, 512 << 20, 3, 0x22, -1, 0)  # PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS
ctypes.memset(big, 0x78, 1 << 20)
time.sleep(0.2)
print("ready", flush=True)
while True:
    time.sleep(0.01)
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script);
    let target = Target::spawn(cmd);
    let Some(mut t) = attach_or_skip(target.pid()) else {
        return;
    };
    let mut image = Image::new();
    let c = t.collect().unwrap();
    let mapped = tracked_total(&c);
    let copied = c.dirty_bytes();
    image.apply(&t, &c).unwrap();
    eprintln!(
        "full dump: {:.1} MiB copied of {:.1} MiB mapped",
        copied as f64 / (1 << 20) as f64,
        mapped as f64 / (1 << 20) as f64
    );
    assert!(mapped > 600 << 20, "mapped {mapped}");
    assert!(copied < 128 << 20, "copied {copied} of {mapped}");
    final_dump_and_verify(&mut t, &mut image);
    t.stop_tracking().unwrap();
}

/// One tracker per target: a second attach gets `TargetBusy` naming the holder (this
/// process); once the first is dropped, attaching again works and adopts its tracking. Also:
/// a process cannot track itself.
#[test]
fn a_second_tracker_on_one_target_is_refused() {
    let Some(exe) = compile("victim") else { return };
    let mut cmd = Command::new(&exe);
    cmd.stdin(Stdio::piped());
    let target = Target::spawn_with_stdin(cmd);
    let pid = target.pid();
    let Some(mut first) = attach_or_skip(pid) else {
        return;
    };
    first.collect().unwrap();
    match RemoteTracker::attach(pid) {
        Err(e @ RemoteError::TargetBusy { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&format!(
                    "already tracked by process {}",
                    std::process::id()
                )),
                "{msg}"
            );
        }
        other => panic!("expected TargetBusy, got {other:?}"),
    }
    let generation = first.generation();
    drop(first);
    let mut second = RemoteTracker::attach(pid).unwrap();
    assert!(
        second.resumed(),
        "the first tracker's userfaultfd is adopted"
    );
    assert_eq!(second.generation(), generation);
    second.collect().unwrap();
    assert_eq!(second.generation(), generation + 1);
    second.stop_tracking().unwrap();
    assert_released(pid);
    match RemoteTracker::attach(std::process::id() as i32) {
        Err(RemoteError::Usage(m)) => assert!(m.contains("cannot track itself"), "{m}"),
        other => panic!("attaching to ourselves: {other:?}"),
    }
}

/// Every thread of a process in a ptrace stop of this thread, as a checkpointer (CRIU) holds
/// its target during a dump: seized and interrupted until no new thread shows up. Released on
/// drop, also when the test panics (a panicking holder would otherwise leave the target's
/// threads for nobody to reap, and the test would hang in `Target`'s drop).
struct Held(Vec<i32>);

impl Held {
    fn stop_all(pid: i32) -> Held {
        use dirtytrack::sys::ptrace;
        let mut held = Held(Vec::new());
        for _ in 0..64 {
            let mut new = 0;
            for e in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
                let tid: i32 = e.unwrap().file_name().to_str().unwrap().parse().unwrap();
                if held.0.contains(&tid) || ptrace::seize(tid, 0).is_err() {
                    continue; // held already, or exited meanwhile
                }
                new += 1;
                if ptrace::interrupt(tid).is_err() {
                    continue; // exited meanwhile
                }
                // A thread that exits before it stops reports its exit instead.
                if let Ok(ptrace::WaitStatus::Stopped { .. }) = ptrace::wait(tid) {
                    held.0.push(tid);
                }
            }
            if new == 0 {
                return held;
            }
        }
        panic!("process {pid} kept starting threads");
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        for &tid in &self.0 {
            let _ = dirtytrack::sys::ptrace::detach(tid, 0);
        }
    }
}

/// The contents of every readable mapping of `pid`, by page address.
fn memory_pages(t: &RemoteTracker, pid: i32) -> std::collections::HashMap<usize, Vec<u8>> {
    let ps = dirtytrack::page_size();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut out = std::collections::HashMap::new();
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (range, perms) = (f.next().unwrap(), f.next().unwrap());
        let path = line.split_whitespace().nth(5).unwrap_or("");
        if !perms.starts_with('r') || path == "[vvar]" || path == "[vsyscall]" {
            continue;
        }
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (
            usize::from_str_radix(a, 16).unwrap(),
            usize::from_str_radix(b, 16).unwrap(),
        );
        for p in (a..b).step_by(ps) {
            let mut page = vec![0u8; ps];
            if t.read_memory(p, &mut page).is_ok() {
                out.insert(p, page);
            }
        }
    }
    out
}

/// A checkpointer that holds the target stopped itself (CRIU) and adopts the tracking
/// userfaultfd: no ptrace by the library, the chain resumed from the saved state across runs,
/// and every page that changed between two runs and does not read as zero (a page never
/// populated in a new mapping reads as zero and is in no dump) is in the second run's
/// `not_known_clean`. A
/// userfaultfd already set up is refused without the chain's state (a fork child's inherited
/// copy would act on its parent's memory).
#[test]
fn a_checkpointer_holding_the_target_stopped_adopts_and_resumes_the_chain() {
    let Some(exe) = compile("threads") else {
        return;
    };
    let target = Target::spawn(Command::new(&exe));
    let pid = target.pid();
    // Run 0: the tracking userfaultfd is created and set up (here by attaching; CRIU creates
    // it with its own injection and adopts it).
    let Some(mut t) = attach_or_skip(pid) else {
        return;
    };
    t.collect().unwrap();
    let mut state = t.save_state();
    let fd = t.target_fd();
    drop(t);

    let mut first = Some(Held::stop_all(pid));
    // Without the chain's state, a set-up userfaultfd is not adopted.
    match RemoteTracker::builder(pid).caller_stops(true).adopt(fd) {
        Err(RemoteError::NotATrackingFd { .. }) => {}
        other => panic!("adopting without the state: {other:?}"),
    }
    // attach with caller_stops would need an injection: refused.
    assert!(matches!(
        RemoteTracker::builder(pid).caller_stops(true).attach(),
        Err(RemoteError::Usage(_))
    ));
    assert_eq!(RemoteTracker::tracking_fds(pid).unwrap(), vec![fd]);
    let mut before = None;
    let mut increments = Vec::new();
    for run in 0..4 {
        let held = match first.take() {
            Some(h) => h,
            None => {
                std::thread::sleep(Duration::from_millis(30));
                Held::stop_all(pid)
            }
        };
        assert_eq!(RemoteTracker::find_fd(pid, &state).unwrap(), Some(fd));
        let mut t = RemoteTracker::builder(pid)
            .caller_stops(true)
            .state(&state)
            .unwrap()
            .adopt(fd)
            .unwrap();
        assert!(t.resumed(), "run {run}: the chain resumes");
        let c = t.collect().unwrap();
        let set = t.not_known_clean(&c).unwrap();
        let now = memory_pages(&t, pid);
        if let Some(before) = before.take() {
            let before: std::collections::HashMap<usize, Vec<u8>> = before;
            let changed: Vec<usize> = now
                .iter()
                .filter(|(p, bytes)| before.get(*p) != Some(*bytes))
                .map(|(p, _)| *p)
                .collect();
            // A page may be left out only if it does not exist: never populated in a mapping
            // reported whole, it reads as zero and a dump holds nothing for it. (Its pagemap entry
            // cannot tell: arming leaves a marker that reads as swapped.) So a changed page that
            // reads as zero now is not counted; every other changed page must be in the set.
            let missed: Vec<usize> = changed
                .iter()
                .copied()
                .filter(|&p| !set.contains(p))
                .filter(|&p| now[&p].iter().any(|&b| b != 0))
                .collect();
            let about: Vec<String> = missed
                .iter()
                .take(2)
                .map(|&p| {
                    let rep = c
                        .mappings
                        .iter()
                        .find(|m| m.mapping.start <= p && p < m.mapping.end)
                        .map(|m| {
                            format!(
                                "{} {:?} ({} dirty runs)",
                                m.mapping,
                                m.change,
                                m.dirty.len()
                            )
                        });
                    let skip = c
                        .skipped
                        .iter()
                        .find(|(m, _)| m.start <= p && p < m.end)
                        .map(|(m, why)| format!("skipped {m}: {why}"));
                    format!("{p:x}: {rep:?} {skip:?}")
                })
                .collect();
            assert!(
                missed.is_empty(),
                "LOST WRITE: run {run}: {about:?}: {} of {} changed pages are not in not_known_clean: {:x?}",
                missed.len(),
                changed.len(),
                &missed[..missed.len().min(10)]
            );
            increments.push((changed.len(), set.len()));
        }
        before = Some(now);
        state = t.save_state();
        drop(t);
        // Still stopped by this thread: the library did not touch the threads.
        let (s, tracer) = state_of(pid);
        // SAFETY: gettid has no preconditions.
        let me = unsafe { libc::gettid() };
        assert_eq!(tracer, me.to_string(), "run {run}: held by this thread");
        assert!(matches!(s, 't' | 'T'), "run {run}: state {s}");
        drop(held);
    }
    eprintln!("caller-stops chain: (changed pages, not known clean) per run {increments:?}");
    let total: usize = memory_pages_count(pid);
    assert!(
        increments.iter().all(|&(_, n)| n < total),
        "increments {increments:?} of {total} pages: the chain is incremental"
    );
    assert_released(pid);
}

/// Pages mapped by `pid` (its address space size, in pages).
fn memory_pages_count(pid: i32) -> usize {
    let ps = dirtytrack::page_size();
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap()
        .lines()
        .map(|l| {
            let (a, b) = l
                .split_whitespace()
                .next()
                .unwrap()
                .split_once('-')
                .unwrap();
            (usize::from_str_radix(b, 16).unwrap() - usize::from_str_radix(a, 16).unwrap()) / ps
        })
        .sum()
}
