"""dirtytrack for Python: which pages of my memory were written since I last asked?

A thin binding over the C library (libdirtytrack.so.0, ctypes, no build step). Load order: the
path in $DIRTYTRACK_LIBRARY, else the installed library (`make -C capi install`, then ldconfig or
LD_LIBRARY_PATH).

    import mmap, dirtytrack
    mem = mmap.mmap(-1, 64 * dirtytrack.page_size())
    with dirtytrack.Tracker() as t:
        rid = t.register(dirtytrack.address_of(mem), len(mem))
        mem[4096] = 1
        with t.collect() as dirty:
            for start, length in dirty.runs():
                ...                       # copy mem[start - base : ...] into the dump
        t.unregister(rid)

Every failure raises `dirtytrack.Error`, carrying the C status (`.status`, a `Status`) and the
library's message (`.message`: what happened and what to do). Handles are freed by `close()`,
by `with`, or when the object is garbage collected.
"""

import ctypes
import enum
from collections import namedtuple
from ctypes import byref, c_bool, c_int32, c_size_t, c_uint64, c_void_p

from . import _lib
from ._lib import lib

__all__ = [
    "Error",
    "Status",
    "Mode",
    "Thp",
    "Prefault",
    "Tracker",
    "DirtySet",
    "LiveCopy",
    "RangeInfo",
    "Capabilities",
    "address_of",
    "page_size",
    "open_handles",
    "probe_capabilities",
    "probe_report",
]

# The status codes, read from the library itself (dt_status_name), so this list cannot drift
# from the C enum: Status.ERR_NOT_MAPPED == -4, and so on.
Status = enum.IntEnum(
    "Status",
    {
        lib.dt_status_name(code).decode()[len("DT_"):]: code
        for code in range(-200, 1)
        if lib.dt_status_name(code) != b"DT_ERR_UNKNOWN_CODE"
    },
)


class Mode(enum.IntEnum):
    """dt_mode: how write faults are resolved."""

    AUTO = 0
    ASYNC = 1
    SYNC = 2


class Thp(enum.IntEnum):
    """dt_thp: what to do about transparent huge pages in registered ranges."""

    LEAVE = 0
    DISABLE = 1


class Prefault(enum.IntEnum):
    """dt_prefault: how sync mode protects never-touched pages."""

    BEST = 0
    UNPOPULATED = 1
    POPULATE_READ = 2
    READ_TOUCH = 3


class Error(Exception):
    """A failed dirtytrack call: `.status` (a Status) and `.message` (the library's text)."""

    def __init__(self, status, message):
        try:
            status = Status(status)
        except ValueError:
            pass
        self.status = status
        self.message = message
        name = status.name if isinstance(status, Status) else str(status)
        super().__init__(f"DT_{name}: {message}")


def _check(status):
    if status != 0:
        raise Error(status, (lib.dt_last_error_message() or b"").decode(errors="replace"))


def page_size():
    """The page size in bytes."""
    return lib.dt_page_size()


def open_handles():
    """How many library handles this process has not freed (a leak check)."""
    return lib.dt_open_handles()


def address_of(buffer):
    """The address of a writable buffer (an mmap.mmap, bytearray, ...), as an int.

    The caller keeps the buffer alive (and, for an mmap, open) while the address is registered.
    """
    anchor = ctypes.c_char.from_buffer(buffer)
    try:
        return ctypes.addressof(anchor)
    finally:
        del anchor  # releases the buffer export, so an mmap can still be closed later


RangeInfo = namedtuple("RangeInfo", "id addr len registered_addr lost")

Capabilities = namedtuple(
    "Capabilities",
    "kernel_release features ioctls full_userfaultfd user_mode_only_userfaultfd pagemap_scan "
    "madv_populate_read async_status async_why_not sync_status sync_why_not auto_mode prefault",
)


def _capabilities(c):
    return Capabilities(
        kernel_release=c.kernel_release.decode(errors="replace"),
        features=c.features,
        ioctls=c.ioctls,
        full_userfaultfd=c.full_userfaultfd,
        user_mode_only_userfaultfd=c.user_mode_only_userfaultfd,
        pagemap_scan=c.pagemap_scan,
        madv_populate_read=c.madv_populate_read,
        async_status=Status(c.async_status),
        async_why_not=c.async_why_not.decode(errors="replace"),
        sync_status=Status(c.sync_status),
        sync_why_not=c.sync_why_not.decode(errors="replace"),
        auto_mode=Mode(c.auto_mode),
        prefault=Prefault(c.prefault),
    )


def probe_capabilities():
    """What this kernel and process allow, without creating a tracker."""
    c = _lib.Capabilities()
    _check(lib.dt_capabilities_probe(byref(c)))
    return _capabilities(c)


def _report(call):
    """Runs a dt_*_report call with a buffer of the size it asks for."""
    need = c_size_t(0)
    status = call(None, 0, byref(need))
    if status != Status.ERR_BUFFER_TOO_SMALL:
        _check(status)
    buf = ctypes.create_string_buffer(need.value)
    _check(call(buf, need.value, None))
    return buf.value.decode(errors="replace")


def probe_report():
    """The capability report of the running kernel, as text."""
    return _report(lib.dt_capabilities_probe_report)


class _Handle:
    """An owned library handle, freed once by close(), `with`, or garbage collection."""

    _free = None

    def __init__(self, handle):
        self._h = handle

    @property
    def handle(self):
        if not self._h:
            raise ValueError(f"this {type(self).__name__} is closed")
        return self._h

    def close(self):
        h, self._h = self._h, None
        if h:
            _check(type(self)._free(h))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # never raise from a finalizer
            pass


def _new_handle(call, *args):
    out = c_void_p(None)
    _check(call(*args, byref(out)))
    return out.value


class DirtySet(_Handle):
    """A set of dirty pages (dt_dirty_set)."""

    _free = lib.dt_dirty_set_free

    def __init__(self, handle=None):
        super().__init__(handle if handle is not None else _new_handle(lib.dt_dirty_set_new))

    def __len__(self):
        n = c_size_t(0)
        _check(lib.dt_dirty_set_len(self.handle, byref(n)))
        return n.value

    def __contains__(self, addr):
        out = c_bool(False)
        _check(lib.dt_dirty_set_contains(self.handle, addr, byref(out)))
        return out.value

    def pages(self, chunk=4096):
        """The start addresses of the dirty pages, ascending."""
        return self._read(lib.dt_dirty_set_pages, c_size_t, chunk, lambda p: p)

    def runs(self, chunk=1024):
        """The maximal runs of dirty pages as (start, length in bytes), ascending."""
        return self._read(lib.dt_dirty_set_runs, _lib.Run, chunk, lambda r: (r.start, r.len))

    def _read(self, call, item, chunk, convert):
        buf = (item * chunk)()
        out, n, i = [], c_size_t(0), 0
        while True:
            _check(call(self.handle, i, buf, chunk, byref(n)))
            if n.value == 0:
                return out
            out.extend(convert(buf[k]) for k in range(n.value))
            i += n.value

    def union(self, other):
        """Adds every page of `other` to this set."""
        _check(lib.dt_dirty_set_union(self.handle, other.handle))


class LiveCopy(_Handle):
    """The result of a live snapshot (dt_live_copy): the range's contents at one instant.

    Store `data` (and `dirty_at_instant()`), then `commit()`; closed without a commit, the copy
    hands the pages written before the instant back to the tracker (the next collect reports
    them again), so a failed dump loses nothing.
    """

    _free = lib.dt_live_copy_free

    @property
    def addr(self):
        """The range's start address at the instant."""
        out = c_size_t(0)
        _check(lib.dt_live_copy_addr(self.handle, byref(out)))
        return out.value

    @property
    def data(self):
        """The range's contents at the instant (a bytes copy)."""
        ptr, n = ctypes.POINTER(ctypes.c_char)(), c_size_t(0)
        _check(lib.dt_live_copy_data(self.handle, byref(ptr), byref(n)))
        return ctypes.string_at(ptr, n.value)

    def dirty_at_instant(self):
        """The pages written between the previous collect of the range and the instant."""
        return DirtySet(_new_handle(lib.dt_live_copy_dirty_at_instant, self.handle))

    def commit(self):
        """Says the copy is stored: closing it no longer hands pages back to the tracker."""
        _check(lib.dt_live_copy_commit(self.handle))


class Tracker(_Handle):
    """Tracks which pages of registered memory were written (dt_tracker)."""

    _free = lib.dt_tracker_free

    def __init__(self, mode=Mode.AUTO, thp=Thp.LEAVE, prefault=Prefault.BEST):
        builder = _new_handle(lib.dt_tracker_builder_new)
        try:
            _check(lib.dt_tracker_builder_set_mode(builder, int(mode)))
            _check(lib.dt_tracker_builder_set_thp(builder, int(thp)))
            _check(lib.dt_tracker_builder_set_prefault(builder, int(prefault)))
            super().__init__(_new_handle(lib.dt_tracker_builder_build, builder))
        finally:
            lib.dt_tracker_builder_free(builder)

    @property
    def mode(self):
        """Mode.ASYNC or Mode.SYNC."""
        m = c_int32(0)
        _check(lib.dt_tracker_mode(self.handle, byref(m)))
        return Mode(m.value)

    def capabilities(self):
        """What the kernel offered when this tracker was built."""
        c = _lib.Capabilities()
        _check(lib.dt_tracker_capabilities(self.handle, byref(c)))
        return _capabilities(c)

    def capabilities_report(self):
        """The tracker's capability report, as text."""
        h = self.handle
        return _report(lambda buf, cap, need: lib.dt_tracker_capabilities_report(h, buf, cap, need))

    def register(self, addr, length):
        """Starts tracking [addr, addr + length) (page aligned, mapped); returns the range id."""
        rid = c_uint64(0)
        _check(lib.dt_tracker_register(self.handle, addr, length, byref(rid)))
        return rid.value

    def unregister(self, range_id):
        _check(lib.dt_tracker_unregister(self.handle, range_id))

    def mark_dirty(self, addr, length):
        """Reports [addr, addr + length) dirty in the next collect (e.g. after writes the
        tracker cannot see)."""
        _check(lib.dt_tracker_mark_dirty(self.handle, addr, length))

    def range(self, range_id):
        info = _lib.RangeInfo()
        _check(lib.dt_tracker_range(self.handle, range_id, byref(info)))
        return RangeInfo(info.id, info.addr, info.len, info.registered_addr, info.lost)

    def ranges(self):
        """Every registered range, in registration order."""
        n = c_size_t(0)
        while True:
            buf = (_lib.RangeInfo * max(n.value, 1))()
            status = lib.dt_tracker_ranges(self.handle, buf, len(buf), byref(n))
            if status != Status.ERR_BUFFER_TOO_SMALL:  # else: registered meanwhile, again
                _check(status)
                return [RangeInfo(r.id, r.addr, r.len, r.registered_addr, r.lost) for r in buf[: n.value]]

    def collect(self):
        """The pages written since the last collect or clear, now clean again."""
        return DirtySet(_new_handle(lib.dt_tracker_collect, self.handle))

    def peek(self):
        """The pages written since the last collect or clear; resets nothing."""
        return DirtySet(_new_handle(lib.dt_tracker_peek, self.handle))

    def clear(self):
        _check(lib.dt_tracker_clear(self.handle))

    def collect_range(self, range_id):
        return DirtySet(_new_handle(lib.dt_tracker_collect_range, self.handle, range_id))

    def peek_range(self, range_id):
        return DirtySet(_new_handle(lib.dt_tracker_peek_range, self.handle, range_id))

    def clear_range(self, range_id):
        _check(lib.dt_tracker_clear_range(self.handle, range_id))

    def live_snapshot(self, range_id):
        """A consistent copy of a range (sync mode), made while the program keeps writing:
        starts the snapshot and waits for its copy (a LiveCopy; commit it once stored)."""
        snap = _new_handle(lib.dt_tracker_live_snapshot, self.handle, range_id)
        return LiveCopy(_new_handle(lib.dt_live_snapshot_wait, snap))  # consumes snap
