"""Declared feature groups (issue 3: "a one-hot encoded category, or any declared group,
is one player"): the card's validation, the players every attribution method reports,
exact Shapley against a brute force over the groups written out here by hand, the
closed forms of a linear model, and redaction of a group that holds a protected feature."""

from __future__ import annotations

import itertools
from math import factorial

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from desiderata.explainers.background import Background
from desiderata.explainers.base import ExplainContext
from desiderata.explainers.gradients import GradientXInput
from desiderata.explainers.integrated_gradients import IntegratedGradients
from desiderata.explainers.kernel_shap import KernelShap
from desiderata.explainers.shapley_exact import ExactShapley
from desiderata.explainers.shapley_permutation import PermutationShapley
from desiderata.explainers.types import AttributionParams, AttributionResult, Explanation
from desiderata.policy.disclosure import apply_disclosure
from desiderata.policy.profiles import DisclosureProfile
from desiderata.server.model_card import FeatureGroup, FeatureSpec, ModelCard
from tests.unit.explainers.attribution_models import (
    Identity2,
    TorchModel,
    instance,
    make_mlp,
    numeric,
    reference_rows,
)

COLOUR = FeatureSpec(name="colour", type="category", categories=["r", "g", "b"], protected=True)
GROUPS = [
    FeatureGroup(name="pair", display_name="The pair", features=["x4", "x1"]),  # not adjacent
    FeatureGroup(name="mix", features=["x7", "colour"]),  # a number and a category
]
# Written out from the encoding (x0..x8 are columns 0..8, colour 9..11), not from the schema.
PLAYERS = ["x0", "pair", "x2", "x3", "x5", "x6", "mix", "x8"]
COLUMNS = [[0], [1, 4], [2], [3], [5], [6], [7, 9, 10, 11], [8]]


@pytest.fixture(scope="module")
def grouped() -> TorchModel:
    return TorchModel(
        make_mlp(12, 16, 0), [*numeric(9), COLOUR], reference_rows(300, 9, 3, 1), name="grouped", groups=GROUPS
    )


def _result(e: Explanation) -> AttributionResult:
    assert isinstance(e.result, AttributionResult)
    return e.result


def brute_force(model: TorchModel, x: np.ndarray, bg: Background) -> np.ndarray:
    """Shapley's subset formula over the hand-written `COLUMNS` (no shared code)."""
    d = len(COLUMNS)

    def v(coalition: tuple[int, ...]) -> float:
        rows = bg.x.copy()
        for i in coalition:
            rows[:, COLUMNS[i]] = x[COLUMNS[i]]
        return float(bg.weights @ model.predict_proba(rows)[:, 1])

    values = {s: v(s) for k in range(d + 1) for s in itertools.combinations(range(d), k)}
    phi = np.zeros(d)
    for i in range(d):
        for k in range(d):
            w = factorial(k) * factorial(d - k - 1) / factorial(d)
            for s in itertools.combinations([j for j in range(d) if j != i], k):
                phi[i] += w * (values[tuple(sorted((*s, i)))] - values[s])
    return phi


def test_a_group_is_one_player_where_its_first_member_is(grouped: TorchModel) -> None:
    assert grouped.schema.players == PLAYERS
    assert [sorted(g) for g in grouped.schema.groups] == COLUMNS
    assert grouped.schema.names == [f"x{i}" for i in range(9)] + ["colour"]  # instances still name features
    assert grouped.card.labels["pair"] == "The pair" and grouped.card.labels["mix"] == "mix"


def test_exact_shapley_equals_brute_force_over_the_groups(grouped: TorchModel, small_background) -> None:
    bg = small_background(grouped, 6, 0)
    x = instance(grouped, 3)
    got = _result(
        ExactShapley().explain_with_background(grouped, x, AttributionParams(target_class=1), ExplainContext(), bg)
    )
    assert list(got.players) == PLAYERS
    np.testing.assert_allclose(got.values, brute_force(grouped, x, bg), atol=1e-7)


def test_sampling_methods_report_the_group_and_converge_to_it(grouped: TorchModel, small_background) -> None:
    bg = small_background(grouped, 10, 1)
    x = instance(grouped, 4)
    exact = _result(
        ExactShapley().explain_with_background(grouped, x, AttributionParams(target_class=1), ExplainContext(), bg)
    )
    params = AttributionParams(target_class=1, target_std_error=0.005)
    for method in (PermutationShapley(), KernelShap()):
        got = _result(method.explain_with_background(grouped, x, params, ExplainContext(seed=2), bg))
        assert list(got.players) == PLAYERS
        assert np.abs(got.values - exact.values).sum() <= 0.03 * np.abs(exact.values).sum(), method.name


def test_linear_closed_forms_sum_the_members(small_background) -> None:
    w = np.array([1.0, -2.0, 0.5, 3.0, 0.0, -1.0])
    model = TorchModel(
        Identity2(torch.tensor(w, dtype=torch.float32), 0.3),
        numeric(6),
        reference_rows(200, 6, 0, 4),
        name="lin",
        groups=[FeatureGroup(name="g", features=["x0", "x3"])],
    )
    bg = small_background(model, 30, 7)
    x = instance(model, 8)
    ref = model.reference()
    assert ref is not None

    def grouped(per_column: np.ndarray) -> np.ndarray:  # players g, x1, x2, x4, x5
        return np.array([per_column[0] + per_column[3], per_column[1], per_column[2], per_column[4], per_column[5]])

    p = AttributionParams(target_class=1)
    for method in (ExactShapley(), PermutationShapley(), KernelShap()):
        got = _result(method.explain_with_background(model, x, p, ExplainContext(seed=1), bg))
        assert list(got.players) == ["g", "x1", "x2", "x4", "x5"]
        np.testing.assert_allclose(got.values, grouped(w * (x - bg.mean)), atol=1e-5, err_msg=method.name)
    ig = _result(
        IntegratedGradients().explain(model, x, AttributionParams(target_class=1, baseline="mean"), ExplainContext())
    )
    np.testing.assert_allclose(ig.values, grouped(w * (x - ref.x.mean(axis=0))), atol=1e-5)
    gxi = _result(GradientXInput().explain(model, x, p, ExplainContext()))
    np.testing.assert_allclose(gxi.values, grouped(w * x), atol=1e-5)


def test_a_group_holding_a_protected_feature_is_redacted_with_it(grouped: TorchModel, small_background) -> None:
    bg = small_background(grouped, 6, 0)
    e = ExactShapley().explain_with_background(
        grouped, instance(grouped, 3), AttributionParams(target_class=1), ExplainContext(), bg
    )
    shown, applied = apply_disclosure(e, DisclosureProfile(tier="t", redacted_features=("@protected",)), grouped.card)
    assert "mix" not in _result(shown).players and "mix" in applied.redacted_features
    assert "pair" in _result(shown).players
    shown, applied = apply_disclosure(e, DisclosureProfile(tier="t", redacted_features=("pair",)), grouped.card)
    assert "pair" not in _result(shown).players and "mix" in _result(shown).players
    assert "pair" in applied.redacted_features


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ([{"name": "x0", "features": ["x1", "x2"]}], "name is taken"),
        ([{"name": "g", "features": ["x1", "x1"]}], "at least two distinct"),
        ([{"name": "g", "features": ["x1"]}], "at least two distinct"),
        ([{"name": "g", "features": ["x1", "nope"]}], "'nope' is not a feature"),
        ([{"name": "g", "features": ["x1", "x2"]}, {"name": "h", "features": ["x2", "x3"]}], "in two groups"),
        ([{"name": "g", "features": ["x1", "x2"]}, {"name": "g", "features": ["x3", "x4"]}], "name is taken"),
    ],
)
def test_cards_with_bad_groups_are_refused_naming_the_group(groups: list[dict[str, object]], message: str) -> None:
    card = {"name": "m", "version": "1", "class_names": ["no", "yes"], "features": [f.model_dump() for f in numeric(5)]}
    with pytest.raises(ValidationError, match=message):
        ModelCard.model_validate({**card, "feature_groups": groups})
