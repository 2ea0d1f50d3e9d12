"""Index builds run in the background and are shared: a request waiting for one stops
waiting when it is cancelled or its deadline passes, without stopping the build, which
then serves the callers after it; a failed build is tried again by the next caller.

The build is replaced by one that blocks until the test releases it (a unit-test stand-in
for the minute an exact Hessian over all parameters can take), so "the caller returned
while the build was still running" is a fact, not a timing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import desiderata.explainers.influence_store as store
from desiderata.explainers.base import Cancelled, ExplainContext
from desiderata.server.errors import DeadlineExceeded, Unavailable
from tests.unit.explainers.attribution_models import TorchModel


class BlockedBuild:
    """Stands in for `load_or_build_index`: counts calls, blocks until released."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = threading.Event()
        self.started = threading.Event()
        self.fail_next = False
        self.index = object()

    def __call__(self, *args: Any) -> object:
        self.calls += 1
        self.started.set()
        progress = args[-1]
        for step in range(3000):  # reports progress while it waits, as a real build does
            if self.release.wait(0.01):
                break
            progress("blocked", step, 3000)
        else:
            raise AssertionError("the test never released the build")
        if self.fail_next:
            self.fail_next = False
            raise OSError("disk full")
        return self.index


@pytest.fixture
def build(monkeypatch: pytest.MonkeyPatch) -> Iterator[BlockedBuild]:
    stand_in = BlockedBuild()
    monkeypatch.setattr(store, "load_or_build_index", stand_in)
    monkeypatch.setattr(store, "_INDEXES", {})
    monkeypatch.setattr(store, "_BUILDS", {})
    yield stand_in
    stand_in.release.set()  # never leave a daemon build blocked


def _wait_in_thread(
    model: TorchModel, ctx: ExplainContext | None, subset: str = "all"
) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def run() -> None:
        try:
            out.append(store.get_index(model, "influence", subset, ctx=ctx))
        except Exception as exc:
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_a_cancelled_waiter_returns_while_the_shared_build_goes_on(mlp_model: TorchModel, build: BlockedBuild) -> None:
    patient, patient_out = _wait_in_thread(mlp_model, None)
    assert build.started.wait(10)
    ctx = ExplainContext()
    leaver, leaver_out = _wait_in_thread(mlp_model, ctx)
    ctx.cancel.set()
    leaver.join(10)
    assert not leaver.is_alive() and isinstance(leaver_out[0], Cancelled)
    assert not build.release.is_set() and patient.is_alive()  # the build is still running
    build.release.set()
    patient.join(10)
    assert patient_out == [build.index]
    assert store.get_index(mlp_model, "influence", "all") is build.index
    assert build.calls == 1  # one build, shared by both callers and kept for later ones


def test_a_deadline_passing_during_a_build_says_the_build_goes_on(mlp_model: TorchModel, build: BlockedBuild) -> None:
    ctx = ExplainContext(deadline=time.monotonic() + 0.2)
    with pytest.raises(DeadlineExceeded, match="being built; the build goes on"):
        store.get_index(mlp_model, "influence", "all", ctx=ctx)
    assert build.calls == 1 and not build.release.is_set()
    build.release.set()
    assert store.get_index(mlp_model, "influence", "all") is build.index
    assert build.calls == 1


def test_a_failed_build_reaches_its_waiters_and_the_next_caller_builds_again(
    mlp_model: TorchModel, build: BlockedBuild
) -> None:
    build.fail_next = True
    build.release.set()
    with pytest.raises(OSError, match="disk full"):
        store.get_index(mlp_model, "influence", "all", ctx=ExplainContext())
    assert store.get_index(mlp_model, "influence", "all", ctx=ExplainContext()) is build.index
    assert build.calls == 2


def test_stopping_ends_running_builds_at_their_next_step_and_later_builds_run(
    mlp_model: TorchModel, build: BlockedBuild
) -> None:
    waiter, out = _wait_in_thread(mlp_model, None)
    assert build.started.wait(10)
    assert store.stop_builds(10.0)
    waiter.join(10)
    assert isinstance(out[0], Unavailable) and "shutting down" in str(out[0])
    assert not build.release.is_set()  # it ended by stopping, not by finishing
    build.release.set()
    assert store.get_index(mlp_model, "influence", "all") is build.index  # a later server builds again
    assert build.calls == 2


def test_precomputation_stops_waiting_for_a_build_a_request_started(mlp_model: TorchModel, build: BlockedBuild) -> None:
    requester, _ = _wait_in_thread(mlp_model, None, "last_layer")  # the subset precomputation builds first
    assert build.started.wait(10)
    stopping = ExplainContext()
    stopping.cancel.set()
    with pytest.raises(Cancelled):
        store.precompute(mlp_model, ("influence",), None, stopping)
    assert requester.is_alive() and build.calls == 1
