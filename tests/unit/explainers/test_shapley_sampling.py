"""Permutation and kernel Shapley converge to exact Shapley, their standard errors
cover the true error at about the nominal rate, and the anytime stream, budget and
deadline behave."""

from __future__ import annotations

import time

import numpy as np
import pytest

from desiderata.explainers.background import Background
from desiderata.explainers.base import ExplainContext
from desiderata.explainers.kernel_shap import KernelShap
from desiderata.explainers.shapley_exact import ExactShapley
from desiderata.explainers.shapley_permutation import PermutationShapley
from desiderata.explainers.types import AttributionParams, AttributionResult, Explanation
from desiderata.server.errors import DeadlineExceeded, InvalidArgument
from tests.unit.explainers.attribution_models import TorchModel, instance

METHODS = [PermutationShapley, KernelShap]


def _result(e: Explanation) -> AttributionResult:
    assert isinstance(e.result, AttributionResult)
    return e.result


@pytest.fixture(scope="module")
def setting(mlp_model: TorchModel, small_background) -> tuple[np.ndarray, Background, np.ndarray]:
    bg = small_background(mlp_model, 20, 2)
    x = instance(mlp_model, 11)
    params = AttributionParams(target_class=1)
    exact = _result(ExactShapley().explain_with_background(mlp_model, x, params, ExplainContext(), bg)).values
    return x, bg, exact


@pytest.mark.parametrize("method", METHODS)
def test_converges_to_exact_and_errors_are_covered(method, mlp_model: TorchModel, setting) -> None:
    x, bg, exact = setting
    l1 = np.abs(exact).sum()
    rel_errors, covered = [], []
    for seed in range(5):
        e = method().explain_with_background(
            mlp_model, x, AttributionParams(target_class=1), ExplainContext(seed=seed), bg
        )
        r = _result(e)
        assert r.std_errors is not None and e.quality.relative_std_error is not None
        err = np.abs(r.values - exact)
        rel_errors.append(err.sum() / l1)
        covered.extend(err <= 2 * r.std_errors)
        assert e.quality.relative_completeness_gap is not None and e.quality.relative_completeness_gap < 1e-9
    assert max(rel_errors) <= 0.01, rel_errors
    assert np.mean(covered) >= 0.85, np.mean(covered)


@pytest.mark.parametrize("method", METHODS)
def test_linear_model_closed_form(
    method, linear_model: tuple[TorchModel, np.ndarray], small_background
) -> None:
    model, w = linear_model
    bg = small_background(model, 30, 3)
    x = instance(model, 4)
    r = _result(
        method().explain_with_background(model, x, AttributionParams(target_class=1), ExplainContext(), bg)
    )
    # An additive game: every marginal is exact, so sampling has no error at all.
    np.testing.assert_allclose(r.values, w * (x - bg.mean), atol=1e-5)


def test_permutation_stream_shrinks_and_stops_at_the_target(mlp_model: TorchModel, setting) -> None:
    x, bg, _ = setting
    seen: list[Explanation] = []
    ctx = ExplainContext(seed=1, progress=seen.append)
    final = PermutationShapley().explain_with_background(
        mlp_model, x, AttributionParams(target_class=1, target_std_error=0.01), ctx, bg
    )
    errors = [e.quality.relative_std_error for e in seen]
    assert len(seen) >= 1 and all(e is not None for e in errors)
    assert final.quality.converged and final.quality.relative_std_error is not None
    assert final.quality.relative_std_error <= 0.01 < float(errors[0])  # type: ignore[arg-type]
    assert all(not e.quality.converged for e in seen)
    assert final.quality.model_evaluations > seen[-1].quality.model_evaluations


def test_budget_caps_the_rows_and_says_so(mlp_model: TorchModel, setting) -> None:
    x, bg, _ = setting
    params = AttributionParams(target_class=1, target_std_error=1e-6, max_samples=5000)
    e = PermutationShapley().explain_with_background(mlp_model, x, params, ExplainContext(), bg)
    assert e.quality.model_evaluations <= 5000
    assert not e.quality.converged and e.quality.warnings


def test_deadline_raises_after_streaming_estimates(mlp_model: TorchModel, setting) -> None:
    x, bg, _ = setting
    seen: list[Explanation] = []
    ctx = ExplainContext(seed=0, deadline=time.monotonic() + 0.05, progress=seen.append)
    with pytest.raises(DeadlineExceeded):
        PermutationShapley().explain_with_background(
            mlp_model, x, AttributionParams(target_class=1, target_std_error=1e-7), ctx, bg
        )
    assert seen, "the best estimate so far was streamed before the deadline"


def test_budget_above_the_configured_maximum_is_refused(mlp_model: TorchModel, setting) -> None:
    from desiderata.explainers._attribution import AttributionLimits

    x, bg, _ = setting
    with pytest.raises(InvalidArgument) as err:
        PermutationShapley(AttributionLimits(max_samples=10_000)).explain_with_background(
            mlp_model, x, AttributionParams(max_samples=20_000), ExplainContext(), bg
        )
    assert err.value.violations[0].field == "params.attribution.max_samples"
    assert "10000" in err.value.message


def test_same_seed_same_answer(mlp_model: TorchModel, setting) -> None:
    x, bg, _ = setting
    p = AttributionParams(target_class=1, max_samples=20_000)
    a = _result(KernelShap().explain_with_background(mlp_model, x, p, ExplainContext(seed=5), bg)).values
    b = _result(KernelShap().explain_with_background(mlp_model, x, p, ExplainContext(seed=5), bg)).values
    np.testing.assert_array_equal(a, b)


def test_permutation_is_unbiased_over_seeds(mlp_model: TorchModel, setting) -> None:
    """The mean of many small-budget answers sits on exact Shapley within its own standard error.

    A biased design (a background row's weight dropped, a stratum skipped, a marginal
    credited to the wrong player) moves the mean by many standard errors of the mean.
    """
    x, bg, exact = setting
    params = AttributionParams(target_class=1, max_samples=2_000)
    explainer = PermutationShapley()
    runs = np.array(
        [
            _result(explainer.explain_with_background(mlp_model, x, params, ExplainContext(seed=s), bg)).values
            for s in range(60)
        ]
    )
    sem = runs.std(axis=0, ddof=1) / np.sqrt(runs.shape[0])
    z = (runs.mean(axis=0) - exact) / sem
    assert np.abs(z).max() < 4.0, z
    assert np.mean(z**2) < 2.5, z  # about 1 when unbiased (10 players)


def test_zero_weight_background_rows_change_nothing(mlp_model: TorchModel, setting) -> None:
    x, bg, exact = setting
    padded = Background(np.concatenate([bg.x, bg.x[:3] + 5.0]), np.concatenate([bg.weights, np.zeros(3)]))
    e = PermutationShapley().explain_with_background(
        mlp_model, x, AttributionParams(target_class=1), ExplainContext(seed=3), padded
    )
    assert np.abs(_result(e).values - exact).sum() <= 0.01 * np.abs(exact).sum()
    assert e.quality.relative_completeness_gap is not None and e.quality.relative_completeness_gap < 1e-9
