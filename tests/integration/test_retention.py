"""Decision retention on a real server (`store.decisions_retention_days`): a decision past the
period is deleted at start and can no longer be explained; a fresh one stays and is explained.
And the operators' commands: erase one subject's decisions, expire old ones."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from desiderata.client import AsyncClient, DesiderataRpcError
from desiderata.server.decision_store import DecisionRecord, SqliteDecisionStore, new_record_id, utcnow
from desiderata.server.errors import DecisionNotFound
from tests.integration.conftest import scrape, serving, settings_for
from tests.support.tiny_model import INSTANCE


async def test_decisions_past_the_retention_period_are_deleted(tiny_repo: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    old = DecisionRecord(
        decision_id=new_record_id(),
        subject_id="alice",
        principal_id="eng",
        model="tiny",
        model_version="3",
        features=dict(INSTANCE),
        probabilities=(0.5, 0.5),
        created_at=utcnow() - timedelta(days=31),
    )
    store = SqliteDecisionStore(state / "decisions.sqlite")
    store.record(old)
    store.close()
    settings = settings_for(
        tiny_repo,
        state,
        store={"state_dir": str(state), "decisions_retention_days": 30, "retention_check_s": 0.1},
        metrics={"enabled": True, "port": 0},
    )
    async with (
        serving(settings) as running,
        AsyncClient(running.address, api_key="k-eng") as eng,
        AsyncClient(running.address, api_key="k-alice") as alice,
    ):
        fresh = await eng.predict("tiny", INSTANCE, subject_id="alice")
        for _ in range(100):  # the first expiry runs as the server starts
            _, samples = scrape(running)
            if samples.get(("desiderata_decisions_expired_total", ())) == 1:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the old decision was never expired")
        with pytest.raises(DesiderataRpcError) as info:
            await alice.explain_decision(old.decision_id, purpose="transparency")
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        mine = await alice.explain_decision(fresh.decision_id, purpose="transparency")
        assert mine.recorded_decision_id == fresh.decision_id


def _decision(subject: str, age_days: float) -> DecisionRecord:
    return DecisionRecord(
        decision_id=new_record_id(),
        subject_id=subject,
        principal_id="eng",
        model="tiny",
        model_version="3",
        features=dict(INSTANCE),
        probabilities=(0.5, 0.5),
        created_at=utcnow() - timedelta(days=age_days),
    )


def test_operators_erase_a_subject_and_expire_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from desiderata.server.cli import main

    state = tmp_path / "state"
    config = tmp_path / "config.yaml"
    config.write_text(f"store: {{state_dir: {state}}}\n")
    store = SqliteDecisionStore(state / "decisions.sqlite")
    alice = [_decision("alice", 1), _decision("alice", 2)]
    bob_old, bob_new = _decision("bob", 40), _decision("bob", 1)
    for rec in [*alice, bob_old, bob_new]:
        store.record(rec)
    assert main(["decisions", "erase", "--subject", "alice", "--config", str(config)]) == 0
    assert capsys.readouterr().out.strip() == "erased 2 decision(s) of subject alice"
    assert main(["decisions", "expire", "--days", "30", "--config", str(config)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "deleted 1 decision(s) older than 30 days"
    assert store.get(bob_new.decision_id) == bob_new
    for gone in [*alice, bob_old]:
        with pytest.raises(DecisionNotFound):
            store.get(gone.decision_id)
    store.close()
