"""Scheduled attribution-drift checks: the operator's side of `GetAttributionDrift`.

Why: drift is found by looking, and nobody polls an RPC every hour. With
`drift.interval_s` set, the server checks every served model on that schedule
and reports each check as gauges (`Metrics.drift`, alert
`DesiderataAttributionDrift`) and one log event naming the drifted features —
names and figures only, never a decision or a feature value.

A check runs on a thread of its own, one model after another, through the same
`DriftMonitor` as the RPC: its cache means that each check explains only the
decisions recorded since the last, and that a caller of the RPC finds that work
done. A model with fewer than `MIN_DECISIONS` decisions is skipped, and its
gauges say so. A failed check (a store down, say) is logged and the schedule
goes on; stopping the server stops a running check at its next row.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence
from typing import Protocol

import structlog

from desiderata.explainers.base import Cancelled, ExplainableModel, ExplainContext
from desiderata.explainers.torch_threads import adopt_torch_threads
from desiderata.server.attribution_drift import MIN_DECISIONS, DriftMonitor
from desiderata.server.decision_store import DecisionStore
from desiderata.server.errors import DesiderataError
from desiderata.server.metrics import Metrics

__all__ = ["Served", "check_models", "watch_drift"]

log = structlog.get_logger("desiderata.drift")


class Served(Protocol):
    """What the checks read of the model repository (`ModelRepository`)."""

    def served(self) -> Sequence[ExplainableModel]: ...


def check_models(
    models: Served,
    decisions: DecisionStore,
    monitor: DriftMonitor,
    window: int,
    metrics: Metrics | None,
    stop: threading.Event,
) -> int:
    """One check of every served model (blocking); returns how many were compared.

    Args:
        window: newest decisions of each served version compared.
        stop: set to end the check at its next row.
    """
    adopt_torch_threads()  # runs on asyncio's default executor, whose threads we did not start
    compared = 0
    for handle in models.served():
        name, version = handle.card.name, handle.card.version
        if stop.is_set():
            break
        try:
            records = decisions.recent(name, version, window)
            if len(records) < MIN_DECISIONS:
                if metrics is not None:
                    metrics.drift(name, len(records), None)
                continue
            result = monitor.drift(handle, records, ExplainContext(cancel=stop))
        except Cancelled:
            break
        except DesiderataError as exc:  # a store down, a model without a reference: the next check retries
            log.warning("attribution_drift_check_failed", model=name, code=exc.code)
            continue
        except Exception:
            log.exception("attribution_drift_check_error", model=name)
            continue
        compared += 1
        if metrics is not None:
            metrics.drift(name, len(records), result)
        log.info(
            "attribution_drift_checked",
            model=name,
            model_version=version,
            decisions=result.decisions,
            drifted=[f.feature for f in result.features if f.drifted],
            share_distance=round(result.share_distance, 4),
            share_threshold=round(result.share_threshold, 4),
        )
    return compared


async def watch_drift(
    models: Served,
    decisions: DecisionStore,
    monitor: DriftMonitor,
    window: int,
    interval_s: float,
    metrics: Metrics | None,
) -> None:
    """Checks every `interval_s` seconds until cancelled (the first check at once).

    Cancelling it stops a running check at its next row and waits for its thread:
    the stores and models may then be closed.
    """
    stop = threading.Event()
    check: asyncio.Future[int] | None = None
    try:
        while True:
            check = asyncio.ensure_future(
                asyncio.to_thread(check_models, models, decisions, monitor, window, metrics, stop)
            )
            await asyncio.shield(check)
            await asyncio.sleep(interval_s)
    except asyncio.CancelledError:
        stop.set()
        if check is not None:
            with contextlib.suppress(Exception):
                await check
        raise
