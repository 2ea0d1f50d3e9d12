"""Sample importance served online: influence functions (Koh & Liang 2017),
TracIn (Pruthi et al. 2020) and nearest neighbours in representation space,
through one entry point, with outliers flagged and training rows withheld by
default.

Each method answers from a precomputed `SampleIndex` (see `influence_index`),
so a query costs one per-sample gradient and dot products. Every returned
point carries its influence, its influence relative to its mean |influence|
over a sample of predictions (the answer to the paper's Organization F,
whose globally influential outliers crowded out similar points), its
self-influence and an outlier flag (self-influence above median + k·MAD).

Disclosure: a point is an id, a label, figures and a flag. Raw training rows
are attached only when the explainer is built with ``include_rows=True``
(the pipeline passes the disclosure profile's "training rows allowed"); the
aggregate sentence is always filled for audiences without rows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import torch

from desiderata.explainers.base import Capabilities, ExplainableModel, ExplainContext, Explainer, Kind
from desiderata.explainers.influence_config import InfluenceConfig, load_influence_config
from desiderata.explainers.influence_index import Progress, SampleIndex, load_or_build_index, require_checkpoints
from desiderata.explainers.registry import register
from desiderata.explainers.sample_aggregate import aggregate_sentence
from desiderata.explainers.types import (
    Explanation,
    InfluentialSample,
    Quality,
    SampleImportanceParams,
    SampleImportanceResult,
)
from desiderata.server.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, Unavailable

__all__ = [
    "DEFAULT_TOP_K",
    "MAX_TOP_K",
    "InfluenceFunctions",
    "NearestNeighbours",
    "TracIn",
    "explain_samples",
    "get_index",
    "precompute",
    "stop_builds",
    "top_indices",
]

DEFAULT_TOP_K = 10
MAX_TOP_K = 100
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


def _check_model(model: ExplainableModel, method: str) -> None:
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


def _module(model: ExplainableModel, method: str) -> torch.nn.Module:
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
    in memory only. Loading and building run on one background thread, and
    concurrent callers of the same index share one build.

    Args:
        model: the served model.
        method: "influence", "tracin" or "nearest_neighbours".
        subset: "last_layer" / "all"; "" uses ``influence.yaml`` (default last_layer).
        progress: ``(stage, done, total)`` callback of a build this call starts.
        cfg: settings overriding ``influence.yaml``.
        ctx: a request's cancellation and deadline: waiting stops when either comes,
            the build goes on. None waits for as long as the build takes.
    """
    _check_model(model, method)
    model_dir = _model_dir(model)
    settings = cfg or load_influence_config(model_dir)
    subset = subset or settings.parameter_subset
    require_checkpoints(method, settings)  # refused at once, not after the builds queued before it
    if method == "nearest_neighbours":
        subset = "representation"
    module = _module(model, method)
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


def _page(params: SampleImportanceParams, n: int) -> tuple[int, int, int]:
    top_k = params.top_k or DEFAULT_TOP_K
    if top_k > MAX_TOP_K:
        raise InvalidArgument.single("params.sample_importance.top_k", f"at most {MAX_TOP_K}")
    try:
        offset = int(params.page_token) if params.page_token else 0
    except ValueError:
        raise InvalidArgument.single(
            "params.sample_importance.page_token", "not a token from a previous page"
        ) from None
    if offset < 0 or offset > top_k:
        raise InvalidArgument.single("params.sample_importance.page_token", "not a token from a previous page")
    top_k = min(top_k, n)
    size = params.page_size or top_k
    return top_k, offset, size


def top_indices(key: np.ndarray, k: int, candidates: np.ndarray | None = None) -> np.ndarray:
    """The `k` indices of the largest `key` values among `candidates` (None: all), largest first.

    The same indices, in the same order, as a stable descending sort of every
    candidate cut at `k` (ties by index), in O(n) instead of O(n log n): a
    partition finds the k-th value, then only the candidates at or above it
    (k plus any ties) are sorted.
    """
    pool = key if candidates is None else key[candidates]
    if k <= 0 or len(pool) == 0:
        return np.empty(0, dtype=np.int64)
    neg = -pool
    kept = np.arange(len(pool))
    if k < len(pool):
        kth = neg[np.argpartition(neg, k - 1)[k - 1]]
        if not np.isnan(kth):  # NaNs sort last; with fewer than k numbers sort everything
            kept = np.flatnonzero(neg <= kth)
    kept = kept[np.argsort(neg[kept], kind="stable")][:k]
    return kept if candidates is None else candidates[kept]


def explain_samples(
    model: ExplainableModel,
    x: np.ndarray,
    params: SampleImportanceParams,
    ctx: ExplainContext,
    method: str,
    include_rows: bool = False,
) -> Explanation:
    """The most influential training points for the model's prediction at x.

    Args:
        model: the served model (training reference and, except for
            neighbours, a differentiable module and a cross-entropy loss).
        x: encoded instance, ``(n_columns,)``.
        params: top-k, exclude_outliers, relative ranking, subset, paging.
        ctx: deadline and cancellation.
        method: "influence", "tracin" or "nearest_neighbours".
        include_rows: attach raw (decoded) training rows; only when the
            caller's disclosure profile allows training rows.

    Returns:
        A sample-importance explanation ranked by influence (or relative
        influence), most supporting first.
    """
    started = time.perf_counter()
    _check_model(model, method)
    index = get_index(model, method, params.parameter_subset, ctx=ctx)
    module = _module(model, method)
    ref = model.reference()
    if ref is None:
        raise FailedPrecondition(f"{method} needs the training reference")
    predicted = int(np.argmax(model.predict_proba(x[None, :])[0]))
    q = index.query_vectors(module, x[None, :], np.array([predicted]))
    influence = index.scores(q)[0]
    outliers = index.outliers
    key = influence / np.maximum(index.global_mean_abs, 1e-300) if params.relative else influence
    candidates = np.flatnonzero(~outliers) if params.exclude_outliers else None
    top_k, offset, size = _page(params, len(key) if candidates is None else len(candidates))
    ranked = top_indices(key, top_k, candidates)
    page = ranked[offset : offset + size]
    relative = influence[ranked] / np.maximum(index.global_mean_abs[ranked], 1e-300)
    samples = tuple(
        InfluentialSample(
            sample_id=ref.ids[i],
            label=model.card.class_names[int(ref.y[i])],
            influence=float(influence[i]),
            relative_influence=float(relative[j]),
            self_influence=float(index.self_influence[i]),
            outlier=bool(outliers[i]),
            row=model.schema.decode(ref.x[i]) if include_rows else None,
        )
        for j, i in enumerate(page, start=offset)
    )
    nxt = offset + size
    result = SampleImportanceResult(
        samples=samples,
        aggregate=aggregate_sentence(model.card, model.schema, ref.x[ranked], ref.y[ranked]),
        next_page_token=str(nxt) if nxt < len(ranked) else "",
    )
    warnings: list[str] = []
    negative = index.meta.get("negative_eigenvalues", 0)
    if isinstance(negative, int) and negative > 0:
        warnings.append(f"H + damping is not positive in {negative} directions (|eigenvalue| used)")
    flagged = int(outliers[ranked].sum())
    if flagged:
        warnings.append(f"{flagged} of the top {len(ranked)} points are outliers (high self-influence)")
    used: dict[str, Any] = {
        "top_k": top_k,
        "exclude_outliers": params.exclude_outliers,
        "relative": params.relative,
        "parameter_subset": index.subset,
        "explained_class": predicted,
        "rows_included": include_rows,
        "outlier_threshold": index.threshold,
        "index": {k: v for k, v in index.meta.items() if isinstance(v, (int, float, str))},
    }
    quality = Quality(
        model_evaluations=1 + len(index.grads),
        compute_ms=(time.perf_counter() - started) * 1e3,
        warnings=tuple(warnings),
    )
    return Explanation(Kind.SAMPLE_IMPORTANCE, method, "1", used, result, quality)


class _SampleImportance(Explainer):
    """Shared entry: validates the parameter type, then `explain_samples`."""

    def __init__(self, include_rows: bool = False) -> None:
        self.include_rows = include_rows

    def explain(self, model: ExplainableModel, x: np.ndarray, params: Any, ctx: ExplainContext) -> Explanation:
        if not isinstance(params, SampleImportanceParams):
            raise TypeError(f"{self.name} needs SampleImportanceParams")
        return explain_samples(model, x, params, ctx, self.name, self.include_rows)


class InfluenceFunctions(_SampleImportance):
    """Influence functions with an exact or Arnoldi low-rank inverse Hessian."""

    name = "influence"
    capabilities = Capabilities(
        kind=Kind.SAMPLE_IMPORTANCE, white_box=True, needs_background=True, dp_sensitivity="none"
    )


class TracIn(_SampleImportance):
    """TracInCP over the checkpoints listed in ``influence.yaml``."""

    name = "tracin"
    capabilities = Capabilities(
        kind=Kind.SAMPLE_IMPORTANCE, white_box=True, needs_background=True, dp_sensitivity="none"
    )


class NearestNeighbours(_SampleImportance):
    """Training points nearest in the penultimate representation (influence = −distance)."""

    name = "nearest_neighbours"
    capabilities = Capabilities(kind=Kind.SAMPLE_IMPORTANCE, needs_background=True, dp_sensitivity="none")


register(InfluenceFunctions, default_for_kind=True)
register(TracIn)
register(NearestNeighbours)
