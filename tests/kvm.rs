//! A KVM guest's RAM under tracking (x86_64): the guest's writes (made through KVM) and the
//! VMM's own writes (a device thread writing guest RAM through vm-memory) are all reported,
//! exactly, in async and sync mode; and a pre-copy migration with either tracker (dirtytrack,
//! or KVM's dirty log + vm-memory's bitmap) ends with destination == guest RAM.
//!
//! The guest and the device are the minimal VMM of `examples/minivmm/`. Without a usable
//! `/dev/kvm` (the kernel matrix runs these binaries in QEMU/TCG guests) the tests follow the
//! skip rule of `tests/common/mod.rs`.
#![cfg(target_arch = "x86_64")]

mod common;
#[path = "../examples/minivmm/mod.rs"]
mod minivmm;

use common::*;
use dirtytrack::DirtySet;
use minivmm::{migrate, MigrationOptions, TrackerKind, Tracking, Vm, Workload, PAGE};
use std::time::Duration;

/// `/dev/kvm` usable, or a skip.
fn kvm_or_skip() -> bool {
    match minivmm::kvm_available() {
        Ok(()) => true,
        Err(e) => {
            skip(&format!("no usable /dev/kvm: {e}"));
            false
        }
    }
}

/// 16 MiB of guest RAM; the guest sweeps half of it with stride 3; a device writes a 64-page
/// ring at the end (which overlaps the guest's pages: both writers on some pages).
fn small_workload() -> Workload {
    let mut w = Workload::percent(16 << 20, 50.0);
    w.stride = 3;
    w.device_pages = 2048;
    w.device_burst = 8;
    w.device_interval = Duration::from_micros(200);
    w
}

/// The per-range view of the set agrees with `contains` page by page.
fn check_views(dirty: &DirtySet, vm: &Vm, tracking: &Tracking) {
    let Tracking::Dirtytrack { id, .. } = tracking else {
        unreachable!("dirtytrack tracking")
    };
    let view = dirty.range(*id).expect("the set covers guest RAM");
    assert_eq!(view.start(), vm.host_addr);
    assert_eq!(view.page_count(), vm.len / PAGE);
    let bitmap = view.to_kvm_bitmap();
    for page in 0..vm.len / PAGE {
        let bit = bitmap[page / 64] >> (page % 64) & 1 == 1;
        assert_eq!(
            bit,
            dirty.contains(vm.host_addr + page * PAGE),
            "page {page}"
        );
    }
    assert_eq!(view.dirty_pages(), dirty.len());
}

per_mode! {
    fn guest_and_device_writes_are_reported_exactly(mode: Mode) {
        if !kvm_or_skip() {
            return;
        }
        let Some(tracker) = tracker(mode) else { return };
        let workload = small_workload();
        let mut vm = Vm::new(&workload, TrackerKind::Dirtytrack(mode)).expect("VM");
        let mut guest = vm.start_guest().expect("vCPU");
        std::thread::sleep(Duration::from_millis(20));
        guest.pause().expect("pause");
        let tracking = vm.start_tracking_with(tracker).expect("register guest RAM");
        let Tracking::Dirtytrack { tracker, .. } = &tracking else { unreachable!() };
        let mut shadow = Region::borrowed(vm.host_addr, vm.len);
        let guest_area = minivmm::FIRST_DATA_PAGE..minivmm::FIRST_DATA_PAGE + workload.guest_pages;
        let device_area = vm.len / PAGE - workload.device_pages..vm.len / PAGE;
        let (mut guest_pages, mut device_pages) = (0, 0);
        for cycle in 0..6u64 {
            let writes_before = vm.guest_writes();
            guest.resume().expect("resume");
            let device = vm.start_device(&workload).expect("device");
            std::thread::sleep(Duration::from_millis(30 + 20 * cycle));
            // One collect while both run: what it misses must be in the next one.
            let mut dirty = if cycle % 2 == 1 {
                tracker.collect().expect("collect while running")
            } else {
                DirtySet::new()
            };
            let device_writes = device.stop().expect("device thread");
            guest.pause().expect("pause");
            let paused = tracker.collect().expect("collect");
            check_views(&paused, &vm, &tracking);
            dirty.union(&paused);
            let changed = shadow.changed();
            let (n_changed, n_reported) = shadow.check(&dirty, true);
            guest_pages += changed.iter().filter(|p| guest_area.contains(p)).count();
            device_pages += changed.iter().filter(|p| device_area.contains(p)).count();
            eprintln!(
                "{mode:?} cycle {cycle}: guest {} writes, device {device_writes} writes; \
                 {n_changed} pages changed, {n_reported} reported",
                vm.guest_writes().wrapping_sub(writes_before)
            );
        }
        assert!(guest_pages > 0, "the guest wrote nothing: the test proved nothing");
        assert!(device_pages > 0, "the device wrote nothing: the test proved nothing");
        // Nothing runs now: the next collect is empty.
        let idle = tracker.collect().expect("collect");
        assert!(idle.is_empty(), "reported with nothing running: {idle:?}");
        guest.finish().expect("end the guest");
        drop(tracking);
    }
}

fn migration_is_exact(kind: TrackerKind) {
    let mut workload = small_workload();
    workload.ram_bytes = 32 << 20;
    let opts = MigrationOptions {
        converge_pages: 16,
        max_rounds: 4,
        warmup: Duration::from_millis(20),
        round_pause: Duration::from_millis(20),
    };
    let report = migrate(&workload, kind, &opts).expect("migration");
    for r in &report.rounds {
        eprintln!(
            "{}: round {} {} pages, {} guest writes",
            kind.name(),
            r.round,
            r.dirty_pages,
            r.guest_writes
        );
    }
    assert!(
        report.rounds.len() >= 3,
        "full copy, a round, the final round"
    );
    assert!(report.device_writes > 0, "the device wrote nothing");
    assert!(
        report.mismatched_pages.is_empty(),
        "LOST WRITES: {} pages of the destination differ from guest RAM (first {:?})",
        report.mismatched_pages.len(),
        &report.mismatched_pages[..report.mismatched_pages.len().min(8)]
    );
}

per_mode! {
    fn pre_copy_migration_with_dirtytrack_is_exact(mode: Mode) {
        if !kvm_or_skip() || tracker(mode).is_none() {
            return;
        }
        migration_is_exact(TrackerKind::Dirtytrack(mode));
    }
}

#[test]
fn pre_copy_migration_with_kvm_dirty_log_is_exact() {
    if !kvm_or_skip() {
        return;
    }
    migration_is_exact(TrackerKind::KvmDirtyLog);
}
