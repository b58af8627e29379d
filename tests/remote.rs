//! Remote tracking on the real kernel, against real programs not written for it: python3, and C
//! programs compiled here with `cc`. The oracle: dumps rebuilt into an `Image` must equal
//! `/proc/PID/mem` byte for byte with the target stopped.

mod common;

use dirtytrack::remote::{Change, Collection, Image, RemoteError, RemoteTracker};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A child process killed on drop.
struct Target {
    child: Child,
}

impl Target {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    /// Spawns `cmd` and waits for it to print a line containing `ready`.
    fn spawn(mut cmd: Command) -> Target {
        cmd.stdout(Stdio::piped()).stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn target");
        let out = child.stdout.take().unwrap();
        let mut lines = BufReader::new(out).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("ready") => break,
                Some(Ok(_)) => continue,
                other => panic!("target did not get ready: {other:?}"),
            }
        }
        // Keep draining stdout so the target never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Target { child }
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

/// python3 mutating the first 4 MiB of a 64 MiB bytearray, a dict and a list in a loop.
const PYTHON_LOOP: &str = r#"
import random, sys, time
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
    t.stop_target().unwrap();
    let last = t.collect().expect("final collect");
    copied.push(image.apply(t, &last).unwrap());
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
    let Some(target) = python_target() else { return };
    let Some(mut t) = attach_or_skip(target.pid()) else { return };
    assert!(!t.resumed());
    let copied = predump_and_verify(&mut t, 4, Duration::from_millis(200));
    eprintln!("python3: pages per dump {copied:?}");
    // The increments are much smaller than the full dump (python writes a few MiB per 200 ms).
    assert!(copied[1] < copied[0] / 2, "{copied:?}");
    t.stop_tracking().unwrap();
}

#[test]
fn first_collect_reports_everything_then_only_changes() {
    let Some(target) = python_target() else { return };
    let Some(mut t) = attach_or_skip(target.pid()) else { return };
    let c = t.collect().unwrap();
    assert!(c.mappings.iter().all(|m| m.dirty_bytes() == m.mapping.len()));
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
