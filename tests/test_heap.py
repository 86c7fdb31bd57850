"""hilrl.heap: large blocks freed between small live ones go back to the system, where
glibc's defaults hold them (the learner's RSS creep over a soak)."""

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc only")

# In a fresh process, so the heap's history is only this: one 8 MB block freed (which raises
# glibc's dynamic mmap threshold past 1 MB), then 64 1 MB blocks, each followed by a small
# block that stays, then the 1 MB blocks freed. Prints whether the settings were applied and
# the MB free but held by malloc.
CHILD = """
import ctypes, sys
import numpy as np
from hilrl.heap import limit_fragmentation

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
                .split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
applied = limit_fragmentation() if sys.argv[1] == "tuned" else False
big = np.ones(8 << 20, np.uint8)
del big
blocks, pins = [], []
for _ in range(64):
    blocks.append(np.ones(1 << 20, np.uint8))
    pins.append(np.ones(1000, np.uint8))
del blocks
print(int(applied), libc.mallinfo2().fordblks >> 20)
"""


def held_mb(mode: str, **env: str) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", CHILD, mode], env={**clean, **env},
                         capture_output=True, text=True, check=True).stdout.split()
    return bool(int(out[0])), int(out[1])


def test_freed_batches_are_returned_with_the_settings_and_held_without():
    applied, held = held_mb("tuned")
    assert applied and held < 8, held
    # The same history with glibc's defaults holds the 64 MB: what the settings are for.
    assert held_mb("default") == (False, 64)


def test_the_users_malloc_variables_win():
    applied, held = held_mb("tuned", MALLOC_ARENA_MAX="4")
    assert not applied and held >= 64
