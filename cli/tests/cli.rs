//! The `dirtytrack` command against a real python3 process: `predump --verify` must rebuild the
//! process's memory from its dumps byte for byte, across two invocations (the chain continues),
//! and the error cases must exit non-zero with a message saying what to do.
//!
//! Skips (python3 missing, kernel without WP_ASYNC) print `DIRTYTRACK-SKIP: ...` and fail unless
//! `DIRTYTRACK_ALLOW_SKIP=1`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn dirtytrack(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dirtytrack"))
        .args(args)
        .output()
        .expect("run dirtytrack")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn skip(reason: &str) -> bool {
    eprintln!("DIRTYTRACK-SKIP: {reason}");
    if std::env::var("DIRTYTRACK_ALLOW_SKIP").as_deref() != Ok("1") {
        panic!("cannot run here: {reason} (set DIRTYTRACK_ALLOW_SKIP=1 to allow skipping)");
    }
    true
}

/// A python3 process writing a bytearray and a dict; killed on drop.
struct Python(Child);

impl Python {
    fn start() -> Option<Python> {
        let script = "import random, time\nbuf = bytearray(32 << 20)\nd = {}\ni = 0\nprint('ready', flush=True)\nwhile True:\n    i += 1\n    buf[random.randrange(0, 2 << 20)] = i & 255\n    d[i % 3000] = i\n    if i % 500 == 0:\n        time.sleep(0.001)\n";
        let child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .stdout(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                skip(&format!("python3: {e}"));
                return None;
            }
        };
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("ready"));
        Some(Python(child))
    }
    fn pid(&self) -> String {
        self.0.id().to_string()
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn remote_available() -> bool {
    let caps = text(&dirtytrack(&["caps"]));
    assert!(caps.contains("remote tracking"), "{caps}");
    caps.contains("remote tracking (rate, predump): available\n")
        || !skip("no remote tracking here")
}

#[test]
fn predump_verify_twice_continues_the_chain() {
    if !remote_available() {
        return;
    }
    let Some(py) = Python::start() else { return };
    let dir = std::env::temp_dir().join(format!("dirtytrack-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let pid = py.pid();
    let args = [
        "predump",
        &pid,
        "--dir",
        d,
        "--iterations",
        "2",
        "--interval",
        "0.2",
        "--verify",
    ];
    let first = dirtytrack(&args);
    let out = text(&first);
    eprintln!("{out}");
    assert!(first.status.success(), "{out}");
    assert!(out.contains("new chain") && out.contains(" full "), "{out}");
    assert!(
        out.contains("verify: the image rebuilt from the dumps equals"),
        "{out}"
    );

    let second = dirtytrack(&args);
    let out = text(&second);
    eprintln!("{out}");
    assert!(second.status.success(), "{out}");
    assert!(out.contains("continuing the chain"), "{out}");
    assert!(
        !out.contains(" full "),
        "the second run must not take a full dump: {out}"
    );
    assert!(
        out.contains("verify: the image rebuilt from the dumps equals"),
        "{out}"
    );
    // 1 full + 2 increments + the verify increment, twice.
    let dumps = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_str().unwrap();
            name.len() == 4 && name.parse::<u32>().is_ok()
        })
        .count();
    assert_eq!(dumps, 8);

    // --stop removes tracking from the target.
    let third = dirtytrack(&["predump", &pid, "--dir", d, "--iterations", "0", "--stop"]);
    assert!(third.status.success(), "{}", text(&third));
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap();
    assert!(!fds
        .into_iter()
        .any(|f| std::fs::read_link(f.unwrap().path())
            .is_ok_and(|l| l.to_string_lossy() == "anon_inode:[userfaultfd]")));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rate_reports_pages_per_second() {
    if !remote_available() {
        return;
    }
    let Some(py) = Python::start() else { return };
    let o = dirtytrack(&["rate", &py.pid(), "--interval", "0.2", "--count", "2"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert_eq!(out.matches("pages/s (").count(), 2, "{out}");
}

#[test]
fn errors_exit_non_zero_and_say_what_to_do() {
    let o = dirtytrack(&["rate", "2147483647"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(text(&o).contains("no process 2147483647"), "{}", text(&o));
    let o = dirtytrack(&["predump", "1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("--dir"), "{}", text(&o));
    let o = dirtytrack(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("usage"));
}

/// `tests/remote/victim.c` (the library's kill-sweep target), compiled with `cc` once per
/// test binary, or prebuilt in `$DIRTYTRACK_REMOTE_TARGETS`.
fn victim_exe() -> Option<std::path::PathBuf> {
    if let Some(dir) = std::env::var_os("DIRTYTRACK_REMOTE_TARGETS") {
        return Some(std::path::Path::new(&dir).join("victim"));
    }
    static BUILT: std::sync::Mutex<Option<std::path::PathBuf>> = std::sync::Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = &*built {
        return Some(p.clone());
    }
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/remote/victim.c");
    let out = std::env::temp_dir().join(format!("dirtytrack-cli-victim-{}", std::process::id()));
    match Command::new("cc")
        .args(["-O2", "-pthread", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
    {
        Ok(s) if s.success() => {
            *built = Some(out.clone());
            Some(out)
        }
        Ok(s) => panic!("cc {} failed: {s}", src.display()),
        Err(e) => {
            skip(&format!("no C compiler (cc): {e}"));
            None
        }
    }
}

/// The victim: computes and checks in its main thread, answers "ping" with its counters.
struct Victim {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Victim {
    fn start() -> Option<Victim> {
        let exe = victim_exe()?;
        let mut child = Command::new(exe)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the victim");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines.next().unwrap().unwrap();
        assert!(ready.contains("ready"), "{ready}");
        let mut v = Victim { child, lines };
        // Both threads in their loops (a thread being created has every signal blocked).
        v.ping();
        Some(v)
    }
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    /// (rounds computed, wrong results, SIGUSR1 handled).
    fn ping(&mut self) -> (u64, u64, u64) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"ping\n").expect("the victim is gone");
        let line = self.lines.next().expect("the victim is gone").unwrap();
        let v: Vec<u64> = line
            .strip_prefix("pong ")
            .unwrap_or_else(|| panic!("{line}"))
            .split(' ')
            .map(|x| x.parse().unwrap())
            .collect();
        (v[0], v[1], v[2])
    }
    /// `(state, TracerPid, SigBlk of every thread)`.
    fn status(&self) -> (char, String, Vec<String>) {
        let pid = self.pid();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let state = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .trim_start()
            .chars()
            .next()
            .unwrap();
        let field = |text: &str, name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or("")
                .trim()
                .to_string()
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let masks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .map(|t| {
                let s = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
                field(&s, "SigBlk:")
            })
            .collect();
        (state, field(&status, "TracerPid:"), masks)
    }
    /// Panics unless the victim runs, untraced, with no signal blocked, computing right, and
    /// handling SIGUSR1.
    fn assert_healthy(&mut self, what: &str) {
        let (r0, _, h0) = self.ping();
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.pid(), libc::SIGUSR1) };
        let deadline = Instant::now() + Duration::from_secs(5);
        let (r, e, h) = loop {
            std::thread::sleep(Duration::from_millis(10));
            let x = self.ping();
            if (x.0 > r0 && x.2 > h0) || Instant::now() > deadline {
                break x;
            }
        };
        let (state, tracer, masks) = self.status();
        assert!(
            e == 0
                && r > r0
                && h > h0
                && tracer == "0"
                && !matches!(state, 't' | 'T')
                && masks.iter().all(|m| m == "0000000000000000"),
            "{what}: the victim is harmed: {e} wrong results, rounds {r0} -> {r}, SIGUSR1 {h0} -> {h}, state {state}, tracer {tracer}, masks {masks:?}"
        );
    }
    fn uffds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .filter(|f| {
                std::fs::read_link(f.as_ref().unwrap().path())
                    .is_ok_and(|l| l.to_string_lossy() == "anon_inode:[userfaultfd]")
            })
            .count()
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("dirtytrack-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// SIGKILL, SIGINT and SIGTERM sent to `predump --stop` (attach: three injected calls; a
/// registration stop; a dump; stop: one injected call) at pseudo-random moments 1.5-6 ms after
/// it starts, or later in its run: the victim is never harmed; SIGINT/SIGTERM end the run with
/// 128 + the signal once the target is consistent; a final run finds what the killed runs left,
/// and its --verify passes.
#[test]
fn signals_to_the_cli_at_random_moments_never_harm_the_target() {
    if !remote_available() {
        return;
    }
    let Some(mut v) = Victim::start() else { return };
    let pid = v.pid().to_string();
    let dir = temp_dir("random-kills");
    let d = dir.to_str().unwrap().to_string();
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut outcomes = std::collections::BTreeMap::new();
    for i in 0..45 {
        let sig = [libc::SIGKILL, libc::SIGINT, libc::SIGTERM][i % 3];
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        // 1.5-6 ms (the injections), and every fourth run up to 60 ms (the dump, the stop).
        let max_us = if i % 4 == 3 { 60_000 } else { 4_500 };
        let delay = Duration::from_micros(1_500 + seed % max_us);
        let child = Command::new(env!("CARGO_BIN_EXE_dirtytrack"))
            .args(["predump", &pid, "--dir", &d, "--iterations", "0", "--stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let out = child.wait_with_output().unwrap();
        use std::os::unix::process::ExitStatusExt;
        let outcome = match (out.status.code(), out.status.signal()) {
            (_, Some(s)) if s == libc::SIGKILL => "killed".to_string(),
            // Before main() installed its handlers: nothing was done to the target yet.
            (_, Some(s)) if s == sig => "ended before its handlers".to_string(),
            (Some(0), _) => "finished".to_string(),
            (Some(c), _) if c == 128 + sig => "deferred".to_string(),
            (c, _) => panic!(
                "signal {sig} after {delay:?}: exit {c:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        };
        *outcomes.entry(outcome).or_insert(0) += 1;
        v.assert_healthy(&format!("run {i}, signal {sig} after {delay:?}"));
    }
    eprintln!("random signals: {outcomes:?}, 0 targets harmed");
    let o = dirtytrack(&[
        "predump",
        &pid,
        "--dir",
        &d,
        "--iterations",
        "1",
        "--interval",
        "0.1",
        "--verify",
        "--stop",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("verify: the image rebuilt"),
        "{}",
        text(&o)
    );
    assert_eq!(v.uffds(), 0, "userfaultfds left after --stop");
    v.assert_healthy("after the final run");
    let _ = std::fs::remove_dir_all(&dir);
}

/// --verify holds the target in a ptrace stop: a CLI killed meanwhile (any signal) leaves it
/// running, never stopped; and a target the user stopped (SIGSTOP) stays stopped through
/// --verify.
#[test]
fn verify_never_leaves_the_target_stopped_and_keeps_a_users_stop() {
    if !remote_available() {
        return;
    }
    let Some(mut v) = Victim::start() else { return };
    let pid = v.pid().to_string();
    let dir = temp_dir("verify-kill");
    let d = dir.to_str().unwrap().to_string();
    for (i, sig) in [libc::SIGKILL, libc::SIGINT, libc::SIGTERM]
        .iter()
        .cycle()
        .take(12)
        .enumerate()
    {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dirtytrack"))
            .args([
                "predump",
                &pid,
                "--dir",
                &d,
                "--iterations",
                "0",
                "--verify",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20 + 15 * i as u64));
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(child.id() as i32, *sig) };
        let _ = child.wait();
        v.assert_healthy(&format!("signal {sig} during --verify"));
    }
    // The user's own stop.
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(v.pid(), libc::SIGSTOP) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while v.status().0 != 'T' {
        assert!(Instant::now() < deadline, "SIGSTOP did not stop the victim");
        std::thread::sleep(Duration::from_millis(5));
    }
    let o = dirtytrack(&[
        "predump",
        &pid,
        "--dir",
        &d,
        "--iterations",
        "0",
        "--verify",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        v.status().0,
        'T',
        "--verify resumed a target the user had stopped"
    );
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(v.pid(), libc::SIGCONT) };
    v.assert_healthy("after SIGCONT");
    let o = dirtytrack(&["predump", &pid, "--dir", &d, "--iterations", "0", "--stop"]);
    assert!(o.status.success(), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A collect that no dump of the chain holds (here another tool's, rate --keep, on the chain's
/// userfaultfd; a predump killed between its collect and its dump is the same case) breaks the
/// chain: the next predump says so and dumps in full, and --verify passes. Leftover tracking
/// in a new directory is adopted (no EINVAL).
#[test]
fn a_chain_missing_a_collect_restarts_with_a_full_dump() {
    if !remote_available() {
        return;
    }
    let Some(mut v) = Victim::start() else { return };
    let pid = v.pid().to_string();
    let dir = temp_dir("chain");
    let d = dir.to_str().unwrap().to_string();
    let predump = |d: &str| {
        dirtytrack(&[
            "predump",
            &pid,
            "--dir",
            d,
            "--iterations",
            "1",
            "--interval",
            "0.05",
            "--verify",
        ])
    };
    let o = predump(&d);
    assert!(
        o.status.success() && text(&o).contains(" full "),
        "{}",
        text(&o)
    );
    let o = dirtytrack(&["rate", &pid, "--count", "1", "--interval", "0.05", "--keep"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = predump(&d);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("cannot continue")
            && out.contains("collect(s) happened")
            && out.contains(" full "),
        "{out}"
    );
    // Continues normally afterwards.
    let o = predump(&d);
    assert!(
        o.status.success() && text(&o).contains("continuing the chain"),
        "{}",
        text(&o)
    );
    // Leftover tracking, a new directory: adopted, full dump.
    let other = temp_dir("chain-other");
    let o = predump(other.to_str().unwrap());
    assert!(
        o.status.success() && text(&o).contains(" full "),
        "{}",
        text(&o)
    );
    assert!(text(&o).contains("adopted"), "{}", text(&o));
    // A truncated dump is refused, not built on.
    let pages = std::fs::read_dir(&other)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name() == "0000")
        .map(|e| e.path().join("pages"))
        .next()
        .unwrap();
    let len = std::fs::metadata(&pages).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&pages)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let o = predump(other.to_str().unwrap());
    assert!(
        !o.status.success() && text(&o).contains("truncated"),
        "{}",
        text(&o)
    );
    let o = dirtytrack(&["predump", &pid, "--dir", &d, "--iterations", "0", "--stop"]);
    assert!(o.status.success(), "{}", text(&o));
    v.assert_healthy("after the chain runs");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&other);
}

/// One tracker per target, one predump per directory: the second is refused, naming the
/// first; after the first ends, the next run works.
#[test]
fn a_second_tracker_is_refused_naming_the_first() {
    if !remote_available() {
        return;
    }
    let Some(v) = Victim::start() else { return };
    let Some(v2) = Victim::start() else { return };
    let pid = v.pid().to_string();
    let dir = temp_dir("busy");
    let d = dir.to_str().unwrap().to_string();
    let first = Command::new(env!("CARGO_BIN_EXE_dirtytrack"))
        .args([
            "predump",
            &pid,
            "--dir",
            &d,
            "--iterations",
            "1",
            "--interval",
            "1.5",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let o = dirtytrack(&["rate", &pid, "--count", "1"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("already tracked by process {}", first.id())),
        "{}",
        text(&o)
    );
    let o = dirtytrack(&[
        "predump",
        &v2.pid().to_string(),
        "--dir",
        &d,
        "--iterations",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains(&format!(
            "in use by another predump (process {})",
            first.id()
        )),
        "{}",
        text(&o)
    );
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success());
    let o = dirtytrack(&["rate", &pid, "--count", "1", "--interval", "0.05"]);
    assert!(o.status.success(), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn help_exits_zero_and_a_missing_pid_creates_nothing() {
    for cmd in ["rate", "predump"] {
        let o = dirtytrack(&[cmd, "--help"]);
        assert!(o.status.success(), "{cmd} --help: {}", text(&o));
        assert!(text(&o).contains("--track-shared"), "{}", text(&o));
    }
    let dir = temp_dir("missing-pid");
    let o = dirtytrack(&["predump", "2147483647", "--dir", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(!dir.exists(), "--dir was created for a missing process");
}

/// `--verify` counts every differing page (it stopped at 100): a full dump with one byte
/// changed in every page it holds differs in all of them that no later dump rewrote.
#[test]
fn verify_counts_every_differing_page() {
    if !remote_available() {
        return;
    }
    let Some(v) = Victim::start() else { return };
    let pid = v.pid().to_string();
    let dir = temp_dir("verify-count");
    let d = dir.to_str().unwrap().to_string();
    let o = dirtytrack(&["predump", &pid, "--dir", &d, "--iterations", "0"]);
    assert!(o.status.success(), "{}", text(&o));
    // Flip the first byte of every page of dump 0000.
    let pages = dir.join("0000").join("pages");
    let mut data = std::fs::read(&pages).unwrap();
    let mut at = 0;
    let mut flipped = 0;
    while at < data.len() {
        let n = u64::from_le_bytes(data[at + 8..at + 16].try_into().unwrap()) as usize;
        for p in (at + 16..at + 16 + n).step_by(4096) {
            data[p] ^= 0xff;
            flipped += 1;
        }
        at += 16 + n;
    }
    std::fs::write(&pages, &data).unwrap();
    assert!(flipped > 150, "only {flipped} pages dumped");
    let o = dirtytrack(&[
        "predump",
        &pid,
        "--dir",
        &d,
        "--iterations",
        "0",
        "--verify",
        "--stop",
    ]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    // "dirtytrack: verify: N page(s) differ"
    let n: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("dirtytrack: verify: "))
        .and_then(|l| l.strip_suffix(" page(s) differ"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no count: {out}"));
    let shown = out.matches("verify: page ").count();
    let more: usize = out
        .split("verify: ... and ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert_eq!(n, shown + more, "{out}");
    assert!(n > 100, "{n} pages differ; {flipped} flipped: {out}");
    // Only pages rewritten by the last increment can be right again.
    assert!(n + 64 >= flipped, "{n} of {flipped}: {out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The measure: strace kills the CLI (`SIGKILL`) on entering its Nth `ptrace` call, for
/// every N of `predump --iterations 0 --verify --stop` (attach, registration, the verify stop,
/// the injected close): the victim is never harmed, and the next run cleans up (no userfaultfd
/// left after its `--stop`).
#[test]
fn strace_killing_the_cli_at_every_ptrace_call_never_harms_the_target() {
    if !remote_available() {
        return;
    }
    if Command::new("strace").arg("-V").output().is_err() {
        skip("strace is not installed");
        return;
    }
    let Some(mut v) = Victim::start() else { return };
    let pid = v.pid().to_string();
    let dir = temp_dir("strace");
    let d = dir.to_str().unwrap().to_string();
    let (mut killed, mut n) = (0, 0);
    loop {
        n += 1;
        assert!(n < 400, "the CLI never finished a run");
        let out = Command::new("strace")
            .args(["-o", "/dev/null", "-e", "trace=ptrace", "-e"])
            .arg(format!("inject=ptrace:signal=SIGKILL:when={n}"))
            .arg(env!("CARGO_BIN_EXE_dirtytrack"))
            .args([
                "predump",
                &pid,
                "--dir",
                &d,
                "--iterations",
                "0",
                "--verify",
                "--stop",
            ])
            .output()
            .expect("run strace");
        use std::os::unix::process::ExitStatusExt;
        let finished = out.status.success();
        // strace exits as its tracee did (killed: 128 + 9, or the signal itself).
        if !finished {
            assert!(
                out.status.code() == Some(137) || out.status.signal() == Some(libc::SIGKILL),
                "run {n}: {:?}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            killed += 1;
        }
        v.assert_healthy(&format!("the CLI killed at its ptrace call {n}"));
        let o = dirtytrack(&["predump", &pid, "--dir", &d, "--iterations", "0", "--stop"]);
        assert!(o.status.success(), "after kill {n}: {}", text(&o));
        assert_eq!(v.uffds(), 0, "after kill {n}: userfaultfds left");
        if finished {
            break;
        }
    }
    eprintln!("strace sweep: {killed} ptrace calls, the CLI killed at each, 0 targets harmed");
    assert!(killed > 20, "only {killed} ptrace calls?");
    let _ = std::fs::remove_dir_all(&dir);
}
