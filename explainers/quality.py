"""Quality figures of feature attributions, so nobody has to take one on faith.

Every answer carries its completeness (efficiency) gap and, for sampling
methods, per-player standard errors (both filled by the shared pipeline).
On request (``params.quality_metrics``) this module adds:

- ``max_sensitivity`` (Yeh et al. 2019): the largest change of the
  attribution under small input perturbations, relative to its L2 norm;
  numeric columns move uniformly within ±2% of their reference standard
  deviation, one-hot groups are held (a perturbed category is not a category);
- ``infidelity`` (Yeh et al. 2019, with player-removal perturbations): the
  mean squared difference between Σ_{i∈S} φ_i and the actual output change
  f(x) − v(N∖S) when a random coalition S of players is replaced by the
  background, in squared probability units;
- ``rank_agreement`` (Krishna et al. 2022, "the disagreement problem"): the
  fraction of the top-k positions (k = min(5, d), by |φ|) at which a second
  method ranks the same player at the same rank.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from desiderata.explainers.background import Background, summarize
from desiderata.explainers.base import ExplainableModel, ExplainContext, Kind
from desiderata.explainers.types import AttributionParams, AttributionResult, Explanation
from desiderata.server.errors import InvalidArgument

if TYPE_CHECKING:
    from desiderata.explainers._attribution import AttributionExplainer

__all__ = [
    "feature_agreement",
    "infidelity",
    "rank_agreement",
    "requested_metrics",
    "with_figures",
]

SENSITIVITY_RADIUS = 0.02
SENSITIVITY_SAMPLES = 8
INFIDELITY_SAMPLES = 32
TOP_K = 5


def _top(values: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-np.abs(values), kind="stable")[:k]


def rank_agreement(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Share of the top-k ranks (by |value|) held by the same player in both, in [0, 1].

    Args:
        a: attributions, shape ``(d,)``.
        b: attributions of another method, shape ``(d,)``.
        k: number of top ranks compared, ``1 ≤ k ≤ d``.
    """
    return float(np.mean(_top(a, k) == _top(b, k)))


def feature_agreement(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Share of players common to both top-k sets (order ignored), in [0, 1]."""
    return len(set(_top(a, k).tolist()) & set(_top(b, k).tolist())) / k


def infidelity(
    phi: np.ndarray,
    masks: np.ndarray,
    full_value: float,
    kept_values: np.ndarray,
) -> float:
    """Mean squared error of the attribution's prediction of removal effects.

    Args:
        phi: per-player attributions, shape ``(d,)``.
        masks: removed players of each perturbation, shape ``(m, d)`` bool.
        full_value: f(x).
        kept_values: v(N∖S) for each perturbation, shape ``(m,)``.
    """
    predicted = masks.astype(np.float64) @ phi
    actual = full_value - kept_values
    return float(np.mean((predicted - actual) ** 2))


def _background(explainer: AttributionExplainer, model: ExplainableModel, background: Background | None) -> Background:
    return background if background is not None else summarize(model, explainer.limits.background_size)


def _again(
    explainer: AttributionExplainer,
    model: ExplainableModel,
    x: np.ndarray,
    params: AttributionParams,
    ctx: ExplainContext,
    background: Background | None,
) -> AttributionResult:
    """The same method on another input, without extra metrics, same seed."""
    plain = dataclasses.replace(params, quality_metrics=())
    sub = ExplainContext(seed=ctx.seed, deadline=ctx.deadline, cancel=ctx.cancel)
    out = explainer.explain_with_background(model, x, plain, sub, background).result
    if not isinstance(out, AttributionResult):
        raise TypeError("an attribution method returned another family's result")
    return out


def requested_metrics(
    explainer: AttributionExplainer,
    model: ExplainableModel,
    x: np.ndarray,
    params: AttributionParams,
    ctx: ExplainContext,
    target: int,
    background: Background | None,
    explanation: Explanation,
) -> dict[str, object]:
    """The figures named in ``params.quality_metrics``, as `Quality` field values.

    Args:
        explainer: the method that produced `explanation`.
        model: the served model.
        x: the instance, shape ``(n_columns,)``.
        params: the request's parameters (target class already resolved to `target`).
        ctx: the request's context (seed, deadline, cancellation).
        target: explained class.
        background: the background the method used, or None.
        explanation: the answer whose quality is measured.
    """
    from desiderata.explainers._attribution import AttributionExplainer, CoalitionGame
    from desiderata.explainers.registry import get

    result = explanation.result
    if not isinstance(result, AttributionResult):
        raise TypeError("quality metrics of attributions only")
    phi = result.values
    rng = np.random.default_rng([ctx.seed, 7919])
    pinned = dataclasses.replace(params, target_class=target)
    out: dict[str, object] = {}
    if "max_sensitivity" in params.quality_metrics:
        ref = model.reference()
        scale = ref.x.std(axis=0) if ref is not None else np.ones_like(x)
        numeric = np.zeros_like(x, dtype=bool)
        for spec, sl in zip(model.schema.features, model.schema.slices, strict=True):
            numeric[sl] = spec.type != "category"
        worst = 0.0
        for _ in range(SENSITIVITY_SAMPLES):
            delta = rng.uniform(-1.0, 1.0, size=x.shape) * SENSITIVITY_RADIUS * scale * numeric
            moved = _again(explainer, model, x + delta, pinned, ctx, background).values
            worst = max(worst, float(np.linalg.norm(moved - phi)))
        out["max_sensitivity"] = worst / max(float(np.linalg.norm(phi)), 1e-12)
    if "infidelity" in params.quality_metrics:
        bg = _background(explainer, model, background)
        game = CoalitionGame(model, x, bg, target, explainer.limits.batch_rows, ctx)
        masks = rng.random((INFIDELITY_SAMPLES, game.d)) < 0.5
        kept = game.values(~masks)
        out["infidelity"] = infidelity(phi, masks, result.output, kept)
    if "rank_agreement" in params.quality_metrics:
        other_name = params.agreement_method
        if not other_name or other_name == explainer.name:
            raise InvalidArgument.single(
                "params.attribution.agreement_method", "name a second attribution method to compare with"
            )
        cls = get(other_name, "params.attribution.agreement_method")
        if cls.capabilities.kind != Kind.FEATURE_ATTRIBUTION or not issubclass(cls, AttributionExplainer):
            raise InvalidArgument.single(
                "params.attribution.agreement_method", f"{other_name!r} is not a feature attribution method"
            )
        other = cls(explainer.limits)
        other_bg = _background(other, model, background) if other.capabilities.needs_background else None
        second = _again(other, model, x, dataclasses.replace(pinned, method=other_name), ctx, other_bg)
        out["rank_agreement"] = rank_agreement(phi, second.values, min(TOP_K, phi.shape[0]))
        out["agreement_method"] = other_name
    return out


def with_figures(explanation: Explanation, figures: dict[str, object]) -> Explanation:
    """A copy of `explanation` whose quality carries the extra figures."""
    quality = dataclasses.replace(explanation.quality, **figures)  # type: ignore[arg-type]
    return dataclasses.replace(explanation, quality=quality)
