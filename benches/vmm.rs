//! A KVM guest's RAM, tracked by dirtytrack (async) or by KVM's dirty log + vm-memory's
//! `AtomicBitmap`, side by side (x86_64, needs `/dev/kvm`). The guest and the device thread are
//! the minimal VMM of `examples/minivmm/`.
//!
//! Per tracker and per dirty fraction of 256 MiB of guest RAM (1 %, 10 %, 100 %: the guest's
//! working set; a device thread also writes a 256-page ring through vm-memory all along):
//!
//! - `vmm_guest_sweep_256MiB`: the guest writes every page of its working set once, right after
//!   a collect re-protected them (throughput: guest writes per second while tracked);
//! - `vmm_harvest_256MiB`: one collect after such a sweep, guest paused (dirtytrack: one
//!   `PAGEMAP_SCAN` with re-protection; KVM: `KVM_GET_DIRTY_LOG` + `AtomicBitmap::get_and_reset`,
//!   ORed into one bitmap);
//!   Also `dirtytrack-no-vm`: the same collect over a plain mapping with the same pages populated
//!   and written, in no VM (the harvest's cost without KVM in the process);
//! - `vmm_downtime_256MiB`: a final round after a sweep: pause the vCPU, collect, copy the dirty
//!   pages to the destination.
//!
//! `cargo bench --bench vmm` (about 3–5 minutes here). Without `/dev/kvm` it prints why and
//! measures nothing. `DIRTYTRACK_VMM_BENCH_MIB` changes the RAM size (name keeps "256MiB" out:
//! the groups are named after the size used).

#[cfg(target_arch = "x86_64")]
#[path = "../examples/minivmm/mod.rs"]
mod minivmm;

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("benches/vmm: x86_64 only; nothing measured");
}

#[cfg(target_arch = "x86_64")]
fn main() {
    x86::main();
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::minivmm::{
        copy_dirty, kvm_available, Device, Guest, TrackerKind, Tracking, Vm, Workload, PAGE,
    };
    use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
    use dirtytrack::Mode;
    use std::time::{Duration, Instant};

    /// A VM set up for one (tracker, fraction) point: guest paused, tracking started, the
    /// device thread running.
    struct Setup {
        vm: Vm,
        guest: Guest,
        tracking: Tracking,
        _device: Option<Device>,
        dst: Vec<u8>,
        pages: u32,
    }

    impl Setup {
        fn new(ram: usize, percent: f64, kind: TrackerKind) -> Setup {
            let workload = Workload::percent(ram, percent);
            let mut vm = Vm::new(&workload, kind).expect("VM");
            let mut guest = vm.start_guest().expect("vCPU");
            std::thread::sleep(Duration::from_millis(20));
            guest.pause().expect("pause");
            let tracking = vm.start_tracking().expect("tracking");
            let device = vm.start_device(&workload);
            // The destination, faulted in once (its page faults are no part of a round).
            let mut dst = vec![0u8; vm.len];
            vm.copy_pages(0..vm.len / PAGE, &mut dst);
            let mut s = Setup {
                vm,
                guest,
                tracking,
                _device: device,
                dst,
                pages: workload.guest_pages as u32,
            };
            // Every page of the working set mapped once (first touch is not what is measured).
            s.sweep();
            s.vm.collect(&s.tracking).expect("collect");
            s
        }

        /// Lets the guest write every page of its working set once; returns how long it took.
        fn sweep(&mut self) -> Duration {
            let target = self.vm.guest_writes().wrapping_add(self.pages);
            let t = Instant::now();
            self.guest.resume().expect("resume");
            while (target.wrapping_sub(self.vm.guest_writes()) as i32) > 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
            let took = t.elapsed();
            self.guest.pause().expect("pause");
            took
        }

        fn collect(&self) -> Vec<u64> {
            self.vm.collect(&self.tracking).expect("collect")
        }
    }

    /// The same harvest on a plain mapping of the same size with the same pages populated
    /// (every page read once, the working set written), written by this thread, in a process
    /// with no VM: what the collect costs without KVM's MMU notifier in the way.
    fn harvest_without_vm(c: &mut Criterion, ram: usize, percent: f64) {
        let workload = Workload::percent(ram, percent);
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ram,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED, "mmap {ram} bytes");
        let base = addr as *mut u8;
        let tracker = dirtytrack::Tracker::builder()
            .mode(Mode::Async)
            .build()
            .expect("tracker");
        let id = tracker.register(base, ram).expect("register");
        let pages =
            super::minivmm::FIRST_DATA_PAGE..super::minivmm::FIRST_DATA_PAGE + workload.guest_pages;
        let mut stamp = 0u8;
        let mut write_working_set = || {
            stamp = stamp.wrapping_add(1);
            for p in pages.clone() {
                // SAFETY: inside the mapping, which only this thread uses.
                unsafe { base.add(p * PAGE).write_volatile(stamp) };
            }
        };
        for p in 0..ram / PAGE {
            // SAFETY: inside the mapping (a read populates the zero page, as the full copy does
            // to guest RAM).
            unsafe { base.add(p * PAGE).read_volatile() };
        }
        write_working_set();
        tracker.collect().expect("collect");
        let mut group = c.benchmark_group(format!("vmm_harvest_{}MiB", ram >> 20));
        group.sampling_mode(SamplingMode::Flat);
        group.bench_function(
            BenchmarkId::new("dirtytrack-no-vm", format!("{percent}pct")),
            |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        write_working_set();
                        let t = Instant::now();
                        let dirty = tracker.collect().expect("collect");
                        std::hint::black_box(dirty.kvm_bitmap(id));
                        total += t.elapsed();
                    }
                    total
                })
            },
        );
        group.finish();
        drop(tracker);
        // SAFETY: the mapping made above, no longer tracked nor used.
        unsafe { libc::munmap(addr, ram) };
    }

    pub fn main() {
        if let Err(e) = kvm_available() {
            println!("benches/vmm: no usable /dev/kvm ({e}); nothing measured");
            return;
        }
        let mib: usize = std::env::var("DIRTYTRACK_VMM_BENCH_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256);
        let mut c = Criterion::default()
            .configure_from_args()
            .sample_size(10)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(Duration::from_millis(10));
        for percent in [1.0, 10.0, 100.0] {
            for kind in [
                TrackerKind::Dirtytrack(Mode::Async),
                TrackerKind::KvmDirtyLog,
            ] {
                let mut s = Setup::new(mib << 20, percent, kind);
                let point = format!("{percent}pct");
                let mut group = c.benchmark_group(format!("vmm_guest_sweep_{mib}MiB"));
                group.sampling_mode(SamplingMode::Flat);
                group.throughput(Throughput::Elements(u64::from(s.pages)));
                group.bench_function(BenchmarkId::new(kind.name(), &point), |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            total += s.sweep();
                            s.collect();
                        }
                        total
                    })
                });
                group.finish();
                let mut group = c.benchmark_group(format!("vmm_harvest_{mib}MiB"));
                group.sampling_mode(SamplingMode::Flat);
                group.bench_function(BenchmarkId::new(kind.name(), &point), |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            s.sweep();
                            let t = Instant::now();
                            std::hint::black_box(s.collect());
                            total += t.elapsed();
                        }
                        total
                    })
                });
                group.finish();
                let mut group = c.benchmark_group(format!("vmm_downtime_{mib}MiB"));
                group.sampling_mode(SamplingMode::Flat);
                group.bench_function(BenchmarkId::new(kind.name(), &point), |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            s.sweep();
                            s.guest.resume().expect("resume");
                            let t = Instant::now();
                            s.guest.pause().expect("pause");
                            let bitmap = s.collect();
                            copy_dirty(&bitmap, &s.vm, &mut s.dst);
                            total += t.elapsed();
                        }
                        total
                    })
                });
                group.finish();
            }
            harvest_without_vm(&mut c, mib << 20, percent);
        }
        c.final_summary();
    }
}
