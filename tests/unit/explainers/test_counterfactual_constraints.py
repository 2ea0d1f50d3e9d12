"""Constraint merging and validation, and the property test: no counterfactual
of either method ever violates a card or request constraint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from desiderata.explainers.base import ExplainContext
from desiderata.explainers.counterfactual_constraints import build_feasible_set
from desiderata.explainers.counterfactual_genetic import GeneticCounterfactual
from desiderata.explainers.counterfactual_gradient import GradientCounterfactual
from desiderata.explainers.types import CounterfactualParams, FeatureConstraint
from desiderata.server.errors import InvalidArgument
from tests.unit.explainers._cf_models import mixed_model

torch.set_num_threads(1)


def test_contradictory_constraints_give_one_violation_each() -> None:
    m = mixed_model()
    bad = (
        FeatureConstraint("salary"),
        FeatureConstraint("income", min=10.0, max=5.0),
        FeatureConstraint("home", min=0.0),
        FeatureConstraint("debt", direction="sideways"),
    )
    with pytest.raises(InvalidArgument) as err:
        build_feasible_set(m.schema, m.ref.x[0], bad, m.ref)  # type: ignore[union-attr]
    fields = sorted(v.field for v in err.value.violations)
    assert len(err.value.violations) == 4
    assert fields[0].startswith("params.counterfactual.constraints[0]")
    assert any("min 10 is greater than max 5" in v.description for v in err.value.violations)


def test_direction_folds_into_bounds_and_immutables_freeze() -> None:
    m = mixed_model()
    x = m.ref.x[0]  # type: ignore[union-attr]
    fs = build_feasible_set(
        m.schema,
        x,
        (FeatureConstraint("income", direction="increase"), FeatureConstraint("debt", immutable=True)),
        m.ref,
    )
    assert fs.lower[0] == x[0] and fs.upper[0] == 10_000
    assert fs.frozen[2] and fs.frozen[6] and fs.frozen[8]  # age, records (card), debt (request)
    assert fs.feasible


@pytest.mark.parametrize(
    "constraints,reason",
    [
        (
            tuple(
                FeatureConstraint(n, immutable=True) for n in ("income", "months", "home", "savings", "debt")
            ),
            "every feature is immutable",
        ),
        ((FeatureConstraint("income", min=20_000.0),), "range of 'income' is empty"),
    ],
)
def test_impossible_recourse_is_an_answer_not_an_error(
    constraints: tuple[FeatureConstraint, ...], reason: str
) -> None:
    m = mixed_model()
    e = GradientCounterfactual().explain(
        m, m.ref.x[0], CounterfactualParams(constraints=constraints), ExplainContext()
    )  # type: ignore[union-attr]
    assert e.result.counterfactuals == ()  # type: ignore[union-attr]
    assert "no counterfactual exists within the constraints" in e.result.reason_none  # type: ignore[union-attr]
    assert reason in e.result.reason_none  # type: ignore[union-attr]


def _random_constraints(rng: np.random.Generator, x: np.ndarray) -> tuple[FeatureConstraint, ...]:
    out = []
    if rng.random() < 0.5:
        out.append(FeatureConstraint("income", direction=str(rng.choice(["increase", "decrease", "any"]))))
    if rng.random() < 0.5:
        lo = float(rng.uniform(0, x[7])) if rng.random() < 0.5 else None
        out.append(FeatureConstraint("savings", min=lo, max=float(x[7] + rng.uniform(0, 20_000))))
    if rng.random() < 0.3:
        out.append(FeatureConstraint("home", immutable=True))
    if rng.random() < 0.5:
        out.append(
            FeatureConstraint(
                "months", min=float(rng.integers(6, 30)), direction=str(rng.choice(["any", "decrease"]))
            )
        )
    return tuple(out)


@pytest.mark.parametrize("method", [GradientCounterfactual, GeneticCounterfactual])
def test_property_constraints_are_never_violated(method: type) -> None:
    m = mixed_model()
    schema = m.schema
    rng = np.random.default_rng(7)
    checked = 0
    for trial in range(12):
        x = m.ref.x[rng.integers(0, len(m.ref.x))]  # type: ignore[union-attr]
        cons = _random_constraints(rng, x)
        e = method().explain(m, x, CounterfactualParams(constraints=cons), ExplainContext(seed=trial))
        by = {c.feature: c for c in cons}
        before = schema.decode(x)
        for cf in e.result.counterfactuals:
            after = dict(before) | {c.feature: c.to_value for c in cf.changes}
            z = schema.encode(after)
            assert np.argmax(m.predict_proba(z)[0]) != np.argmax(
                m.predict_proba(x)[0]
            )  # valid, re-checked here
            assert after["age"] == before["age"] and after["records"] == before["records"]
            assert float(after["months"]) == round(float(after["months"]))
            assert after["home"] in ("rent", "owner", "parents")
            for spec in schema.features:
                if spec.min is not None and spec.type in ("number", "integer"):
                    assert spec.min <= float(after[spec.name]) <= spec.max  # type: ignore[operator]
            for name, c in by.items():
                if c.immutable:
                    assert after[name] == before[name]
                if c.min is not None:
                    assert float(after[name]) >= c.min - 1e-9
                if c.max is not None:
                    assert float(after[name]) <= c.max + 1e-9
                if c.direction == "increase":
                    assert float(after[name]) >= float(before[name])
                if c.direction == "decrease":
                    assert float(after[name]) <= float(before[name])
            assert cf.features_changed == len(cf.changes) > 0
            checked += 1
    assert checked >= 12  # the loop really exercised counterfactuals
