//! Runs one mechanism's checkpoint cycle in a loop, for profilers (`perf record`) and quick
//! checks outside criterion. The profiles in BENCHMARKS.md were taken with it:
//!
//! ```sh
//! cargo build --release -p dirtytrack-peers --example cycle
//! taskset -c 0 perf record -e cpu-clock -g target/release/examples/cycle dirtytrack_sync
//! ```
//!
//! Usage: `cycle <mechanism> [every=100] [cycles=2000] [MiB=256]`, mechanism one of
//! `dirtytrack_async`, `dirtytrack_sync`, `raw_pagemap_scan`, `userfaultfd_crate`,
//! `mprotect_sigsegv`, `xxh3_per_page`, `memcmp`, `oracle_copy_only`. Each cycle writes one byte
//! into every `every`-th page, then harvests; prints the mean writes / harvest time per cycle.

use dirtytrack::Mode;
use dirtytrack_peers::common::{page_size, MIB};
use dirtytrack_peers::*;
use std::process::ExitCode;
use std::time::Duration;

fn peer(name: &str, len: usize) -> Option<Box<dyn Peer>> {
    Some(match name {
        "dirtytrack_async" => Box::new(Dirtytrack::new(Mode::Async, len)),
        "dirtytrack_sync" => Box::new(Dirtytrack::new(Mode::Sync, len)),
        "raw_pagemap_scan" => Box::new(RawScan::new(len)),
        "userfaultfd_crate" => Box::new(UffdCrate::new(len)),
        "mprotect_sigsegv" => Box::new(MprotectSegv::new(len)),
        "xxh3_per_page" => Box::new(Xxh3::new(len)),
        "memcmp" => Box::new(Memcmp::new(len)),
        "oracle_copy_only" => Box::new(Oracle::new(len)),
        _ => return None,
    })
}

fn arg(i: usize, default: usize) -> Result<usize, String> {
    match std::env::args().nth(i) {
        None => Ok(default),
        Some(s) => s.parse().map_err(|e| format!("argument {i} ({s:?}): {e}")),
    }
}

fn main() -> ExitCode {
    let name = std::env::args().nth(1).unwrap_or_default();
    let parsed = (|| Ok::<_, String>((arg(2, 100)?, arg(3, 2000)?, arg(4, 256)?)))();
    let (every, cycles, mib) = match parsed {
        Ok(v) => v,
        Err(e) => {
            eprintln!("cycle: {e}");
            return ExitCode::from(2);
        }
    };
    let len = mib * MIB;
    let Some(mut p) = peer(&name, len) else {
        eprintln!("usage: cycle <mechanism> [every=100] [cycles=2000] [MiB=256] (see the source)");
        return ExitCode::from(2);
    };
    let ps = page_size();
    let mut cp = Checkpoint::new(len / ps, ps);
    p.harvest(&mut cp);
    let (mut writes, mut harvest, mut value) = (Duration::ZERO, Duration::ZERO, 0u8);
    for _ in 0..cycles {
        let t = run_cycle(&mut *p, &mut cp, every, &mut value);
        writes += t.writes;
        harvest += t.harvest;
    }
    let n = cycles.max(1) as u32;
    println!(
        "{name}: {mib} MiB, every {every}th page, {cycles} cycles: writes {:?} + harvest {:?} = {:?} per cycle",
        writes / n,
        harvest / n,
        (writes + harvest) / n
    );
    ExitCode::SUCCESS
}
