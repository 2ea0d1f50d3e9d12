"""Evaluates the chunks of one large model batch on the calling worker and helper threads.

Why: the server's intra-op setting is one thread per evaluation, so that the
workers, which serve different requests at once, do not fight over the cores.
A single request with a big batch (exact Shapley over a background: 102,400
rows at d = 10) then ran on one core while the other stood idle. Torch releases
the GIL inside each operator, so chunks of one batch evaluated by two threads
take about half the time. The calling thread always works too, and chunks are
handed out one at a time from a shared counter, so a helper busy elsewhere
never makes the caller wait: whoever is free takes the next chunk, and a
helper that starts late finds nothing left and returns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TypeVar, cast

from desiderata.explainers.torch_threads import torch_executor

__all__ = ["SEQUENTIAL", "ChunkRunner"]

T = TypeVar("T")
R = TypeVar("R")


class ChunkRunner:
    """Maps a function over chunks, on the caller plus up to `helpers` threads.

    Args:
        helpers: extra threads shared by every caller; 0 runs every chunk on the caller.
    """

    def __init__(self, helpers: int = 0) -> None:
        if helpers < 0:
            raise ValueError("helpers must be ≥ 0")
        self.helpers = helpers
        self._pool = torch_executor(helpers, "desiderata-chunks") if helpers else None

    def map(self, fn: Callable[[T], R], chunks: Sequence[T]) -> list[R]:
        """``[fn(c) for c in chunks]``, in order, with the chunks spread over free threads.

        Args:
            fn: evaluation of one chunk; runs on any of the threads, so it must not
                rely on thread-local state set by the caller (torch's inference mode is).
            chunks: the batch's chunks.

        Raises:
            Whatever `fn` raised first; the other threads stop taking chunks.
        """
        if self._pool is None or len(chunks) < 2:
            return [fn(c) for c in chunks]
        out: list[R | None] = [None] * len(chunks)
        lock = threading.Lock()
        state = {"next": 0, "failed": False}

        def drain() -> None:
            while True:
                with lock:
                    i = state["next"]
                    if i >= len(chunks) or state["failed"]:
                        return
                    state["next"] = i + 1
                try:
                    out[i] = fn(chunks[i])
                except BaseException:
                    state["failed"] = True
                    raise

        futures: list[Future[None]] = [self._pool.submit(drain) for _ in range(min(self.helpers, len(chunks) - 1))]
        try:
            drain()
        finally:
            # a helper that has not started is cancelled; one that has is running our chunk: wait
            errors = [f.exception() for f in futures if not f.cancel()]
        for error in errors:
            if error is not None:
                raise error
        return cast(list[R], out)

    def shutdown(self) -> None:
        """Stops the helper threads (after their current chunk)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


SEQUENTIAL = ChunkRunner(0)
"""Every chunk on the caller: the default of a model loaded outside a server."""
