"""Exact Shapley against an independent brute force, shap's ExactExplainer and the
closed form of a linear model; and its refusals."""

from __future__ import annotations

import itertools
from math import factorial

import numpy as np
import pytest

from desiderata.explainers.background import Background
from desiderata.explainers.base import ExplainContext
from desiderata.explainers.shapley_exact import ExactShapley
from desiderata.explainers.types import AttributionParams, AttributionResult
from desiderata.server.errors import InvalidArgument
from tests.unit.explainers.attribution_models import TorchModel, instance


def _values(model: TorchModel, x: np.ndarray, bg: Background, params: AttributionParams) -> AttributionResult:
    result = ExactShapley().explain_with_background(model, x, params, ExplainContext(), bg).result
    assert isinstance(result, AttributionResult)
    return result


def brute_force(model: TorchModel, x: np.ndarray, bg: Background, target: int) -> np.ndarray:
    """Shapley's subset formula with one loop per coalition (no shared code)."""
    groups = model.schema.groups
    d = len(groups)

    def v(coalition: tuple[int, ...]) -> float:
        rows = bg.x.copy()
        for i in coalition:
            rows[:, groups[i]] = x[groups[i]]
        return float(bg.weights @ model.predict_proba(rows)[:, target])

    cache = {s: v(s) for k in range(d + 1) for s in itertools.combinations(range(d), k)}
    phi = np.zeros(d)
    for i in range(d):
        others = [j for j in range(d) if j != i]
        for k in range(d):
            w = factorial(k) * factorial(d - k - 1) / factorial(d)
            for s in itertools.combinations(others, k):
                phi[i] += w * (cache[tuple(sorted((*s, i)))] - cache[s])
    return phi


def test_exact_equals_brute_force_with_groups_and_weights(mlp_model: TorchModel, small_background) -> None:
    bg = small_background(mlp_model, 6, 0)
    x = instance(mlp_model, 3)
    got = _values(mlp_model, x, bg, AttributionParams(target_class=1))
    want = brute_force(mlp_model, x, bg, 1)
    assert len(got.players) == 10 and got.players[-1] == "colour"
    np.testing.assert_allclose(got.values, want, atol=1e-7)  # float32 model, batched differently
    assert abs(got.values.sum() - (got.output - got.baseline_output)) < 1e-9


def test_exact_equals_shap_exact_explainer(numeric_model: TorchModel) -> None:
    shap = pytest.importorskip("shap")
    ref = numeric_model.reference()
    assert ref is not None
    bg = Background.of(ref.x[:20])
    xs = ref.x[100:101]
    explainer = shap.ExactExplainer(
        lambda z: numeric_model.predict_proba(z)[:, 1], shap.maskers.Independent(bg.x, max_samples=20)
    )
    theirs = explainer(xs).values
    for x, want in zip(xs, theirs, strict=True):
        got = _values(numeric_model, x, bg, AttributionParams(target_class=1)).values
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_linear_model_closed_form(linear_model: tuple[TorchModel, np.ndarray], small_background) -> None:
    model, w = linear_model
    bg = small_background(model, 25, 1)
    x = instance(model, 0)
    got = _values(model, x, bg, AttributionParams(target_class=1)).values
    np.testing.assert_allclose(got, w * (x - bg.mean), atol=1e-5)


def test_too_many_players_is_refused_naming_the_limit(numeric_model: TorchModel) -> None:
    from desiderata.explainers._attribution import AttributionLimits

    ref = numeric_model.reference()
    assert ref is not None
    with pytest.raises(InvalidArgument) as err:
        ExactShapley(AttributionLimits(max_exact_players=8)).explain_with_background(
            numeric_model, ref.x[0], AttributionParams(), ExplainContext(), Background.of(ref.x[:5])
        )
    assert "at most 8 players" in err.value.message
    assert err.value.violations[0].field == "params.attribution.method"


def test_background_width_mismatch_is_refused(numeric_model: TorchModel) -> None:
    ref = numeric_model.reference()
    assert ref is not None
    with pytest.raises(InvalidArgument) as err:
        ExactShapley().explain_with_background(
            numeric_model, ref.x[0], AttributionParams(), ExplainContext(), Background.of(ref.x[:5, :7])
        )
    assert err.value.violations[0].field == "background"
    assert "10" in err.value.message
