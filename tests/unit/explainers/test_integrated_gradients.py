"""Integrated Gradients on the demo credit model: completeness at the default
settings, and equality with captum's IntegratedGradients (same rule, steps and
baseline) — the oracle of issue 2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients as CaptumIG

from desiderata.explainers import integrated_gradients as igm
from desiderata.explainers.base import ExplainContext
from desiderata.explainers.baselines import baseline_vector
from desiderata.explainers.integrated_gradients import IntegratedGradients, group_sum
from desiderata.explainers.types import AttributionParams, AttributionResult
from desiderata.server.model_handle import ModelHandle, load_model
from desiderata.server.model_repository import BUILTIN_DEMO


@pytest.fixture(scope="module")
def demo() -> ModelHandle:
    return load_model(BUILTIN_DEMO / "credit")


def _rows(demo: ModelHandle, n: int) -> np.ndarray:
    ref = demo.reference()
    assert ref is not None
    return ref.x[np.random.default_rng(1).choice(len(ref.x), n, replace=False)]


def test_default_settings_meet_the_completeness_target(demo: ModelHandle) -> None:
    gaps = []
    for x in _rows(demo, 40):
        ex = IntegratedGradients().explain(demo, x, AttributionParams(), ExplainContext())
        assert isinstance(ex.result, AttributionResult)
        r = ex.result
        assert ex.quality.relative_completeness_gap is not None
        gaps.append(ex.quality.relative_completeness_gap)
        # the reported gap is the real one
        assert abs(r.values.sum() - (r.output - r.baseline_output)) == pytest.approx(ex.quality.completeness_gap)
    assert max(gaps) <= 1e-3, gaps


@pytest.mark.parametrize(("rule", "captum_rule"), [("gauss_legendre", "gausslegendre"),
                                                    ("riemann_trapezoid", "riemann_trapezoid"),
                                                    ("riemann_middle", "riemann_middle")])
def test_matches_captum_with_the_same_rule_steps_and_baseline(demo: ModelHandle, rule: str, captum_rule: str) -> None:
    module = demo.torch_module()
    assert module is not None
    baseline = baseline_vector(demo, "card")
    ig = CaptumIG(module)
    for x in _rows(demo, 10):
        ours = IntegratedGradients().explain(
            demo, x, AttributionParams(steps=50, integration_rule=rule), ExplainContext()
        )
        assert isinstance(ours.result, AttributionResult)
        target = ours.result.target_class
        theirs = ig.attribute(
            torch.as_tensor(x[None, :], dtype=torch.float32),
            baselines=torch.as_tensor(baseline[None, :], dtype=torch.float32),
            target=target, n_steps=50, method=captum_rule,
        ).detach().double().numpy()[0]
        if rule == "riemann_trapezoid":
            # captum's trapezoid weights are 1/n (end points 1/2n): they sum to (n-1)/n, a
            # known quirk; ours are the textbook 1/(n-1). Same points, weights rescaled.
            theirs = theirs * 50 / 49
        theirs_players = group_sum(theirs, demo.schema.groups)
        l1 = np.abs(ours.result.values).sum()
        assert np.abs(ours.result.values - theirs_players).max() <= 1e-4 * l1


def test_instances_explained_together_get_what_each_gets_alone(
    demo: ModelHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ExplainBatch's path: instances share forward/backward passes (here forced into several
    passes of a few instances each), yet each keeps its own predicted class and its own
    adaptive step count, and gets its own answer up to float32 rounding."""
    monkeypatch.setattr(igm, "MAX_PASS_ROWS", 200)
    xs = list(_rows(demo, 40)[:24])
    ig = IntegratedGradients()
    together = ig.explain_many(demo, xs, AttributionParams(), [ExplainContext() for _ in xs])
    alone = [ig.explain(demo, x, AttributionParams(), ExplainContext()) for x in xs]
    assert len(together) == len(xs)
    for t, a in zip(together, alone, strict=True):
        assert isinstance(t.result, AttributionResult) and isinstance(a.result, AttributionResult)
        assert t.parameters == a.parameters  # steps, rule, baseline and class
        assert t.quality.model_evaluations == a.quality.model_evaluations
        scale = float(np.abs(a.result.values).sum())
        np.testing.assert_allclose(t.result.values, a.result.values, rtol=1e-5, atol=1e-7 * scale)
        assert t.result.output == pytest.approx(a.result.output, rel=1e-6)
        assert t.quality.relative_completeness_gap is not None and t.quality.relative_completeness_gap <= 1e-3
    # The rows chosen make both cases happen: a pass-sharing bug that mixed instances up would show.
    assert len({t.parameters["steps"] for t in together}) >= 3
    assert len({t.parameters["target_class"] for t in together}) == 2
    assert ig.explain_many(demo, [], AttributionParams(), []) == []
