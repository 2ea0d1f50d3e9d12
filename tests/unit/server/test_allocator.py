"""glibc malloc tuning: freed buffers below the mmap threshold stay mapped (no page faults on reuse)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

# A child process mallocs, fills and frees a 40 MiB buffer 20 times (malloc itself: numpy
# would ask for transparent huge pages, which hide the faults) and prints the minor page
# faults of the last 19: above glibc's largest dynamic mmap threshold (32 MiB), so untuned
# each buffer is a fresh mapping whose 10,240 pages fault in again.
CHILD = """
import ctypes, resource, sys
from desiderata.server.allocator import tune_malloc
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "tuned":
    assert tune_malloc(64, 256)
size = 40 << 20
def use():
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)
use()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(19):
    use()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])  # the last line; log lines may precede it


def test_tuned_malloc_reuses_large_buffers_without_faulting_them_in() -> None:
    plain, tuned = _faults("plain"), _faults("tuned")
    assert plain >= 19 * 10_000  # every reuse faulted all its pages in
    assert tuned < 1_000


def test_zero_keeps_glibc_defaults() -> None:
    from desiderata.server.allocator import tune_malloc

    assert tune_malloc(0, 0) is True  # nothing asked, nothing failed
