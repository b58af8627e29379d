//! [`Image`]: a memory image rebuilt from a full dump and increments, and the byte-for-byte check
//! against the live (stopped) target. The test oracle of remote tracking (feature `testing`; the
//! CLI has its own, over its dump files).

use super::{Collection, RemoteError, RemoteTracker};
use std::collections::BTreeMap;
use std::ops::Range;

/// Page address → contents (`None`: the page could not be read, e.g. beyond the end of a file).
#[derive(Debug, Default, Clone)]
pub struct Image {
    page_size: usize,
    pages: BTreeMap<usize, Option<Vec<u8>>>,
}

/// One difference between an [`Image`] and the target's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Page address.
    pub page: usize,
    /// What differs.
    pub what: String,
}

impl Image {
    /// An empty image with this process's page size.
    pub fn new() -> Image {
        Image {
            page_size: crate::page_size(),
            pages: BTreeMap::new(),
        }
    }

    /// Number of pages held.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// Whether no page is held.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// The page at `addr`: `None` if the image does not hold it, `Some(None)` if it was
    /// unreadable when dumped.
    pub fn page(&self, addr: usize) -> Option<Option<&[u8]>> {
        self.pages.get(&addr).map(|p| p.as_deref())
    }

    /// Sets one page (`None`: unreadable).
    pub fn set_page(&mut self, addr: usize, bytes: Option<Vec<u8>>) {
        self.pages.insert(addr, bytes);
    }

    /// Drops the pages of `range`.
    pub fn remove(&mut self, range: Range<usize>) {
        let keys: Vec<usize> = self.pages.range(range).map(|(k, _)| *k).collect();
        for k in keys {
            self.pages.remove(&k);
        }
    }

    /// Drops every page outside `ranges`.
    pub fn retain_ranges(&mut self, ranges: &[Range<usize>]) {
        self.pages
            .retain(|&a, _| ranges.iter().any(|r| r.start <= a && a < r.end));
    }

    /// Drops every page outside the mappings of `c` (gone, or no longer dumped).
    pub fn retain_mappings(&mut self, c: &Collection) {
        self.pages.retain(|&a, _| {
            c.mappings
                .iter()
                .any(|m| m.mapping.start <= a && a < m.mapping.end)
        });
    }

    /// Applies one collection: drops what is gone, then copies every dirty page from the target
    /// ([`RemoteTracker::read_dirty`]: pages of inaccessible mappings are read as the target's
    /// ptracer; what cannot be read is recorded as unreadable). Returns the number of pages
    /// copied.
    pub fn apply(&mut self, t: &RemoteTracker, c: &Collection) -> Result<usize, RemoteError> {
        self.retain_mappings(c);
        // What was there before is void where a range is reported whole (only its existing
        // pages are listed in private anonymous memory).
        for m in &c.mappings {
            for r in m.whole() {
                self.remove(r);
            }
        }
        let ps = self.page_size;
        let pages = &mut self.pages;
        t.read_dirty(c, |at, bytes| -> Result<(), RemoteError> {
            match bytes {
                Some(bytes) => {
                    for (i, page) in bytes.chunks(ps).enumerate() {
                        pages.insert(at + i * ps, Some(page.to_vec()));
                    }
                }
                None => {
                    pages.insert(at, None);
                }
            }
            Ok(())
        })?;
        Ok(c.mappings
            .iter()
            .flat_map(|m| &m.dirty)
            .map(|r| (r.end - r.start) / ps)
            .sum())
    }

    /// Compares the image with the target's memory over every mapping of `c` (the last
    /// collection, taken with the target stopped). Returns the differences (at most 100).
    /// Pages of inaccessible mappings a plain read refuses are read again as the target's
    /// ptracer, as in [`Image::apply`].
    pub fn verify(&self, t: &RemoteTracker, c: &Collection) -> Result<Vec<Mismatch>, RemoteError> {
        let ps = self.page_size;
        let mut out = Vec::new();
        let mut page = vec![0u8; ps];
        // Read 1 MiB at a time; page by page only where a chunk cannot be read whole.
        let mut chunk = vec![0u8; 1 << 20];
        let mut chunk_at = usize::MAX;
        let mut chunk_ok = false;
        let mut refused = Vec::new();
        for m in &c.mappings {
            for a in (m.mapping.start..m.mapping.end).step_by(ps) {
                if out.len() >= 100 {
                    return Ok(out);
                }
                if !(chunk_at <= a && a < chunk_at.saturating_add(chunk.len()))
                    || chunk_at == usize::MAX
                {
                    let n = (m.mapping.end - a).min(1 << 20);
                    chunk.resize(n, 0);
                    chunk_at = a;
                    chunk_ok = match t.read_memory(a, &mut chunk) {
                        Ok(()) => true,
                        Err(
                            e @ (RemoteError::TargetExited { .. }
                            | RemoteError::TrackingLost { .. }),
                        ) => return Err(e),
                        Err(_) => false,
                    };
                }
                let live = if chunk_ok {
                    Some(&chunk[a - chunk_at..a - chunk_at + ps])
                } else {
                    t.read_memory(a, &mut page).ok().map(|()| &page[..])
                };
                match live {
                    None if !m.mapping.is_readable() => refused.push((a, m)),
                    live => self.compare_page(a, live, m, &mut out),
                }
            }
        }
        let addrs: Vec<usize> = refused.iter().map(|(a, _)| *a).collect();
        for ((a, m), live) in refused.iter().zip(t.read_pages_as_tracer(&addrs)?) {
            if out.len() >= 100 {
                break;
            }
            self.compare_page(*a, live.as_deref(), m, &mut out);
        }
        Ok(out)
    }

    /// Compares page `a` of mapping `m` with its live contents (`None`: unreadable).
    fn compare_page(
        &self,
        a: usize,
        live: Option<&[u8]>,
        m: &super::MappingReport,
        out: &mut Vec<Mismatch>,
    ) {
        let dumped = self.pages.get(&a).map(|p| p.as_deref());
        let Some(what) = super::page_mismatch(dumped, live, &m.mapping) else {
            return;
        };
        out.push(Mismatch { page: a, what });
    }
}
