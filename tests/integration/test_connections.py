"""Connection management on a real server (`server.connections`): a connection past its maximum
age is closed gracefully and the client's next call reconnects; without an age it stays open.
What the settings hand to gRPC core is checked too."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from desiderata.server.listener import ConnectionSettings, channel_options
from tests.integration.conftest import Running, serving, settings_for


async def _left_ready_within(address: str, seconds: float) -> tuple[bool, int]:
    """Whether a channel that made one call left READY within `seconds` (the server closed its
    connection), and the status of a call made afterwards."""
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        await health.Check(health_pb2.HealthCheckRequest())
        assert channel.get_state() == grpc.ChannelConnectivity.READY
        left = False
        for _ in range(round(seconds / 0.05)):
            await asyncio.sleep(0.05)
            if channel.get_state() != grpc.ChannelConnectivity.READY:
                left = True
                break
        after = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        return left, after.status


async def test_a_connection_past_its_age_is_closed_and_the_next_call_reconnects(
    tiny_repo: Path, tmp_path: Path
) -> None:
    server = {"port": 0, "max_receive_message_bytes": 64 * 1024, "connections": {"max_age_s": 0.3}}
    async with serving(settings_for(tiny_repo, tmp_path, server=server)) as running:
        left, status = await _left_ready_within(running.address, 3.0)
    assert left and status == health_pb2.HealthCheckResponse.SERVING


async def test_without_an_age_a_connection_stays_open(tiny_server: Running) -> None:
    left, status = await _left_ready_within(tiny_server.address, 1.0)
    assert not left and status == health_pb2.HealthCheckResponse.SERVING


def test_the_settings_map_onto_grpc_core_arguments() -> None:
    defaults = dict(channel_options(ConnectionSettings()))
    assert defaults == {  # gRPC's own defaults, and no age or idle limit
        "grpc.keepalive_time_ms": 7_200_000,
        "grpc.keepalive_timeout_ms": 20_000,
        "grpc.http2.min_ping_interval_without_data_ms": 300_000,
        "grpc.keepalive_permit_without_calls": 0,
    }
    tuned = ConnectionSettings(max_age_s=300, max_age_grace_s=30, max_idle_s=600)
    tuned = tuned.model_copy(update={"min_client_ping_interval_s": 10, "permit_pings_without_calls": True})
    assert dict(channel_options(tuned)) == {
        "grpc.keepalive_time_ms": 7_200_000,
        "grpc.keepalive_timeout_ms": 20_000,
        "grpc.http2.min_ping_interval_without_data_ms": 10_000,
        "grpc.keepalive_permit_without_calls": 1,
        "grpc.max_connection_age_ms": 300_000,
        "grpc.max_connection_age_grace_ms": 30_000,
        "grpc.max_connection_idle_ms": 600_000,
    }
