"""Global views of a model built from local explanations: mean |attribution|
per feature, grouped by predicted class, over a seeded sample of the training
reference (Bhatt et al. 2020: global summaries for regulators and executives).

Computed once per model version and cached; the pipeline decides who may see
it (Cedar action ``global/summary``) and applies that tier's rounding.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from desiderata.explainers.base import ExplainContext
from desiderata.explainers.integrated_gradients import IntegratedGradients
from desiderata.explainers.types import AttributionParams, AttributionResult
from desiderata.server.errors import FailedPrecondition
from desiderata.server.model_repository import ModelHandle

__all__ = ["ClassView", "GlobalSummaries", "GlobalSummary"]

SAMPLE_ROWS = 200
METHOD = "integrated_gradients"


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


class GlobalSummaries:
    """Computes and caches one `GlobalSummary` per (model, version).

    Args:
        sample_rows: reference rows explained (seeded sample).
    """

    def __init__(self, sample_rows: int = SAMPLE_ROWS) -> None:
        self.sample_rows = sample_rows
        self._cache: dict[tuple[str, str], GlobalSummary] = {}
        self._lock = threading.Lock()

    def get(self, handle: ModelHandle) -> GlobalSummary:
        """The model's summary (computed on first use; call off the event loop)."""
        key = (handle.name, handle.version)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        summary = self._compute(handle)
        with self._lock:
            self._cache[key] = summary
        return summary

    def _compute(self, handle: ModelHandle) -> GlobalSummary:
        ref = handle.reference()
        if ref is None:
            raise FailedPrecondition(f"model {handle.name!r} has no training reference for a global summary")
        if handle.torch_module() is None:
            raise FailedPrecondition(f"model {handle.name!r} is not differentiable; global summaries use IG")
        rng = np.random.default_rng(0)
        rows = ref.x[rng.choice(len(ref.x), size=min(self.sample_rows, len(ref.x)), replace=False)]
        predicted = handle.predict_proba(rows).argmax(axis=1)
        explainer = IntegratedGradients()
        attributions = np.empty((len(rows), len(handle.schema.features)))
        for i, row in enumerate(rows):
            params = AttributionParams(steps=64, baseline="mean", target_class=int(predicted[i]))
            result = explainer.explain(handle, row, params, ExplainContext(seed=0)).result
            if not isinstance(result, AttributionResult):
                raise TypeError("integrated gradients returned a non-attribution result")
            attributions[i] = result.values
        classes = tuple(
            ClassView(label, int((predicted == c).sum()), np.abs(attributions[predicted == c]).mean(axis=0))
            for c, label in enumerate(handle.card.class_names)
            if (predicted == c).any()
        )
        return GlobalSummary(handle.name, handle.version, METHOD, tuple(handle.schema.names), classes)
