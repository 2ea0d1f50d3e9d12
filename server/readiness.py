"""Readiness: the health service says NOT_SERVING while a store this replica needs is unreachable.

Why: every store fails closed, so a replica whose ledger, audit log, decision
store or feedback store cannot be reached refuses every explanation with
UNAVAILABLE. Its gRPC health status should say so, so that a readiness probe
or a health-checking load balancer sends callers to a replica that can answer,
and brings this one back once its stores answer again. A background task
probes each store with one cheap read every `interval_s` (off the event loop)
and flips the status of the whole server and of every service on each change,
logging which stores failed (never data).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import structlog
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from desiderata.policy.audit import AuditFilter
from desiderata.server.errors import DecisionNotFound
from desiderata.server.pipeline import Pipeline

__all__ = ["Check", "failing", "store_checks", "watch_readiness"]

log = structlog.get_logger("desiderata.readiness")

Check = tuple[str, Callable[[], object]]
"""A store's name and a cheap read that raises when the store cannot be reached."""

_PROBE = "__readiness__"


def store_checks(pipeline: Pipeline) -> list[Check]:
    """One read per store of `pipeline` (each raises if its store is unreachable)."""

    def decision() -> None:
        try:
            pipeline.decisions.get(_PROBE)
        except DecisionNotFound:
            return

    return [
        ("ledger", lambda: pipeline.guard.ledger.usage(_PROBE, _PROBE)),
        ("audit_log", lambda: pipeline.audit.query(AuditFilter(principal=_PROBE), page_size=1)),
        ("decision_store", decision),
        ("feedback_store", pipeline.feedback.ping),
    ]


def failing(checks: Sequence[Check]) -> list[str]:
    """Names of the stores whose check raised."""
    out = []
    for name, check in checks:
        try:
            check()
        except Exception:
            out.append(name)
    return out


async def watch_readiness(
    health: HealthServicer,
    services: Sequence[str],
    checks: Sequence[Check],
    interval_s: float,
    on_probe: Callable[[list[str], list[str]], None] | None = None,
) -> None:
    """Probes `checks` every `interval_s` seconds until cancelled, keeping the health status
    of the server ("") and of `services` in step with them.

    Args:
        on_probe: called after each probe with every store's name and the failing ones
            (the metrics' store gauges).
    """
    serving = True
    names = [name for name, _ in checks]
    while True:
        await asyncio.sleep(interval_s)
        down = await asyncio.to_thread(failing, checks)
        if on_probe is not None:
            on_probe(names, down)
        if bool(down) == (not serving):
            continue
        serving = not down
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *services):
            await health.set(name, status)
        if serving:
            log.info("stores_reachable")
        else:
            log.error("stores_unreachable", stores=down)
