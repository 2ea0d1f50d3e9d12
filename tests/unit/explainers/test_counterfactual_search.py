"""Oracles of the counterfactual searches: the closed-form closest ℓ2 and
MAD-ℓ1 counterfactuals of a linear model (free and with an immutable feature),
the linearised ℓ1 step, training-row withholding, streaming and deadlines."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from desiderata.explainers.base import ExplainContext
from desiderata.explainers.counterfactual_common import CounterfactualOptions
from desiderata.explainers.counterfactual_constraints import mad_scale
from desiderata.explainers.counterfactual_genetic import GeneticCounterfactual
from desiderata.explainers.counterfactual_gradient import GradientCounterfactual, _l1_step
from desiderata.explainers.types import CounterfactualParams, Explanation, FeatureConstraint
from desiderata.server.errors import DeadlineExceeded
from desiderata.server.model_card import FeatureSpec
from tests.unit.explainers._cf_models import linear_model, mixed_model

torch.set_num_threads(1)
L2 = CounterfactualOptions(distance="l2", allow_training_rows=True)


def _linear(seed: int, d: int = 5) -> tuple[object, np.ndarray, float, np.ndarray]:
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=d), float(rng.normal())
    specs = [FeatureSpec(name=f"f{i}", type="number", immutable=(i == 0 and seed % 2 == 1)) for i in range(d)]
    model = linear_model(w, b, specs, rng.normal(size=(100, d)))
    x = rng.normal(size=d) * 2
    return model, w, b, x


def _apply(x: np.ndarray, changes: tuple) -> np.ndarray:  # type: ignore[type-arg]
    z = x.copy()
    for c in changes:
        z[int(c.feature[1:])] = float(c.to_value)
    return z


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_gradient_matches_closed_form_l2_projection(seed: int) -> None:
    """Odd seeds freeze f0: the constrained optimum projects within the free subspace."""
    model, w, b, x = _linear(seed)
    free = np.ones_like(w, dtype=bool)
    if seed % 2 == 1:
        free[0] = False
    margin = w @ x + b
    oracle = abs(margin) / np.linalg.norm(w[free])
    closest = x.copy()
    closest[free] -= margin * w[free] / (w[free] @ w[free])
    e = GradientCounterfactual(L2).explain(model, x, CounterfactualParams(count=1), ExplainContext(seed=seed))  # type: ignore[arg-type]
    cf = e.result.counterfactuals[0]  # type: ignore[union-attr]
    z = _apply(x, cf.changes)
    assert np.sign(w @ z + b) != np.sign(margin)
    assert abs(np.linalg.norm(z - x) - oracle) <= 0.01 * oracle
    assert np.linalg.norm(z - closest) <= 0.15 * oracle  # the same point, not just the same distance
    if not free[0]:
        assert z[0] == x[0]


def test_training_rows_are_withheld_unless_the_profile_allows_them() -> None:
    m = mixed_model()
    x = m.ref.x[5]  # type: ignore[union-attr]
    wide = CounterfactualOptions(training_row_radius=10.0)  # every candidate is "near" a record
    e = GeneticCounterfactual(wide).explain(m, x, CounterfactualParams(), ExplainContext())
    assert e.result.counterfactuals == ()  # type: ignore[union-attr]
    assert "not a training record" in e.result.reason_none  # type: ignore[union-attr]
    allowed = CounterfactualOptions(training_row_radius=10.0, allow_training_rows=True)
    e = GeneticCounterfactual(allowed).explain(m, x, CounterfactualParams(), ExplainContext())
    assert len(e.result.counterfactuals) > 0  # type: ignore[union-attr]


def test_returned_counterfactuals_are_not_training_rows_and_carry_facts() -> None:
    m = mixed_model()
    ref = m.ref
    x = ref.x[11]  # type: ignore[union-attr]
    e = GradientCounterfactual().explain(m, x, CounterfactualParams(count=3), ExplainContext(seed=1))
    cfs = e.result.counterfactuals  # type: ignore[union-attr]
    assert cfs
    scale = GradientCounterfactual().options  # defaults
    for cf in cfs:
        z = m.schema.encode(m.schema.decode(x) | {c.feature: c.to_value for c in cf.changes})
        p = m.predict_proba(z)[0]
        assert np.allclose(p, cf.probabilities)
        assert cf.plausibility_distance >= 0 and np.isfinite(cf.plausibility_distance)
        nearest = np.abs(ref.x - z).max(axis=1).min()  # type: ignore[union-attr]
        assert nearest > 0  # never a copy of a training row
    assert scale.training_row_radius > 0


def test_streaming_reports_valid_counterfactuals_and_deadline_stops() -> None:
    m = mixed_model()
    seen: list[Explanation] = []
    ctx = ExplainContext(seed=0, progress=seen.append)
    GradientCounterfactual().explain(m, m.ref.x[3], CounterfactualParams(), ctx)  # type: ignore[union-attr]
    assert seen and all(cf.valid for s in seen for cf in s.result.counterfactuals)  # type: ignore[union-attr]
    assert not seen[0].quality.converged
    late = ExplainContext(deadline=time.monotonic() - 1)
    with pytest.raises(DeadlineExceeded):
        GeneticCounterfactual().explain(m, m.ref.x[3], CounterfactualParams(), late)  # type: ignore[union-attr]


def test_desired_class_already_predicted_and_bad_count() -> None:
    m = mixed_model()
    x = m.ref.x[3]  # type: ignore[union-attr]
    cls = int(np.argmax(m.predict_proba(x)[0]))
    e = GradientCounterfactual().explain(m, x, CounterfactualParams(desired_class=cls), ExplainContext())
    assert "already predicted" in e.result.reason_none  # type: ignore[union-attr]
    from desiderata.server.errors import InvalidArgument

    with pytest.raises(InvalidArgument):
        GradientCounterfactual().explain(m, x, CounterfactualParams(count=99), ExplainContext())
    with pytest.raises(InvalidArgument):
        GradientCounterfactual().explain(
            m, x, CounterfactualParams(constraints=(FeatureConstraint("nope"),)), ExplainContext()
        )


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_gradient_matches_closed_form_mad_l1_on_a_linear_model(seed: int) -> None:
    """The least MAD-scaled ℓ1 flip of a linear model (no binding bounds) moves the
    one feature with the largest |w_j|·MAD_j, by |margin| / |w_j|."""
    rng = np.random.default_rng(50 + seed)
    d = 5
    w, b = rng.normal(size=d), float(rng.normal())
    ref = rng.normal(size=(300, d)) * rng.uniform(0.5, 4, d)
    model = linear_model(w, b, [FeatureSpec(name=f"f{i}", type="number") for i in range(d)], ref)
    x = ref[seed]
    scale = mad_scale(model.schema, model.ref)
    oracle = abs(w @ x + b) / np.max(np.abs(w) * scale) / d
    options = CounterfactualOptions(allow_training_rows=True)
    e = GradientCounterfactual(options).explain(model, x, CounterfactualParams(count=3), ExplainContext(seed=seed))  # type: ignore[arg-type]
    cfs = e.result.counterfactuals  # type: ignore[union-attr]
    best = min(cfs, key=lambda cf: cf.normalized_l1_distance)
    assert best.features_changed == 1 and best.changes[0].feature == f"f{int(np.argmax(np.abs(w) * scale))}"
    assert abs(best.normalized_l1_distance - oracle) <= 0.01 * oracle
    for cf in cfs:  # validity is a fact: the model says so for the rebuilt row
        z = _apply(x, cf.changes)
        assert np.sign(w @ z + b) != np.sign(w @ x + b)


def test_l1_step_moves_the_steepest_coordinates_to_their_bounds_first() -> None:
    grad = np.array([[-1.0, 3.0, 0.5]])
    u, lo, hi = np.zeros((1, 3)), np.full((1, 3), -1.0), np.full((1, 3), 1.0)
    # |3| first (down to its bound: gain 3), then |-1| (up to its bound: gain 1) = 4
    assert np.allclose(_l1_step(grad, np.array([4.0]), u, lo, hi), [[1.0, -1.0, 0.0]])
    # a partial move of the steepest alone
    assert np.allclose(_l1_step(grad, np.array([1.5]), u, lo, hi), [[0.0, -0.5, 0.0]])
    # no room in the helpful direction: that coordinate is skipped
    at_bound = np.array([[0.0, -1.0, 0.0]])
    assert np.allclose(_l1_step(grad, np.array([1.0]), at_bound, lo, hi), [[1.0, 0.0, 0.0]])
