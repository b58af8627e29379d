//! A minimal VMM (rust-vmm's kvm-ioctls, kvm-bindings, vm-memory) that live-migrates its guest's
//! RAM by pre-copy, with dirtytrack or with KVM's dirty log + a vm-memory bitmap.
//!
//! ```text
//! cargo run --release --example vmm -- [--tracker dirtytrack|dirtytrack-sync|kvm-dirty-log|both]
//!     [--ram-mib 256] [--dirty-percent 10] [--stride 1] [--spin 0]
//!     [--device-pages 256] [--device-burst 16] [--device-interval-us 100]
//!     [--max-rounds 8] [--converge-pages 64] [--round-pause-ms 0]
//! ```
//!
//! The guest (one vCPU, 32-bit protected mode) sweeps `--dirty-percent` of its RAM writing a
//! counter into every page, `--spin` busy iterations between writes; a device thread writes
//! `--device-burst` random 64-byte spots of a `--device-pages` ring at the end of RAM every
//! `--device-interval-us` through vm-memory. The migration copies everything, then copies the
//! dirty pages round after round while both run, until a round finds at most
//! `--converge-pages` (or after `--max-rounds`); then it pauses both (downtime starts), runs the
//! final round, and checks the destination against guest RAM byte for byte.
//!
//! dirtytrack sees both writers with one range over the guest RAM mapping: the guest's writes
//! fault in the host page table when KVM maps the page writable, the device's writes are
//! ordinary user writes. KVM's dirty log sees only the guest's writes; the device's come from
//! the vm-memory `AtomicBitmap`, ORed in.

#[cfg(target_arch = "x86_64")]
mod minivmm;

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("examples/vmm: x86_64 only (the guest is x86 machine code); nothing to do here");
}

#[cfg(target_arch = "x86_64")]
fn main() {
    if let Err(e) = x86::run() {
        eprintln!("vmm: {e}");
        std::process::exit(1);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::minivmm::{migrate, MigrationOptions, Report, Res, TrackerKind, Workload, PAGE};
    use dirtytrack::Mode;
    use std::time::Duration;

    fn usage() -> String {
        "usage: vmm [--tracker dirtytrack|dirtytrack-sync|kvm-dirty-log|both] [--ram-mib N] \
         [--dirty-percent P] [--stride N] [--spin N] [--device-pages N] [--device-burst N] \
         [--device-interval-us N] [--max-rounds N] [--converge-pages N] [--round-pause-ms N]"
            .into()
    }

    pub fn run() -> Res<()> {
        let mut trackers = vec![TrackerKind::Dirtytrack(Mode::Async)];
        let mut ram_mib = 256usize;
        let mut percent = 10.0f64;
        let mut tweaks: Vec<(String, String)> = Vec::new();
        let mut opts = MigrationOptions::default();
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            if flag == "--help" || flag == "-h" {
                println!("{}", usage());
                return Ok(());
            }
            let value = args
                .next()
                .ok_or_else(|| format!("{flag} needs a value\n{}", usage()))?;
            let num = || -> Res<u64> {
                value
                    .parse()
                    .map_err(|e| format!("{flag} {value}: {e}").into())
            };
            match flag.as_str() {
                "--tracker" => {
                    trackers = match value.as_str() {
                        "dirtytrack" => vec![TrackerKind::Dirtytrack(Mode::Async)],
                        "dirtytrack-sync" => vec![TrackerKind::Dirtytrack(Mode::Sync)],
                        "kvm-dirty-log" => vec![TrackerKind::KvmDirtyLog],
                        "both" => vec![
                            TrackerKind::Dirtytrack(Mode::Async),
                            TrackerKind::KvmDirtyLog,
                        ],
                        _ => return Err(format!("--tracker {value}?\n{}", usage()).into()),
                    }
                }
                "--ram-mib" => ram_mib = num()? as usize,
                "--dirty-percent" => {
                    percent = value.parse().map_err(|e| format!("{flag} {value}: {e}"))?
                }
                "--max-rounds" => opts.max_rounds = num()? as usize,
                "--converge-pages" => opts.converge_pages = num()? as usize,
                "--round-pause-ms" => opts.round_pause = Duration::from_millis(num()?),
                "--stride"
                | "--spin"
                | "--device-pages"
                | "--device-burst"
                | "--device-interval-us" => {
                    num()?;
                    tweaks.push((flag, value));
                }
                _ => return Err(format!("unknown option {flag}\n{}", usage()).into()),
            }
        }
        let mut workload = Workload::percent(ram_mib << 20, percent);
        for (flag, value) in tweaks {
            let v: u64 = value.parse()?;
            match flag.as_str() {
                "--stride" => workload.stride = v as u32,
                "--spin" => workload.spin = v as u32,
                "--device-pages" => workload.device_pages = v as usize,
                "--device-burst" => workload.device_burst = v as usize,
                _ => workload.device_interval = Duration::from_micros(v),
            }
        }
        println!(
            "guest: {ram_mib} MiB RAM, sweeps {} pages ({percent} %), stride {}, spin {}; \
             device: {} writes every {:?} into a {}-page ring",
            workload.guest_pages,
            workload.stride,
            workload.spin,
            workload.device_burst,
            workload.device_interval,
            workload.device_pages
        );
        let mut failed = false;
        for kind in trackers {
            let report = migrate(&workload, kind, &opts)?;
            print_report(&report);
            failed |= !report.mismatched_pages.is_empty();
        }
        if failed {
            return Err("the destination differs from guest RAM: a write was lost".into());
        }
        Ok(())
    }

    fn print_report(r: &Report) {
        println!("\n== {} ==", r.kind.name());
        println!(
            "{:>6} {:>12} {:>10} {:>12} {:>10} {:>13}",
            "round", "dirty pages", "MiB", "collect ms", "copy ms", "guest writes"
        );
        let last = r.rounds.len() - 1;
        for x in &r.rounds {
            let name = match x.round {
                0 => "full".to_string(),
                n if n == last => "final".to_string(),
                n => n.to_string(),
            };
            println!(
                "{:>6} {:>12} {:>10.1} {:>12.3} {:>10.3} {:>13}",
                name,
                x.dirty_pages,
                (x.dirty_pages * PAGE) as f64 / (1 << 20) as f64,
                x.collect.as_secs_f64() * 1e3,
                x.copy.as_secs_f64() * 1e3,
                x.guest_writes
            );
        }
        println!(
            "downtime {:.3} ms; guest {:.3} M writes/s while tracked ({:.3} M/s in the \
             warm-up, untracked); device {} writes; destination == guest RAM: {}",
            r.downtime.as_secs_f64() * 1e3,
            r.guest_writes_per_sec / 1e6,
            r.untracked_writes_per_sec / 1e6,
            r.device_writes,
            if r.mismatched_pages.is_empty() {
                "yes".to_string()
            } else {
                format!(
                    "NO, {} pages differ (first {:?})",
                    r.mismatched_pages.len(),
                    &r.mismatched_pages[..r.mismatched_pages.len().min(8)]
                )
            }
        );
    }
}
