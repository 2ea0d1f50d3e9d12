"""Threads the server starts run OpenMP and MKL with the process's torch thread count.

The counts are read from the libraries themselves (``omp_get_max_threads``,
``mkl_get_max_threads``), which is what a model's matrix products use, rather
than ``torch.get_num_threads``, which reports the process's count in every
thread whether or not the thread has it.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import torch

from desiderata.explainers.torch_threads import adopt_torch_threads, torch_executor
from desiderata.server.chunk_runner import ChunkRunner


def _counter(library: ctypes.CDLL, name: str) -> Callable[[], int] | None:
    try:
        fn = getattr(library, name)
    except AttributeError:
        return None
    fn.restype = ctypes.c_int
    return lambda: int(fn())


OMP = _counter(ctypes.CDLL(None), "omp_get_max_threads")
MKL = _counter(ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so")), "mkl_get_max_threads")
T = TypeVar("T")
pytestmark = pytest.mark.skipif(OMP is None, reason="this torch build does not use OpenMP")


def _counts() -> tuple[int, int | None]:
    assert OMP is not None
    return OMP(), MKL() if MKL is not None else None


def _in_plain_thread(fn: Callable[[], T]) -> T:
    out: list[T] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join()
    return out[0]


@pytest.fixture
def count() -> Iterator[int]:
    """A torch thread count that differs from what a new thread gets by default."""
    before = torch.get_num_threads()
    default = _in_plain_thread(_counts)[0]
    chosen = default + 1
    torch.set_num_threads(chosen)
    yield chosen
    torch.set_num_threads(before)


def test_a_plain_thread_keeps_the_library_defaults(count: int) -> None:
    # Why the module exists: were this to fail, the adoption below would prove nothing.
    omp, mkl = _in_plain_thread(_counts)
    assert omp != count and mkl != count
    assert _in_plain_thread(torch.get_num_threads) == count  # torch reports the count all the same


def test_adopting_sets_openmp_and_mkl(count: int) -> None:
    def adopted() -> tuple[int, int | None]:
        adopt_torch_threads()
        return _counts()

    omp, mkl = _in_plain_thread(adopted)
    assert omp == count
    assert mkl in (count, None)


def test_executor_threads_adopt_the_count(count: int) -> None:
    with torch_executor(2, "test-torch") as pool:
        seen = {pool.submit(_counts).result() for _ in range(4)}
    assert seen == {(count, count if MKL is not None else None)}


def test_chunk_helpers_adopt_the_count(count: int) -> None:
    runner = ChunkRunner(1)
    names: set[str] = set()

    def chunk(_: int) -> tuple[int, int | None]:
        names.add(threading.current_thread().name)
        threading.Event().wait(0.01)  # the caller cannot take every chunk before the helper starts
        return _counts()

    try:
        results = set(runner.map(chunk, list(range(8))))
    finally:
        runner.shutdown()
    assert any(n.startswith("desiderata-chunks") for n in names)
    assert results == {(count, count if MKL is not None else None)}
