"""Replicas: they share the PostgreSQL decision store (a decision recorded through
one is explained to its subject through the other, and another subject is refused
on either), and a round_robin client spreads its calls over them."""

from __future__ import annotations

from pathlib import Path

import grpc
import psycopg
import pytest

from desiderata.client import AsyncClient, DesiderataRpcError
from desiderata.server.grpc.app import App, build_server
from tests.integration.conftest import settings_for
from tests.support.tiny_model import INSTANCE


@pytest.mark.needs_postgres
async def test_a_decision_recorded_on_one_replica_is_explained_on_another(
    tiny_repo: Path, tmp_path: Path, postgres_dsn: str
) -> None:
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute("DROP TABLE IF EXISTS decisions CASCADE")
    store = {"decisions_backend": "postgres", "decisions_postgres_dsn": postgres_dsn}
    replicas: list[App] = []
    for name in ("a", "b"):
        app = build_server(settings_for(tiny_repo, tmp_path / name, store={"state_dir": str(tmp_path / name), **store}))
        await app.start()
        replicas.append(app)
    a, b = replicas
    try:
        async with AsyncClient(a.address, api_key="k-eng") as eng:
            rec = await eng.predict("tiny", INSTANCE, subject_id="alice")
        async with AsyncClient(b.address, api_key="k-alice") as alice:
            mine = await alice.explain_decision(rec.decision_id, purpose="transparency")
        assert mine.recorded_decision_id == rec.decision_id and mine.prediction.label == rec.prediction.label
        async with AsyncClient(b.address, api_key="k-bob") as bob:
            with pytest.raises(DesiderataRpcError) as info:
                await bob.explain_decision(rec.decision_id, purpose="transparency")
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    finally:
        for app in replicas:
            await app.stop(0.5)


@pytest.mark.parametrize(("policy", "spread"), [("round_robin", True), ("", False)])
async def test_round_robin_clients_spread_calls_over_replicas(
    tiny_repo: Path, tmp_path: Path, policy: str, spread: bool
) -> None:
    replicas: list[App] = []
    for name in ("a", "b"):
        app = build_server(settings_for(tiny_repo, tmp_path / name))
        await app.start()
        replicas.append(app)
    try:
        target = "ipv4:" + ",".join(app.address for app in replicas)
        async with AsyncClient(target, api_key="k-eng", load_balancing=policy) as client:
            for _ in range(8):
                await client.explain("tiny", INSTANCE, purpose="debugging")
        served = [sum(1 for _ in app.pipeline.audit.iter_all()) for app in replicas]
    finally:
        for app in replicas:
            await app.stop(0.5)
    assert sum(served) == 8
    # round_robin: both replicas serve; gRPC's default (pick_first): one connection, one replica
    assert (min(served) > 0) is spread


def test_unknown_load_balancing_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="load_balancing must be one of"):
        AsyncClient("127.0.0.1:1", load_balancing="random")
