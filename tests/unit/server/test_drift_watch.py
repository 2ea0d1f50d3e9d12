"""Scheduled drift checks: a model that cannot be checked does not stop the others, a
model with too few decisions is counted and not compared, and stopping the watch
stops a running check and waits for its thread."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

import numpy as np
import pytest
import torch

from desiderata.server.attribution_drift import DriftMonitor
from desiderata.server.decision_store import DecisionRecord
from desiderata.server.drift_watch import check_models, watch_drift
from desiderata.server.errors import Unavailable
from desiderata.server.metrics import Metrics
from tests.unit.explainers.attribution_models import Identity2, TorchModel, numeric, reference_rows
from tests.unit.server.test_global_views import decision_records

W = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0, -1.0])


def _model(name: str) -> TorchModel:
    return TorchModel(Identity2(W, 0.3), numeric(6), reference_rows(200, 6, 0, 4), name=name)


class _Repo:
    def __init__(self, *models: TorchModel) -> None:
        self.models = list(models)

    def served(self) -> list[TorchModel]:
        return self.models


class _Store:
    """Decisions per model; `down` models fail like an unreachable store, `slow` ones block until released."""

    def __init__(self, records: dict[str, list[DecisionRecord]], down: frozenset[str] = frozenset()) -> None:
        self.records, self.down = records, down
        self.release = threading.Event()
        self.reads = 0
        self.slow = False

    def recent(self, model: str, model_version: str, limit: int) -> list[DecisionRecord]:
        self.reads += 1
        if model in self.down:
            raise Unavailable("decision store unavailable: OperationalError")
        if self.slow:
            self.release.wait(10)
        return self.records.get(model, [])[:limit]


def _gauge(metrics: Metrics, name: str, model: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"model": model})


def test_one_failing_model_does_not_stop_the_check_of_the_others() -> None:
    a, b, c = _model("a"), _model("b"), _model("c")
    shifted = np.random.default_rng(1).normal(size=(30, 6)) + np.array([0, 0, 0, 1.5, 0, 0])
    start = datetime(2026, 11, 23, tzinfo=UTC)
    records = {"b": decision_records(b, shifted, start), "c": decision_records(c, np.zeros((3, 6)), start)}
    store = _Store(records, frozenset({"a"}))
    metrics = Metrics(process=False)
    monitor = DriftMonitor(reference_rows=100)
    compared = check_models(_Repo(a, b, c), store, monitor, 500, metrics, threading.Event())  # type: ignore[arg-type]
    assert compared == 1 and store.reads == 3
    assert _gauge(metrics, "desiderata_attribution_drift_decisions", "a") is None  # not checked: nothing said
    assert _gauge(metrics, "desiderata_attribution_drift_decisions", "b") == 30
    assert (_gauge(metrics, "desiderata_attribution_drift_features", "b") or 0) >= 1
    assert _gauge(metrics, "desiderata_attribution_drift_decisions", "c") == 3  # too few: counted
    assert _gauge(metrics, "desiderata_attribution_drift_features", "c") is None  # and not compared


def test_a_stopped_check_reads_nothing_more() -> None:
    stop = threading.Event()
    stop.set()
    store = _Store({})
    assert check_models(_Repo(_model("a")), store, DriftMonitor(), 500, None, stop) == 0  # type: ignore[arg-type]
    assert store.reads == 0


async def test_cancelling_the_watch_waits_for_the_running_check() -> None:
    a, b = _model("a"), _model("b")
    store = _Store({})
    store.slow = True
    watch = asyncio.create_task(watch_drift(_Repo(a, b), store, DriftMonitor(), 500, 0.01, None))  # type: ignore[arg-type]
    for _ in range(100):
        if store.reads:
            break
        await asyncio.sleep(0.01)
    assert store.reads == 1  # the check is blocked in its first read
    watch.cancel()
    await asyncio.sleep(0.05)
    assert not watch.done()  # waiting for the check's thread
    store.release.set()
    with pytest.raises(asyncio.CancelledError):
        await watch
    assert store.reads == 1  # the check stopped before the second model
