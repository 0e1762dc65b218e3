"""Process-wide CPU settings that decide how fast a frozen backbone runs: the memory allocator.

A forward pass allocates activation tensors of a few MB to a few tens of MB and frees them moments later. glibc's
malloc gives such blocks back to the kernel (blocks over its mmap threshold, and free memory at the top of the heap
beyond its trim threshold), so the next pass takes fresh pages and pays a page fault per 4 KB on first touch:
element-wise kernels then run at a fraction of their speed. `keep_freed_memory` raises both thresholds so freed
activations are reused (benchmarks/serving/results/serve_levers.md measures it). The CLI and the server call it once at
start; library users may call it themselves. The cost is resident memory that stays after a peak: a server
hands it back when idle (`serve.batcher`).
"""

from __future__ import annotations

import ctypes
import functools
import logging

log = logging.getLogger("softprompt")

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2 (32 MB on 64-bit); larger blocks are always mmapped.
MMAP_THRESHOLD = 32 << 20

_applied: bool | None = None


@functools.cache
def _libc():
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def keep_freed_memory(trim_threshold_mb: int = 1024, top_pad_mb: int = 64) -> bool:
    """Keep freed blocks up to 32 MB in the heap and up to `trim_threshold_mb` of free memory at its top (glibc
    malloc); returns whether the settings were applied (False on a C library without `mallopt`). Idempotent."""
    global _applied
    if _applied is None:
        libc = _libc()
        _applied = bool(libc and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                        and libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold_mb << 20)
                        and libc.mallopt(_M_TOP_PAD, top_pad_mb << 20))
        log.debug("allocator: keep freed memory %s", "on" if _applied else "not available")
    return _applied


def release_free_memory() -> bool:
    """Hand free heap pages back to the kernel now (glibc `malloc_trim`); False where unavailable."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
