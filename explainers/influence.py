"""Sample importance served online: influence functions (Koh & Liang 2017),
TracIn (Pruthi et al. 2020) and nearest neighbours in representation space,
through one entry point, with outliers flagged and training rows withheld by
default.

Each method answers from a precomputed `SampleIndex` (see `influence_index`;
found or built by `influence_store`, re-exported here), so a query costs one
per-sample gradient and dot products. Every returned point carries its
influence, its influence relative to its mean |influence| over a sample of
predictions (the answer to the paper's Organization F, whose globally
influential outliers crowded out similar points), its self-influence and an
outlier flag (self-influence above median + k·MAD).

Disclosure: a point is an id, a label, figures and a flag. Raw training rows
are attached only when the explainer is built with ``include_rows=True``
(the pipeline passes the disclosure profile's "training rows allowed"); the
aggregate sentence is always filled for audiences without rows.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from desiderata.explainers.base import Capabilities, ExplainableModel, ExplainContext, Explainer, Kind
from desiderata.explainers.influence_store import check_model, get_index, module_for, precompute, stop_builds
from desiderata.explainers.registry import register
from desiderata.explainers.sample_aggregate import aggregate_sentence
from desiderata.explainers.types import (
    Explanation,
    InfluentialSample,
    Quality,
    SampleImportanceParams,
    SampleImportanceResult,
)
from desiderata.server.errors import FailedPrecondition, InvalidArgument

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
    check_model(model, method)
    index = get_index(model, method, params.parameter_subset, ctx=ctx)
    module = module_for(model, method)
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
