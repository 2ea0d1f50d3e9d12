"""Global views of a model built from local explanations: mean |attribution|
per feature, grouped by predicted class, over a seeded sample of the training
reference (Bhatt et al. 2020: global summaries for regulators and executives).

Every model gets one: differentiable models are explained with Integrated
Gradients (cheap: one batched forward and backward per row), black-box ones
with permutation-sampling Shapley values to a 2% relative standard error.
`attribution_drift` builds on the same local step.

Computed once per model version and cached; the pipeline decides who may see
it (Cedar action ``global/summary``) and applies that tier's rounding.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from desiderata.explainers.base import ExplainableModel, ExplainContext
from desiderata.explainers.integrated_gradients import IntegratedGradients
from desiderata.explainers.shapley_permutation import PermutationShapley
from desiderata.explainers.types import AttributionParams, AttributionResult
from desiderata.server.errors import FailedPrecondition

__all__ = ["ClassView", "GlobalSummaries", "GlobalSummary", "local_attributions", "reference_sample"]

SAMPLE_ROWS = 200
IG_STEPS = 64
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


class GlobalSummaries:
    """Computes and caches one `GlobalSummary` per (model, version).

    Args:
        sample_rows: reference rows explained (seeded sample).
    """

    def __init__(self, sample_rows: int = SAMPLE_ROWS) -> None:
        self.sample_rows = sample_rows
        self._cache: dict[tuple[str, str], GlobalSummary] = {}
        self._lock = threading.Lock()

    def get(self, model: ExplainableModel, ctx: ExplainContext | None = None) -> GlobalSummary:
        """The model's summary (computed on first use; call off the event loop)."""
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
        attributions = local_attributions(model, rows, predicted, ctx)
        classes = tuple(
            ClassView(label, int((predicted == c).sum()), np.abs(attributions[predicted == c]).mean(axis=0))
            for c, label in enumerate(model.card.class_names)
            if (predicted == c).any()
        )
        names = tuple(f.name for f in model.schema.features)
        return GlobalSummary(model.card.name, model.card.version, attribution_method(model), names, classes)
