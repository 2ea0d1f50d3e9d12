"""Global views over the real server: attribution drift of recorded decisions, the
summary of a black-box model, and the bad input and policy of both."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from desiderata.client import AsyncClient, Client, DesiderataRpcError
from desiderata.policy.audit import AuditFilter
from desiderata.v1 import explanation_service_pb2 as es
from tests.integration.conftest import Running, scrape, serving, settings_for
from tests.support.sklearn_model import fit_classifier, write_sklearn_model


def _applicants(n: int, seed: int, x1: tuple[float, float] = (-5.0, 5.0)) -> Iterator[dict[str, object]]:
    """Instances of the tiny model drawn like its training reference (x1 from `x1`)."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield {
            "x1": float(rng.uniform(*x1)),
            "x2": int(rng.integers(0, 90)),
            "color": str(rng.choice(["red", "green", "blue"])),
            "flag": bool(rng.random() < 0.5),
        }


async def _drift(client: AsyncClient, **kw: object) -> es.GetAttributionDriftResponse:
    return await client.attribution_drift("tiny", **{"purpose": "monitoring", **kw})  # type: ignore[arg-type]


async def _code(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(DesiderataRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code, info.value.describe()


async def test_drift_flags_the_feature_whose_decisions_moved(tiny_server: Running) -> None:
    async with AsyncClient(tiny_server.address, api_key="k-eng") as eng:
        for i, row in enumerate(_applicants(19, seed=1)):
            await eng.predict("tiny", row, subject_id=f"s{i}")
        code, details = await _code(_drift(eng))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "at least 20 recorded decisions" in details
        await eng.predict("tiny", next(_applicants(1, seed=2)), subject_id="s19")
        steady = await _drift(eng)
        for i, row in enumerate(_applicants(40, seed=3, x1=(4.0, 9.0))):
            await eng.predict("tiny", row, subject_id=f"m{i}")
        moved = await _drift(eng, max_decisions=40)

    def sync_drift() -> es.GetAttributionDriftResponse:  # the blocking client, on a thread: the server is on this loop
        with Client(tiny_server.address, api_key="k-eng") as client:
            return client.attribution_drift("tiny", purpose="monitoring", max_decisions=40)

    again = await asyncio.to_thread(sync_drift)
    assert again.disclosure.decision_id != moved.disclosure.decision_id  # a decision of its own
    expected = es.GetAttributionDriftResponse()
    expected.CopyFrom(moved)
    for message in (again, expected):
        message.ClearField("disclosure")
    assert again == expected
    assert (steady.decisions, steady.reference_rows, steady.target_class) == (20, 200, "yes")
    assert steady.method == "integrated_gradients" and steady.alpha == 0.05
    assert not steady.drifted and not any(f.drifted for f in steady.features)
    assert steady.disclosure.tier == "global/drift" and steady.disclosure.decision_id
    assert steady.first_decision_at.ToDatetime() <= steady.last_decision_at.ToDatetime()
    assert {f.feature for f in steady.features} == {"x1", "x2", "color", "flag"}
    assert moved.decisions == 40 and moved.drifted
    assert moved.features[0].feature == "x1" and moved.features[0].display_name == "First"
    assert moved.features[0].drifted and moved.features[0].p_value * 4 < 0.05
    assert moved.share_distance > moved.share_threshold > 0
    # most drifted first
    assert [f.ks_statistic for f in moved.features] == sorted((f.ks_statistic for f in moved.features), reverse=True)
    # every read is audited
    page = tiny_server.app.pipeline.audit.query(AuditFilter(model="tiny", principal="eng"), 500, "")
    audited = [(r.record.action, r.record.allowed, r.record.tier) for r in page.records]
    assert audited.count(("global/drift", True, "global/drift")) == 4


async def test_drift_is_a_global_view_of_the_policy(tiny_server: Running) -> None:
    async with AsyncClient(tiny_server.address, api_key="k-alice") as alice:
        code, _ = await _code(_drift(alice, purpose="transparency"))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    async with AsyncClient(tiny_server.address, api_key="k-eng") as eng:
        code, details = await _code(_drift(eng, max_decisions=5001))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "max_decisions" in details
        code, _ = await _code(_drift(eng, version="99"))
        assert code == grpc.StatusCode.NOT_FOUND
        code, _ = await _code(eng.global_summary("tiny", version="99", purpose="monitoring"))
        assert code == grpc.StatusCode.NOT_FOUND  # the version asked for, not the served one
        assert (await eng.global_summary("tiny", version="3", purpose="monitoring")).model_version == "3"


async def test_black_box_models_get_a_shapley_summary(tmp_path: Path) -> None:
    model, x = fit_classifier()
    write_sklearn_model(tmp_path / "models" / "gbm", model, x[:100])
    async with (
        serving(settings_for(tmp_path / "models", tmp_path / "state")) as running,
        AsyncClient(running.address, api_key="k-eng") as eng,
    ):
        summary = await eng.global_summary("gbm", purpose="monitoring")
    assert summary.method == "permutation_shapley" and summary.classes
    assert sum(c.rows for c in summary.classes) == 100
    for c in summary.classes:
        assert sum(f.share for f in c.features) == pytest.approx(1.0)
        assert all(f.mean_abs_attribution >= 0 for f in c.features)


async def _gauge(running: Running, name: str, at_least: float | None = None) -> float | None:
    """The tiny model's value of a drift gauge, after waiting (≤ 20 s) for it to reach `at_least`."""
    for _ in range(200):
        value = scrape(running)[1].get((name, (("model", "tiny"),)))
        if at_least is None or (value is not None and value >= at_least):
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name} never reached {at_least}")


async def test_scheduled_checks_export_drift_as_metrics(tiny_repo: Path, tmp_path: Path) -> None:
    settings = settings_for(
        tiny_repo, tmp_path, metrics={"enabled": True, "port": 0}, drift={"interval_s": 0.1, "decisions": 40}
    )
    async with serving(settings) as running, AsyncClient(running.address, api_key="k-eng") as eng:
        await _gauge(running, "desiderata_attribution_drift_decisions", at_least=0)
        # fewer than 20 decisions: counted, not compared
        assert await _gauge(running, "desiderata_attribution_drift_features") is None
        for i, row in enumerate(_applicants(40, seed=3, x1=(4.0, 9.0))):
            await eng.predict("tiny", row, subject_id=f"m{i}")
        await _gauge(running, "desiderata_attribution_drift_decisions", at_least=40)
        features = await _gauge(running, "desiderata_attribution_drift_features", at_least=1)
        distance = await _gauge(running, "desiderata_attribution_drift_share_distance")
        threshold = await _gauge(running, "desiderata_attribution_drift_share_threshold")
        # the same figures as the RPC's (the scheduled check and the RPC share their cache)
        rpc = await eng.attribution_drift("tiny", purpose="monitoring", max_decisions=40)
    assert features == sum(f.drifted for f in rpc.features) and rpc.features[0].feature == "x1"
    assert distance == pytest.approx(rpc.share_distance) and threshold == pytest.approx(rpc.share_threshold)


def test_drift_checks_are_off_unless_scheduled(tmp_path: Path) -> None:
    assert settings_for(None, tmp_path).drift.interval_s == 0
