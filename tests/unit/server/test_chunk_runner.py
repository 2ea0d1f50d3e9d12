"""The chunk runner returns what a plain loop returns, on the caller plus its helpers."""

from __future__ import annotations

import threading
import time

import pytest

from desiderata.server.chunk_runner import SEQUENTIAL, ChunkRunner


@pytest.mark.parametrize("helpers", [0, 1, 3])
@pytest.mark.parametrize("n", [0, 1, 2, 7, 50])
def test_results_in_order(helpers: int, n: int) -> None:
    runner = ChunkRunner(helpers)
    assert runner.map(lambda c: c * c, list(range(n))) == [c * c for c in range(n)]
    runner.shutdown()


def test_helpers_take_chunks_beside_the_caller() -> None:
    runner = ChunkRunner(1)
    seen: set[str] = set()

    def work(c: int) -> int:
        seen.add(threading.current_thread().name)
        time.sleep(0.01)  # the caller cannot drain all chunks before the helper starts
        return c

    assert runner.map(work, list(range(20))) == list(range(20))
    assert threading.current_thread().name in seen and any(t.startswith("desiderata-chunks") for t in seen)
    runner.shutdown()
    assert SEQUENTIAL.map(work, [1, 2]) == [1, 2]


def test_a_busy_helper_never_holds_the_caller_back() -> None:
    runner = ChunkRunner(1)
    release = threading.Event()
    blocker = threading.Thread(target=runner.map, args=(lambda c: release.wait(10), [0, 1]))
    blocker.start()  # its helper share is stuck until `release`
    time.sleep(0.05)
    started = time.perf_counter()
    assert runner.map(lambda c: c + 1, list(range(10))) == list(range(1, 11))
    assert time.perf_counter() - started < 5.0  # did not wait for the stuck helper (10 s)
    release.set()
    blocker.join()
    runner.shutdown()


def test_the_first_error_is_raised_and_the_rest_stop() -> None:
    runner = ChunkRunner(2)
    calls: list[int] = []

    def work(c: int) -> int:
        calls.append(c)
        if c == 3:
            raise ValueError("chunk 3")
        time.sleep(0.005)
        return c

    with pytest.raises(ValueError, match="chunk 3"):
        runner.map(work, list(range(100)))
    assert len(calls) < 100
    runner.shutdown()
