"""Sample importance through the real server on the demo credit model: top-k
training points with influence, self-influence and outlier flags, rows only
for profiles that allow them, indexes precomputed at start and persisted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from desiderata.client import AsyncClient, DesiderataRpcError
from desiderata.explainers.base import ExplainContext, Reference
from desiderata.explainers.influence import InfluenceFunctions, NearestNeighbours
from desiderata.explainers.influence_config import InfluenceConfig
from desiderata.explainers.influence_index import build_index
from desiderata.explainers.types import SampleImportanceParams, SampleImportanceResult
from desiderata.policy.profiles import DisclosureProfile
from desiderata.server.config import ExplainSettings
from desiderata.server.grpc.app import App, build_server
from desiderata.server.model_card import FeatureValue
from desiderata.server.model_handle import ModelHandle, load_model
from desiderata.server.model_repository import BUILTIN_DEMO
from desiderata.server.serving import build_explainer
from desiderata.v1 import types_pb2 as pb
from tests.integration.conftest import Running, serving, settings_for


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One state folder for the module: later servers load the persisted indexes."""
    return tmp_path_factory.mktemp("demo-state")


@pytest.fixture
async def demo_server(state_dir: Path) -> AsyncIterator[Running]:
    async with serving(settings_for(None, state_dir)) as running:
        yield running


def _instance(app: App, row: int = 5) -> dict[str, FeatureValue]:
    handle = app.pipeline.models.resolve("credit")
    ref = handle.reference()
    assert ref is not None
    return handle.schema.decode(ref.x[row])


async def _samples(server: Running, method: str, top_k: int = 5, **extra: Any) -> Any:
    params = pb.ExplanationParams(sample_importance=pb.SampleImportanceParams(method=method, top_k=top_k, **extra))
    async with AsyncClient(server.address, api_key="k-eng") as client:
        return await client.explain(
            "credit",
            _instance(server.app),
            purpose="debugging",
            kind=pb.EXPLANATION_KIND_SAMPLE_IMPORTANCE,
            params=params,
        )


@pytest.mark.parametrize("method", ["influence", "nearest_neighbours"])
async def test_top_k_points_with_figures_and_rows_for_engineers(demo_server: Running, method: str) -> None:
    ex = await _samples(demo_server, method, top_k=5)
    handle = demo_server.app.pipeline.models.resolve("credit")
    ref = handle.reference()
    assert ref is not None
    result = ex.influential_samples
    assert ex.method == method and ex.disclosure.tier == "sample_importance/full"
    assert len(result.samples) == 5 and result.aggregate.startswith("The 5 most influential past cases")
    influence = [s.influence for s in result.samples]
    assert influence == sorted(influence, reverse=True)
    for s in result.samples:
        assert s.sample_id in ref.ids and s.label in handle.card.class_names
        assert s.self_influence > 0 and isinstance(s.outlier, bool)
        # the engineer's profile (sample_importance/full) allows training rows
        row = {f.name: f.value for f in s.row.features}
        assert set(row) == {f.name for f in handle.card.features}
        i = ref.ids.index(s.sample_id)
        assert handle.card.class_names[int(ref.y[i])] == s.label
    assert ex.quality.compute_ms > 0


async def test_exclude_outliers_and_relative_ranking(demo_server: Running) -> None:
    kept = await _samples(demo_server, "influence", top_k=20, exclude_outliers=True)
    assert len(kept.influential_samples.samples) == 20
    assert not any(s.outlier for s in kept.influential_samples.samples)
    rel = await _samples(demo_server, "influence", top_k=10, relative=True)
    r = [s.relative_influence for s in rel.influential_samples.samples]
    assert r == sorted(r, reverse=True)


async def test_tracin_without_checkpoints_is_failed_precondition(demo_server: Running) -> None:
    with pytest.raises(DesiderataRpcError) as err:
        await _samples(demo_server, "tracin")
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "checkpoints" in err.value.message


async def test_precomputed_at_start_and_persisted_for_a_restart(state_dir: Path) -> None:
    settings = settings_for(None, state_dir, models={"precompute": True})
    folder = state_dir / "influence" / "credit" / "1"
    for _ in range(2):
        app = build_server(settings)
        await app.start()
        try:
            assert app.precompute is not None and app.precompute.wait(120)
            assert app.precompute.progress["credit/1"][0] == "ready" and not app.precompute.errors
            handle = app.pipeline.models.resolve("credit")
            assert handle.index_dir == folder  # the built-in demo persists under the state folder
            files = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.npz")}
            assert {n.split("-")[0] for n in files} == {"influence", "nearest_neighbours"}
        finally:
            await app.stop(0.5)
        if _ == 0:
            first = files
    assert files == first  # the restart loaded the indexes, it did not rewrite them
    assert not (BUILTIN_DEMO / "credit" / ".influence").exists()


def test_profile_without_training_rows_gets_no_rows(tmp_path: Path) -> None:
    handle = load_model(BUILTIN_DEMO / "credit")
    handle.index_dir = tmp_path  # not the package folder
    ref = handle.reference()
    assert ref is not None
    for cls in (InfluenceFunctions, NearestNeighbours):
        for allowed in (False, True):
            profile = DisclosureProfile(tier="sample_importance/summary", training_rows=allowed)
            explainer = build_explainer(cls, profile, ExplainSettings())
            ex = explainer.explain(handle, ref.x[3], SampleImportanceParams(top_k=4), ExplainContext())
            assert isinstance(ex.result, SampleImportanceResult)
            assert len(ex.result.samples) == 4 and ex.result.aggregate
            assert all((s.row is not None) is allowed for s in ex.result.samples)
            assert ex.parameters["rows_included"] is allowed


def _flagged(handle: ModelHandle, ref: Reference, method: str) -> tuple[float, np.ndarray]:
    idx = build_index(handle.module, ref, method, "last_layer", InfluenceConfig())
    return float(idx.outliers.mean()), idx.outliers


def test_outlier_flags_a_small_fraction_and_a_planted_mislabelled_row() -> None:
    """The default cut (k = 3.5 on cube roots) on the demo: a few percent, the planted row among them."""
    handle = load_model(BUILTIN_DEMO / "credit")
    ref = handle.reference()
    assert ref is not None
    p_good = handle.predict_proba(ref.x)[:, 1]
    planted = int(np.argmax(p_good))  # the applicant the model is surest of ...
    y = ref.y.copy()
    y[planted] = 1 - int(np.argmax(handle.predict_proba(ref.x[planted][None, :])[0]))  # ... labelled the other way
    frac, outliers = _flagged(handle, Reference(x=ref.x, y=y, ids=ref.ids), "influence")
    assert 0.002 < frac < 0.05 and outliers[planted]
    frac_nn, _ = _flagged(handle, ref, "nearest_neighbours")
    assert 0.002 < frac_nn < 0.05
