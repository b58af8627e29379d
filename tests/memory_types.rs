//! Each kind of memory, in both modes, with the shadow-copy oracle: private anonymous, shared
//! anonymous, memfd (shared and private), transparent huge pages, hugetlbfs. Plus discards
//! (`MADV_DONTNEED`, `MADV_REMOVE`) on each, and the documented blind spot of page-table
//! tracking: writes to shared memory that do not go through the tracked mapping.

mod common;
use common::{
    bounded, huge_page_size, page, smaps_kb, tracker, tracker_with, Mapped, Memory, Region,
    MEMFD_PRIVATE, MEMFD_SHARED, PRIVATE_ANONYMOUS, SHARED_ANONYMOUS,
};
#[allow(unused_imports)]
use dirtytrack::Mode;
use dirtytrack::{Error, Thp, Tracker, TrackerBuilder};
use std::os::fd::{AsRawFd, OwnedFd};

fn madvise(addr: usize, len: usize, advice: i32) {
    // SAFETY: advice on a mapping the test owns.
    let rc = unsafe { libc::madvise(addr as *mut libc::c_void, len, advice) };
    assert_eq!(
        rc,
        0,
        "madvise({advice}): {}",
        std::io::Error::last_os_error()
    );
}

fn pwrite(fd: &OwnedFd, off: usize, data: &[u8]) {
    // SAFETY: `data` is a valid buffer.
    let n = unsafe { libc::pwrite(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), off as i64) };
    assert_eq!(
        n,
        data.len() as isize,
        "pwrite: {}",
        std::io::Error::last_os_error()
    );
}

/// Private memfd memory whose file has contents (0x5a in its first 16 pages), so that private
/// copies, file pages and zero pages all differ.
const MEMFD_PRIVATE_WITH_CONTENTS: Memory = Memory {
    name: "memfd private",
    map: |pages| {
        let m = MEMFD_PRIVATE.map(pages);
        pwrite(m.fd.as_ref().expect("a memfd"), 0, &vec![0x5a; 16 * page()]);
        m
    },
};

/// The contract on 32 pages of `memory`: pages 0..8 populated by writes, 8..16 populated by
/// reads, 16.. never touched; after register, reads are not reported and writes are reported
/// exactly: 6 changed, 6 reported.
fn contract(mode: Mode, memory: Memory) {
    let Some(t) = tracker(mode) else { return };
    if !memory.trackable_or_skip() {
        return;
    }
    let Mapped {
        region: mut r,
        fd: _fd,
    } = memory.map(32);
    let name = memory.name;
    let n = r.pages();
    for i in 0..n / 4 {
        r.write(i, 0, 1);
    }
    for i in n / 4..n / 2 {
        r.read(i, 0);
    }
    t.register(r.ptr(), r.len).unwrap();
    r.rebase();
    assert!(
        t.collect().unwrap().is_empty(),
        "{name}: nothing written since register"
    );
    for i in 0..n {
        r.read(i, 100);
    }
    assert_eq!(
        r.check(&t.collect().unwrap(), true),
        (0, 0),
        "{name}: reads are not reported"
    );
    for i in [0, n / 4 - 1, n / 4, n / 2 - 1, n / 2, n - 1] {
        r.touch(i);
    }
    let counts = r.check(&t.collect().unwrap(), true);
    assert!(t.collect().unwrap().is_empty(), "{name}: collect resets");
    assert_eq!(counts, (6, 6), "{name}: written pages reported exactly");
}

// ---------------------------------------------------------------------------------------------
// Small pages: exact in both modes.

per_case! { contract:
    private_anonymous => PRIVATE_ANONYMOUS,
    shared_anonymous => SHARED_ANONYMOUS,
    memfd_shared => MEMFD_SHARED,
    memfd_private => MEMFD_PRIVATE_WITH_CONTENTS,
}

// ---------------------------------------------------------------------------------------------
// Shared memory written around the tracked mapping: invisible (documented).

per_mode! {
    /// Page-table tracking sees writes through the registered mapping only. A write through a
    /// second mapping of the same memfd, or a `pwrite` to the memfd, changes the tracked memory
    /// but is NOT reported. This test asserts that documented behaviour.
    fn memfd_shared_second_mapping_and_pwrite_is_invisible_documented(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        if !common::shmem_hugetlb_wp_or_skip() {
            return;
        }
        let (mut r, fd) = Region::memfd(8, true);
        for i in 0..4 {
            r.write(i, 0, 1);
        }
        t.register(r.ptr(), r.len).unwrap();
        r.rebase();
        let other = Region::mmap(8, libc::MAP_SHARED, fd.as_raw_fd());
        // Pages 1 and 5 through the second mapping (populated / never touched in the tracked
        // mapping), pages 2 and 6 with pwrite.
        other.write(1, 10, 0x77);
        other.write(5, 10, 0x77);
        pwrite(&fd, 2 * page() + 10, &[0x88; 16]);
        pwrite(&fd, 6 * page() + 10, &[0x88; 16]);
        assert_eq!(r.changed(), vec![1, 2, 5, 6], "the tracked memory did change");
        let d = t.collect().unwrap();
        assert!(d.is_empty(), "documented: not visible to page-table tracking, got {:?}", r.reported_pages(&d));
        // Tracking itself is intact: writes through the tracked mapping are reported.
        r.rebase();
        r.touch(1);
        r.touch(6);
        assert_eq!(r.check(&t.collect().unwrap(), true), (2, 2));
    }
}

// ---------------------------------------------------------------------------------------------
// Discards after a collect: the contents of discarded pages changed (anon: to zero; private
// file: back to the file's contents; shared: re-read from the file, unchanged) and must be
// reported; afterwards tracking is exact again.

/// A discard after a collect, on one kind of memory.
struct Discard {
    memory: Memory,
    /// `MADV_DONTNEED` or `MADV_REMOVE`, and its name.
    advice: (i32, &'static str),
    /// Pages whose contents the discard changes (every one of the 16 pages is reported: the
    /// rest is over-report), and why.
    changed: usize,
    why: &'static str,
}

/// 16 registered pages of `case.memory`: 0..8 written (non-zero), 8..12 written with zero,
/// 12..16 never touched. After a collect, page 0 is written again, then the advice discards all
/// 16 pages: the collect after reports all 16, `case.changed` of them changed. Then new writes
/// are reported exactly.
fn discard_after_collect(mode: Mode, case: Discard) {
    let Some(t) = tracker(mode) else { return };
    if !case.memory.trackable_or_skip() {
        return;
    }
    let Mapped {
        region: mut r,
        fd: _fd,
    } = case.memory.map(16);
    let (advice, advice_name) = case.advice;
    let name = format!("{} {advice_name}", case.memory.name);
    assert_eq!(r.pages(), 16);
    for i in 0..8 {
        r.write(i, 0, 1);
    }
    for i in 8..12 {
        r.write(i, 0, 0);
    }
    t.register(r.ptr(), r.len).unwrap();
    r.rebase();
    r.touch(0);
    assert_eq!(r.check(&t.collect().unwrap(), true), (1, 1), "{name}");
    r.touch(1);
    madvise(r.addr, r.len, advice);
    let (changed, reported) = r.check(&t.collect().unwrap(), false);
    r.touch(3);
    r.touch(13);
    // The discarded pages may be reported once more (see `common::EXACT_AFTER_DISCARD`).
    let exact = common::EXACT_AFTER_DISCARD;
    assert_eq!(r.check(&t.collect().unwrap(), exact).0, 2, "{name}");
    r.touch(4);
    r.touch(14);
    assert_eq!(
        r.check(&t.collect().unwrap(), true),
        (2, 2),
        "{name}: exact again two collects after the discard"
    );
    eprintln!("{name}: changed {changed}, reported {reported}");
    assert_eq!(changed, case.changed, "{name}: {}", case.why);
    let verb = if advice == libc::MADV_REMOVE {
        "removed"
    } else {
        "discarded"
    };
    assert_eq!(
        reported,
        16,
        "{name}: every {verb} page is reported (over-report: {})",
        16 - case.changed
    );
}

const DONTNEED: (i32, &str) = (libc::MADV_DONTNEED, "DONTNEED");
const REMOVE: (i32, &str) = (libc::MADV_REMOVE, "MADV_REMOVE");
const SHARED_KEEPS: &str = "shared pages keep their contents; only page 1 was written";

per_case! { discard_after_collect:
    private_anonymous_dontneed => Discard {
        memory: PRIVATE_ANONYMOUS,
        advice: DONTNEED,
        changed: 8,
        why: "pages 0..8 now read as zero",
    },
    shared_anonymous_dontneed => Discard {
        memory: SHARED_ANONYMOUS,
        advice: DONTNEED,
        changed: 1,
        why: SHARED_KEEPS,
    },
    memfd_shared_dontneed => Discard {
        memory: MEMFD_SHARED,
        advice: DONTNEED,
        changed: 1,
        why: SHARED_KEEPS,
    },
    memfd_shared_madv_remove => Discard {
        memory: MEMFD_SHARED,
        advice: REMOVE,
        changed: 8,
        why: "the hole reads as zero",
    },
    memfd_private_dontneed => Discard {
        memory: MEMFD_PRIVATE_WITH_CONTENTS,
        advice: DONTNEED,
        changed: 12,
        why: "private copies (0..12) revert to the file's contents",
    },
}

// ---------------------------------------------------------------------------------------------
// Transparent huge pages.

/// A PMD-sized transparent huge page (2 MiB with 4 KiB base pages, 32 MiB with 16 KiB).
fn huge() -> usize {
    common::thp_size()
}

/// AnonHugePages (kB) of the VMAs overlapping `[addr, addr + len)`, from `/proc/self/smaps`.
fn anon_huge_kb(addr: usize, len: usize) -> usize {
    smaps_kb(addr, len, "AnonHugePages")
}

/// Two THP sizes of THP-aligned anonymous memory (4 MiB with 4 KiB pages), `MADV_HUGEPAGE`, every base page written with 1:
/// two transparent huge pages, or `None` after a skip when the kernel gave none.
fn thp_region() -> Option<Region> {
    let r = Region::anon_aligned(2 * huge() / page(), huge());
    madvise(r.addr, r.len, libc::MADV_HUGEPAGE);
    for i in 0..r.pages() {
        r.write(i, 0, 1);
    }
    let kb = anon_huge_kb(r.addr, r.len);
    if kb < 2 * huge() / 1024 {
        common::skip(&format!(
            "no transparent huge pages (AnonHugePages {kb} kB of {})",
            2 * huge() / 1024
        ));
        return None;
    }
    Some(r)
}

/// On THP: a one-byte write reports exactly its 4 KiB page (the first write splits the PMD),
/// with a tracker `builder` makes.
fn thp_one_byte(mode: Mode, builder: fn(Mode) -> TrackerBuilder) {
    let Some(t) = tracker_with(builder(mode)) else {
        return;
    };
    let t = &t;
    let Some(mut r) = thp_region() else { return };
    let id = t.register(r.ptr(), r.len).unwrap();
    r.rebase();
    eprintln!(
        "AnonHugePages after register: {} kB",
        anon_huge_kb(r.addr, r.len)
    );
    assert!(t.collect().unwrap().is_empty());
    bounded(t, id, "a write to a THP", || r.write(300, 5, 9));
    let d = t.collect().unwrap();
    assert_eq!(r.check(&d, true), (1, 1));
    assert_eq!(r.reported_pages(&d), vec![300]);
    eprintln!(
        "AnonHugePages after the write: {} kB",
        anon_huge_kb(r.addr, r.len)
    );
    // A second huge page, and a page of the first one again.
    let per = huge() / page();
    bounded(t, id, "writes to a THP", || {
        r.write(per + 77, 5, 9);
        r.write(3, 5, 9);
    });
    let d = t.collect().unwrap();
    assert_eq!(r.check(&d, true), (2, 2));
    assert_eq!(r.reported_pages(&d), vec![3, per + 77]);
}

per_case! { thp_one_byte:
    thp_one_byte_write_reports_one_base_page => |mode| Tracker::builder().mode(mode),
    thp_disable_one_byte_write_reports_one_base_page =>
        |mode| Tracker::builder().mode(mode).thp(Thp::Disable),
}

per_mode! {
    /// `Thp::Disable` on never-touched `MADV_HUGEPAGE` memory: no huge page is ever made, and
    /// every write is reported exactly.
    fn thp_disable_keeps_new_memory_small(mode: Mode) {
        let Some(t) = tracker_with(Tracker::builder().mode(mode).thp(Thp::Disable)) else { return };
        let mut r = Region::anon_aligned(2 * huge() / page(), huge());
        madvise(r.addr, r.len, libc::MADV_HUGEPAGE);
        let id = t.register(r.ptr(), r.len).unwrap();
        r.rebase();
        bounded(&t, id, "writes", || {
            for i in (0..r.pages()).step_by(3) {
                r.write(i, 0, 1);
            }
        });
        assert_eq!(anon_huge_kb(r.addr, r.len), 0, "no THP under Thp::Disable");
        let n = r.pages().div_ceil(3);
        assert_eq!(r.check(&t.collect().unwrap(), true), (n, n));
    }
}

per_mode! {
    /// `MADV_DONTNEED` of a whole protected THP (the PMD is freed): all its base pages (512 with
    /// 4 KiB pages) now read as zero and all are reported.
    fn thp_dontneed_whole_huge_page(mode: Mode) {
        let Some(t) = tracker(mode) else { return };
        let Some(mut r) = thp_region() else { return };
        let id = t.register(r.ptr(), r.len).unwrap();
        r.rebase();
        let per = huge() / page();
        bounded(&t, id, "a write to a THP", || r.write(per + 88, 0, 7));
        assert_eq!(r.check(&t.collect().unwrap(), true), (1, 1));
        madvise(r.addr, huge(), libc::MADV_DONTNEED);
        let d = t.collect().unwrap();
        eprintln!("THP DONTNEED of {} KiB: reported {}", huge() / 1024, d.len());
        assert_eq!(r.check(&d, true), (per, per));
        bounded(&t, id, "writes", || {
            r.write(5, 0, 7);
            r.write(per + 188, 0, 7);
        });
        let exact = common::EXACT_AFTER_DISCARD;
        assert_eq!(r.check(&t.collect().unwrap(), exact).0, 2);
        bounded(&t, id, "writes", || r.write(6, 0, 7));
        assert_eq!(r.check(&t.collect().unwrap(), true), (1, 1), "exact again after the discard");
    }
}

// ---------------------------------------------------------------------------------------------
// hugetlbfs (MAP_HUGETLB): reported per huge page.

per_mode! {
    /// A one-byte write reports its whole huge page (512 base pages for 2 MiB): over-report by
    /// granularity, nothing lost.
    fn hugetlb_one_byte_reports_the_whole_huge_page(mode: Mode) {
        let Some((_pool, t, mut r)) = common::hugetlb_setup(mode, 2) else { return };
        let hp = huge_page_size() / page();
        r.write(0, 0, 1); // huge page 0 populated, huge page 1 never touched
        let id = t.register(r.ptr(), r.len).unwrap();
        r.rebase();
        assert!(t.collect().unwrap().is_empty());
        bounded(&t, id, "a write to a hugetlb page", || r.write(300, 5, 9));
        let d = t.collect().unwrap();
        assert_eq!(r.check(&d, false), (1, hp));
        assert_eq!(r.reported_pages(&d), (0..hp).collect::<Vec<_>>());
        bounded(&t, id, "a write to a never-touched hugetlb page", || r.write(hp + 77, 5, 9));
        let d = t.collect().unwrap();
        assert_eq!(r.check(&d, false), (1, hp));
        assert_eq!(r.reported_pages(&d), (hp..2 * hp).collect::<Vec<_>>());
        assert!(t.collect().unwrap().is_empty());
    }
}

per_mode! {
    /// Registering part of a huge page is refused with a clear error.
    fn hugetlb_unaligned_subrange_is_refused(mode: Mode) {
        let Some((_pool, t, r)) = common::hugetlb_setup(mode, 2) else { return };
        let (hs, ps) = (huge_page_size(), page());
        for (what, off, len) in [
            ("unaligned start", ps, hs - ps),
            ("unaligned end", 0, ps),
            ("unaligned end past one huge page", 0, hs + ps),
        ] {
            let e = t.register((r.addr + off) as *mut u8, len).unwrap_err();
            eprintln!("hugetlb {what}: {e:?}");
            match &e {
                // The library checks huge-page alignment itself and names the huge page size.
                Error::Unaligned { page_size, .. } => {
                    assert_eq!(*page_size, hs, "{what}: {e}");
                    assert!(e.to_string().contains("hugetlbfs"), "{what}: {e}");
                }
                e => panic!("{what}: expected Unaligned, got {e:?}"),
            }
            assert!(t.ranges().is_empty(), "a refused register leaves nothing behind");
        }
        // The aligned range registers.
        t.register(r.ptr(), r.len).unwrap();
    }
}

per_mode! {
    /// `MADV_DONTNEED` of protected hugetlb pages after a collect: they read as zero again and
    /// every base page of the discarded huge pages is reported.
    fn hugetlb_dontneed(mode: Mode) {
        let Some((_pool, t, mut r)) = common::hugetlb_setup(mode, 2) else { return };
        let hp = huge_page_size() / page();
        for i in 0..r.pages() {
            r.write(i, 0, 1);
        }
        let id = t.register(r.ptr(), r.len).unwrap();
        r.rebase();
        assert!(t.collect().unwrap().is_empty());
        madvise(r.addr, r.len, libc::MADV_DONTNEED);
        let d = t.collect().unwrap();
        eprintln!("hugetlb DONTNEED of 2 huge pages: reported {}", d.len());
        assert_eq!(r.check(&d, true), (2 * hp, 2 * hp));
        // Again after a write and a collect, on one huge page. The discarded huge pages are
        // reported once more (hugetlbfs discards are always re-reported).
        bounded(&t, id, "a write to a hugetlb page", || r.write(5, 0, 2));
        assert_eq!(r.check(&t.collect().unwrap(), false), (1, 2 * hp));
        madvise(r.addr, r.len / 2, libc::MADV_DONTNEED);
        assert_eq!(r.check(&t.collect().unwrap(), false), (1, hp), "page 5 reads as zero again");
        bounded(&t, id, "a write after the discard", || r.write(hp + 1, 0, 2));
        // Huge page 1 written, huge page 0 (discarded) reported once more.
        assert_eq!(r.check(&t.collect().unwrap(), false), (1, 2 * hp), "tracking continues");
        bounded(&t, id, "another write", || r.write(hp + 2, 0, 3));
        assert_eq!(r.check(&t.collect().unwrap(), false), (1, hp), "one huge page again");
    }
}
