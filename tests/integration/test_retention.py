"""Retention on a real server (`store.decisions_retention_days`, `store.feedback_retention_days`):
a decision past the period is deleted at start and can no longer be explained, a fresh one stays
and is explained; old feedback is deleted and fresh feedback kept. Feedback records its giver's
subject. And the operators' commands: erase one subject's decisions and feedback, expire old ones."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from desiderata.client import AsyncClient, DesiderataRpcError
from desiderata.policy.audit_sqlite import SqliteAuditLog
from desiderata.policy.feedback import Feedback, SqliteFeedbackStore, feedback_time
from desiderata.policy.model import Principal
from desiderata.server.decision_store import DecisionRecord, SqliteDecisionStore, new_record_id, utcnow
from desiderata.server.errors import DecisionNotFound, InvalidArgument
from desiderata.server.policy_services import FeedbackRequest
from tests.integration.conftest import KEYS, scrape, serving, settings_for
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


def _configured(tmp_path: Path) -> tuple[Path, Path]:
    """A state folder and a configuration file whose stores are in it, for the CLI."""
    state, config = tmp_path / "state", tmp_path / "config.yaml"
    config.write_text(f"store: {{state_dir: {state}}}\n")
    return state, config


def test_operators_erase_a_subject_and_expire_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from desiderata.server.cli import main

    state, config = _configured(tmp_path)
    store = SqliteDecisionStore(state / "decisions.sqlite")
    alice = [_decision("alice", 1), _decision("alice", 2)]
    bob_old, bob_new = _decision("bob", 40), _decision("bob", 1)
    for rec in [*alice, bob_old, bob_new]:
        store.record(rec)
    assert main(["decisions", "erase", "--subject", "alice", "--config", str(config)]) == 0
    assert capsys.readouterr().out.strip().startswith("erased 2 decision(s) of subject alice (audit era_")
    assert main(["decisions", "expire", "--days", "30", "--config", str(config)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "deleted 1 decision(s) older than 30 days"
    assert store.get(bob_new.decision_id) == bob_new
    for gone in [*alice, bob_old]:
        with pytest.raises(DecisionNotFound):
            store.get(gone.decision_id)
    store.close()


def _feedback(store: SqliteFeedbackStore, decision_id: str, subject: str, age_days: float) -> Feedback:
    fb = Feedback(decision_id=decision_id, explanation_id="exp_1", principal=f"{subject}-app", role="end_user",
                  model="tiny", model_version="3", verdict="disagree", text="not me", subject_id=subject,
                  time=feedback_time(utcnow() - timedelta(days=age_days)))  # fmt: skip
    store._append(json.dumps(fb.__dict__), fb.model)  # as the store wrote it then
    return fb


async def test_feedback_past_its_retention_period_is_deleted_and_records_its_subject(
    tiny_repo: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    store = SqliteFeedbackStore(state / "feedback.sqlite")
    _feedback(store, "dec_old", "carol", 91)
    store.close()
    settings = settings_for(
        tiny_repo,
        state,
        store={"state_dir": str(state), "feedback_retention_days": 90, "retention_check_s": 0.1},
        metrics={"enabled": True, "port": 0},
    )
    async with serving(settings) as running:
        for _ in range(100):  # the first expiry runs as the server starts
            if scrape(running)[1].get(("desiderata_feedback_expired_total", ())) == 1:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the old feedback was never expired")
        services = running.app.services
        assert services is not None
        # A principal acting for a subject (an end user's app, where the policy permits it).
        carol = Principal(id="carol-app", role="ml_engineer", subject_id="carol")
        request = FeedbackRequest(model="tiny", decision_id="dec_new", explanation_id="exp_2", verdict="agree",
                                  should_matter=(), should_not_matter=(), text="", purpose="debugging")  # fmt: skip
        stored, _ = await asyncio.to_thread(services.submit_feedback, carol, request)
        assert stored.subject_id == "carol"
        assert [(f.decision_id, f.subject_id) for f in running.app.pipeline.feedback.all()] == [("dec_new", "carol")]
        # Decisions are kept: their retention is off.
        assert scrape(running)[1].get(("desiderata_decisions_expired_total", ())) == 0


def test_one_command_erases_a_subjects_decisions_and_feedback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from desiderata.server.cli import main

    state, config = _configured(tmp_path)
    decisions = SqliteDecisionStore(state / "decisions.sqlite")
    feedback = SqliteFeedbackStore(state / "feedback.sqlite")
    alice, bob = _decision("alice", 1), _decision("bob", 1)
    decisions.record(alice)
    decisions.record(bob)
    _feedback(feedback, alice.decision_id, "alice", 1)
    _feedback(feedback, bob.decision_id, "bob", 100)
    _feedback(feedback, bob.decision_id, "bob", 1)
    erase = ["erase", "--subject", "alice", "--request", "DSR-2026-117", "--by", "dpo", "--config", str(config)]
    assert main(erase) == 0
    said = capsys.readouterr().out.strip().splitlines()[-1]
    assert said.startswith("erased 1 decision(s) and 1 feedback record(s) of subject alice (audit era_")
    with pytest.raises(DecisionNotFound):
        decisions.get(alice.decision_id)
    assert decisions.get(bob.decision_id) == bob
    nobody = _decision("", 1)
    decisions.record(nobody)
    with pytest.raises(InvalidArgument, match="subject_id"):  # refused before either store is touched
        main(["erase", "--subject", "", "--config", str(config)])
    assert decisions.get(nobody.decision_id) == nobody
    assert [f.subject_id for f in feedback.all()] == ["bob", "bob"]
    assert main(["feedback", "expire", "--days", "30", "--config", str(config)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "deleted 1 feedback record(s) older than 30 days"
    assert main(["feedback", "erase", "--subject", "bob", "--config", str(config)]) == 0
    assert capsys.readouterr().out.strip().startswith("erased 1 feedback record(s) of subject bob (audit era_")
    assert feedback.all() == []
    decisions.close()
    feedback.close()
    # Each erasure is in the hash-chained audit log: who, under which request, how many; never whom.
    log = SqliteAuditLog(state / "audit.sqlite")
    first, second = [s.record for s in log.iter_all()]
    assert (first.action, first.principal, first.role) == ("erase_subject", "dpo", "operator")
    assert first.request_id == "DSR-2026-117"
    assert first.reasons == ("decisions_erased=1", "feedback_erased=1") and first.decision_id in said
    assert second.reasons == ("feedback_erased=1",) and second.principal  # the login name by default
    assert "alice" not in first.canonical() and "bob" not in second.canonical()
    assert log.verify().ok
    log.close()


async def test_regulators_read_erasures_among_the_store_wide_records(
    tiny_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Erasures concern no model: a model's audit query never lists them. A regulator reads them
    # (and nothing else of the log) with store_records, decided as audit/read on Log::"store".
    from desiderata.server.cli import main
    from desiderata.v1 import audit_service_pb2 as au
    from desiderata.v1 import audit_service_pb2_grpc as au_grpc

    state, config = _configured(tmp_path)
    keys = [*KEYS, {"principal": "reg", "role": "regulator", "key": "k-reg"}]
    settings = settings_for(tiny_repo, state, auth={"api_keys": keys})
    async with (
        serving(settings) as running,
        AsyncClient(running.address, api_key="k-eng") as eng,
        AsyncClient(running.address, api_key="k-reg") as reg,
    ):
        await eng.predict("tiny", INSTANCE, subject_id="alice")
        # The operator's command, run beside the serving process on the same stores.
        erase = ["erase", "--subject", "alice", "--request", "DSR-2026-118", "--by", "dpo", "--config", str(config)]
        assert await asyncio.to_thread(main, erase) == 0
        erasure_id = capsys.readouterr().out.strip().splitlines()[-1].split("(audit ")[1].rstrip(")")
        tiny = [e async for e in reg.audit_entries("tiny", purpose="audit")]
        assert tiny and all(e.model == "tiny" for e in tiny)
        assert "erase_subject" not in {e.action for e in tiny}
        store = [e async for e in reg.audit_entries("", purpose="audit", store_records=True, page_size=1)]
        erasure, *reads = store
        assert (erasure.action, erasure.decision_id, erasure.principal, erasure.role, erasure.request_id) == (
            "erase_subject",
            erasure_id,
            "dpo",
            "operator",
            "DSR-2026-118",
        )
        assert list(erasure.reasons) == ["decisions_erased=1", "feedback_erased=0"] and erasure.model == ""
        # Reading the store-wide records is itself one of them (the first page's read is
        # before the page's snapshot), with its decision's reasons.
        assert [(e.action, e.principal, e.model, e.allowed) for e in reads] == [("audit/read", "reg", "", True)]
        assert list(reads[0].reasons) == ["regulator.audit"]
        only = [e async for e in reg.audit_entries("", purpose="audit", store_records=True, action="erase_subject")]
        assert [e.decision_id for e in only] == [erasure_id]
        verified = await reg.verify_audit("", purpose="audit", store_records=True)
        assert verified.ok and verified.records > len(store)
        with pytest.raises(DesiderataRpcError) as refused:
            await eng.verify_audit("", purpose="debugging", store_records=True)
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(DesiderataRpcError) as denied:
            await eng.query_audit("", purpose="debugging", store_records=True)
        assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert denied.value.details.metadata["decision_id"] in {
            e.decision_id async for e in reg.audit_entries("", purpose="audit", store_records=True, outcome="denied")
        }
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = au_grpc.AuditServiceStub(channel)
            calls = (
                (stub.QueryAudit, au.QueryAuditRequest(model="tiny", purpose="audit", store_records=True)),
                (stub.QueryAudit, au.QueryAuditRequest(purpose="audit")),
                (stub.VerifyAudit, au.VerifyAuditRequest(model="tiny", purpose="audit", store_records=True)),
                (stub.VerifyAudit, au.VerifyAuditRequest(purpose="audit")),
            )
            for method, request in calls:
                with pytest.raises(grpc.aio.AioRpcError) as bad:
                    await method(request, metadata=(("x-api-key", "k-reg"),))
                err = DesiderataRpcError.from_rpc_error(bad.value)
                assert err.code == grpc.StatusCode.INVALID_ARGUMENT
                assert [f for f, _ in err.details.field_violations] == ["model"]
