"""Robustness oracles: the closed-form minimal ℓ2 flip of a linear model in MAD
units, and brute force over feature subsets for the ℓ0 search."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from desiderata.explainers.base import ExplainContext
from desiderata.explainers.counterfactual_constraints import mad_scale
from desiderata.explainers.robustness import RobustnessL0, RobustnessL2, model_robustness_score
from desiderata.explainers.types import RobustnessParams
from desiderata.server.model_card import FeatureSpec
from tests.unit.explainers._cf_models import linear_model, mixed_model

torch.set_num_threads(1)


@pytest.mark.parametrize("seed", range(5))
def test_l2_matches_closed_form_in_mad_units(seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = 6
    w, b = rng.normal(size=d), float(rng.normal())
    ref = rng.normal(size=(300, d)) * rng.uniform(0.5, 5, d)
    model = linear_model(w, b, [FeatureSpec(name=f"f{i}", type="number") for i in range(d)], ref)
    x = ref[seed]
    scale = mad_scale(model.schema, model.ref)
    oracle = abs(w @ x + b) / np.linalg.norm(w * scale)
    e = RobustnessL2().explain(model, x, RobustnessParams(), ExplainContext())
    r = e.result
    assert r.found and abs(r.distance - oracle) <= 0.01 * oracle  # type: ignore[union-attr]
    z = x.copy()
    for c in r.perturbation:  # type: ignore[union-attr]
        z[int(c.feature[1:])] = float(c.to_value)
    # on the boundary to float32 precision; the served model (the fact) says it flipped
    assert np.argmax(model.predict_proba(z)[0]) != np.argmax(model.predict_proba(x)[0])
    assert abs(w @ z + b) <= 1e-4 * abs(w @ x + b) + 1e-5


@pytest.mark.parametrize("seed", range(4))
def test_l0_equals_brute_force_on_bounded_linear_model(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    d = 6
    w = rng.normal(size=d)
    specs = [FeatureSpec(name=f"f{i}", type="number", min=-1.0, max=1.0) for i in range(d)]
    ref = rng.uniform(-1, 1, size=(200, d))
    x = ref[0] * 0.5
    b = float(-(w @ x) + np.sign(rng.normal()) * rng.uniform(0.5, 2.0))  # decision not on a knife's edge
    model = linear_model(w, b, specs, ref)
    margin = w @ x + b
    best = None  # smallest subset whose extreme move flips the sign
    for size in range(1, d + 1):
        for subset in itertools.combinations(range(d), size):
            z = x.copy()
            for i in subset:
                z[i] = -1.0 if np.sign(w[i]) == np.sign(margin) else 1.0
            if np.sign(w @ z + b) != np.sign(margin):
                best = size
                break
        if best:
            break
    e = RobustnessL0().explain(model, x, RobustnessParams(norm="l0"), ExplainContext())
    r = e.result
    if best is None:
        assert not r.found  # type: ignore[union-attr]
    else:
        assert r.found and r.distance == best == len(r.perturbation)  # type: ignore[union-attr]
        assert r.flipped_probabilities is not None
        assert np.argmax(r.flipped_probabilities) != np.argmax(model.predict_proba(x)[0])  # type: ignore[union-attr]


def test_immutable_features_never_move_and_score_is_a_mean() -> None:
    m = mixed_model()
    xs = m.ref.x[:8]  # type: ignore[union-attr]
    dists = []
    for x in xs:
        r = RobustnessL2().explain(m, x, RobustnessParams(), ExplainContext()).result
        assert all(c.feature not in ("age", "records", "home") for c in r.perturbation)  # type: ignore[union-attr]
        if r.found:  # type: ignore[union-attr]
            dists.append(r.distance)  # type: ignore[union-attr]
    score = model_robustness_score(m, xs)
    assert score.found_fraction == len(dists) / len(xs)
    assert score.mean_distance == pytest.approx(float(np.mean(dists)))
