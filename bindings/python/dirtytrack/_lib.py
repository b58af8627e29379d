"""The C library and the declaration of every function of dirtytrack.h (ctypes).

Every function gets its argtypes and restype here, so nothing is truncated or guessed: addresses
and sizes are c_void_p / c_size_t (uintptr_t and size_t are the same width on Linux), handles are
c_void_p (opaque values the library validates), statuses c_int32.
"""

import ctypes
import ctypes.util
import os

from ctypes import POINTER, c_bool, c_char, c_char_p, c_int32, c_size_t, c_uint64, c_void_p

# Sizes of the fixed strings in dt_capabilities (DT_KERNEL_RELEASE_LEN, DT_REASON_LEN).
KERNEL_RELEASE_LEN = 65
REASON_LEN = 512


class Run(ctypes.Structure):
    """dt_run: a maximal run of dirty pages."""

    _fields_ = [("start", c_size_t), ("len", c_size_t)]


class RangeInfo(ctypes.Structure):
    """dt_range_info: where a registered range lives now."""

    _fields_ = [
        ("id", c_uint64),
        ("addr", c_size_t),
        ("len", c_size_t),
        ("registered_addr", c_size_t),
        ("lost", c_bool),
    ]


class Capabilities(ctypes.Structure):
    """dt_capabilities: what the kernel and this process allow."""

    _fields_ = [
        ("kernel_release", c_char * KERNEL_RELEASE_LEN),
        ("features", c_uint64),
        ("ioctls", c_uint64),
        ("full_userfaultfd", c_bool),
        ("user_mode_only_userfaultfd", c_bool),
        ("pagemap_scan", c_bool),
        ("madv_populate_read", c_bool),
        ("async_status", c_int32),
        ("async_why_not", c_char * REASON_LEN),
        ("sync_status", c_int32),
        ("sync_why_not", c_char * REASON_LEN),
        ("auto_mode", c_int32),
        ("prefault", c_int32),
    ]


def _find_library():
    """$DIRTYTRACK_LIBRARY, else the installed libdirtytrack.so.0 (ldconfig or LD_LIBRARY_PATH)."""
    path = os.environ.get("DIRTYTRACK_LIBRARY")
    if path:
        return path
    return ctypes.util.find_library("dirtytrack") or "libdirtytrack.so.0"


lib = ctypes.CDLL(_find_library(), use_errno=False)

_status = c_int32
_handle = c_void_p
_out_handle = POINTER(c_void_p)
_size_p = POINTER(c_size_t)

# name: (restype, argtypes), in the order of dirtytrack.h's sections.
_FUNCTIONS = {
    # errors, handles, page size
    "dt_status_name": (c_char_p, [c_int32]),
    "dt_last_error_message": (c_char_p, []),
    "dt_page_size": (c_size_t, []),
    "dt_open_handles": (c_size_t, []),
    # capabilities of the system
    "dt_capabilities_probe": (_status, [POINTER(Capabilities)]),
    "dt_capabilities_probe_report": (_status, [c_char_p, c_size_t, _size_p]),
    # builder and tracker (dt_tracker_*: the Rust Tracker methods)
    "dt_tracker_builder_new": (_status, [_out_handle]),
    "dt_tracker_builder_set_mode": (_status, [_handle, c_int32]),
    "dt_tracker_builder_set_thp": (_status, [_handle, c_int32]),
    "dt_tracker_builder_set_prefault": (_status, [_handle, c_int32]),
    "dt_tracker_builder_build": (_status, [_handle, _out_handle]),
    "dt_tracker_builder_free": (_status, [_handle]),
    "dt_tracker_new": (_status, [_out_handle]),
    "dt_tracker_new_with_mode": (_status, [c_int32, _out_handle]),
    "dt_tracker_free": (_status, [_handle]),
    "dt_tracker_mode": (_status, [_handle, POINTER(c_int32)]),
    "dt_tracker_capabilities": (_status, [_handle, POINTER(Capabilities)]),
    "dt_tracker_capabilities_report": (_status, [_handle, c_char_p, c_size_t, _size_p]),
    "dt_tracker_register": (_status, [_handle, c_void_p, c_size_t, POINTER(c_uint64)]),
    "dt_tracker_unregister": (_status, [_handle, c_uint64]),
    "dt_tracker_range": (_status, [_handle, c_uint64, POINTER(RangeInfo)]),
    "dt_tracker_ranges": (_status, [_handle, POINTER(RangeInfo), c_size_t, _size_p]),
    "dt_tracker_collect": (_status, [_handle, _out_handle]),
    "dt_tracker_peek": (_status, [_handle, _out_handle]),
    "dt_tracker_clear": (_status, [_handle]),
    "dt_tracker_collect_range": (_status, [_handle, c_uint64, _out_handle]),
    "dt_tracker_peek_range": (_status, [_handle, c_uint64, _out_handle]),
    "dt_tracker_clear_range": (_status, [_handle, c_uint64]),
    "dt_tracker_mark_dirty": (_status, [_handle, c_void_p, c_size_t]),
    "dt_tracker_live_snapshot": (_status, [_handle, c_uint64, _out_handle]),
    # dirty sets
    "dt_dirty_set_new": (_status, [_out_handle]),
    "dt_dirty_set_free": (_status, [_handle]),
    "dt_dirty_set_len": (_status, [_handle, _size_p]),
    "dt_dirty_set_run_count": (_status, [_handle, _size_p]),
    "dt_dirty_set_contains": (_status, [_handle, c_size_t, POINTER(c_bool)]),
    "dt_dirty_set_pages": (_status, [_handle, c_size_t, POINTER(c_size_t), c_size_t, _size_p]),
    "dt_dirty_set_runs": (_status, [_handle, c_size_t, POINTER(Run), c_size_t, _size_p]),
    "dt_dirty_set_union": (_status, [_handle, _handle]),
    # live snapshots
    "dt_live_snapshot_progress": (_status, [_handle, _size_p, _size_p]),
    "dt_live_snapshot_wait": (_status, [_handle, _out_handle]),
    "dt_live_snapshot_free": (_status, [_handle]),
    "dt_live_copy_addr": (_status, [_handle, POINTER(c_size_t)]),
    "dt_live_copy_data": (_status, [_handle, POINTER(POINTER(c_char)), _size_p]),
    "dt_live_copy_dirty_at_instant": (_status, [_handle, _out_handle]),
    "dt_live_copy_commit": (_status, [_handle]),
    "dt_live_copy_free": (_status, [_handle]),
    # tracking another process (x86_64 and aarch64; dt_remote_*: the Rust RemoteTracker)
    "dt_remote_probe": (_status, [c_char_p, c_size_t, _size_p]),
    "dt_remote_uffd_flags": (c_int32, []),
    "dt_remote_find_fd": (_status, [c_int32, c_void_p, c_size_t, POINTER(c_int32)]),
    "dt_remote_tracking_fds": (_status, [c_int32, POINTER(c_int32), c_size_t, _size_p]),
    "dt_remote_adopt": (_status, [c_int32, c_int32, c_int32, c_void_p, c_size_t, _out_handle]),
    "dt_remote_attach": (_status, [c_int32, c_int32, c_void_p, c_size_t, _out_handle]),
    "dt_remote_resumed": (_status, [_handle, POINTER(c_bool)]),
    "dt_remote_target_fd": (_status, [_handle, POINTER(c_int32), POINTER(c_uint64)]),
    "dt_remote_collect": (_status, [_handle, _out_handle]),
    "dt_remote_collect_stats": (_status, [_handle, POINTER(c_uint64 * 8)]),
    "dt_remote_save_state": (_status, [_handle, c_void_p, c_size_t, _size_p]),
    "dt_remote_stop_tracking": (_status, [_handle]),
    "dt_remote_free": (_status, [_handle]),
}

for _name, (_restype, _argtypes) in _FUNCTIONS.items():
    _fn = getattr(lib, _name)
    _fn.restype = _restype
    _fn.argtypes = _argtypes

DECLARED = sorted(_FUNCTIONS)
