"""Counterfactuals and robustness through the real server on the demo credit model.

Every answer is re-checked here against the served model itself: a returned
counterfactual must flip the prediction, never touch an immutable feature
(age, marital status, default records) and respect the request's ranges.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from desiderata.client import AsyncClient, DesiderataRpcError
from desiderata.server.model_card import FeatureValue
from desiderata.server.model_handle import ModelHandle
from desiderata.v1 import types_pb2 as pb
from tests.integration.conftest import Running, serving, settings_for

IMMUTABLE = {"age", "marital", "records"}
ACTIONABLE = ("seniority", "home", "time", "job", "expenses", "income", "assets", "debt", "amount", "price")


@pytest.fixture
async def demo_server(tmp_path: Path) -> AsyncIterator[Running]:
    settings = settings_for(None, tmp_path)
    settings.models.precompute = False  # no sample importance here
    async with serving(settings) as running:
        yield running


def _credit(server: Running) -> ModelHandle:
    return server.app.pipeline.models.resolve("credit")


def _rejected(handle: ModelHandle, n: int = 3) -> list[dict[str, FeatureValue]]:
    """Reference applicants the model predicts 'bad' (clearly, not on the boundary)."""
    ref = handle.reference()
    assert ref is not None
    p_good = handle.predict_proba(ref.x)[:, 1]
    rows = np.where(p_good < 0.3)[0][:n]
    return [handle.schema.decode(ref.x[i]) for i in rows]


def _value(v: pb.FeatureValue) -> FeatureValue:
    kind = v.WhichOneof("kind")
    assert kind is not None
    out: Any = getattr(v, kind)
    return out


def _apply(instance: dict[str, FeatureValue], changes: Any) -> dict[str, FeatureValue]:
    out = dict(instance)
    for c in changes:
        assert _value(c.from_value) == instance[c.feature] or c.from_value.WhichOneof("kind") == "number"
        out[c.feature] = _value(c.to_value)
    return out


def _label(handle: ModelHandle, features: dict[str, FeatureValue]) -> str:
    probs = handle.predict_proba(handle.schema.encode(features)[None, :])[0]
    return handle.card.class_names[int(np.argmax(probs))]


def _cf_params(method: str, count: int = 3, constraints: tuple[pb.FeatureConstraint, ...] = ()) -> pb.ExplanationParams:
    return pb.ExplanationParams(
        counterfactual=pb.CounterfactualParams(method=method, count=count, constraints=list(constraints), seed=7)
    )


async def _explain(server: Running, instance: dict[str, FeatureValue], kind: int, params: pb.ExplanationParams) -> Any:
    async with AsyncClient(server.address, api_key="k-eng") as client:
        return await client.explain("credit", instance, purpose="debugging", kind=kind, params=params)


@pytest.mark.parametrize("method", ["gradient", "genetic"])
async def test_counterfactuals_are_valid_and_keep_immutable_features(demo_server: Running, method: str) -> None:
    handle = _credit(demo_server)
    for instance in _rejected(handle):
        ex = await _explain(demo_server, instance, pb.EXPLANATION_KIND_COUNTERFACTUAL, _cf_params(method))
        cfs = ex.counterfactuals
        assert ex.prediction.label == "bad" and ex.disclosure.tier == "counterfactual/full"
        assert ex.method == f"counterfactual_{method}"
        assert cfs.counterfactuals and not cfs.reason_none
        for cf in cfs.counterfactuals:
            changed = {c.feature for c in cf.changes}
            assert changed and not changed & IMMUTABLE
            assert cf.valid and cf.prediction.label == "good"
            # validity is re-checked here, on the served model itself
            assert _label(handle, _apply(instance, cf.changes)) == "good"
            assert cf.features_changed == len(cf.changes)
            assert cf.normalized_l1_distance > 0
            assert cf.narrative.startswith("If ") and "good" in cf.narrative
            labels = {f.name: f.label for f in handle.card.features}
            assert not any(labels[f] in cf.narrative for f in IMMUTABLE)
        assert ex.quality.compute_ms > 0 and ex.quality.model_evaluations > 0


@pytest.mark.parametrize("method", ["gradient", "genetic"])
async def test_request_constraints_are_respected(demo_server: Running, method: str) -> None:
    handle = _credit(demo_server)
    instance = _rejected(handle, 1)[0]
    income = float(instance["income"])  # type: ignore[arg-type]
    constraints = (
        pb.FeatureConstraint(feature="income", max=income),  # no more income than today
        pb.FeatureConstraint(feature="seniority", immutable=True),
        pb.FeatureConstraint(feature="amount", direction=pb.CHANGE_DIRECTION_DECREASE_ONLY),
    )
    ex = await _explain(demo_server, instance, pb.EXPLANATION_KIND_COUNTERFACTUAL, _cf_params(method, 3, constraints))
    cfs = ex.counterfactuals
    assert cfs.counterfactuals or cfs.reason_none
    for cf in cfs.counterfactuals:
        after = _apply(instance, cf.changes)
        assert float(after["income"]) <= income + 1e-9  # type: ignore[arg-type]
        assert after["seniority"] == instance["seniority"]
        assert float(after["amount"]) <= float(instance["amount"]) + 1e-9  # type: ignore[arg-type]
        assert not {c.feature for c in cf.changes} & IMMUTABLE
        assert cf.valid and _label(handle, after) == "good"


@pytest.mark.parametrize(
    ("constraint", "says"),
    [
        (pb.FeatureConstraint(feature="income", min=500.0, max=100.0), "greater than max"),
        (pb.FeatureConstraint(feature="salary", max=100.0), "salary"),
    ],
)
async def test_contradictory_constraints_are_invalid_argument(
    demo_server: Running, constraint: pb.FeatureConstraint, says: str
) -> None:
    instance = _rejected(_credit(demo_server), 1)[0]
    with pytest.raises(DesiderataRpcError) as err:
        await _explain(
            demo_server, instance, pb.EXPLANATION_KIND_COUNTERFACTUAL, _cf_params("gradient", 3, (constraint,))
        )
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    violations = err.value.details.field_violations
    assert violations
    assert all(f.startswith("params.counterfactual.constraints[0]") for f, _ in violations)
    assert any(says in d for _, d in violations)


@pytest.mark.parametrize("method", ["gradient", "genetic"])
async def test_impossible_recourse_is_an_answer_with_a_reason(demo_server: Running, method: str) -> None:
    instance = _rejected(_credit(demo_server), 1)[0]
    frozen = tuple(pb.FeatureConstraint(feature=f, immutable=True) for f in ACTIONABLE)
    ex = await _explain(demo_server, instance, pb.EXPLANATION_KIND_COUNTERFACTUAL, _cf_params(method, 3, frozen))
    assert not ex.counterfactuals.counterfactuals
    assert ex.counterfactuals.reason_none


@pytest.mark.parametrize("norm", ["l2", "l0"])
async def test_robustness_finds_a_flipping_perturbation(demo_server: Running, norm: str) -> None:
    handle = _credit(demo_server)
    for instance in _rejected(handle, 2):
        ex = await _explain(
            demo_server,
            instance,
            pb.EXPLANATION_KIND_ROBUSTNESS,
            pb.ExplanationParams(robustness=pb.RobustnessParams(norm=norm, seed=3)),
        )
        r = ex.robustness
        assert r.found and r.norm == norm and r.distance > 0
        assert r.flipped_prediction.label != ex.prediction.label
        assert r.perturbation and not {c.feature for c in r.perturbation} & IMMUTABLE
        if norm == "l0":
            assert r.distance == len(r.perturbation)
