//! A chain's state between two runs of a checkpointer: what the next run needs to resume the
//! tracking one run left in the target ([`RemoteTracker::save_state`](super::RemoteTracker::save_state),
//! [`RemoteBuilder::state`](super::RemoteBuilder::state)).
//!
//! Opaque to the caller (CRIU stores it as a raw image file next to its pre-dump images). It
//! holds the tracking userfaultfd's fd number and inode in the target (so that a resumed run
//! uses that very fd, never a copy a fork child inherited, which acts on the parent's memory),
//! the collect generation it was saved at (a collect the chain did not record makes the next run
//! start over, see `lock`), and the mappings tracked as of that collect. Text, one item a line:
//!
//! ```text
//! dirtytrack-remote-state 1
//! fd 900 inode 12345 generation 3
//! 7f0000000000 7f0000100000 rw-p 0 00:00 0 [heap]
//! ```
//!
//! A mapping line is `START END PERMS OFFSET DEV INODE PATH` (addresses in hex, the path last
//! and possibly empty or holding spaces).

use super::{Mapping, RemoteError};

const MAGIC: &str = "dirtytrack-remote-state 1";

/// The decoded state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChainState {
    pub fd: i32,
    pub inode: u64,
    pub generation: u64,
    pub tracked: Vec<Mapping>,
}

impl ChainState {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut s = format!(
            "{MAGIC}\nfd {} inode {} generation {}\n",
            self.fd, self.inode, self.generation
        );
        for m in &self.tracked {
            s.push_str(&format!(
                "{:x} {:x} {} {} {} {} {}\n",
                m.start, m.end, m.perms, m.offset, m.dev, m.inode, m.path
            ));
        }
        s.into_bytes()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<ChainState, RemoteError> {
        let bad = |what: &str| {
            RemoteError::BadState(format!(
                "{what}: the state was not written by this library's save_state (or is damaged); start a new chain (fresh) with a full dump"
            ))
        };
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(bad("unknown format or version"));
        }
        let head: Vec<&str> = lines
            .next()
            .ok_or_else(|| bad("no fd line"))?
            .split(' ')
            .collect();
        let (fd, inode, generation) = match head.as_slice() {
            ["fd", fd, "inode", ino, "generation", g] => (
                fd.parse().map_err(|_| bad("bad fd"))?,
                ino.parse().map_err(|_| bad("bad inode"))?,
                g.parse().map_err(|_| bad("bad generation"))?,
            ),
            _ => return Err(bad("bad fd line")),
        };
        let mut tracked = Vec::new();
        for line in lines {
            let mut f = line.splitn(7, ' ');
            let mut next = || f.next().ok_or_else(|| bad("short mapping line"));
            let start = usize::from_str_radix(next()?, 16).map_err(|_| bad("bad start"))?;
            let end = usize::from_str_radix(next()?, 16).map_err(|_| bad("bad end"))?;
            let perms = next()?.to_string();
            let offset = next()?.parse().map_err(|_| bad("bad offset"))?;
            let dev = next()?.to_string();
            let m_inode = next()?.parse().map_err(|_| bad("bad inode"))?;
            let path = f.next().unwrap_or("").to_string();
            if end <= start || perms.len() != 4 {
                return Err(bad("bad mapping"));
            }
            tracked.push(Mapping {
                start,
                end,
                perms,
                offset,
                dev,
                inode: m_inode,
                path,
            });
        }
        Ok(ChainState {
            fd,
            inode,
            generation,
            tracked,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_round_trips_and_damage_is_refused() {
        let s = ChainState {
            fd: 901,
            inode: 77,
            generation: 4,
            tracked: vec![
                Mapping {
                    start: 0x1000,
                    end: 0x3000,
                    perms: "rw-p".into(),
                    offset: 0,
                    dev: "00:00".into(),
                    inode: 0,
                    path: String::new(),
                },
                Mapping {
                    start: 0x7000,
                    end: 0x9000,
                    perms: "rw-s".into(),
                    offset: 4096,
                    dev: "00:01".into(),
                    inode: 9,
                    path: "/memfd:a b (deleted)".into(),
                },
            ],
        };
        let bytes = s.encode();
        assert_eq!(ChainState::decode(&bytes).expect("decodes"), s);
        for cut in [0, 10, 30] {
            assert!(ChainState::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut damaged = bytes.clone();
        damaged.extend_from_slice(b"zz 1 rw-p 0 00:00 0 x\n");
        assert!(matches!(
            ChainState::decode(&damaged),
            Err(RemoteError::BadState(_))
        ));
    }
}
