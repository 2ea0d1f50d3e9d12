"""Sample-importance indexes precomputed at model load, in the background.

Influence functions and nearest neighbours answer from an index built once per
model version (`desiderata.explainers.influence_store.precompute`): a Hessian
factor and the training-side gradient projections. Building it takes seconds
to minutes, so the server starts serving at once and builds the indexes of
every served model with a training reference in one background thread; a
request that arrives first waits for (or starts) the same build, never a
second copy, and stops waiting at its deadline or when its caller leaves
while the build goes on (`desiderata.explainers.influence_store.get_index`).
Progress is logged with structlog (``precompute_progress``, at most every few
seconds per stage) and kept in `Precompute.progress`.

Where indexes persist (so a restart loads instead of recomputing; the file
name carries the parameters' and settings' digests, so a changed model or
``influence.yaml`` is never served a stale index):

- next to the model, ``<model dir>/.influence/``, when the model folder is
  writable — the issue's "persisted next to the model";
- otherwise, and always for the built-in demo (its folder is package code,
  possibly read-only in site-packages and never data to ship in a wheel),
  ``<state_dir>/influence/<model>/<version>/``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from desiderata.explainers.base import Cancelled, ExplainContext
from desiderata.explainers.influence_store import precompute
from desiderata.explainers.torch_threads import adopt_torch_threads
from desiderata.server.model_handle import ModelHandle
from desiderata.server.model_repository import BUILTIN_DEMO

__all__ = ["Precompute", "assign_index_dirs", "index_dir_for", "methods_for", "start_precompute"]

log = structlog.get_logger("desiderata.precompute")

LOG_EVERY_S = 5.0
"""Least interval between two progress events of the same stage."""


def index_dir_for(handle: ModelHandle, state_dir: Path) -> Path:
    """Where `handle`'s sample-importance indexes persist (see the module notes)."""
    directory = handle.directory.resolve()
    builtin = directory.is_relative_to(BUILTIN_DEMO.resolve())
    if not builtin and os.access(directory, os.W_OK):
        return directory / ".influence"
    return state_dir / "influence" / handle.name / handle.version


def assign_index_dirs(handles: Iterable[ModelHandle], state_dir: Path) -> None:
    """Sets each handle's ``index_dir`` (before any request can build an index)."""
    for handle in handles:
        handle.index_dir = index_dir_for(handle, state_dir)


def methods_for(handle: ModelHandle) -> tuple[str, ...]:
    """The methods worth precomputing for a model (empty without a training reference).

    Influence (and TracIn, when ``influence.yaml`` lists checkpoints) need a
    differentiable module and a cross-entropy loss; nearest neighbours only
    the reference.
    """
    if handle.reference() is None:
        return ()
    if handle.torch_module() is not None and handle.card.loss == "cross_entropy":
        return ("influence", "tracin", "nearest_neighbours")
    return ("nearest_neighbours",)


@dataclass
class Precompute:
    """The background precomputation: progress per model and a done flag.

    Attributes:
        progress: ``{model: (stage, done, total)}``; stage "ready" or "failed" when over.
        errors: ``{model: message}`` of models whose precomputation failed.
        done: set when every model is over.
    """

    progress: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def wait(self, timeout: float | None = None) -> bool:
        """True once every model is over (ready, failed or cancelled)."""
        return self.done.wait(timeout)

    def stop(self, timeout: float | None = None) -> bool:
        """Cancels at the next progress step (a chunk of rows) and waits; True when the thread ended.

        A daemon thread still inside torch when the interpreter exits aborts
        the process, so the server stops this before it returns.
        """
        self.cancelled.set()
        if self.thread is not None:
            self.thread.join(timeout)
            return not self.thread.is_alive()
        return True


class _Cancelled(Exception):
    pass


def _run(handles: list[tuple[ModelHandle, tuple[str, ...]]], state: Precompute) -> None:
    adopt_torch_threads()
    try:
        for handle, methods in handles:
            key = f"{handle.name}/{handle.version}"
            last: dict[str, float] = {}

            def report(stage: str, done: int, total: int, key: str = key, last: dict[str, float] = last) -> None:
                if state.cancelled.is_set():
                    raise _Cancelled
                state.progress[key] = (stage, done, total)
                now = time.monotonic()
                if done >= total or now - last.get(stage, 0.0) >= LOG_EVERY_S:
                    last[stage] = now
                    log.info("precompute_progress", model=key, stage=stage, done=done, total=total)

            started = time.perf_counter()
            try:
                # The context lets the wait for a build started by a request end at `stop` too.
                built = precompute(handle, methods, report, ExplainContext(cancel=state.cancelled))
            except (_Cancelled, Cancelled):
                state.progress[key] = ("cancelled", 0, 0)
                log.info("precompute_cancelled", model=key)
                return
            except Exception as exc:  # a model without what a method needs must not stop the others
                state.errors[key] = str(exc)
                state.progress[key] = ("failed", 0, 0)
                log.exception("precompute_failed", model=key)
                continue
            state.progress[key] = ("ready", len(built), len(built))
            log.info(
                "precompute_ready",
                model=key,
                methods=sorted(built),
                seconds=round(time.perf_counter() - started, 3),
                index_dir=str(handle.index_dir),
            )
    finally:
        state.done.set()


def start_precompute(handles: Iterable[ModelHandle]) -> Precompute:
    """Starts building (or loading) the sample-importance indexes of `handles` in a daemon thread.

    Models without a training reference are skipped. Indexes persist under
    each handle's ``index_dir`` (see `assign_index_dirs`).
    """
    work = [(h, m) for h in handles if (m := methods_for(h))]
    state = Precompute(progress={f"{h.name}/{h.version}": ("queued", 0, 0) for h, _ in work})
    if not work:
        state.done.set()
        return state
    state.thread = threading.Thread(target=_run, args=(work, state), name="desiderata-precompute", daemon=True)
    state.thread.start()
    return state
