"""Readiness: while the budget ledger (a real redis-server, stopped and restarted here)
cannot be reached, gRPC health says NOT_SERVING and explanations are refused with
UNAVAILABLE; once it is back, the replica serves again."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlparse

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from desiderata.client import AsyncClient, DesiderataRpcError
from desiderata.server.grpc.app import build_pipeline, build_server
from desiderata.server.readiness import failing, store_checks
from tests.integration.conftest import settings_for
from tests.support.redis_server import start_redis_server, stop_redis_server
from tests.support.tiny_model import INSTANCE

pytestmark = pytest.mark.needs_redis

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _wait_for(health: health_pb2_grpc.HealthStub, status: int, service: str = "") -> None:
    for _ in range(100):  # at most 10 s; probes run every 0.1 s
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        if reply.status == status:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"health of {service!r} never became {status}")


async def test_health_follows_the_ledger(tiny_repo: Path, tmp_path: Path) -> None:
    proc, url = start_redis_server(tmp_path)
    settings = settings_for(
        tiny_repo,
        tmp_path / "state",
        privacy={"ledger": "redis", "redis_url": url},
        server={"port": 0, "readiness_interval_s": 0.1},
    )
    app = build_server(settings)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(app.address) as channel, AsyncClient(app.address, api_key="k-eng") as eng:
            health = health_pb2_grpc.HealthStub(channel)
            await _wait_for(health, SERVING)
            await eng.explain("tiny", INSTANCE, purpose="debugging")
            stop_redis_server(proc)
            await _wait_for(health, NOT_SERVING)
            await _wait_for(health, NOT_SERVING, "desiderata.v1.ExplanationService")
            # liveness is not readiness: a store outage must not get the replica restarted
            assert (await health.Check(health_pb2.HealthCheckRequest(service="liveness"))).status == SERVING
            with pytest.raises(DesiderataRpcError) as info:
                await eng.explain("tiny", INSTANCE, purpose="debugging")
            assert info.value.code == grpc.StatusCode.UNAVAILABLE
            proc, _ = start_redis_server(tmp_path, port=urlparse(url).port)
            await _wait_for(health, SERVING)
            await eng.explain("tiny", INSTANCE, purpose="debugging")
    finally:
        await app.stop(0.5)
        stop_redis_server(proc)


@pytest.mark.needs_postgres
@pytest.mark.parametrize("backends", ["embedded", "shared"])
def test_healthy_stores_pass_every_probe(
    tiny_repo: Path, tmp_path: Path, backends: str, redis_url: str, postgres_dsn: str
) -> None:
    extra: dict[str, object] = {}
    if backends == "shared":
        extra = {
            "privacy": {"ledger": "redis", "redis_url": redis_url},
            "audit": {"backend": "postgres", "postgres_dsn": postgres_dsn},
            "store": {
                "state_dir": str(tmp_path / "state"),
                "decisions_backend": "postgres",
                "decisions_postgres_dsn": postgres_dsn,
                "feedback_backend": "postgres",
                "feedback_postgres_dsn": postgres_dsn,
            },
        }
    pipeline, _ = build_pipeline(settings_for(tiny_repo, tmp_path / "state", **extra))
    try:
        checks = store_checks(pipeline)
        assert [name for name, _ in checks] == ["ledger", "audit_log", "decision_store", "feedback_store"]
        assert failing(checks) == []
    finally:
        pipeline.close()
