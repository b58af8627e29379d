//! The public API's argument checking against real mappings: one async-mode `Tracker` (built
//! once), a fixed layout of real mappings with unmapped holes, and arbitrary sequences of
//! register (addresses derived from the mappings ± arbitrary offsets: unaligned, huge, zero,
//! overflowing, across holes), unregister / collect_range / peek_range / clear_range / range
//! of arbitrary ids, collect / peek / clear, and writes.
//!
//! Invariants: no panic; every error is a documented variant whose condition holds (with the
//! right fields); a register that should succeed does; a page written while registered is
//! reported by the next collect, and nothing else is (the layout is exact memory: private and
//! shared anonymous, private file); the tracker stays usable (every input ends by unregistering
//! everything and checking that the tracker is empty and collects nothing).
//!
//! Safety of the harness: a register that passes the argument checks is only issued when it
//! cannot touch memory that is not ours: the range lies inside the harness's reservation, below
//! the lowest mapping, or above the user address space (except `[vsyscall]`), or it contains a
//! page there that is verified unmapped (then the tracker must refuse it before registering
//! anything).

#![no_main]

use arbitrary::Arbitrary;
use dirtytrack::{Error, Mode, RangeId, Tracker};
use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, OnceLock};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Unmapped.
    Hole,
    /// Private anonymous, read-write.
    PrivateRw,
    /// Shared anonymous (shmem), read-write.
    SharedRw,
    /// Private anonymous, registered with another tracker (its userfaultfd owns it).
    OtherTracker,
    /// Private anonymous, read-only.
    ReadOnly,
    /// A memfd mapped shared from a read-only fd (no `VM_MAYWRITE`).
    SharedReadOnlyFile,
    /// A memfd mapped private, read-write.
    PrivateFileRw,
}

const LAYOUT: [(Kind, usize); 11] = [
    (Kind::Hole, 2),
    (Kind::PrivateRw, 16),
    (Kind::Hole, 2),
    (Kind::PrivateRw, 16),
    (Kind::SharedRw, 8),
    (Kind::OtherTracker, 4),
    (Kind::ReadOnly, 4),
    (Kind::SharedReadOnlyFile, 4),
    (Kind::PrivateFileRw, 4),
    (Kind::PrivateRw, 16),
    (Kind::Hole, 4),
];

fn writable(k: Kind) -> bool {
    matches!(k, Kind::PrivateRw | Kind::SharedRw | Kind::PrivateFileRw)
}

struct World {
    t: Tracker,
    /// Owns the `OtherTracker` pages.
    other: Tracker,
    other_id: RangeId,
    ps: usize,
    /// The reservation `[base, base + kinds.len() * ps)`, one kind per page.
    base: usize,
    kinds: Vec<Kind>,
    /// `[0, low_end)` is unmapped (below the lowest mapping).
    low_end: usize,
    /// `[high_start, 2^64)` is unmapped except `[vsyscall]`.
    high_start: usize,
    vsyscall: Option<usize>,
    /// `RangeId` is a plain `u64` in memory (checked at start-up): ids can be made up.
    synthetic_ids: bool,
    /// The highest id number the tracker returned so far.
    last_id: Mutex<u64>,
}

impl World {
    fn res_end(&self) -> usize {
        self.base + self.kinds.len() * self.ps
    }
    fn kind_at(&self, addr: usize) -> Option<Kind> {
        (addr >= self.base && addr < self.res_end()).then(|| self.kinds[(addr - self.base) / self.ps])
    }
    /// Start address of page `page` of the `run`-th non-hole run of the layout.
    fn run_page(&self, run: u8, page: u8) -> (usize, Kind) {
        let runs: Vec<(usize, Kind, usize)> = {
            let mut at = 0;
            let mut v = Vec::new();
            for &(k, n) in &LAYOUT {
                v.push((at, k, n));
                at += n;
            }
            v
        };
        let (first, k, n) = runs[run as usize % runs.len()];
        (self.base + (first + page as usize % n) * self.ps, k)
    }
}

fn mmap(addr: usize, len: usize, prot: i32, flags: i32, fd: i32) -> usize {
    // SAFETY: maps memory inside the harness's own reservation (MAP_FIXED) or anywhere (NULL).
    let p = unsafe { libc::mmap(addr as *mut libc::c_void, len, prot, flags, fd, 0) };
    assert_ne!(p, libc::MAP_FAILED, "mmap: {}", std::io::Error::last_os_error());
    p as usize
}

fn memfd(len: usize) -> i32 {
    // SAFETY: plain system calls on a fd we own.
    unsafe {
        let fd = libc::memfd_create(c"dirtytrack-fuzz".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0);
        assert_eq!(libc::ftruncate(fd, len as libc::off_t), 0);
        fd
    }
}

/// Whether the page at `addr` is unmapped right now (`mincore` fails with `ENOMEM`).
fn unmapped(addr: usize, ps: usize) -> bool {
    let mut v = 0u8;
    // SAFETY: `v` receives one byte for the one page asked about.
    let rc = unsafe { libc::mincore(addr as *mut libc::c_void, ps, &mut v) };
    rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOMEM)
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let ps = dirtytrack::page_size();
        let t = Tracker::builder()
            .mode(Mode::Async)
            .build()
            .expect("api_arguments needs async mode (Linux 6.7+ with userfaultfd access)");
        let other = Tracker::builder().mode(Mode::Async).build().unwrap();
        let total: usize = LAYOUT.iter().map(|&(_, n)| n).sum();
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        let base = mmap(0, total * ps, libc::PROT_NONE, flags, -1);
        let (rw, ro) = (libc::PROT_READ | libc::PROT_WRITE, libc::PROT_READ);
        let fixed = libc::MAP_FIXED;
        let mut kinds = Vec::new();
        let mut other_id = None;
        for &(k, n) in &LAYOUT {
            let (a, len) = (base + kinds.len() * ps, n * ps);
            match k {
                // SAFETY: unmapping part of our own reservation.
                Kind::Hole => assert_eq!(unsafe { libc::munmap(a as *mut _, len) }, 0),
                Kind::PrivateRw => _ = mmap(a, len, rw, flags | fixed, -1),
                Kind::SharedRw => {
                    _ = mmap(a, len, rw, libc::MAP_SHARED | libc::MAP_ANONYMOUS | fixed, -1)
                }
                Kind::OtherTracker => {
                    mmap(a, len, rw, flags | fixed, -1);
                    other_id = Some(other.register(a as *mut u8, len).unwrap());
                }
                Kind::ReadOnly => _ = mmap(a, len, ro, flags | fixed, -1),
                Kind::SharedReadOnlyFile => {
                    let fd = memfd(len);
                    let path = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).unwrap();
                    // SAFETY: opening our own memfd again, read-only.
                    let rofd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
                    assert!(rofd >= 0);
                    mmap(a, len, ro, libc::MAP_SHARED | fixed, rofd);
                    // SAFETY: the mapping keeps the file alive.
                    unsafe { libc::close(rofd) };
                    unsafe { libc::close(fd) };
                }
                Kind::PrivateFileRw => {
                    let fd = memfd(len);
                    mmap(a, len, rw, libc::MAP_PRIVATE | fixed, fd);
                    // SAFETY: the mapping keeps the file alive.
                    unsafe { libc::close(fd) };
                }
            }
            kinds.extend(std::iter::repeat(k).take(n));
        }

        // What lies outside the reservation, from /proc/self/maps.
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let mut lowest = usize::MAX;
        let mut highest = 0;
        let mut vsyscall = None;
        for line in maps.lines() {
            let range = line.split(' ').next().unwrap();
            let (s, e) = range.split_once('-').unwrap();
            let (s, e) = (usize::from_str_radix(s, 16).unwrap(), usize::from_str_radix(e, 16).unwrap());
            if line.ends_with("[vsyscall]") {
                vsyscall = Some(s);
                assert_eq!(e - s, ps);
                continue;
            }
            lowest = lowest.min(s);
            highest = highest.max(e);
        }
        let low_end = (lowest & !(ps - 1)).min(1 << 20);
        let high_start = highest.max(1 << 47).next_multiple_of(ps);
        if let Some(v) = vsyscall {
            assert!(v >= high_start, "[vsyscall] below the highest mapping");
        }

        // RangeId is `RangeId(u64)`: check that a u64 transmutes to the same id.
        let other_id = other_id.unwrap();
        let n: u64 = format!("{other_id:?}")
            .trim_start_matches("RangeId(")
            .trim_end_matches(')')
            .parse()
            .unwrap();
        // SAFETY: same size (checked by transmute); validity checked right below.
        let synthetic_ids = unsafe {
            std::mem::transmute::<u64, RangeId>(n) == other_id
                && std::mem::transmute::<u64, RangeId>(n + 1) != other_id
        };
        World {
            t,
            other,
            other_id,
            ps,
            base,
            kinds,
            low_end,
            high_start,
            vsyscall,
            synthetic_ids,
            last_id: Mutex::new(0),
        }
    })
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Base {
    Reservation,
    ReservationEnd,
    Low,
    High,
    Vsyscall,
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Addr {
    base: Base,
    page: i8,
    /// Added as is (0: aligned).
    byte: u16,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Len {
    Pages(u8),
    Bytes(u16),
    PowerOfTwo(u8),
    Max,
    /// Just enough to wrap around the address space (plus a few pages).
    Wrap(u8),
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum IdSel {
    /// The n-th id returned by register in this input (possibly unregistered since).
    Issued(u8),
    /// The other tracker's id.
    FromOther,
    /// A made-up id near the last one issued.
    NearLast(i8),
    Raw(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Op {
    Register(Addr, Len),
    /// A well-formed range starting on page `page` of run `run` of the layout.
    RegisterRun { run: u8, page: u8, pages: u8 },
    Unregister(IdSel),
    Collect,
    Peek,
    Clear,
    CollectRange(IdSel),
    PeekRange(IdSel),
    ClearRange(IdSel),
    Range(IdSel),
    Write { run: u8, page: u8 },
}

/// The shadow model of one input.
#[derive(Default)]
struct Model {
    /// Live ranges in registration order: (id, start, len).
    live: Vec<(RangeId, usize, usize)>,
    /// Pages written since the last collect / clear / register of each live range.
    pending: BTreeMap<RangeId, BTreeSet<usize>>,
    issued: Vec<RangeId>,
}

impl Model {
    fn find(&self, id: RangeId) -> Option<(usize, usize)> {
        self.live.iter().find(|l| l.0 == id).map(|l| (l.1, l.2))
    }
}

fn id_number(id: RangeId) -> u64 {
    format!("{id:?}")
        .trim_start_matches("RangeId(")
        .trim_end_matches(')')
        .parse()
        .unwrap()
}

fn pick_id(w: &World, m: &Model, sel: IdSel) -> Option<RangeId> {
    let synthetic = |n: u64| {
        // SAFETY: `RangeId` is a `u64` in memory (checked at start-up); any value is valid.
        w.synthetic_ids.then(|| unsafe { std::mem::transmute::<u64, RangeId>(n) })
    };
    match sel {
        IdSel::Issued(i) if !m.issued.is_empty() => Some(m.issued[i as usize % m.issued.len()]),
        IdSel::Issued(_) => None,
        IdSel::FromOther => Some(w.other_id),
        IdSel::NearLast(d) => synthetic((*w.last_id.lock().unwrap()).wrapping_add(d as i64 as u64)),
        IdSel::Raw(n) => synthetic(n),
    }
}

fn resolve_addr(w: &World, a: Addr) -> usize {
    let base = match a.base {
        Base::Reservation => w.base,
        Base::ReservationEnd => w.res_end(),
        Base::Low => 0,
        Base::High => w.high_start,
        Base::Vsyscall => w.vsyscall.unwrap_or(w.high_start),
        Base::Raw(x) => x as usize,
    };
    base.wrapping_add((a.page as isize as usize).wrapping_mul(w.ps))
        .wrapping_add(a.byte as usize)
}

fn resolve_len(w: &World, addr: usize, l: Len) -> usize {
    match l {
        Len::Pages(n) => n as usize * w.ps,
        Len::Bytes(n) => n as usize,
        Len::PowerOfTwo(s) => 1usize.wrapping_shl(s as u32 % 64),
        Len::Max => usize::MAX,
        Len::Wrap(k) => (usize::MAX - addr).wrapping_add(1 + k as usize * w.ps),
        Len::Raw(x) => x as usize,
    }
}

/// What the address space looks like over `[s, e)` (page aligned, non-empty), as far as the
/// harness knows it.
struct Survey {
    /// Every page is known (reservation, low zone, high zone).
    known: bool,
    /// Some page is known to be unmapped (verified for the reservation's holes).
    has_hole: bool,
    /// The first unmapped address, when the range up to it is known.
    first_hole: Option<usize>,
    /// A reservation hole was mapped by someone else: skip.
    refilled: bool,
    /// Kinds of the known mapped pages (reservation only).
    kinds: BTreeSet<u8>,
    vsyscall: bool,
}

fn survey(w: &World, s: usize, e: usize) -> Survey {
    let ps = w.ps;
    let mut sv = Survey {
        known: true,
        has_hole: false,
        first_hole: None,
        refilled: false,
        kinds: BTreeSet::new(),
        vsyscall: false,
    };
    // Walk [s, e) by zones, in address order; `prefix_known` while nothing unknown came first.
    let mut at = s;
    let mut prefix_known = true;
    let note_hole = |sv: &mut Survey, a: usize, prefix_known: bool| {
        sv.has_hole = true;
        if sv.first_hole.is_none() && prefix_known {
            sv.first_hole = Some(a);
        }
    };
    while at < e {
        if at < w.low_end {
            note_hole(&mut sv, at, prefix_known);
            at = w.low_end;
        } else if at >= w.base && at < w.res_end() {
            let k = w.kind_at(at).unwrap();
            if k == Kind::Hole {
                if unmapped(at, ps) {
                    note_hole(&mut sv, at, prefix_known);
                } else {
                    sv.refilled = true;
                }
            } else {
                sv.kinds.insert(k as u8);
            }
            at += ps;
        } else if at >= w.high_start {
            match w.vsyscall {
                Some(v) if at == v => {
                    sv.vsyscall = true;
                    at = match v.checked_add(ps) {
                        Some(x) => x,
                        None => break,
                    };
                }
                Some(v) if at < v => {
                    note_hole(&mut sv, at, prefix_known);
                    at = v;
                }
                _ => {
                    note_hole(&mut sv, at, prefix_known);
                    break;
                }
            }
        } else {
            // Someone else's address space: skip to the next zone we know.
            sv.known = false;
            prefix_known = false;
            let next = [w.low_end, w.base, w.high_start]
                .into_iter()
                .filter(|&z| z > at)
                .min()
                .unwrap_or(usize::MAX);
            if next >= e {
                break;
            }
            at = next;
        }
    }
    sv
}

fn register(w: &World, m: &mut Model, addr: usize, len: usize) {
    let ps = w.ps;
    let arg_errors = addr % ps != 0 || len == 0 || len % ps != 0 || addr.checked_add(len).is_none();
    let sv = (!arg_errors).then(|| survey(w, addr, addr + len));
    if let Some(sv) = &sv {
        if sv.refilled || !(sv.known || sv.has_hole) {
            return; // could touch memory that is not ours
        }
    }
    let res = w.t.register(addr as *mut u8, len);
    if trace() {
        eprintln!("  register({addr:#x}, {len:#x}) -> {res:?}");
    }
    let Some(sv) = sv else {
        // Argument errors come first, and only applicable ones.
        match res {
            Err(Error::Unaligned { what: "address", value, page_size }) => {
                assert!(addr % ps != 0 && value == addr && page_size == ps)
            }
            Err(Error::Unaligned { what: "length", value, page_size }) => {
                assert!(len % ps != 0 && value == len && page_size == ps)
            }
            Err(Error::ZeroLength { addr: a }) => assert!(len == 0 && a == addr),
            Err(Error::AddressOverflow { addr: a, len: l }) => {
                assert!(addr.checked_add(len).is_none() && a == addr && l == len)
            }
            other => panic!("register({addr:#x}, {len:#x}): expected an argument error, got {other:?}"),
        }
        return;
    };
    let (s, e) = (addr, addr + len);
    let overlapping: Vec<&(RangeId, usize, usize)> =
        m.live.iter().filter(|l| l.1 < e && s < l.1 + l.2).collect();
    let no_hole = sv.known && !sv.has_hole;
    let what = format!("register({s:#x}, {len:#x}) [reservation {:#x}..{:#x}]", w.base, w.res_end());
    match res {
        Err(Error::Overlap { start, end, existing, existing_start, existing_end }) => {
            assert!((start, end) == (s, e), "{what}: Overlap fields");
            let o = overlapping.iter().find(|l| l.0 == existing);
            let o = o.unwrap_or_else(|| panic!("{what}: Overlap with {existing:?}, not overlapping"));
            assert_eq!((existing_start, existing_end), (o.1, o.1 + o.2), "{what}");
        }
        Err(Error::NotMapped { start, end, hole }) => {
            assert!((start, end) == (s, e), "{what}: NotMapped fields");
            assert!(sv.has_hole, "{what}: NotMapped({hole:#x}) but the range is mapped");
            assert!(hole >= s && hole < e && hole % ps == 0, "{what}: hole {hole:#x}");
            if let Some(h) = sv.first_hole {
                assert_eq!(hole, h, "{what}: not the first hole");
            } else {
                assert!(unmapped(hole, ps), "{what}: hole {hole:#x} is mapped");
            }
        }
        Err(Error::OwnedByAnotherUserfaultfd { start, end }) => {
            assert!((start, end) == (s, e), "{what}: OwnedByAnotherUserfaultfd fields");
            assert!(no_hole && sv.kinds.contains(&(Kind::OtherTracker as u8)), "{what}: EBUSY");
        }
        Err(ref err @ Error::MappingNotSupported { start, end, .. }) => {
            assert!((start, end) == (s, e), "{what}: MappingNotSupported fields");
            let why = sv.vsyscall || sv.kinds.contains(&(Kind::SharedReadOnlyFile as u8));
            assert!(no_hole && why, "{what}: unexpected {err}");
        }
        Err(err) => panic!("{what}: undocumented or inapplicable error: {err:?} ({err})"),
        Ok(id) => {
            let explain = format!(
                "{what}: succeeded; overlapping {overlapping:?}, survey known={} hole={} kinds={:?} vsyscall={}",
                sv.known, sv.has_hole, sv.kinds, sv.vsyscall
            );
            assert!(overlapping.is_empty() && no_hole && !sv.vsyscall, "{explain}");
            assert!(!sv.kinds.contains(&(Kind::OtherTracker as u8)), "{explain}");
            assert!(!sv.kinds.contains(&(Kind::SharedReadOnlyFile as u8)), "{explain}");
            assert!(!m.issued.contains(&id), "{what}: id {id:?} issued twice");
            let mut last = w.last_id.lock().unwrap();
            *last = (*last).max(id_number(id));
            m.live.push((id, s, len));
            m.pending.insert(id, BTreeSet::new());
            m.issued.push(id);
            let info = w.t.range(id).unwrap();
            assert_eq!((info.id, info.addr, info.len, info.registered_addr), (id, s, len, s));
            assert!(info.lost.is_none());
        }
    }
}

/// Checks a collected / peeked set against the pending pages of `ids`.
fn check_dirty(what: &str, w: &World, m: &Model, ids: &[RangeId], set: &dirtytrack::DirtySet) {
    let want: BTreeSet<usize> = ids.iter().flat_map(|id| m.pending[id].iter().copied()).collect();
    let got: BTreeSet<usize> = set.pages().collect();
    assert_eq!(set.page_size(), w.ps);
    assert_eq!(got, want, "{what}: reported pages (left) != pages written while registered (right)");
}

fn unknown(what: &str, id: RangeId, e: Result<impl std::fmt::Debug, Error>) {
    match e {
        Err(Error::UnknownRange(x)) if x == id => {}
        other => panic!("{what}({id:?}) of an unknown id: {other:?}"),
    }
}

fn check_ranges(w: &World, m: &Model) {
    let got: Vec<(RangeId, usize, usize)> = w.t.ranges().iter().map(|r| (r.id, r.addr, r.len)).collect();
    assert_eq!(got, m.live, "ranges()");
}

/// `DIRTYTRACK_FUZZ_TRACE=1`: print every operation (to read a reproducer).
fn trace() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var("DIRTYTRACK_FUZZ_TRACE").as_deref() == Ok("1"))
}

fn run_op(w: &World, m: &mut Model, op: Op) {
    let t = &w.t;
    if trace() {
        eprintln!("{op:?}");
    }
    match op {
        Op::Register(a, l) => {
            let addr = resolve_addr(w, a);
            register(w, m, addr, resolve_len(w, addr, l));
            check_ranges(w, m);
        }
        Op::RegisterRun { run, page, pages } => {
            let (addr, _) = w.run_page(run, page);
            register(w, m, addr, (1 + pages as usize % 24) * w.ps);
            check_ranges(w, m);
        }
        Op::Unregister(sel) => {
            let Some(id) = pick_id(w, m, sel) else { return };
            let res = t.unregister(id);
            if m.find(id).is_some() {
                res.unwrap_or_else(|e| panic!("unregister({id:?}): {e}"));
                m.live.retain(|l| l.0 != id);
                m.pending.remove(&id);
            } else {
                unknown("unregister", id, res);
            }
            check_ranges(w, m);
        }
        Op::Collect | Op::Peek => {
            let collect = matches!(op, Op::Collect);
            let set = if collect { t.collect() } else { t.peek() };
            let set = set.unwrap_or_else(|e| panic!("{op:?}: {e}"));
            let ids: Vec<RangeId> = m.live.iter().map(|l| l.0).collect();
            check_dirty(&format!("{op:?}"), w, m, &ids, &set);
            if collect {
                m.pending.values_mut().for_each(BTreeSet::clear);
            }
        }
        Op::Clear => {
            t.clear().unwrap_or_else(|e| panic!("clear: {e}"));
            m.pending.values_mut().for_each(BTreeSet::clear);
        }
        Op::CollectRange(sel) | Op::PeekRange(sel) => {
            let Some(id) = pick_id(w, m, sel) else { return };
            let collect = matches!(op, Op::CollectRange(_));
            let res = if collect { t.collect_range(id) } else { t.peek_range(id) };
            if m.find(id).is_none() {
                return unknown("collect_range/peek_range", id, res);
            }
            let set = res.unwrap_or_else(|e| panic!("{op:?} {id:?}: {e}"));
            check_dirty(&format!("{op:?} {id:?}"), w, m, &[id], &set);
            if collect {
                m.pending.get_mut(&id).unwrap().clear();
            }
        }
        Op::ClearRange(sel) => {
            let Some(id) = pick_id(w, m, sel) else { return };
            let res = t.clear_range(id);
            if m.find(id).is_none() {
                return unknown("clear_range", id, res);
            }
            res.unwrap_or_else(|e| panic!("clear_range({id:?}): {e}"));
            m.pending.get_mut(&id).unwrap().clear();
        }
        Op::Range(sel) => {
            let Some(id) = pick_id(w, m, sel) else { return };
            let res = t.range(id);
            match m.find(id) {
                None => unknown("range", id, res),
                Some((s, len)) => {
                    let info = res.unwrap_or_else(|e| panic!("range({id:?}): {e}"));
                    assert_eq!((info.id, info.addr, info.len, info.lost), (id, s, len, None));
                }
            }
        }
        Op::Write { run, page } => {
            let (addr, kind) = w.run_page(run, page);
            if !writable(kind) {
                return;
            }
            // SAFETY: a read-write page of the harness's own mappings.
            unsafe {
                let p = (addr + 8) as *mut u8;
                p.write_volatile(p.read_volatile().wrapping_add(1));
            }
            for &(id, s, len) in &m.live {
                if addr >= s && addr < s + len {
                    m.pending.get_mut(&id).unwrap().insert(addr);
                }
            }
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let w = world();
    let mut m = Model::default();
    for &op in ops.iter().take(64) {
        run_op(w, &mut m, op);
    }
    // Still usable, and everything goes away.
    let ids: Vec<RangeId> = m.live.iter().map(|l| l.0).collect();
    let set = w.t.collect().unwrap_or_else(|e| panic!("final collect: {e}"));
    check_dirty("final collect", w, &m, &ids, &set);
    for id in ids {
        w.t.unregister(id).unwrap_or_else(|e| panic!("final unregister({id:?}): {e}"));
    }
    assert!(w.t.ranges().is_empty(), "ranges left after unregistering all");
    assert!(w.t.collect().unwrap().is_empty(), "an empty tracker collected pages");
    // The other tracker's range is untouched.
    assert!(w.other.range(w.other_id).unwrap().lost.is_none());
});
