"""A scikit-learn classifier saved with skops, served over gRPC: exact Shapley equals
shap's ExactExplainer on the same background, sampling methods converge to it,
black-box counterfactuals flip it, and gradient methods are refused by name."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from desiderata.client import AsyncClient, DesiderataRpcError
from desiderata.client._requests import Requests
from desiderata.explainers.background import summarize
from desiderata.oip import grpc_predict_v2_pb2 as oip
from desiderata.oip import grpc_predict_v2_pb2_grpc as oip_grpc
from desiderata.v1 import types_pb2 as pb
from tests.integration.conftest import Running, serving, settings_for
from tests.support.sklearn_model import D, fit_classifier, write_sklearn_model

MODEL, X = fit_classifier()
ROWS = X[200:203]


@pytest.fixture
async def gbm(tmp_path: Path) -> AsyncIterator[Running]:
    write_sklearn_model(tmp_path / "models" / "gbm", MODEL, X)
    async with serving(settings_for(tmp_path / "models", tmp_path / "state")) as running:
        yield running


def _row(x: np.ndarray) -> dict[str, float]:
    return {f"x{i}": float(v) for i, v in enumerate(x)}


def _values(ex: pb.Explanation) -> np.ndarray:
    out = np.zeros(D)
    for a in ex.feature_attribution.attributions:
        out[int(a.feature[1:])] = a.value
    return out


async def _attribute(client: AsyncClient, x: np.ndarray, method: str) -> pb.Explanation:
    params = Requests.attribution_params(method=method, target_class="yes", seed=7)
    return await client.explain("gbm", _row(x), purpose="debugging", params=params)


async def test_exact_shapley_equals_shap_and_sampling_converges(gbm: Running) -> None:
    shap = pytest.importorskip("shap")
    background = summarize(gbm.app.pipeline.models.resolve("gbm"), gbm.app.pipeline.settings.background_size)
    assert background.x.shape == (100, D) and np.allclose(background.weights, 0.01)
    oracle = shap.ExactExplainer(
        lambda z: MODEL.predict_proba(z)[:, 1], shap.maskers.Independent(background.x, max_samples=100)
    )
    async with AsyncClient(gbm.address, api_key="k-eng") as client:
        for x in ROWS:
            exact = await _attribute(client, x, "exact_shapley")
            phi = _values(exact)
            np.testing.assert_allclose(phi, oracle(x[None]).values[0], rtol=0, atol=1e-6)
            fa = exact.feature_attribution
            assert abs(phi.sum() - (fa.output - fa.baseline_output)) <= 1e-9  # efficiency
            assert abs(fa.output - MODEL.predict_proba(x[None])[0, 1]) <= 1e-9
            for method in ("kernel_shap", "permutation_shapley"):
                estimate = _values(await _attribute(client, x, method))
                assert np.abs(estimate - phi).sum() <= 0.02 * np.abs(phi).sum(), method


async def test_gradient_methods_are_refused_by_name(gbm: Running) -> None:
    async with AsyncClient(gbm.address, api_key="k-eng") as client:
        with pytest.raises(DesiderataRpcError) as info:
            await _attribute(client, ROWS[0], "integrated_gradients")
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        ((field, text),) = info.value.details.field_violations
        assert field == "params.attribution.method" and "gradients" in text


async def test_black_box_counterfactuals_flip_the_estimators_decision(gbm: Running) -> None:
    x = next(r for r in X[200:] if MODEL.predict(r[None])[0] == 0)
    params = pb.ExplanationParams(counterfactual=pb.CounterfactualParams(method="genetic", count=2, seed=7))
    async with AsyncClient(gbm.address, api_key="k-eng") as client:
        ex = await client.explain(
            "gbm", _row(x), purpose="debugging", kind=pb.EXPLANATION_KIND_COUNTERFACTUAL, params=params
        )
    assert ex.prediction.label == "no" and ex.counterfactuals.counterfactuals
    for cf in ex.counterfactuals.counterfactuals:
        moved = x.copy()
        for change in cf.changes:
            moved[int(change.feature[1:])] = change.to_value.number
        assert cf.valid and MODEL.predict(moved[None].astype(np.float32))[0] == 1  # re-checked on the estimator


async def test_predictions_are_recorded_and_the_platform_is_named(gbm: Running) -> None:
    x = ROWS[0]
    async with AsyncClient(gbm.address, api_key="k-eng") as client:
        rec = await client.predict("gbm", _row(x), subject_id="alice")
    expected = MODEL.predict_proba(x[None].astype(np.float32))[0]
    assert [p.probability for p in rec.prediction.probabilities] == pytest.approx(expected.tolist(), abs=1e-12)
    assert rec.prediction.label == ("yes" if expected[1] > expected[0] else "no")
    async with grpc.aio.insecure_channel(gbm.address) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        meta = await stub.ModelMetadata(
            oip.ModelMetadataRequest(name="gbm"), metadata=(("authorization", "Bearer k-eng"),)
        )
    assert meta.platform == "sklearn_skops" and [t.name for t in meta.inputs] == [f"x{i}" for i in range(D)]
