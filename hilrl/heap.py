"""The learner's heap: glibc malloc settings for hours of large, short-lived arrays.

The learner allocates megabytes per update (sampled batches, decoded camera frames) on
several threads. With glibc's defaults it kept freed memory: its dynamic mmap threshold
rises to the largest block freed so far, after which every batch comes from the heap
instead of mmap, and each thread's arena fragments on its own. In a soak
(``bench/soak.py``; README, "Long runs") the memory free but held by malloc grew from 0.5
to 0.9 GB in ten minutes, and RSS crept ~100 MB an hour; with these settings it stayed at
0.19 GB. A fixed mmap threshold returns each large block to the system when it is freed,
and two arenas bound what fragmentation can hold.

``MALLOC_*`` environment variables set by the user win: nothing is changed then.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

SETTINGS = {
    # Blocks this large or larger are mmapped and unmapped on free: a camera frame (49 kB
    # at 128x128) stays on the heap, a batch goes back to the system.
    M_MMAP_THRESHOLD: 256 * 1024,
    # Free memory at the heap's top beyond this is returned at once.
    M_TRIM_THRESHOLD: 1024 * 1024,
    M_ARENA_MAX: 2,
}


def limit_fragmentation() -> bool:
    """Apply :data:`SETTINGS` to this process's malloc; True if they were applied.

    A no-op (False) off glibc or when the user set any ``MALLOC_*`` variable. Call it early,
    before the threads that allocate start: arenas made before it stay.
    """
    if platform.libc_ver()[0] != "glibc" or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return all(libc.mallopt(param, value) == 1 for param, value in SETTINGS.items())
