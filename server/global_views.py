"""Global views of a model built from local explanations: mean |attribution|
per feature, grouped by predicted class, over a seeded sample of the training
reference (Bhatt et al. 2020: global summaries for regulators and executives).

Every model gets one: differentiable models are explained with Integrated
Gradients (cheap: one batched forward and backward per row), black-box ones
with permutation-sampling Shapley values to a 2% relative standard error.
`attribution_drift` builds on the same local step and the same row cache.

Computed once per model version and cached; the pipeline decides who may see
it (Cedar action ``global/summary``) and applies that tier's rounding.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from desiderata.explainers.base import ExplainableModel, ExplainContext
from desiderata.explainers.integrated_gradients import IntegratedGradients
from desiderata.explainers.shapley_permutation import PermutationShapley
from desiderata.explainers.types import AttributionParams, AttributionResult
from desiderata.server.aged_cache import AgedLru
from desiderata.server.errors import FailedPrecondition

__all__ = [
    "EXPLAIN_CHUNK",
    "ClassView",
    "GlobalSummaries",
    "GlobalSummary",
    "RowAttributions",
    "attribution_method",
    "local_attributions",
    "reference_sample",
]

SAMPLE_ROWS = 200
IG_STEPS = 64
EXPLAIN_CHUNK = 32
"""Rows explained between two stores into `RowAttributions`."""
CACHED_ROWS = 20_000
"""Rows whose attributions `RowAttributions` keeps by default: reference rows and decisions."""
SHAPLEY_TARGET_SE = 0.02
"""Relative standard error of each black-box row's Shapley values (one row's noise averages out in a mean)."""


@dataclass(frozen=True)
class ClassView:
    """Mean |attribution| per feature over the rows predicted as one class.

    Args:
        label: the predicted class.
        rows: rows in the group.
        mean_abs: mean |attribution| per feature, shape ``(d,)``.
    """

    label: str
    rows: int
    mean_abs: np.ndarray


@dataclass(frozen=True)
class GlobalSummary:
    model: str
    model_version: str
    method: str
    features: tuple[str, ...]
    classes: tuple[ClassView, ...]


def attribution_method(model: ExplainableModel) -> str:
    """The local method global views use for `model`."""
    return IntegratedGradients.name if model.torch_module() is not None else PermutationShapley.name


def local_attributions(
    model: ExplainableModel,
    rows: np.ndarray,
    targets: np.ndarray,
    ctx: ExplainContext,
    seeds: list[int] | None = None,
) -> np.ndarray:
    """Attributions of each encoded row towards its target class, ``(n, n_columns)`` → ``(n, d)``.

    Integrated Gradients (64 Gauss–Legendre steps, mean baseline) when the model is
    differentiable; otherwise permutation Shapley over the summarised background,
    seeded per row, to `SHAPLEY_TARGET_SE`. `ctx` is checked between rows.

    Args:
        model: the served model.
        rows: encoded rows, shape ``(n, n_columns)``.
        targets: class index explained for each row, shape ``(n,)``.
        ctx: deadline and cancellation of the request that needs them.
        seeds: seed of each row's sampling (default: its index).
    """
    gradient = model.torch_module() is not None
    explainer = IntegratedGradients() if gradient else PermutationShapley()
    out = np.empty((len(rows), len(model.schema.features)))
    for i, row in enumerate(rows):
        ctx.check()
        if gradient:
            params = AttributionParams(steps=IG_STEPS, baseline="mean", target_class=int(targets[i]))
        else:
            params = AttributionParams(target_class=int(targets[i]), target_std_error=SHAPLEY_TARGET_SE)
        inner = ExplainContext(seed=seeds[i] if seeds else i, deadline=ctx.deadline, cancel=ctx.cancel)
        result = explainer.explain(model, row, params, inner).result
        if not isinstance(result, AttributionResult):
            raise TypeError(f"{explainer.name} returned a non-attribution result")
        out[i] = result.values
    return out


def reference_sample(model: ExplainableModel, n: int) -> np.ndarray:
    """A seeded sample of at most `n` rows of the model's training reference.

    Raises:
        FailedPrecondition: the model card names no training reference.
    """
    ref = model.reference()
    if ref is None:
        raise FailedPrecondition(f"model {model.card.name!r} has no training reference for a global view")
    rng = np.random.default_rng(0)
    return np.asarray(ref.x[rng.choice(len(ref.x), size=min(n, len(ref.x)), replace=False)])


class RowAttributions:
    """`local_attributions` with each row's answer kept under a key, least recently used out.

    Rows are explained `EXPLAIN_CHUNK` at a time and kept as they come, so a request that
    reaches its deadline leaves its finished rows to the next one; each row is seeded by its
    key, so its answer does not depend on the batch it came in. A row older than
    `max_age_s` is explained again (decisions' rows derive from their features; see
    `aged_cache`).

    Args:
        capacity: rows kept (one float per feature each).
        max_age_s: seconds a row is reused after it was computed; 0: no age limit.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self, capacity: int = CACHED_ROWS, max_age_s: float = 0.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.capacity = capacity
        self._rows: AgedLru[str, np.ndarray] = AgedLru(capacity, max_age_s, clock)

    def __len__(self) -> int:
        return len(self._rows)

    def get(
        self,
        model: ExplainableModel,
        keys: list[str],
        row: Callable[[int], np.ndarray],
        targets: np.ndarray,
        ctx: ExplainContext,
    ) -> np.ndarray:
        """Attributions of the rows named by `keys`, ``(len(keys), d)``.

        Args:
            model: the served model.
            keys: a name per row, unique for its (model version, row, target class).
            row: encodes the i-th row, ``(n_columns,)``.
            targets: class index explained for each row, ``(len(keys),)``.
            ctx: deadline and cancellation.
        """
        known = self._rows.get_many(keys)
        missing = [i for i, v in enumerate(known) if v is None]
        for start in range(0, len(missing), EXPLAIN_CHUNK):
            part = missing[start : start + EXPLAIN_CHUNK]
            rows = np.stack([row(i) for i in part])
            seeds = [zlib.crc32(keys[i].encode()) for i in part]
            fresh = local_attributions(model, rows, targets[part], ctx, seeds)
            for i, values in zip(part, fresh, strict=True):
                known[i] = values
            self._rows.put_many([(keys[i], values) for i, values in zip(part, fresh, strict=True)])
        return np.stack([v for v in known if v is not None])

    def sweep(self) -> int:
        """Drops the rows past their age; returns how many went."""
        return self._rows.sweep()


class GlobalSummaries:
    """Computes and caches one `GlobalSummary` per (model, version).

    Args:
        sample_rows: reference rows explained (seeded sample).
        rows: where each row's attributions are kept (shared with `DriftMonitor`).
    """

    def __init__(self, sample_rows: int = SAMPLE_ROWS, rows: RowAttributions | None = None) -> None:
        self.sample_rows = sample_rows
        self.rows = rows or RowAttributions()
        self._cache: dict[tuple[str, str], GlobalSummary] = {}
        self._lock = threading.Lock()

    def get(self, model: ExplainableModel, ctx: ExplainContext | None = None) -> GlobalSummary:
        """The model's summary (computed on first use; call off the event loop). A call that
        reaches its deadline leaves its finished rows to the next (`RowAttributions`)."""
        key = (model.card.name, model.card.version)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        summary = self._compute(model, ctx or ExplainContext())
        with self._lock:
            self._cache[key] = summary
        return summary

    def _compute(self, model: ExplainableModel, ctx: ExplainContext) -> GlobalSummary:
        rows = reference_sample(model, self.sample_rows)
        predicted = model.predict_proba(rows).argmax(axis=1)
        tag = f"{model.card.name}\0{model.card.version}\0summary\0"
        keys = [f"{tag}{i}" for i in range(len(rows))]
        attributions = self.rows.get(model, keys, rows.__getitem__, predicted, ctx)
        classes = tuple(
            ClassView(label, int((predicted == c).sum()), np.abs(attributions[predicted == c]).mean(axis=0))
            for c, label in enumerate(model.card.class_names)
            if (predicted == c).any()
        )
        names = tuple(model.schema.players)
        return GlobalSummary(model.card.name, model.card.version, attribution_method(model), names, classes)
