//! loom models of every protocol in the crate that uses atomics without a lock.
//!
//! Built only with `--cfg loom` (`scripts/loom`, run in CI): `crate::atomic` then hands loom's
//! atomics to the production code, and each model runs that code under every interleaving and
//! every outcome the Rust/C++ memory model allows (up to the bounds given per model). What the
//! models check:
//!
//! | protocol | production code | model |
//! |---|---|---|
//! | a mark racing a harvest of the same bitmap group | `AtomicBitmap::{set, set_range, or_bits, move_into}` against `take_into`, `move_into`, `clear`, `copy_into` | `a_mark_racing_a_take_is_never_lost`, `a_mark_racing_a_peek_stays_for_the_next_take`, `two_marks_racing_a_take_are_never_lost`, `a_mark_of_a_set_bit_racing_a_take_is_never_lost` |
//! | a discard (monitor) racing an async harvest, which takes `marks` then re-arms `discards` without the `batch` lock | `RangeState::mark_discarded`, `RangeState::rearm_discards` | `a_discard_taken_by_a_harvest_is_reported_again_by_the_next` |
//! | `mremap` followed by the monitor while the address indexes are read | `RangeState::move_to`, `Moves`, `RangeList::{find, index_stale, resort}`, `Registry::overlapping` | `a_moved_range_is_found_at_its_new_start` |
//!
//! Not modelled here, and why: the sync-mode hand-off of a write fault (the monitor marks, then
//! un-protects; a sync harvest re-protects, then takes) happens with both sides holding the
//! `batch` lock, so its only lock-free part is the mark itself, racing `Tracker::mark_dirty`:
//! that is the first model. `LazyBitmap` allocates with std's `OnceLock` (not modelled by loom,
//! correct by std's contract); the models allocate before they start threads.
//!
//! A model fails with the interleaving that broke it (`LOOM_LOG=trace` prints it).

use crate::bitmap::AtomicBitmap;
use crate::range::{Arming, Moves, RangeList, RangeState, Registry};
use crate::types::RangeId;
use bitvec::prelude::*;
use loom::thread;
// std's `Arc` (what the indexes hold): loom threads can share it like any `Send` value.
use std::sync::Arc;

/// Bits of the bitmaps below: two words, one summary group (the group of word 0 is noted
/// before the race starts, as in a busy range).
const BITS: usize = 128;
/// The bit the racing marker sets: in word 1, whose group already has a mark in word 0.
const RACED: usize = 64;

/// Everything taken from `b` now.
fn take_all(b: &AtomicBitmap) -> BitVec<u64, Lsb0> {
    let mut out = bitvec![u64, Lsb0; 0; BITS];
    b.take_into(&mut out);
    out
}

/// How a marker sets [`RACED`].
#[derive(Clone, Copy, Debug)]
enum Mark {
    Set,
    /// A run across the word boundary (words 0 and 1).
    SetRange,
    OrBits,
    /// `move_into` from another bitmap (a harvest re-arming discards into `marks`).
    MovedIn,
}

fn mark(b: &AtomicBitmap, how: Mark) {
    match how {
        Mark::Set => b.set(RACED),
        Mark::SetRange => b.set_range(RACED - 3, RACED + 3),
        Mark::OrBits => {
            let mut v = bitvec![u64, Lsb0; 0; BITS];
            v.set(RACED, true);
            b.or_bits(&v);
        }
        Mark::MovedIn => {
            let from = AtomicBitmap::new(BITS);
            from.set(RACED);
            from.move_into(&[b]);
        }
    }
}

/// How a harvest takes from the bitmap.
#[derive(Clone, Copy, Debug)]
enum Take {
    TakeInto,
    /// `move_into` another bitmap (re-arming discards), then taken from there.
    MoveInto,
    /// Cleared: a mark racing a clear may be cleared, but must not be hidden.
    Clear,
}

/// A bitmap whose group is already noted (bit 0 set, taken by nobody yet).
fn noted_bitmap() -> Arc<AtomicBitmap> {
    let b = Arc::new(AtomicBitmap::new(BITS));
    b.set(0);
    b
}

/// The interleaving of issue 23: a group already has a noted mark; a marker sets a bit in
/// another word of the group while a harvest swaps the summary and reads the words. The bit
/// must be in that harvest or in the next one, and after both sides are done no set bit may
/// sit under a clear summary bit (invisible to every later take).
///
/// Fails on the old `note()` (skip the `fetch_or` when a `Relaxed` load sees the bit set).
#[test]
fn a_mark_racing_a_take_is_never_lost() {
    for how in [Mark::Set, Mark::SetRange, Mark::OrBits, Mark::MovedIn] {
        for take in [Take::TakeInto, Take::MoveInto, Take::Clear] {
            loom::model(move || {
                let b = noted_bitmap();
                let marker = {
                    let b = b.clone();
                    thread::spawn(move || mark(&b, how))
                };
                let first = match take {
                    Take::TakeInto => take_all(&b),
                    Take::MoveInto => {
                        let to = AtomicBitmap::new(BITS);
                        b.move_into(&[&to]);
                        take_all(&to)
                    }
                    Take::Clear => {
                        b.clear();
                        bitvec![u64, Lsb0; 0; BITS]
                    }
                };
                marker.join().expect("marker thread");
                assert!(
                    b.summary_covers_every_set_word(),
                    "{how:?} racing {take:?}: a set bit under a clear summary bit"
                );
                let next = take_all(&b);
                if !matches!(take, Take::Clear) {
                    assert!(
                        first[RACED] || next[RACED],
                        "{how:?} racing {take:?}: the mark is in neither harvest"
                    );
                }
            });
        }
    }
}

/// Two markers in two words of one group racing one take (three threads; bounded).
#[test]
fn two_marks_racing_a_take_are_never_lost() {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(3);
    model.check(|| {
        let b = Arc::new(AtomicBitmap::new(BITS));
        let markers: Vec<_> = [1usize, RACED]
            .into_iter()
            .map(|i| {
                let b = b.clone();
                thread::spawn(move || b.set(i))
            })
            .collect();
        let first = take_all(&b);
        for m in markers {
            m.join().expect("marker thread");
        }
        assert!(b.summary_covers_every_set_word());
        let next = take_all(&b);
        for i in [1, RACED] {
            assert!(first[i] ^ next[i], "bit {i}: in exactly one harvest");
        }
    });
}

/// A mark of a bit that is already set (and noted) skips the summary; racing a take that clears
/// it, the mark must then note the group itself: the bit is in a harvest and never stranded.
#[test]
fn a_mark_of_a_set_bit_racing_a_take_is_never_lost() {
    loom::model(|| {
        let b = Arc::new(AtomicBitmap::new(BITS));
        b.set(RACED);
        let marker = {
            let b = b.clone();
            thread::spawn(move || b.set(RACED))
        };
        let first = take_all(&b);
        marker.join().expect("marker thread");
        assert!(
            b.summary_covers_every_set_word(),
            "a set bit under a clear summary bit"
        );
        assert!(first[RACED], "the bit set before the race is taken");
    });
}

/// A peek (`copy_into`) racing a mark takes nothing: the mark is in the next take.
#[test]
fn a_mark_racing_a_peek_stays_for_the_next_take() {
    loom::model(|| {
        let b = noted_bitmap();
        let marker = {
            let b = b.clone();
            thread::spawn(move || b.set(RACED))
        };
        let mut peeked = bitvec![u64, Lsb0; 0; BITS];
        b.copy_into(&mut peeked);
        marker.join().expect("marker thread");
        assert!(b.summary_covers_every_set_word());
        assert!(take_all(&b)[RACED], "the mark survives the peek");
    });
}

/// A one-page-at-`start` range of two pages, page 1 already marked (its group noted), its
/// discard bitmap allocated (see the module docs).
fn busy_range(start: usize, arming: Arming) -> Arc<RangeState> {
    let r = Arc::new(RangeState::new(
        RangeId(1),
        start,
        2 * PS,
        PS,
        PS,
        crate::Backing::PrivateAnonymous,
        arming,
    ));
    r.marks.set(1);
    r.discards.get_or_alloc();
    r.freed.get_or_alloc();
    r
}

const PS: usize = 4096;

/// The monitor applies a discard of page 0 (`UFFD_EVENT_REMOVE`) while an async harvest takes
/// `marks` and re-arms `discards` (both without the `batch` lock, see `async_wp::harvest_into`).
/// The madvising thread zaps the page after the event was read, possibly after that harvest
/// returned; so a harvest that reported the page must leave it for the next harvest too, and
/// the page must be in one of the first two harvests.
///
/// Fails if `mark_discarded` marks `marks` before `discards`.
#[test]
fn a_discard_taken_by_a_harvest_is_reported_again_by_the_next() {
    for arming in [Arming::Full, Arming::Populated] {
        loom::model(move || {
            let r = busy_range(0x10_000, arming);
            let monitor = {
                let r = r.clone();
                thread::spawn(move || r.mark_discarded(0x10_000, 0x10_000 + PS, PS))
            };
            let harvest = |r: &RangeState| {
                let mut seg = bitvec![u64, Lsb0; 0; 2];
                r.marks.take_into(&mut seg);
                r.rearm_discards(false);
                seg[0]
            };
            let first = harvest(&r);
            monitor.join().expect("monitor thread");
            let second = harvest(&r);
            assert!(
                first || second,
                "{arming:?}: the discard is in neither harvest"
            );
            if first {
                assert!(
                    second,
                    "{arming:?}: a harvest took the discard but did not re-arm it"
                );
            }
            assert!(r.marks.summary_covers_every_set_word());
        });
    }
}

/// The monitor follows an `mremap` of range `a` (`move_to`) while a user thread looks ranges up
/// in both indexes (the monitor's `RangeList::find` under the read lock, and the registry's
/// overlap check, which is under another lock than the monitor holds). Concurrent lookups may
/// find `a` at either address but never another range there; once the move happened before a
/// lookup, both indexes find `a` at its new start and not at the old one.
#[test]
fn a_moved_range_is_found_at_its_new_start() {
    loom::model(|| {
        let (old, new, other) = (0x10_000, 0x50_000, 0x30_000);
        let moves = Moves::new();
        let a = busy_range(old, Arming::Full);
        let b = Arc::new(RangeState::new(
            RangeId(2),
            other,
            2 * PS,
            PS,
            PS,
            crate::Backing::PrivateAnonymous,
            Arming::Full,
        ));
        let mut list = RangeList::new(moves.clone());
        let mut registry = Registry::new(moves.clone());
        for r in [&a, &b] {
            list.push(Arc::clone(r));
            registry.insert(Arc::clone(r));
        }
        let list = Arc::new(list);
        let monitor = {
            let (a, moves) = (a.clone(), moves.clone());
            thread::spawn(move || a.move_to(new, &moves))
        };
        let user = {
            let list = list.clone();
            thread::spawn(move || {
                for addr in [old, new] {
                    if let Some(r) = list.find(addr) {
                        assert_eq!(r.id, RangeId(1), "find({addr:#x}) answered another range");
                    }
                }
                let hit = registry.overlapping(new, new + PS);
                assert!(hit.is_none_or(|r| r.id == RangeId(1)));
                registry
            })
        };
        monitor.join().expect("monitor thread");
        let mut registry = user.join().expect("user thread");
        let mut list = Arc::try_unwrap(list).unwrap_or_else(|_| panic!("list still shared"));
        assert_eq!(list.find(new).map(|r| r.id), Some(RangeId(1)));
        assert!(list.find(old).is_none());
        if list.index_stale() {
            list.resort();
        }
        assert!(!list.index_stale());
        assert_eq!(list.find(new).map(|r| r.id), Some(RangeId(1)));
        assert_eq!(
            registry.overlapping(new, new + PS).map(|r| r.id),
            Some(RangeId(1)),
            "the registry's index sorted again after the move"
        );
        assert!(registry.overlapping(old, old + PS).is_none());
    });
}
