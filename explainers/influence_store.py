"""The indexes sample-importance methods answer from: in memory, on disk, or built.

Each served model version has one `SampleIndex` per method and parameter subset
(see `influence_index`). This module is the one place that finds or makes it:
from memory, else from the file a previous run persisted, else by building it,
which takes seconds to a minute. Builds run in the background, one at a time,
each shared by every caller that asks for the same index meanwhile; a request
waits with its context, so cancellation or its deadline end the wait and not
the build, which then serves the callers after it. A stopping server ends the
builds at their next progress step (`stop_builds`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import torch

from desiderata.explainers.base import ExplainableModel, ExplainContext
from desiderata.explainers.influence_config import InfluenceConfig, load_influence_config
from desiderata.explainers.influence_index import Progress, SampleIndex, load_or_build_index, require_checkpoints
from desiderata.explainers.torch_threads import adopt_torch_threads
from desiderata.server.errors import DeadlineExceeded, FailedPrecondition, Unavailable

__all__ = ["check_model", "get_index", "module_for", "precompute", "stop_builds"]

_Key = tuple[int, str, str, str, str]
_INDEXES: dict[_Key, SampleIndex] = {}
_BUILDS: dict[_Key, Future[SampleIndex]] = {}
_LOCK = threading.Lock()
"""Guards `_INDEXES` and `_BUILDS` only; never held while an index is built."""
_ONE_BUILD = threading.Lock()
"""Held by the build in progress: indexes are built one at a time (each uses every core)."""
_STOP = threading.Event()
"""Set by `stop_builds`: builds end at their next progress step."""
_THREADS: set[threading.Thread] = set()
"""Build threads running or queued (guarded by `_LOCK`)."""
WAIT_POLL_S = 0.05
_ENCODED = torch.nn.Identity()
"""Stands in for the module of a black-box model: neighbours then use the encoded rows."""


def _in_background(build: Callable[[], SampleIndex]) -> Future[SampleIndex]:
    """Runs `build` on its own daemon thread, after the builds before it; call with `_LOCK` held.

    Off the request workers, so a request that gives up (cancelled, deadline) stops
    waiting while the build it joined finishes for the callers after it. A stopping
    server ends it with `stop_builds` (indexes are saved through a temporary file: a
    build stopped part-way leaves nothing half-written).
    """
    future: Future[SampleIndex] = Future()

    def run() -> None:
        adopt_torch_threads()
        try:
            with _ONE_BUILD:
                future.set_running_or_notify_cancel()
                try:
                    _raise_if_stopping()  # a build queued behind one that was stopped
                    future.set_result(build())
                except BaseException as exc:  # handed to every waiter
                    future.set_exception(exc)
        finally:
            with _LOCK:
                _THREADS.discard(threading.current_thread())

    thread = threading.Thread(target=run, name="desiderata-index", daemon=True)
    _THREADS.add(thread)  # the caller holds _LOCK
    thread.start()
    return future


def _raise_if_stopping() -> None:
    if _STOP.is_set():
        raise Unavailable("the sample-importance index build was stopped: the server is shutting down")


def stop_builds(timeout_s: float) -> bool:
    """Ends the index builds running or queued at their next progress step (a chunk of rows)
    and waits for them; True when none is left.

    A thread still inside torch when the interpreter exits aborts the process, so a
    stopping server calls this before it returns. Indexes belong to the process, not to
    one server: where several servers share a process (as in the tests), this stops the
    others' builds too, and their next caller builds again.
    """
    _STOP.set()
    deadline = time.monotonic() + timeout_s
    with _LOCK:
        threads = list(_THREADS)
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0.0))
    ended = not any(t.is_alive() for t in threads)
    if ended:
        _STOP.clear()
    return ended


def _model_dir(model: ExplainableModel) -> Path | None:
    """The model folder when the handle exposes one (attribute ``model_dir``, else ``directory``)."""
    value = getattr(model, "model_dir", None) or getattr(model, "directory", None)
    return Path(value) if value is not None else None


def _cache_dir(model: ExplainableModel) -> Path | None:
    """Where indexes persist: the handle's ``index_dir`` when set, else ``<model_dir>/.influence``."""
    value = getattr(model, "index_dir", None)
    if value is not None:
        return Path(value)
    model_dir = _model_dir(model)
    return None if model_dir is None else model_dir / ".influence"


def check_model(model: ExplainableModel, method: str) -> None:
    """Refuses (FailedPrecondition) a model that lacks what `method` needs."""
    if model.reference() is None:
        raise FailedPrecondition(
            f"{method} needs the training reference: the model card declares no training_data.path"
        )
    if method != "nearest_neighbours":
        if model.card.loss != "cross_entropy":
            raise FailedPrecondition(
                f"{method} needs the training loss; the card declares loss {model.card.loss!r}, "
                "only 'cross_entropy' is supported"
            )
        if model.torch_module() is None or not model.card.differentiable:
            raise FailedPrecondition(f"{method} needs a differentiable torch module; this model is black-box")


def module_for(model: ExplainableModel, method: str) -> torch.nn.Module:
    """The module `method` differentiates (an identity over encoded rows for neighbours of a black box)."""
    module = model.torch_module()
    if module is not None:
        return module
    if method == "nearest_neighbours":
        return _ENCODED
    raise FailedPrecondition(f"{method} needs the model's torch module")


def get_index(
    model: ExplainableModel,
    method: str,
    subset: str = "",
    progress: Progress | None = None,
    cfg: InfluenceConfig | None = None,
    ctx: ExplainContext | None = None,
) -> SampleIndex:
    """The model's index for a method: in memory, else on disk, else built (and persisted).

    Persisted under the model's ``index_dir`` when it has one, else under
    ``<model_dir>/.influence/`` when it exposes a folder; otherwise it lives
    in memory only. Loading and building run in the background, one build at
    a time, and concurrent callers of the same index share one build.

    Args:
        model: the served model.
        method: "influence", "tracin" or "nearest_neighbours".
        subset: "last_layer" / "all"; "" uses ``influence.yaml`` (default last_layer).
        progress: ``(stage, done, total)`` callback of a build this call starts.
        cfg: settings overriding ``influence.yaml``.
        ctx: a request's cancellation and deadline: waiting stops when either comes,
            the build goes on. None waits for as long as the build takes.
    """
    check_model(model, method)
    model_dir = _model_dir(model)
    settings = cfg or load_influence_config(model_dir)
    subset = subset or settings.parameter_subset
    require_checkpoints(method, settings)  # refused at once, not after the builds queued before it
    if method == "nearest_neighbours":
        subset = "representation"
    module = module_for(model, method)
    key = (id(module), model.card.name, model.card.version, method, f"{subset}/{settings.digest()}")
    ref = model.reference()
    if ref is None:  # checked above; keeps the type narrow
        raise FailedPrecondition(f"{method} needs the training reference")
    cache = _cache_dir(model)

    def step(stage: str, done: int, total: int) -> None:
        _raise_if_stopping()
        if progress is not None:
            progress(stage, done, total)

    def build() -> SampleIndex:
        try:
            index = load_or_build_index(module, ref, method, subset, settings, cache, model_dir, step)
            with _LOCK:
                _INDEXES[key] = index
            return index
        finally:
            with _LOCK:
                _BUILDS.pop(key, None)  # a failed build is tried again by the next caller

    with _LOCK:
        found = _INDEXES.get(key)
        if found is not None:
            return found
        future = _BUILDS.get(key)
        if future is None:
            future = _BUILDS[key] = _in_background(build)
    if ctx is None:
        return future.result()
    while True:
        try:
            return future.result(timeout=WAIT_POLL_S)
        except TimeoutError:
            try:
                ctx.check()
            except DeadlineExceeded:
                raise DeadlineExceeded(
                    f"the deadline passed while the {method} index of {model.card.name} was being built; "
                    "the build goes on: retry later"
                ) from None


def precompute(
    model: ExplainableModel,
    methods: tuple[str, ...] = ("influence", "nearest_neighbours"),
    progress: Progress | None = None,
    ctx: ExplainContext | None = None,
) -> dict[str, SampleIndex]:
    """Builds (or loads) the indexes of a model at load time; TracIn only when checkpoints exist.

    Gradient methods get the default subset and then every one listed in
    ``precompute_subsets``; the result is keyed by method, with ``/<subset>``
    appended for the extra subsets.
    """
    settings = load_influence_config(_model_dir(model))
    extra = [s for s in dict.fromkeys(settings.precompute_subsets) if s != settings.parameter_subset]
    out = {}
    for method in methods:
        if method == "tracin" and not settings.checkpoints:
            continue
        out[method] = get_index(model, method, "", progress, settings, ctx)
        if method != "nearest_neighbours":
            for subset in extra:
                out[f"{method}/{subset}"] = get_index(model, method, subset, progress, settings, ctx)
    return out
