"""Coalesced unary calls: gradient-method calls that queue for a busy worker are explained
together, each answered, charged and audited as if it had come alone; failures stay per call."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from desiderata.client import AsyncClient, DesiderataRpcError
from desiderata.client._requests import Requests
from desiderata.explainers.base import Kind
from desiderata.explainers.types import AttributionParams
from desiderata.policy.audit import AuditFilter
from desiderata.policy.model import Consumption
from desiderata.server.coalescing import Coalescer
from desiderata.server.model_handle import ModelHandle
from desiderata.server.pipeline import Pipeline
from desiderata.server.served import ExplainCall
from desiderata.v1 import types_pb2 as pb
from tests.integration.conftest import Running, gradient_passes, serving, settings_for
from tests.support.tiny_model import INSTANCE, build_tiny_repo

ROWS = [INSTANCE, {**INSTANCE, "x1": -0.7, "color": "blue"}, {**INSTANCE, "x2": 75, "flag": False}]
BLOCKER_SEED = 1000


def _ig(seed: int, **extra: Any) -> pb.ExplanationParams:
    return Requests.attribution_params(method="integrated_gradients", target_class="yes", steps=50, seed=seed, **extra)


def _values(ex: pb.Explanation) -> list[tuple[str, float]]:
    return [(a.feature, a.value) for a in ex.feature_attribution.attributions]


class _Ledger:
    """Counts the guard's admissions, charges and releases (every admission must end in one of the two)."""

    def __init__(self, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
        self.admitted = self.charged = self.released = 0
        guard = pipeline.guard
        admit, charge, release = guard.admit, guard.commit_with_budget, guard.release

        def counted(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                out = fn(*args, **kwargs)
                setattr(self, name, getattr(self, name) + 1)
                return out

            return wrapper

        monkeypatch.setattr(guard, "admit", counted(admit, "admitted"))
        monkeypatch.setattr(guard, "commit_with_budget", counted(charge, "charged"))
        monkeypatch.setattr(guard, "release", counted(release, "released"))


@asynccontextmanager
async def _workers_held(
    running: Running, client: AsyncClient, prepared: list[int] | None = None
) -> AsyncIterator[Callable[[int], Awaitable[None]]]:
    """Holds every worker in the preparation of a call of its own, so that the calls made in
    the body queue; yields a function that waits until that many calls are queued. On exit the
    workers go on, and the first to finish takes the whole queue as one group. `prepared`
    gets the seed of every call the pipeline prepares from then on, in order."""
    pipeline = running.app.pipeline
    coalescer = pipeline.coalescer
    assert coalescer is not None
    gate, inside = threading.Event(), threading.Semaphore(0)
    prepare = pipeline.prepare

    def held(principal: Any, call: ExplainCall) -> Any:
        if prepared is not None:
            prepared.append(call.seed)
        if call.seed >= BLOCKER_SEED:
            inside.release()
            gate.wait(30)
        return prepare(principal, call)

    pipeline.prepare = held  # type: ignore[method-assign]
    blockers = []
    for k in range(pipeline.workers):  # one at a time, so that each starts a worker of its own
        params = _ig(BLOCKER_SEED + k)
        blockers.append(asyncio.ensure_future(client.explain("tiny", INSTANCE, purpose="debugging", params=params)))
        assert await asyncio.to_thread(inside.acquire, True, 30)

    async def queued(n: int) -> None:
        started = time.monotonic()
        while coalescer.queued < n:
            assert time.monotonic() - started < 30, f"{coalescer.queued} calls queued, not {n}"
            await asyncio.sleep(0.01)

    try:
        yield queued
    finally:
        gate.set()  # `prepared` goes on recording until the server stops
        await asyncio.gather(*blockers)


async def test_queued_calls_share_one_pass_and_are_answered_charged_and_audited_alone(
    tiny_server: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = tiny_server.app.pipeline
    coalescer = pipeline.coalescer
    assert coalescer is not None
    passes = gradient_passes(monkeypatch)
    ledger = _Ledger(pipeline, monkeypatch)
    async with AsyncClient(tiny_server.address, api_key="k-eng") as client:
        async with _workers_held(tiny_server, client) as queued:
            groups, calls = coalescer.groups, coalescer.calls
            waiting = [
                asyncio.ensure_future(client.explain("tiny", r, purpose="debugging", params=_ig(1))) for r in ROWS
            ]
            await queued(len(ROWS))
            passes.clear()
        together = await asyncio.gather(*waiting)
        assert coalescer.calls - calls == len(ROWS) and coalescer.groups - groups == 1
        assert sorted(passes) == [52, 52, 52 * len(ROWS)]  # the two blockers alone, then the three rows in one
        # Another seed (which IG does not use) keeps the answer cache, filled by the group, out of it.
        pipeline.coalescer = None
        alone = [await client.explain("tiny", r, purpose="debugging", params=_ig(7)) for r in ROWS]
        pipeline.coalescer = coalescer
    assert len({tuple(_values(t)) for t in together}) == len(ROWS)
    for t, a in zip(together, alone, strict=True):
        assert [f for f, _ in _values(t)] == [f for f, _ in _values(a)]
        assert [v for _, v in _values(t)] == pytest.approx([v for _, v in _values(a)], rel=1e-5, abs=1e-9)
        assert t.prediction == a.prediction and t.quality.relative_completeness_gap <= 1e-3
    # Each call had its own policy decision, charge and audit record, as unary calls do.
    ids = [t.disclosure.decision_id for t in together]
    assert len(set(ids)) == len(ROWS)
    records = pipeline.audit.query(AuditFilter(principal="eng")).records
    audited = [s.record.decision_id for s in records if s.record.action == "feature_attribution"]
    assert all(audited.count(i) == 1 for i in ids)
    assert ledger.admitted == ledger.charged == 2 * len(ROWS) + pipeline.workers and ledger.released == 0


async def test_failures_reach_only_their_own_call(tiny_server: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = tiny_server.app.pipeline
    ledger = _Ledger(pipeline, monkeypatch)
    async with AsyncClient(tiny_server.address, api_key="k-eng") as client:
        async with _workers_held(tiny_server, client) as queued:
            good = [client.explain("tiny", r, purpose="debugging", params=_ig(2)) for r in ROWS[:2]]
            unknown_feature = client.explain("tiny", {**INSTANCE, "bogus": 1.0}, purpose="debugging", params=_ig(2))
            bad_rule = client.explain("tiny", ROWS[2], purpose="debugging", params=_ig(2, integration_rule="bogus"))
            short = AsyncClient(tiny_server.address, api_key="k-eng", timeout_s=0.3)
            gone = short.explain("tiny", ROWS[2], purpose="debugging", params=_ig(3))
            waiting = [asyncio.ensure_future(c) for c in (*good, unknown_feature, bad_rule, gone)]
            await queued(5)
            # The short call's deadline passes while it waits.
            with pytest.raises(DesiderataRpcError) as timed_out:
                await waiting[-1]
            await short.close()
        answers = await asyncio.gather(*waiting[:-1], return_exceptions=True)
    assert timed_out.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert all(isinstance(a, pb.Explanation) for a in answers[:2])
    for error, field in ((answers[2], "features[bogus]"), (answers[3], "params.attribution.integration_rule")):
        assert isinstance(error, DesiderataRpcError) and error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert any(field in f for f, _ in error.details.field_violations), error.details
    # Charged: the blockers and the two good calls. The bad rule was admitted, then released;
    # the call whose caller had gone was never prepared; the unknown feature never admitted.
    assert ledger.charged == pipeline.workers + 2
    assert ledger.released == 1 and ledger.admitted == ledger.charged + ledger.released


async def test_a_call_whose_deadline_passes_while_its_group_computes_is_released(
    tiny_server: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipeline = tiny_server.app.pipeline
    ledger = _Ledger(pipeline, monkeypatch)
    evaluate = ModelHandle.target_gradients

    def slow_group(self: ModelHandle, rows: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
        if rows.shape[0] > 52:  # the group's shared pass, not a blocker's
            time.sleep(1.5)
        return evaluate(self, rows, target)

    monkeypatch.setattr(ModelHandle, "target_gradients", slow_group)
    async with (
        AsyncClient(tiny_server.address, api_key="k-eng") as client,
        AsyncClient(tiny_server.address, api_key="k-eng", timeout_s=0.5) as hasty,
    ):
        async with _workers_held(tiny_server, client) as queued:
            patient = asyncio.ensure_future(client.explain("tiny", ROWS[0], purpose="debugging", params=_ig(5)))
            short = asyncio.ensure_future(hasty.explain("tiny", ROWS[1], purpose="debugging", params=_ig(5)))
            await queued(2)
        with pytest.raises(DesiderataRpcError) as timed_out:
            await short
        assert isinstance(await patient, pb.Explanation)
    assert timed_out.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    started = time.monotonic()
    while ledger.released < 1:  # the worker releases it just after answering the patient call
        assert time.monotonic() - started < 10, "the late call kept its reservation"
        await asyncio.sleep(0.01)
    # Both were admitted and explained together; only the patient one was charged.
    assert ledger.admitted == pipeline.workers + 2 and ledger.charged == pipeline.workers + 1
    assert ledger.released == 1


async def test_a_stream_of_queued_calls_does_not_starve_other_work(tiny_repo: Path, tmp_path: Path) -> None:
    server = {"port": 0, "workers": 1, "max_receive_message_bytes": 64 * 1024}
    async with (
        serving(settings_for(tiny_repo, tmp_path, server=server)) as running,
        AsyncClient(running.address, api_key="k-eng") as client,
    ):
        pool = running.app.pipeline._pool
        prepared: list[int] = []
        exact = Requests.attribution_params(method="exact_shapley", target_class="yes", seed=500)
        async with _workers_held(running, client, prepared) as queued:
            calls = [client.explain("tiny", r, purpose="debugging", params=_ig(1)) for r in ROWS]
            waiting = [asyncio.ensure_future(c) for c in calls]
            await queued(len(ROWS))
            other = asyncio.ensure_future(client.explain("tiny", INSTANCE, purpose="debugging", params=exact))
            started = time.monotonic()
            while pool._work_queue.qsize() < 1:  # the exact call waits for the worker too
                assert time.monotonic() - started < 30
                await asyncio.sleep(0.01)
        await asyncio.gather(other, *waiting)
    # The worker went back to the pool after the blocker's group: the call that waited there
    # ran before the queued group, not after a queue that might never empty.
    assert prepared == [BLOCKER_SEED, 500, 1, 1, 1]


async def test_calls_of_two_models_in_one_group_each_use_their_own(tmp_path: Path) -> None:
    repo = build_tiny_repo(tmp_path / "models")
    build_tiny_repo(repo, card_overrides={"name": "tiny2"}, folder="tiny2", seed=11)
    async with (
        serving(settings_for(repo, tmp_path / "state")) as running,
        AsyncClient(running.address, api_key="k-eng") as client,
    ):
        async with _workers_held(running, client) as queued:
            waiting = [
                asyncio.ensure_future(client.explain(m, INSTANCE, purpose="debugging", params=_ig(4)))
                for m in ("tiny", "tiny2", "tiny")
            ]
            await queued(3)
        together = await asyncio.gather(*waiting)
        running.app.pipeline.coalescer = None
        alone = {m: await client.explain(m, INSTANCE, purpose="debugging", params=_ig(8)) for m in ("tiny", "tiny2")}
    assert [t.model for t in together] == ["tiny", "tiny2", "tiny"]
    assert _values(alone["tiny"]) != _values(alone["tiny2"])
    for t in together:
        assert [v for _, v in _values(t)] == pytest.approx([v for _, v in _values(alone[t.model])], rel=1e-5)


def _call(method: str, kind: Kind = Kind.FEATURE_ATTRIBUTION) -> ExplainCall:
    return ExplainCall(kind=kind, purpose="debugging", consumption=Consumption.STATIC, params=AttributionParams(method))


def test_only_methods_that_share_passes_queue() -> None:
    for method in ("integrated_gradients", "gradient_x_input", "smoothgrad", "expected_gradients"):
        assert Coalescer.accepts(_call(method)), method
    for method in ("permutation_shapley", "exact_shapley", "kernel_shap", "lime", "", "no_such_method"):
        assert not Coalescer.accepts(_call(method)), method
    assert not Coalescer.accepts(_call("integrated_gradients", Kind.COUNTERFACTUAL))
