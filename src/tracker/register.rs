//! Registration: the argument checks, the registration policy (what backs the range, its
//! protection granule, what each mode accepts) and arming, atomic with respect to collects.

use super::Tracker;
use crate::backend::{async_wp, sync_wp};
use crate::range::{Arming, RangeState};
use crate::state::TrackerState;
use crate::sys::{maps, mem, uffd};
use crate::types::{Backing, Mode, RangeId};
use crate::Error;
use std::os::fd::AsFd;
use std::sync::Arc;

impl Tracker {
    /// [`Tracker::register`] and [`Tracker::register_sparse`]: atomic with respect to collects,
    /// like [`Tracker::register_many`]. The new range is in the ranges list (so the monitor
    /// finds it) before it is armed, and a failure takes it out again: holding `harvest`
    /// throughout means no collect, peek or clear ever sees a range that was not returned.
    pub(super) fn register_one(
        &self,
        addr: *mut u8,
        len: usize,
        arming: Arming,
    ) -> Result<RangeId, Error> {
        self.core.check_usable()?;
        let (start, end) = self.check_range(addr, len)?;
        // Lock order: harvest, then registry.
        let _harvest = self.harvest.lock();
        let mut registry = self.core.registry.lock();
        self.register_locked(&mut registry, start, end, arming)
    }

    /// Checks `[addr, addr + len)` for [`Tracker::register`]: page aligned, not empty, no
    /// overflow. Returns (start, end).
    pub(super) fn check_range(&self, addr: *mut u8, len: usize) -> Result<(usize, usize), Error> {
        let ps = self.core.page_size;
        let start = addr as usize;
        if start % ps != 0 {
            return Err(Error::Unaligned {
                what: "address",
                value: start,
                page_size: ps,
            });
        }
        if len == 0 {
            return Err(Error::ZeroLength { addr: start });
        }
        if len % ps != 0 {
            return Err(Error::Unaligned {
                what: "length",
                value: len,
                page_size: ps,
            });
        }
        let end = start
            .checked_add(len)
            .ok_or(Error::AddressOverflow { addr: start, len })?;
        Ok((start, end))
    }

    /// The rest of [`Tracker::register`], under the `harvest` and `registry` locks.
    pub(super) fn register_locked(
        &self,
        registry: &mut crate::range::Registry,
        start: usize,
        end: usize,
        arming: Arming,
    ) -> Result<RangeId, Error> {
        let core = &*self.core;
        let ps = core.page_size;
        let len = end - start;
        if let Some(r) = registry.overlapping(start, end) {
            return Err(Error::Overlap {
                start,
                end,
                existing: r.id,
                existing_start: r.start(),
                existing_end: r.end(),
            });
        }
        let vmas = maps::vmas_in(start, end)
            .map_err(|e| Error::from_kernel("reading /proc/self/maps", e))?;
        if let Some(hole) = maps::first_hole(&vmas, start, end) {
            return Err(Error::NotMapped { start, end, hole });
        }
        let backing = backing_of(&vmas, start)?;
        let not_supported = |hint: &'static str| Error::MappingNotSupported {
            start,
            end,
            mapping: describe(&vmas),
            mode: core.mode,
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
            hint,
        };
        let granule = match backing {
            Backing::Hugetlb { page_size } => {
                for (what, value) in [("hugetlbfs address", start), ("hugetlbfs length", len)] {
                    if value % page_size != 0 {
                        return Err(Error::Unaligned {
                            what,
                            value,
                            page_size,
                        });
                    }
                }
                if !core.caps.has(uffd::FEATURE_EVENT_REMOVE) {
                    return Err(not_supported("tracking hugetlbfs needs UFFD_FEATURE_EVENT_REMOVE (4.11+): without it discards are lost"));
                }
                page_size
            }
            _ if vmas.iter().any(maps::looks_hugetlb) => return Err(not_supported(
                "register hugetlbfs memory as a range of its own, aligned to its huge page size",
            )),
            _ => ps,
        };
        if arming == Arming::Populated {
            if core.mode != Mode::Async {
                return Err(not_supported(
                    "register_sparse needs Mode::Async (sync mode protects every page); use register",
                ));
            }
            if backing != Backing::PrivateAnonymous {
                return Err(not_supported(
                    "register_sparse tracks private anonymous memory only; use register",
                ));
            }
        }
        if core.no_thp {
            // Best effort: hugetlbfs mappings reject it and need no THP policy.
            let _ = mem::madvise(start, len, mem::MADV_NOHUGEPAGE);
        }
        if !matches!(backing, Backing::Hugetlb { .. }) {
            // KSM merging drops the write-protect bits (sync mode lost 15 of 16 writes): take the
            // range out of KSM. A no-op unless the range was MADV_MERGEABLE or the process uses
            // PR_SET_MEMORY_MERGE; fails harmlessly without CONFIG_KSM.
            let _ = mem::madvise(start, len, mem::MADV_UNMERGEABLE);
        }
        let ioctls = uffd::register(core.uffd.as_fd(), start, len, uffd::REGISTER_MODE_WP)
            .map_err(|e| register_error(core, start, end, &vmas, e))?;
        let unregister = || {
            let _ = core.release(start, len);
        };
        if ioctls & (1 << uffd::NR_WRITEPROTECT) == 0 {
            unregister();
            return Err(not_supported("the kernel does not offer UFFDIO_WRITEPROTECT on this mapping; shmem and hugetlbfs need UFFD_FEATURE_WP_HUGETLBFS_SHMEM (5.19+)"));
        }
        registry.next_id += 1;
        let id = RangeId(registry.next_id);
        let state = Arc::new(RangeState::new(
            id, start, len, ps, granule, backing, arming,
        ));
        // Visible to the monitor before any page is protected, so no fault finds no range.
        core.ranges.write().push(state.clone());
        let armed = match arming {
            Arming::Full => sync_wp::prefault(core.prefault, start, len, ps)
                .map_err(|e| ("populating the range before protecting it", e))
                .and_then(|()| {
                    core.writeprotect(start, len, uffd::WRITEPROTECT_MODE_WP)
                        .map_err(|e| ("UFFDIO_WRITEPROTECT", e))
                }),
            Arming::Populated => std::fs::File::open("/proc/self/pagemap")
                .and_then(|pagemap| async_wp::protect_populated(&pagemap, start, end))
                .map_err(|e| ("PAGEMAP_SCAN (protecting the populated pages)", e)),
        };
        if let Err((op, e)) = armed {
            core.ranges.write().remove_id(id);
            unregister();
            return Err(Error::from_kernel(op, e));
        }
        registry.insert(state);
        Ok(id)
    }
}

/// What backs `vmas`. A hugetlbfs mapping's huge page size is read from `/proc/self/smaps`
/// (`KernelPageSize`): when it cannot be read, registering fails rather than guess a granule
/// (a guess of 2 MiB for a 1 GiB-page mapping would lose writes).
fn backing_of(vmas: &[maps::Vma], start: usize) -> Result<Backing, Error> {
    let kind = |v: &maps::Vma| -> Result<Backing, Error> {
        Ok(if maps::looks_hugetlb(v) {
            let at = v.start.max(start);
            let page_size = match maps::kernel_page_size(at) {
                Ok(Some(ps)) if ps.is_power_of_two() => ps,
                Ok(_) => {
                    return Err(Error::Kernel {
                        op: "reading the huge page size (KernelPageSize) from /proc/self/smaps",
                        source: std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!(
                                "no usable KernelPageSize for the hugetlbfs mapping at {at:#x}"
                            ),
                        ),
                    })
                }
                Err(e) => {
                    return Err(Error::from_kernel(
                        "reading the huge page size (KernelPageSize) from /proc/self/smaps",
                        e,
                    ))
                }
            };
            Backing::Hugetlb { page_size }
        } else if v.is_shared() {
            Backing::Shared
        } else if v.is_file_backed() {
            Backing::PrivateFile
        } else {
            Backing::PrivateAnonymous
        })
    };
    let mut kinds = vmas.iter().map(kind);
    let first = kinds
        .next()
        .transpose()?
        .unwrap_or(Backing::PrivateAnonymous);
    for k in kinds {
        if k? != first {
            return Ok(Backing::Mixed);
        }
    }
    Ok(first)
}

fn describe(vmas: &[maps::Vma]) -> String {
    let kinds: Vec<String> = vmas
        .iter()
        .map(|v| {
            let sharing = if v.is_shared() { "shared" } else { "private" };
            match (v.is_file_backed(), v.path.as_str()) {
                (false, "") => format!("{sharing} anonymous"),
                (false, p) => format!("{sharing} anonymous {p}"),
                (true, p) => format!("{sharing} file mapping {p}"),
            }
        })
        .collect();
    kinds.join(", ")
}

fn register_error(
    core: &TrackerState,
    start: usize,
    end: usize,
    vmas: &[maps::Vma],
    e: std::io::Error,
) -> Error {
    match e.raw_os_error() {
        Some(libc::EBUSY) => Error::OwnedByAnotherUserfaultfd { start, end },
        // Write-protect registration needs a writable mapping (VM_MAYWRITE): a shared mapping of
        // a file opened read-only, or of a write-sealed memfd, is refused with EPERM.
        Some(libc::EPERM) => Error::MappingNotSupported {
            start,
            end,
            mapping: describe(vmas),
            mode: core.mode,
            source: e,
            hint: "a shared mapping that can never be written (file opened O_RDONLY, write-sealed memfd) cannot be write-protected; it cannot change through this mapping, so there is nothing to track there",
        },
        Some(libc::ENOMEM) | Some(libc::EMFILE) | Some(libc::ENFILE) => {
            Error::from_kernel("UFFDIO_REGISTER", e)
        }
        Some(libc::EINVAL) => {
            // Unmapped since we looked?
            if let Ok(now) = maps::vmas_in(start, end) {
                if let Some(hole) = maps::first_hole(&now, start, end) {
                    return Error::NotMapped { start, end, hole };
                }
            }
            let hugetlb = vmas
                .iter()
                .any(|v| v.path.contains("hugepage") || v.path.starts_with("/dev/hugepages"));
            let file = vmas.iter().any(|v| v.is_file_backed());
            let hint = if (hugetlb || file)
                && !core.caps.has(uffd::FEATURE_WP_HUGETLBFS_SHMEM)
            {
                // Before 5.19 (e.g. 5.10, sync mode only) the kernel refuses MODE_WP on every
                // shmem and hugetlbfs VMA with EINVAL.
                "this kernel cannot write-protect shmem, memfd or hugetlbfs memory (UFFD_FEATURE_WP_HUGETLBFS_SHMEM, Linux 5.19+), and sync mode never tracks regular file mappings: only private anonymous memory can be tracked here; Mode::Async (Linux 6.7+) tracks all of them"
            } else if hugetlb {
                "hugetlbfs ranges must start and end on a huge-page boundary (usually 2 MiB)"
            } else if file && core.mode == crate::Mode::Sync {
                "sync mode tracks anonymous, shmem/memfd and hugetlbfs memory only; use Mode::Async (Linux 6.7+) for regular file mappings"
            } else {
                "this kind of mapping cannot be write-protected by userfaultfd (e.g. VM_DROPPABLE, VM_PFNMAP/IO memory, or a file system without support)"
            };
            Error::MappingNotSupported {
                start,
                end,
                mapping: describe(vmas),
                mode: core.mode,
                source: e,
                hint,
            }
        }
        _ => Error::from_kernel("UFFDIO_REGISTER", e),
    }
}
