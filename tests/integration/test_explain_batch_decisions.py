"""ExplainBatch of recorded decisions over the wire: each answer is the one ExplainDecision
gives, an end user batches only their own decisions (one other's refuses the whole batch,
with nothing charged), and bad batches name the field."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from desiderata.client import AsyncClient, Client, DesiderataRpcError
from desiderata.client._requests import Requests
from desiderata.server.decision_store import DecisionRecord, new_record_id, utcnow
from desiderata.v1 import explanation_service_pb2 as es
from tests.integration.conftest import Running
from tests.support.tiny_model import INSTANCE

ROWS = [INSTANCE, {**INSTANCE, "x1": -0.7, "color": "blue"}, {**INSTANCE, "x2": 75, "flag": False}]


def _values(ex: object) -> list[tuple[str, float]]:
    return [(a.feature, a.value) for a in ex.feature_attribution.attributions]  # type: ignore[attr-defined]


async def _record(eng: AsyncClient, subjects: list[str]) -> list[str]:
    return [(await eng.predict("tiny", row, subject_id=s)).decision_id for row, s in zip(ROWS, subjects, strict=True)]


async def test_recorded_decisions_in_one_batch_answer_as_explain_decision(tiny_server: Running) -> None:
    params = Requests.attribution_params(method="integrated_gradients", target_class="yes", steps=50)
    fresh = Requests.attribution_params(method="integrated_gradients", target_class="yes", steps=50, seed=7)
    async with AsyncClient(tiny_server.address, api_key="k-eng") as eng:
        ids = await _record(eng, ["alice", "alice", "bob"])
        batch = await eng.explain_decisions(ids, purpose="debugging", params=params)
        alone = [await eng.explain_decision(i, purpose="debugging", params=fresh) for i in ids]
    assert [b.recorded_decision_id for b in batch] == ids
    assert len({tuple(_values(b)) for b in batch}) == 3
    for b, a in zip(batch, alone, strict=True):
        assert [f for f, _ in _values(b)] == [f for f, _ in _values(a)]
        assert [v for _, v in _values(b)] == pytest.approx([v for _, v in _values(a)], rel=1e-5, abs=1e-9)
        assert b.prediction == a.prediction
    assert len({b.disclosure.decision_id for b in batch}) == 1  # one policy decision: none is the engineer's own

    def sync_batch() -> list[str]:
        with Client(tiny_server.address, api_key="k-eng") as client:
            return [e.recorded_decision_id for e in client.explain_decisions(ids[::-1], purpose="debugging")]

    assert await asyncio.to_thread(sync_batch) == ids[::-1]  # the blocking client too, in order


async def test_an_end_user_batches_only_their_own_decisions(tiny_server: Running) -> None:
    async with (
        AsyncClient(tiny_server.address, api_key="k-eng") as eng,
        AsyncClient(tiny_server.address, api_key="k-alice") as alice,
    ):
        mine, mine_too, bobs = await _record(eng, ["alice", "alice", "bob"])
        batch = await alice.explain_decisions([mine, mine_too], purpose="transparency")
        assert [b.disclosure.tier for b in batch] == ["feature_attribution/narrative"] * 2
        assert all(b.narrative for b in batch)
        left = batch[-1].disclosure.budget.queries_remaining
        with pytest.raises(DesiderataRpcError) as info:
            await alice.explain_decisions([mine, bobs], purpose="transparency")
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
        # Nothing of the refused batch was charged: a new decision's query takes the next unit.
        newest = (await eng.predict("tiny", ROWS[2], subject_id="alice")).decision_id
        again = await alice.explain_decision(newest, purpose="transparency")
        assert again.disclosure.budget.queries_remaining == left - 1


async def test_bad_decision_batches_name_the_field(tiny_server: Running) -> None:
    async with AsyncClient(tiny_server.address, api_key="k-eng") as eng:
        (first, _, _) = await _record(eng, ["alice", "alice", "bob"])
        with pytest.raises(DesiderataRpcError) as info:
            await eng.explain_decisions([first, "rec_nope"], purpose="debugging")
        assert info.value.code == grpc.StatusCode.NOT_FOUND and "decision_ids[1]" in info.value.message
        other = DecisionRecord(
            new_record_id(), "alice", "eng", "tiny", "9", dict(INSTANCE), (0.5, 0.5), utcnow()
        )  # a version this server does not serve
        tiny_server.app.pipeline.decisions.record(other)
        cases = [
            (Requests.explain_decisions([first, other.decision_id], purpose="debugging"), "decision_ids[1]"),
            (Requests.explain_decisions([first, ""], purpose="debugging"), "decision_ids[1]"),
            (Requests.explain_decisions([first], purpose="debugging", method="lime"), None),
        ]
        both = Requests.explain_batch("tiny", [INSTANCE], purpose="debugging")
        both.decision_ids.append(first)
        cases.append((both, "decision_ids"))
        wrong_model = Requests.explain_decisions([first], purpose="debugging")
        wrong_model.model = "other"
        cases.append((wrong_model, "model"))
        for request, field in cases:
            if field is None:  # a valid one among them: the server still serves
                response: es.ExplainBatchResponse = await eng._call(eng.explanations.ExplainBatch, request, None)
                assert [e.recorded_decision_id for e in response.explanations] == [first]
                continue
            with pytest.raises(DesiderataRpcError) as info:
                await eng._call(eng.explanations.ExplainBatch, request, None)
            assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT, (field, info.value)
            assert field in [f for f, _ in info.value.details.field_violations], (field, info.value.details)
