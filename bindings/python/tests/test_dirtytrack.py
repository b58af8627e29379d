"""Tests of the Python binding on the real kernel, in both modes, with a shadow-copy oracle:
copy the memory after a collect, write, collect, and compare page by page: the reported pages
must be exactly the pages whose bytes changed.

A mode this machine cannot run prints `DIRTYTRACK-SKIP: <test>: <reason>` and fails, unless
DIRTYTRACK_ALLOW_SKIP=1 (then the test is skipped).
"""

import mmap
import os
import random
import unittest

import dirtytrack
from dirtytrack import Error, Mode, Status, Thp, Tracker

PS = dirtytrack.page_size()


def changed_pages(mem, shadow, base):
    """Start addresses of the pages of `mem` whose bytes differ from `shadow`."""
    return [
        base + off
        for off in range(0, len(mem), PS)
        if mem[off : off + PS] != shadow[off : off + PS]
    ]


class ModeTest(unittest.TestCase):
    """Runs each test once per mode (subTest)."""

    def tracker_or_skip(self, mode, **options):
        caps = dirtytrack.probe_capabilities()
        status, why = {
            Mode.ASYNC: (caps.async_status, caps.async_why_not),
            Mode.SYNC: (caps.sync_status, caps.sync_why_not),
        }[mode]
        if status != Status.OK:
            print(f"DIRTYTRACK-SKIP: {self.id()}[{mode.name}]: {why}")
            if os.environ.get("DIRTYTRACK_ALLOW_SKIP") == "1":
                self.skipTest(why)
            self.fail(f"{mode.name} mode is unavailable here: {why}")
        t = Tracker(mode, **options)
        self.addCleanup(t.close)
        self.assertEqual(t.mode, mode)
        return t

    def mapping(self, pages, fill=True):
        mem = mmap.mmap(-1, pages * PS)
        self.addCleanup(mem.close)
        if fill:
            mem.write(random.Random(pages).randbytes(pages * PS))
        return mem


class TestTracking(ModeTest):
    def test_collect_reports_exactly_the_written_pages(self):
        for mode in (Mode.ASYNC, Mode.SYNC):
            with self.subTest(mode=mode.name):
                t = self.tracker_or_skip(mode)
                pages = 256
                mem = self.mapping(pages)
                base = dirtytrack.address_of(mem)
                rid = t.register(base, len(mem))
                rng = random.Random(7)
                shadow = bytes(mem)
                for round_ in range(6):
                    for p in rng.sample(range(pages), rng.randrange(1, 40)):
                        off = p * PS + rng.randrange(PS)
                        mem[off] = mem[off] ^ 0xFF  # always a change
                    want = changed_pages(mem, shadow, base)
                    with t.collect() as dirty:
                        self.assertEqual(dirty.pages(), want, f"round {round_}")
                        self.assertEqual(len(dirty), len(want))
                        covered = [s + k for s, n in dirty.runs() for k in range(0, n, PS)]
                        self.assertEqual(covered, want)
                        for addr in want[:5]:
                            self.assertIn(addr + 17, dirty)
                    shadow = bytes(mem)
                with t.collect() as dirty:
                    self.assertEqual(len(dirty), 0, "a collect resets what it reported")
                t.unregister(rid)

    def test_never_touched_pages_and_peek_clear(self):
        for mode in (Mode.ASYNC, Mode.SYNC):
            with self.subTest(mode=mode.name):
                t = self.tracker_or_skip(mode, thp=Thp.DISABLE)
                mem = self.mapping(64, fill=False)  # never touched before register
                base = dirtytrack.address_of(mem)
                rid = t.register(base, len(mem))
                shadow = bytes(len(mem))
                for p in (0, 1, 33, 63):
                    mem[p * PS + 5] = 0x5A
                want = changed_pages(mem, shadow, base)
                self.assertEqual(len(want), 4)
                with t.peek() as s:
                    self.assertEqual(s.pages(), want)
                with t.peek_range(rid) as s:
                    self.assertEqual(s.pages(), want, "a peek resets nothing")
                t.clear_range(rid)
                with t.collect_range(rid) as s:
                    self.assertEqual(len(s), 0)
                mem[10 * PS] = 1
                t.clear()
                with t.collect() as s:
                    self.assertEqual(len(s), 0)
                t.unregister(rid)

    def test_mark_dirty_adds_to_what_the_page_tables_show(self):
        for mode in (Mode.ASYNC, Mode.SYNC):
            with self.subTest(mode=mode.name):
                t = self.tracker_or_skip(mode)
                mem = self.mapping(32)
                base = dirtytrack.address_of(mem)
                rid = t.register(base, len(mem))
                shadow = bytes(mem)
                mem[4 * PS] = mem[4 * PS] ^ 1
                # e.g. an O_DIRECT read completed into pages 10-11 behind the page tables' back
                t.mark_dirty(base + 10 * PS + 100, PS)
                want = sorted(set(changed_pages(mem, shadow, base)) | {base + 10 * PS, base + 11 * PS})
                with t.collect() as s:
                    self.assertEqual(s.pages(), want)
                other = self.mapping(1)
                with self.assertRaises(Error) as e:
                    t.mark_dirty(dirtytrack.address_of(other), 1)
                self.assertEqual(e.exception.status, Status.ERR_NOT_TRACKED)
                t.unregister(rid)

    def test_union_keeps_a_failed_dump(self):
        for mode in (Mode.ASYNC, Mode.SYNC):
            with self.subTest(mode=mode.name):
                t = self.tracker_or_skip(mode)
                mem = self.mapping(16)
                base = dirtytrack.address_of(mem)
                rid = t.register(base, len(mem))
                mem[0] = 1
                first = t.collect()
                mem[3 * PS] = 1
                with t.collect() as second, dirtytrack.DirtySet() as acc:
                    acc.union(first)
                    acc.union(second)
                    self.assertEqual(acc.pages(), [base, base + 3 * PS])
                first.close()
                t.unregister(rid)


class TestApi(ModeTest):
    def test_errors_carry_status_and_c_message(self):
        t = Tracker()
        self.addCleanup(t.close)
        mem = self.mapping(4)
        base = dirtytrack.address_of(mem)
        with self.assertRaises(Error) as e:
            t.register(base + 1, PS)
        self.assertEqual(e.exception.status, Status.ERR_UNALIGNED)
        self.assertIn("not a multiple of the page size", e.exception.message)
        self.assertTrue(str(e.exception).startswith("DT_ERR_UNALIGNED: "))
        with self.assertRaises(Error) as e:
            t.unregister(424242)
        self.assertEqual(e.exception.status, Status.ERR_UNKNOWN_RANGE)
        self.assertIn("range 424242 is not registered", e.exception.message)
        self.assertNotIn("RangeId", e.exception.message)
        with self.assertRaises(Error) as e:
            Tracker(mode=7)
        self.assertEqual(e.exception.status, Status.ERR_INVALID_ARGUMENT)
        t.close()
        with self.assertRaises(ValueError):
            t.collect()

    def test_status_enum_comes_from_the_library(self):
        self.assertEqual(Status.OK, 0)
        self.assertEqual(Status.ERR_NOT_MAPPED, -4)
        self.assertEqual(Status.ERR_BUFFER_TOO_SMALL, -104)

    def test_addresses_are_not_truncated(self):
        # Addresses above 4 GiB (every mmap on x86_64) go through c_void_p / c_size_t whole.
        t = Tracker()
        self.addCleanup(t.close)
        mem = self.mapping(2)
        base = dirtytrack.address_of(mem)
        self.assertGreater(base, 1 << 32)
        rid = t.register(base, len(mem))
        info = t.range(rid)
        self.assertEqual((info.addr, info.len, info.registered_addr), (base, 2 * PS, base))
        mem[PS] = 9
        with t.collect() as s:
            self.assertEqual(s.pages(), [base + PS])
        t.unregister(rid)

    def test_ranges_and_capabilities(self):
        t = Tracker()
        self.addCleanup(t.close)
        mems = [self.mapping(n) for n in (1, 2, 3)]
        ids = [t.register(dirtytrack.address_of(m), len(m)) for m in mems]
        got = t.ranges()
        self.assertEqual([r.id for r in got], ids)
        self.assertEqual([r.len for r in got], [PS, 2 * PS, 3 * PS])
        self.assertEqual([r.addr for r in got], [dirtytrack.address_of(m) for m in mems])
        for rid in ids:
            t.unregister(rid)
        self.assertEqual(t.ranges(), [])

        caps = dirtytrack.probe_capabilities()
        self.assertEqual(caps.kernel_release, os.uname().release)
        self.assertEqual(caps.auto_mode, t.mode)
        self.assertEqual(t.capabilities().features, caps.features)
        self.assertIn("DT_MODE_AUTO chooses", t.capabilities_report())
        self.assertIn("async mode", dirtytrack.probe_report())

    def test_live_snapshot_in_sync_mode(self):
        t = self.tracker_or_skip(Mode.SYNC)
        mem = self.mapping(16)
        base = dirtytrack.address_of(mem)
        rid = t.register(base, len(mem))
        mem[2 * PS] = mem[2 * PS] ^ 1
        at_instant = bytes(mem)
        with t.live_snapshot(rid) as copy:
            mem[5 * PS] = mem[5 * PS] ^ 1  # after the instant: not in the copy
            self.assertEqual(copy.addr, base)
            self.assertEqual(copy.data, at_instant)
            with copy.dirty_at_instant() as d:
                self.assertEqual(d.pages(), [base + 2 * PS])
            copy.commit()
        with t.collect() as s:
            self.assertEqual(s.pages(), [base + 5 * PS])
        # Closed without a commit: the pre-instant page goes back to the tracker.
        mem[7 * PS] = mem[7 * PS] ^ 1
        with t.live_snapshot(rid) as copy:
            with copy.dirty_at_instant() as d:
                self.assertEqual(d.pages(), [base + 7 * PS])
        with t.collect() as s:
            self.assertEqual(s.pages(), [base + 7 * PS])
        t.unregister(rid)

    def test_every_function_is_declared(self):
        header = os.path.join(
            os.path.dirname(__file__), "..", "..", "..", "capi", "include", "dirtytrack.h"
        )
        if not os.path.exists(header):
            self.skipTest("not run from a source tree")
        import re

        with open(header) as f:
            in_header = set(re.findall(r"\b(dt_[a-z_]+)\(", f.read()))
        self.assertEqual(in_header - set(dirtytrack._lib.DECLARED), set())


def tearDownModule():
    """After every test: each handle the binding created was freed (close, with, or GC)."""
    import gc

    gc.collect()
    if dirtytrack.open_handles() != 0:
        raise AssertionError(f"{dirtytrack.open_handles()} library handles were not freed")


if __name__ == "__main__":
    unittest.main()
