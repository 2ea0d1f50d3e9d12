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
    assert tune_malloc(64, 256)  # a trim threshold above the 40 MiB buffer: it stays at the top, mapped
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

# With the default settings: a worker thread evaluates an MLP on chunks of 1,024–4,096 rows
# (the server's pattern) and prints the minor page faults of 50 evaluations after a warm-up.
MODEL_CHILD = """
import resource, sys, threading
import torch
from desiderata.server.allocator import tune_malloc
from desiderata.server.config import ModelsSettings
settings = ModelsSettings()
if sys.argv[1] == "tuned":
    assert tune_malloc(settings.malloc_mmap_threshold_mb, settings.malloc_trim_threshold_mb)
torch.set_num_threads(1)
net = torch.nn.Sequential(
    torch.nn.Linear(30, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)
)
out = {}
def work():
    with torch.inference_mode():
        for n in (4096, 2048, 4096, 1024):
            net(torch.randn(n, 30))
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        for i in range(50):
            net(torch.randn((4096, 2048, 3000, 1024)[i % 4], 30))
        out["faults"] = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before
worker = threading.Thread(target=work)
worker.start()
worker.join()
print(out["faults"])
"""

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


def _faults(mode: str, child: str = CHILD) -> int:
    out = subprocess.run([sys.executable, "-c", child, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])  # the last line; log lines may precede it


def test_tuned_malloc_reuses_large_buffers_without_faulting_them_in() -> None:
    plain, tuned = _faults("plain"), _faults("tuned")
    assert plain >= 19 * 10_000  # every reuse faulted all its pages in
    assert tuned < 1_000


def test_default_settings_spare_a_model_worker_most_of_its_page_faults() -> None:
    plain, tuned = _faults("plain", MODEL_CHILD), _faults("tuned", MODEL_CHILD)
    assert tuned * 3 < plain, (plain, tuned)  # measured: 9,888 untuned, 1,792 with the defaults


def test_zero_keeps_glibc_defaults() -> None:
    from desiderata.server.allocator import tune_malloc

    assert tune_malloc(0, 0) is True  # nothing asked, nothing failed
