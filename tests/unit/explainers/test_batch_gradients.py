"""ExplainBatch's path for gradient × input, SmoothGrad and expected gradients: instances of
one class share forward/backward passes, yet each gets the answer it gets alone (up to the
float32 rounding of a larger product); and methods that do not batch answer each instance
exactly as alone through the same `explain_many`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from desiderata.explainers import gradients as gm
from desiderata.explainers.background import summarize
from desiderata.explainers.base import ExplainContext, Explainer
from desiderata.explainers.gradients import ExpectedGradients, GradientXInput, SmoothGrad
from desiderata.explainers.kernel_shap import KernelShap
from desiderata.explainers.types import AttributionParams, AttributionResult, Explanation
from desiderata.server.model_handle import ModelHandle, load_model
from desiderata.server.model_repository import BUILTIN_DEMO


@pytest.fixture(scope="module")
def demo() -> ModelHandle:
    return load_model(BUILTIN_DEMO / "credit")


def _rows(demo: ModelHandle, n: int) -> list[np.ndarray]:
    ref = demo.reference()
    assert ref is not None
    return list(ref.x[np.random.default_rng(4).choice(len(ref.x), n, replace=False)])


def _result(e: Explanation) -> AttributionResult:
    assert isinstance(e.result, AttributionResult)
    return e.result


def _passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows of every gradient pass the methods make."""
    rows: list[int] = []
    real = gm.input_gradients

    def counted(model: object, x: np.ndarray, *args: object, **kw: object) -> tuple[np.ndarray, np.ndarray]:
        rows.append(x.shape[0])
        return real(model, x, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(gm, "input_gradients", counted)
    return rows


def _baseline(demo: ModelHandle, explainer: Explainer, target: int) -> float:
    """f(0) for gradient x input and SmoothGrad; E_b f(b) over the background for expected gradients."""
    if isinstance(explainer, ExpectedGradients):
        bg = summarize(demo, explainer.limits.background_size)
        return float(bg.weights @ demo.predict_proba(bg.x)[:, target])
    return float(demo.predict_proba(np.zeros((1, demo.schema.n_columns)))[0, target])


CASES: list[tuple[Callable[[], Explainer], AttributionParams, int]] = [
    # (method, parameters, MAX_ROWS_PER_PASS forced small: several passes, some shared by instances)
    (GradientXInput, AttributionParams(), 1 << 14),
    (SmoothGrad, AttributionParams(max_samples=30), 100),  # 30-row pieces, 3 instances a pass
    (ExpectedGradients, AttributionParams(steps=8), 1700),  # 800-row paths (100 rows x 8), 2 a pass
    (ExpectedGradients, AttributionParams(steps=8), 600),  # paths cut at 75 background rows
]


@pytest.mark.parametrize(
    ("method", "params", "max_rows"), CASES, ids=["gxi", "smoothgrad", "eg-shared", "eg-split"]
)
def test_instances_explained_together_get_what_each_gets_alone(
    demo: ModelHandle,
    monkeypatch: pytest.MonkeyPatch,
    method: Callable[[], Explainer],
    params: AttributionParams,
    max_rows: int,
) -> None:
    monkeypatch.setattr(gm, "MAX_ROWS_PER_PASS", max_rows)
    xs = _rows(demo, 12)
    ctxs = [ExplainContext(seed=100 + i) for i in range(len(xs))]
    explainer = method()
    passes = _passes(monkeypatch)
    together = explainer.explain_many(demo, xs, params, ctxs)
    batched = len(passes)
    alone = [explainer.explain(demo, x, params, ExplainContext(seed=100 + i)) for i, x in enumerate(xs)]
    assert batched < len(passes) - batched, "the batch made as many passes as the instances alone"
    assert max(passes[:batched]) <= max_rows + len(xs) + 100  # bounded passes (ends: instances and background)
    assert len({_result(t).target_class for t in together}) == 2  # both classes, so grouping by class shows
    for x, t, a in zip(xs, together, alone, strict=True):
        rt, ra = _result(t), _result(a)
        assert t.parameters == a.parameters
        assert t.quality.model_evaluations == a.quality.model_evaluations
        scale = float(np.abs(ra.values).sum())
        np.testing.assert_allclose(rt.values, ra.values, rtol=1e-5, atol=1e-6 * scale)
        assert rt.output == pytest.approx(ra.output, rel=1e-6)
        assert rt.baseline_output == pytest.approx(ra.baseline_output, rel=1e-6, abs=1e-9)
        # and the end points are the model's own outputs, not only the same as alone
        assert rt.output == pytest.approx(float(demo.predict_proba(x[None])[0, rt.target_class]), rel=1e-5)
        assert rt.baseline_output == pytest.approx(_baseline(demo, explainer, rt.target_class), rel=1e-5)
        if ra.std_errors is not None:
            assert rt.std_errors is not None
            np.testing.assert_allclose(rt.std_errors, ra.std_errors, rtol=1e-4)
        assert t.quality.compute_ms > 0


def test_each_instance_keeps_its_own_noise(demo: ModelHandle) -> None:
    """One instance twice with two seeds: two different SmoothGrad estimates (a batch that
    shared one generator, or reused one instance's noise, would give the same)."""
    x = _rows(demo, 1)[0]
    a, b = SmoothGrad().explain_many(
        demo, [x, x], AttributionParams(max_samples=20), [ExplainContext(seed=1), ExplainContext(seed=2)]
    )
    assert not np.allclose(_result(a).values, _result(b).values)
    again = SmoothGrad().explain(demo, x, AttributionParams(max_samples=20), ExplainContext(seed=2))
    np.testing.assert_allclose(_result(b).values, _result(again).values, rtol=1e-5, atol=1e-9)


def test_a_method_that_does_not_batch_answers_each_instance_as_alone(demo: ModelHandle) -> None:
    xs = _rows(demo, 3)
    params = AttributionParams(max_samples=2000)
    together = KernelShap().explain_many(demo, xs, params, [ExplainContext(seed=i) for i in range(3)])
    for i, (x, t) in enumerate(zip(xs, together, strict=True)):
        a = KernelShap().explain(demo, x, params, ExplainContext(seed=i))
        np.testing.assert_array_equal(_result(t).values, _result(a).values)
        assert t.parameters == a.parameters
    assert KernelShap().explain_many(demo, [], params, []) == []
