"""Keep freed memory inside the process instead of handing it back to the system at once.

By default glibc returns large freed blocks to the kernel: blocks above
``M_MMAP_THRESHOLD`` get their own mapping, unmapped on ``free``, and the heap's top is
trimmed once more than ``M_TRIM_THRESHOLD`` is free. A CNN forward on a batch allocates
and frees activations of tens of megabytes per layer, so with the defaults every batch
maps fresh memory and pays a page fault per 4 KiB page of it. Measured on the bundled
model (occlusion, 729 windows in batches of 8 at 224 px, 2 cores): 12 s, 11 s of CPU time
of it in the kernel, against 4.9 s once glibc keeps its freed memory.

Threads other than the main one allocate from their own arenas, whose heaps hold at most
64 MiB each, so a larger block is still mapped and unmapped afresh every time;
``M_ARENA_MAX = 1`` makes threads *started afterwards* share the main arena, which has no
such limit (measured: a worker thread's occlusion run in batches of 16 spent 6.6 s in the
kernel when the thread had allocated before these settings, 0.15 s when not). A thread
that has already allocated keeps its arena, so call ``keep_freed_memory()`` once at
start-up, before the engine's worker thread starts; later calls are harmless no-ops.

The price: the resident size stays at its high-water mark (a few hundred MB after a
batched run on a 224 px image) instead of shrinking after each job. Only glibc is
touched; elsewhere this does nothing and says so.
"""

from __future__ import annotations

import ctypes
import sys
import threading

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

KEEP_BYTES = 1 << 30  # blocks up to 1 GiB come from the heap; up to 1 GiB of free heap is kept

_lock = threading.Lock()
_applied: bool | None = None


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # present only in glibc (musl has no such symbol)
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Tell glibc to keep freed memory for reuse; True when the settings took effect."""
    global _applied
    with _lock:
        if _applied is None:
            libc = _glibc()
            _applied = bool(libc) and all(libc.mallopt(option, value) == 1 for option, value in (
                (M_MMAP_THRESHOLD, KEEP_BYTES),
                (M_TRIM_THRESHOLD, KEEP_BYTES),
                (M_ARENA_MAX, 1),
            ))
        return _applied
