//! A minimal VMM on rust-vmm's crates, shared by `examples/vmm.rs`, `tests/kvm.rs` and
//! `benches/vmm.rs` (x86_64 only).
//!
//! - **Guest**: one vCPU in 64-bit long mode, the first 4 GiB identity-mapped with 2 MiB pages,
//!   114 bytes of code at guest physical 0x1000. (Long mode, not 32-bit protected mode: some
//!   KVM implementations, e.g. PVM, run only long mode natively and emulate every other mode
//!   instruction by instruction.) It sweeps a working set of
//!   pages with a stride, writing an ever-increasing counter into each page (so every write
//!   changes bytes), spinning `spin` iterations between writes, until the VMM sets a stop flag;
//!   then it halts. Resumed after the halt, it checks the flag again.
//! - **Device**: a thread that writes guest RAM through vm-memory (`Bytes::write_slice`), as
//!   device emulation does (virtio rings, network receive buffers), into a ring of pages at the
//!   end of RAM. Writes through vm-memory mark the region's `AtomicBitmap` when it has one.
//! - **Trackers**: dirtytrack (one range over guest RAM: sees the guest's writes, which fault in
//!   the host page table through KVM, and the device's) or KVM's dirty log (memory slot flag
//!   `KVM_MEM_LOG_DIRTY_PAGES`, `KVM_GET_DIRTY_LOG`) plus the vm-memory bitmap for the device's
//!   writes, which KVM does not see. Both answer with the same KVM-style bitmap (bit i = page i).
//! - **Migration**: pre-copy to a destination buffer: full copy, rounds of collect + copy while
//!   the guest and the device run, then pause both, a final round, and a byte-for-byte check.
#![allow(dead_code)]

use dirtytrack::{Mode, RangeId, Tracker};
use kvm_bindings::{kvm_segment, kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

/// Errors of the demo VMM: messages for a human.
pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Guest page size (x86: 4 KiB; the dirty bitmaps are at this granularity).
pub const PAGE: usize = 4096;

// Control block at guest physical 0 (u32 fields), written by the VMM, read by the guest.
/// Non-zero: the guest halts.
pub const CTL_STOP: u64 = 0x00;
/// First page of the guest's working set.
pub const CTL_FIRST: u64 = 0x04;
/// Number of pages of the working set.
pub const CTL_PAGES: u64 = 0x08;
/// Pages to advance per write (coprime with `CTL_PAGES` to visit every page).
pub const CTL_STRIDE: u64 = 0x0c;
/// Busy-loop iterations between two writes (the write rate).
pub const CTL_SPIN: u64 = 0x10;
/// Writes done so far (the guest's counter).
pub const CTL_COUNT: u64 = 0x14;
/// 1 while the guest is halted on the stop flag.
pub const CTL_HALTED: u64 = 0x18;

/// Where the guest code lives (page 1).
pub const CODE_GPA: u64 = 0x1000;
/// The page tables: PML4 at page 2, PDPT at page 3, four page directories at pages 4..8.
pub const PML4_GPA: u64 = 0x2000;
/// The first page the guest or the device may write (after the control block, the code and
/// the page tables).
pub const FIRST_DATA_PAGE: usize = 8;

/// The guest, assembled with `as --64` from:
///
/// ```text
/// start:  xor  %esi, %esi              # esi: page index in the working set
///         mov  COUNT, %edi             # edi: the counter
/// top:    cmpl $0, STOP
///         jne  halt
///         mov  %esi, %eax
///         add  FIRST, %eax
///         shl  $12, %rax               # rax: the page's address (identity mapped)
///         inc  %edi
///         mov  %edi, %edx
///         and  $0x3ff, %edx
///         mov  %edi, (%rax,%rdx,4)     # write the counter into word (counter % 1024)
///         mov  %edi, COUNT
///         add  STRIDE, %esi
///         cmp  PAGES, %esi
///         jb   nowrap
///         sub  PAGES, %esi
/// nowrap: mov  SPIN, %ecx
/// spin:   jecxz top
///         dec  %ecx
///         jmp  spin
/// halt:   movl $1, HALTED
///         hlt
///         movl $0, HALTED
///         jmp  top
/// ```
pub const GUEST_CODE: [u8; 114] = [
    0x31, 0xf6, // xor %esi,%esi
    0x8b, 0x3c, 0x25, 0x14, 0x00, 0x00, 0x00, // mov 0x14,%edi
    0x83, 0x3c, 0x25, 0x00, 0x00, 0x00, 0x00, 0x00, // cmpl $0x0,0x0
    0x75, 0x46, // jne halt
    0x89, 0xf0, // mov %esi,%eax
    0x03, 0x04, 0x25, 0x04, 0x00, 0x00, 0x00, // add 0x4,%eax
    0x48, 0xc1, 0xe0, 0x0c, // shl $0xc,%rax
    0xff, 0xc7, // inc %edi
    0x89, 0xfa, // mov %edi,%edx
    0x81, 0xe2, 0xff, 0x03, 0x00, 0x00, // and $0x3ff,%edx
    0x89, 0x3c, 0x90, // mov %edi,(%rax,%rdx,4)
    0x89, 0x3c, 0x25, 0x14, 0x00, 0x00, 0x00, // mov %edi,0x14
    0x03, 0x34, 0x25, 0x0c, 0x00, 0x00, 0x00, // add 0xc,%esi
    0x3b, 0x34, 0x25, 0x08, 0x00, 0x00, 0x00, // cmp 0x8,%esi
    0x72, 0x07, // jb nowrap
    0x2b, 0x34, 0x25, 0x08, 0x00, 0x00, 0x00, // sub 0x8,%esi
    0x8b, 0x0c, 0x25, 0x10, 0x00, 0x00, 0x00, // mov 0x10,%ecx
    0x67, 0xe3, 0xb4, // jecxz top
    0xff, 0xc9, // dec %ecx
    0xeb, 0xf9, // jmp spin
    0xc7, 0x04, 0x25, 0x18, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, // movl $0x1,0x18
    0xf4, // hlt
    0xc7, 0x04, 0x25, 0x18, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // movl $0x0,0x18
    0xeb, 0x97, // jmp top
];

/// What the guest and the device do.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Guest RAM in bytes (a multiple of 4 KiB, at most 3 GiB).
    pub ram_bytes: usize,
    /// Pages in the guest's working set (starting at [`FIRST_DATA_PAGE`]).
    pub guest_pages: usize,
    /// Pages the guest advances per write.
    pub stride: u32,
    /// Busy-loop iterations between guest writes (0: as fast as it can).
    pub spin: u32,
    /// Pages of the device's ring, at the end of RAM (0: no device thread).
    pub device_pages: usize,
    /// 64-byte device writes per burst.
    pub device_burst: usize,
    /// Pause between device bursts.
    pub device_interval: Duration,
}

impl Workload {
    /// The guest sweeps `percent` of RAM (at least one page) with stride 1; a device writes
    /// 16 random spots of a 256-page ring every 100 µs.
    pub fn percent(ram_bytes: usize, percent: f64) -> Workload {
        let data_pages = ram_bytes / PAGE - FIRST_DATA_PAGE;
        let guest_pages = ((data_pages as f64 * percent / 100.0) as usize).clamp(1, data_pages);
        Workload {
            ram_bytes,
            guest_pages,
            stride: 1,
            spin: 0,
            device_pages: 256.min(data_pages),
            device_burst: 16,
            device_interval: Duration::from_micros(100),
        }
    }
}

/// Which tracker answers "which pages changed".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackerKind {
    /// dirtytrack over the guest RAM mapping (async or sync mode).
    Dirtytrack(Mode),
    /// KVM's dirty log for the guest's writes + vm-memory's `AtomicBitmap` for the device's.
    KvmDirtyLog,
}

impl TrackerKind {
    /// A short name for tables.
    pub fn name(&self) -> &'static str {
        match self {
            TrackerKind::Dirtytrack(Mode::Sync) => "dirtytrack-sync",
            TrackerKind::Dirtytrack(_) => "dirtytrack",
            TrackerKind::KvmDirtyLog => "kvm-dirty-log",
        }
    }
}

/// Guest memory as Firecracker types it: a bitmap per region only when the VMM tracks its own
/// writes (`None`: vm-memory marks nothing).
pub type GuestMemory = GuestMemoryMmap<Option<AtomicBitmap>>;

/// The KVM memory slot of guest RAM.
const SLOT: u32 = 0;

/// A VM with one vCPU and one memory slot.
pub struct Vm {
    _kvm: Kvm,
    vm: VmFd,
    vcpu: Option<VcpuFd>,
    /// Guest RAM; the device thread holds a clone of the `Arc`.
    pub mem: Arc<GuestMemory>,
    region: Arc<MmapRegion<Option<AtomicBitmap>>>,
    /// The host address of guest physical 0.
    pub host_addr: usize,
    /// Guest RAM length in bytes.
    pub len: usize,
    kind: TrackerKind,
}

/// Whether this machine can run a KVM guest (`/dev/kvm` opens).
pub fn kvm_available() -> Result<(), String> {
    Kvm::new().map(drop).map_err(|e| format!("/dev/kvm: {e}"))
}

impl Vm {
    /// Creates the VM, maps `workload.ram_bytes` of private anonymous guest RAM, loads the
    /// guest code and the control block. Nothing runs yet.
    pub fn new(workload: &Workload, kind: TrackerKind) -> Res<Vm> {
        let len = workload.ram_bytes;
        if len % PAGE != 0 || len > 3 << 30 || len / PAGE <= FIRST_DATA_PAGE {
            return Err(format!("guest RAM {len:#x}: a multiple of 4 KiB, 36 KiB to 3 GiB").into());
        }
        let data_pages = len / PAGE - FIRST_DATA_PAGE;
        if workload.guest_pages == 0
            || workload.guest_pages > data_pages
            || workload.stride as usize >= workload.guest_pages.max(2)
            || workload.device_pages > data_pages
        {
            return Err(
                format!("workload {workload:?} does not fit {data_pages} data pages").into(),
            );
        }
        let kvm = Kvm::new().map_err(|e| format!("open /dev/kvm: {e}"))?;
        let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
        // Needed by Intel CPUs for real-mode emulation; outside guest RAM.
        vm.set_tss_address(0xfffb_d000)
            .map_err(|e| format!("KVM_SET_TSS_ADDR: {e}"))?;
        let bitmap = match kind {
            TrackerKind::KvmDirtyLog => Some(AtomicBitmap::new(
                len,
                NonZeroUsize::new(PAGE).ok_or("page size")?,
            )),
            TrackerKind::Dirtytrack(_) => None,
        };
        let region = MmapRegionBuilder::new_with_bitmap(len, bitmap)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| format!("mmap guest RAM: {e}"))?;
        let region = Arc::new(region);
        let host_addr = region.as_ptr() as usize;
        let guest_region = GuestRegionMmap::with_arc(region.clone(), GuestAddress(0))
            .ok_or("guest region overflows")?;
        let mem = GuestMemoryMmap::from_regions(vec![guest_region])
            .map_err(|e| format!("guest memory: {e}"))?;
        let flags = match kind {
            TrackerKind::KvmDirtyLog => KVM_MEM_LOG_DIRTY_PAGES,
            TrackerKind::Dirtytrack(_) => 0,
        };
        let slot = kvm_userspace_memory_region {
            slot: SLOT,
            flags,
            guest_phys_addr: 0,
            memory_size: len as u64,
            userspace_addr: host_addr as u64,
        };
        // SAFETY: `userspace_addr..+memory_size` is the mapping `region` owns. It stays mapped
        // while this `Vm`, or any `Guest` or `Device` (they hold `mem`, which holds `region`),
        // lives. Even if the VM outlived it, KVM reaches guest RAM only through this process's
        // page tables (get_user_pages, copy_to_user): an unmapped slot makes KVM_RUN fail with
        // EFAULT, it does not touch freed memory.
        unsafe { vm.set_user_memory_region(slot) }
            .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
        let vcpu = vm
            .create_vcpu(0)
            .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
        let mem = Arc::new(mem);
        mem.write_slice(&GUEST_CODE, GuestAddress(CODE_GPA))?;
        for (field, value) in [
            (CTL_STOP, 0u32),
            (CTL_FIRST, FIRST_DATA_PAGE as u32),
            (CTL_PAGES, workload.guest_pages as u32),
            (CTL_STRIDE, workload.stride),
            (CTL_SPIN, workload.spin),
            (CTL_COUNT, 0),
            (CTL_HALTED, 0),
        ] {
            mem.write_obj(value, GuestAddress(field))?;
        }
        mem.write_slice(&page_tables(), GuestAddress(PML4_GPA))?;
        setup_vcpu(&vcpu)?;
        Ok(Vm {
            vm,
            vcpu: Some(vcpu),
            mem,
            region,
            host_addr,
            len,
            kind,
            _kvm: kvm,
        })
    }

    /// Guest RAM as bytes, for comparisons. Only while nothing writes it: the vCPU paused (or
    /// not started) and the device thread stopped.
    pub fn ram_quiescent(&self) -> &[u8] {
        // SAFETY: `region` maps `len` readable bytes for as long as `self` lives; the caller
        // guarantees no guest or device write while the slice is used.
        unsafe { std::slice::from_raw_parts(self.host_addr as *const u8, self.len) }
    }

    /// Copies guest pages `pages` into the same pages of `dst` while the guest and the device
    /// may be writing them, as every VMM's migration does: a racing write leaves a torn page in
    /// `dst`, and the tracker reports that page again for the next round.
    pub fn copy_pages(&self, pages: std::ops::Range<usize>, dst: &mut [u8]) {
        let bytes = pages.start * PAGE..pages.end * PAGE;
        assert!(
            bytes.end <= self.len && bytes.end <= dst.len(),
            "pages {pages:?} out of RAM"
        );
        // SAFETY: `bytes` is inside guest RAM (checked), mapped readable while `self` lives, and
        // inside `dst`, which cannot overlap it (guest RAM is never a Rust allocation). Only raw
        // pointers touch guest RAM here: no reference asserts that its bytes stay unchanged.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (self.host_addr + bytes.start) as *const u8,
                dst[bytes.clone()].as_mut_ptr(),
                bytes.len(),
            )
        }
    }

    /// The guest's write counter.
    pub fn guest_writes(&self) -> u32 {
        self.mem.read_obj(GuestAddress(CTL_COUNT)).unwrap_or(0)
    }

    /// Starts the vCPU thread. Only once per VM.
    pub fn start_guest(&mut self) -> Res<Guest> {
        let mut vcpu = self.vcpu.take().ok_or("the guest was already started")?;
        let (halted_tx, halted_rx) = mpsc::channel::<Result<(), String>>();
        let (resume_tx, resume_rx) = mpsc::channel::<bool>();
        let thread = std::thread::Builder::new()
            .name("vcpu0".into())
            .spawn(move || loop {
                let exit = match vcpu.run() {
                    Ok(VcpuExit::Hlt) => Ok(()),
                    Ok(other) => Err(format!("unexpected vCPU exit {other:?}")),
                    Err(e) => Err(format!("KVM_RUN: {e}")),
                };
                let failed = exit.is_err();
                if halted_tx.send(exit).is_err() || failed {
                    return;
                }
                // Halted: wait until the VMM resumes (true) or ends (false) the guest.
                match resume_rx.recv() {
                    Ok(true) => continue,
                    _ => return,
                }
            })?;
        Ok(Guest {
            mem: self.mem.clone(),
            thread: Some(thread),
            halted_rx,
            resume_tx,
            running: true,
        })
    }

    /// Starts the device thread (`None` when the workload has no device ring).
    pub fn start_device(&self, workload: &Workload) -> Option<Device> {
        if workload.device_pages == 0 {
            return None;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let writes = Arc::new(AtomicU64::new(0));
        let first = (self.len / PAGE - workload.device_pages) as u64;
        let (mem, s, w) = (self.mem.clone(), stop.clone(), writes.clone());
        let (ring, burst, interval) = (
            workload.device_pages as u64,
            workload.device_burst,
            workload.device_interval,
        );
        // Every device thread writes values no other wrote before, so every write changes bytes
        // (the test oracle counts a page written with the same bytes as unchanged).
        static DEVICE_RUNS: AtomicU64 = AtomicU64::new(1);
        let run = DEVICE_RUNS.fetch_add(1, Ordering::Relaxed);
        let device = move || -> Res<()> {
            let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ run.wrapping_mul(0x2545_f491_4f6c_dd1d);
            let mut n = run << 40;
            while !s.load(Ordering::Relaxed) {
                for _ in 0..burst {
                    rng = rng
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    let page = first + (rng >> 33) % ring;
                    let spot = (rng >> 20) % (PAGE as u64 / 64);
                    n += 1;
                    let data = [n.to_le_bytes(); 8].concat();
                    mem.write_slice(&data, GuestAddress(page * PAGE as u64 + spot * 64))?;
                }
                w.fetch_add(burst as u64, Ordering::Relaxed);
                if !interval.is_zero() {
                    std::thread::sleep(interval);
                }
            }
            Ok(())
        };
        let thread = std::thread::Builder::new()
            .name("device".into())
            .spawn(device)
            .ok()?;
        Some(Device {
            stop,
            writes,
            thread: Some(thread),
        })
    }

    /// Starts tracking guest RAM with this VM's tracker.
    pub fn start_tracking(&self) -> Res<Tracking> {
        match self.kind {
            TrackerKind::Dirtytrack(mode) => {
                self.start_tracking_with(Tracker::builder().mode(mode).build()?)
            }
            TrackerKind::KvmDirtyLog => {
                // The slot logs since it was created: start from a clean log and bitmap.
                self.vm.get_dirty_log(SLOT, self.len)?;
                self.device_bitmap()?.reset();
                Ok(Tracking::KvmDirtyLog)
            }
        }
    }

    /// Tracks guest RAM with `tracker` (one range over the whole RAM mapping).
    pub fn start_tracking_with(&self, tracker: Tracker) -> Res<Tracking> {
        let id = tracker.register(self.host_addr as *mut u8, self.len)?;
        Ok(Tracking::Dirtytrack { tracker, id })
    }

    fn device_bitmap(&self) -> Res<&AtomicBitmap> {
        self.region
            .bitmap()
            .as_ref()
            .ok_or_else(|| "guest memory has no AtomicBitmap".into())
    }

    /// The pages written since the previous collect (or `start_tracking`), as a KVM-style bitmap
    /// over guest RAM (bit i = guest page i).
    pub fn collect(&self, tracking: &Tracking) -> Res<Vec<u64>> {
        match tracking {
            Tracking::Dirtytrack { tracker, id } => {
                let dirty = tracker.collect()?;
                Ok(dirty
                    .kvm_bitmap(*id)
                    .ok_or("the collect did not cover guest RAM")?)
            }
            Tracking::KvmDirtyLog => {
                // Guest writes (EPT) from KVM, the VMM's own writes from vm-memory's bitmap.
                let mut log = self.vm.get_dirty_log(SLOT, self.len)?;
                let device = self.device_bitmap()?.get_and_reset();
                for (l, d) in log.iter_mut().zip(device) {
                    *l |= d;
                }
                Ok(log)
            }
        }
    }
}

/// The active tracker of a VM.
pub enum Tracking {
    /// dirtytrack with guest RAM as range `id`.
    Dirtytrack {
        /// The tracker.
        tracker: Tracker,
        /// Guest RAM.
        id: RangeId,
    },
    /// KVM's dirty log + the vm-memory bitmap.
    KvmDirtyLog,
}

/// Identity map of the first 4 GiB with 2 MiB pages: PML4 -> PDPT -> 4 page directories
/// (pages 2..8 of guest RAM).
fn page_tables() -> Vec<u8> {
    const PRESENT_RW: u64 = 0x3;
    const HUGE: u64 = 0x80;
    let mut entries = vec![0u64; 6 * 512];
    entries[0] = (PML4_GPA + 0x1000) | PRESENT_RW; // PML4[0] -> PDPT
    for pd in 0..4u64 {
        entries[512 + pd as usize] = (PML4_GPA + 0x2000 + pd * 0x1000) | PRESENT_RW;
        for i in 0..512u64 {
            let gpa = (pd * 512 + i) << 21;
            entries[1024 + (pd * 512 + i) as usize] = gpa | PRESENT_RW | HUGE;
        }
    }
    entries.iter().flat_map(|e| e.to_le_bytes()).collect()
}

/// 64-bit long mode, flat segments, paging through [`page_tables`]; starts at [`CODE_GPA`].
fn setup_vcpu(vcpu: &VcpuFd) -> Res<()> {
    let mut sregs = vcpu.get_sregs()?;
    let flat = |selector: u16, type_: u8| kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.cs = kvm_segment {
        l: 1,
        db: 0,
        ..flat(0x08, 0xb) // 64-bit code, execute/read, accessed
    };
    let data = flat(0x10, 0x3); // read/write, accessed
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.cr3 = PML4_GPA;
    sregs.cr4 = 0x20; // PAE
    sregs.cr0 = 0x8001_0031; // PG | WP | NE | ET | PE
    sregs.efer = 0x500; // LMA | LME
    vcpu.set_sregs(&sregs)?;
    let mut regs = vcpu.get_regs()?;
    regs.rip = CODE_GPA;
    regs.rflags = 0x2;
    vcpu.set_regs(&regs)?;
    Ok(())
}

/// The running vCPU thread.
pub struct Guest {
    mem: Arc<GuestMemory>,
    thread: Option<JoinHandle<()>>,
    halted_rx: mpsc::Receiver<Result<(), String>>,
    resume_tx: mpsc::Sender<bool>,
    running: bool,
}

impl Guest {
    /// Sets the stop flag (a VMM write, through vm-memory) and waits until the guest halted.
    pub fn pause(&mut self) -> Res<()> {
        if !self.running {
            return Ok(());
        }
        self.mem.write_obj(1u32, GuestAddress(CTL_STOP))?;
        let r = self
            .halted_rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(|e| format!("the guest did not halt: {e}"))?;
        self.running = false;
        r.map_err(|e| e.into())
    }

    /// Clears the stop flag and lets the halted guest run on.
    pub fn resume(&mut self) -> Res<()> {
        if self.running {
            return Ok(());
        }
        self.mem.write_obj(0u32, GuestAddress(CTL_STOP))?;
        self.resume_tx.send(true)?;
        self.running = true;
        Ok(())
    }

    /// Pauses the guest and ends the vCPU thread.
    pub fn finish(mut self) -> Res<()> {
        self.pause()?;
        self.end();
        Ok(())
    }

    fn end(&mut self) {
        let _ = self.resume_tx.send(false);
        if let Some(t) = self.thread.take() {
            if !self.running {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if self.running {
            let _ = self.pause();
        }
        self.end();
    }
}

/// The running device thread.
pub struct Device {
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
    thread: Option<JoinHandle<Res<()>>>,
}

impl Device {
    /// Stops the thread; returns how many writes it made.
    pub fn stop(mut self) -> Res<u64> {
        self.halt()?;
        Ok(self.writes.load(Ordering::Relaxed))
    }

    fn halt(&mut self) -> Res<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| "the device thread panicked")?,
            None => Ok(()),
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}

/// Pre-copy settings.
#[derive(Debug, Clone)]
pub struct MigrationOptions {
    /// Stop iterating when a round finds at most this many dirty pages.
    pub converge_pages: usize,
    /// At most this many rounds after the full copy.
    pub max_rounds: usize,
    /// Let the guest run this long before tracking starts (warm-up).
    pub warmup: Duration,
    /// Wait this long between rounds (lets the guest dirty more; 0 for back-to-back).
    pub round_pause: Duration,
}

impl Default for MigrationOptions {
    fn default() -> Self {
        MigrationOptions {
            converge_pages: 64,
            max_rounds: 8,
            warmup: Duration::from_millis(300),
            round_pause: Duration::ZERO,
        }
    }
}

/// One round of the migration.
#[derive(Debug, Clone)]
pub struct Round {
    /// 0 is the full copy; the final round (guest paused) is the last.
    pub round: usize,
    /// Pages copied.
    pub dirty_pages: usize,
    /// Time to get the dirty set (collect / dirty log + bitmap).
    pub collect: Duration,
    /// Time to copy the dirty pages.
    pub copy: Duration,
    /// Guest writes during the round (its counter): from the end of the previous round (the
    /// pause between rounds included) to the end of the copy.
    pub guest_writes: u64,
}

/// What a migration did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The tracker used.
    pub kind: TrackerKind,
    /// Full copy, iterative rounds, final round.
    pub rounds: Vec<Round>,
    /// From "pause" to "destination complete": stopping the device and the vCPU, the final
    /// collect and copy.
    pub downtime: Duration,
    /// Guest writes per second while tracked (before the pause).
    pub guest_writes_per_sec: f64,
    /// Guest writes per second during the warm-up, before tracking started.
    pub untracked_writes_per_sec: f64,
    /// Writes the device thread made.
    pub device_writes: u64,
    /// Pages where the destination differs from guest RAM after the final round (must be 0).
    pub mismatched_pages: Vec<usize>,
}

/// Copies the pages set in `bitmap` (bit i = guest page i) from guest RAM to `dst`, a run of
/// pages at a time; returns how many pages.
pub fn copy_dirty(bitmap: &[u64], vm: &Vm, dst: &mut [u8]) -> usize {
    let mut pages = 0;
    let mut page = 0;
    let total = vm.len / PAGE;
    while page < total {
        let word = bitmap.get(page / 64).copied().unwrap_or(0) >> (page % 64);
        if word == 0 {
            page = (page / 64 + 1) * 64;
            continue;
        }
        page += word.trailing_zeros() as usize;
        let mut end = page;
        while end < total
            && bitmap
                .get(end / 64)
                .is_some_and(|w| w >> (end % 64) & 1 == 1)
        {
            end += 1;
        }
        vm.copy_pages(page..end, dst);
        pages += end - page;
        page = end;
    }
    pages
}

/// Pages where `a` and `b` differ.
pub fn differing_pages(a: &[u8], b: &[u8]) -> Vec<usize> {
    a.chunks(PAGE)
        .zip(b.chunks(PAGE))
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, _)| i)
        .collect()
}

/// Boots the guest and the device of `workload`, and migrates guest RAM with `kind`'s tracker
/// into a new destination buffer; verifies the destination byte for byte.
pub fn migrate(workload: &Workload, kind: TrackerKind, opts: &MigrationOptions) -> Res<Report> {
    let mut vm = Vm::new(workload, kind)?;
    let mut guest = vm.start_guest()?;
    let device = vm.start_device(workload);
    let (t, w) = (Instant::now(), vm.guest_writes());
    std::thread::sleep(opts.warmup);
    let untracked_writes_per_sec =
        f64::from(vm.guest_writes().wrapping_sub(w)) / t.elapsed().as_secs_f64();
    let tracking = vm.start_tracking()?;
    let mut dst = vec![0u8; vm.len];
    let mut rounds = Vec::new();
    let tracked_since = Instant::now();
    let writes_at_start = vm.guest_writes();

    // Round 0: everything.
    let mut writes_before = vm.guest_writes();
    let t = Instant::now();
    vm.copy_pages(0..vm.len / PAGE, &mut dst);
    rounds.push(Round {
        round: 0,
        dirty_pages: vm.len / PAGE,
        collect: Duration::ZERO,
        copy: t.elapsed(),
        guest_writes: u64::from(vm.guest_writes().wrapping_sub(writes_before)),
    });
    // Iterative rounds while the guest runs.
    for round in 1..=opts.max_rounds {
        writes_before = vm.guest_writes();
        if !opts.round_pause.is_zero() {
            std::thread::sleep(opts.round_pause);
        }
        let t = Instant::now();
        let bitmap = vm.collect(&tracking)?;
        let collect = t.elapsed();
        let t = Instant::now();
        let dirty_pages = copy_dirty(&bitmap, &vm, &mut dst);
        rounds.push(Round {
            round,
            dirty_pages,
            collect,
            copy: t.elapsed(),
            guest_writes: u64::from(vm.guest_writes().wrapping_sub(writes_before)),
        });
        if dirty_pages <= opts.converge_pages {
            break;
        }
    }
    let tracked_for = tracked_since.elapsed();
    let guest_writes = vm.guest_writes().wrapping_sub(writes_at_start);
    // Downtime: stop the device and the vCPU, final round.
    let t_pause = Instant::now();
    let device_writes = match device {
        Some(d) => d.stop()?,
        None => 0,
    };
    writes_before = vm.guest_writes();
    guest.pause()?;
    let t = Instant::now();
    let bitmap = vm.collect(&tracking)?;
    let collect = t.elapsed();
    let t = Instant::now();
    let dirty_pages = copy_dirty(&bitmap, &vm, &mut dst);
    let copy = t.elapsed();
    let downtime = t_pause.elapsed();
    rounds.push(Round {
        round: rounds.len(),
        dirty_pages,
        collect,
        copy,
        guest_writes: u64::from(vm.guest_writes().wrapping_sub(writes_before)),
    });
    // Everything stopped: guest RAM is quiescent.
    let mismatched_pages = differing_pages(vm.ram_quiescent(), &dst);
    guest.finish()?;
    drop(tracking);
    Ok(Report {
        kind,
        rounds,
        downtime,
        guest_writes_per_sec: f64::from(guest_writes) / tracked_for.as_secs_f64(),
        untracked_writes_per_sec,
        device_writes,
        mismatched_pages,
    })
}
