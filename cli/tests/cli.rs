//! The `dirtytrack` command against a real python3 process: `predump --verify` must rebuild the
//! process's memory from its dumps byte for byte, across two invocations (the chain continues),
//! and the error cases must exit non-zero with a message saying what to do.
//!
//! Skips (python3 missing, kernel without WP_ASYNC) print `DIRTYTRACK-SKIP: ...` and fail unless
//! `DIRTYTRACK_ALLOW_SKIP=1`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

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
