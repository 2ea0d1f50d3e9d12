"""`server.max_concurrent_rpcs`: past the limit a call is refused at once with
RESOURCE_EXHAUSTED (code ``overloaded``, QuotaFailure and RetryInfo) instead of queueing
behind busy workers until its deadline; health checks are never refused, and a slot
comes back when its call ends, however it ends."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from desiderata.client import AsyncClient, DesiderataRpcError
from desiderata.client._requests import Requests
from tests.integration.conftest import serving, settings_for
from tests.integration.test_cancellation import CREDIT, ENDLESS, RowCounter


async def test_calls_past_the_limit_are_refused_at_once_and_slots_come_back(tmp_path: Path) -> None:
    settings = settings_for(
        None, tmp_path, server={"port": 0, "workers": 1, "max_concurrent_rpcs": 2}, explain={"max_samples": 50_000_000}
    )
    async with serving(settings) as running:
        counter = RowCounter(running.app.pipeline.models.resolve("credit"))
        async with AsyncClient(running.address, api_key="k-eng", timeout_s=60) as client:
            busy = [
                asyncio.ensure_future(
                    client.explain(
                        "credit", CREDIT, purpose="debugging", params=Requests.attribution_params(seed=i, **ENDLESS)
                    )
                )
                for i in range(2)
            ]
            await counter.until_started()  # one runs; the other holds its slot waiting for the worker
            with pytest.raises(DesiderataRpcError) as info:
                await client.explain("credit", CREDIT, purpose="debugging", timeout_s=30)
            err = info.value
            assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert [subject for subject, _ in err.details.quota_violations] == ["server"]
            assert err.details.retry_after_s == pytest.approx(0.5)
            async with grpc.aio.insecure_channel(running.address) as channel:  # health is never shed
                health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
                assert health.status == health_pb2.HealthCheckResponse.SERVING
            for call in busy:
                call.cancel()
            await asyncio.gather(*busy, return_exceptions=True)
            await counter.until_still()
            for _ in range(50):  # the server learns of the cancellations a moment after the client
                try:
                    ex = await client.explain("credit", CREDIT, purpose="debugging", timeout_s=30)
                    break
                except DesiderataRpcError as again:
                    assert again.code == grpc.StatusCode.RESOURCE_EXHAUSTED
                    await asyncio.sleep(0.05)
            assert len(ex.feature_attribution.attributions) == len(CREDIT)
