"""Each stakeholder row of the shipped policy bundle, through the real server on
the demo model, with roles from real (demo) credentials (issue 4)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import grpc
import pytest

from desiderata.client import AsyncClient, Client, DesiderataRpcError
from desiderata.client._requests import Requests
from desiderata.v1 import audit_service_pb2 as au
from desiderata.v1 import types_pb2 as pb
from tests.integration.conftest import Running, serving, settings_for

APPLICANT = {
    "seniority": 2,
    "home": "rent",
    "time": 60,
    "age": 30,
    "marital": "single",
    "records": True,
    "job": "partime",
    "expenses": 60.0,
    "income": 80.0,
    "assets": 0.0,
    "debt": 0.0,
    "amount": 1500.0,
    "price": 1600.0,
}
KEY = {role: f"demo-{role}-key" for role in ("ml_engineer", "domain_expert", "end_user", "regulator", "executive")}


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Running]:
    async with serving(settings_for(None, tmp_path, auth={"api_keys": [], "demo_keys": True})) as running:
        yield running


def client(demo: Running, role: str) -> AsyncClient:
    return AsyncClient(demo.address, api_key=KEY[role])


async def denied(coro: object) -> DesiderataRpcError:
    with pytest.raises(DesiderataRpcError) as info:
        await coro  # type: ignore[misc]
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED, info.value
    return info.value


async def test_ml_engineer_gets_full_fidelity_for_debugging(demo: Running) -> None:
    async with client(demo, "ml_engineer") as eng:
        ex = await eng.explain("credit", APPLICANT, purpose="debugging")
        caps = await eng.capabilities("credit", purpose="debugging")
    assert ex.disclosure.tier == "feature_attribution/full"
    assert len(ex.feature_attribution.attributions) == 13 and not ex.disclosure.redacted_features
    assert ex.disclosure.reasons == ["engineer.full_fidelity"]
    kinds = {c.kind: c.tier for c in caps.capabilities}
    assert kinds[pb.EXPLANATION_KIND_FEATURE_ATTRIBUTION] == "feature_attribution/full"
    assert kinds[pb.EXPLANATION_KIND_COUNTERFACTUAL] == "counterfactual/full"


async def test_loan_officer_gets_a_redacted_rounded_summary(demo: Running) -> None:
    async with client(demo, "domain_expert") as officer:
        ex = await officer.explain("credit", APPLICANT, purpose="transparency")
        await denied(officer.explain("credit", APPLICANT, purpose="debugging"))
    shown = [a.feature for a in ex.feature_attribution.attributions]
    assert ex.disclosure.tier == "feature_attribution/summary" and ex.disclosure.top_k == 5
    assert len(shown) <= 5 and not {"age", "marital"} & set(shown)
    assert set(ex.disclosure.redacted_features) == {"age", "marital"}
    for a in ex.feature_attribution.attributions:
        assert abs(a.value * 100 - round(a.value * 100)) < 1e-6  # quantised to 0.01


async def test_end_user_gets_a_narrative_of_their_own_decision_only(demo: Running) -> None:
    async with client(demo, "ml_engineer") as eng:
        own = await eng.predict("credit", APPLICANT, subject_id="applicant-0001")
        other = await eng.predict("credit", APPLICANT, subject_id="applicant-0002")
    async with client(demo, "end_user") as user:
        ex = await user.explain_decision(own.decision_id, purpose="transparency")
        err = await denied(user.explain_decision(other.decision_id, purpose="transparency"))
        submitted = await denied(user.explain("credit", APPLICANT, purpose="transparency"))
    assert ex.disclosure.tier == "feature_attribution/narrative" and ex.disclosure.narrative_only
    assert not ex.feature_attribution.attributions  # sentences, not numbers
    assert 1 <= len(ex.narrative) <= 4 and all(s.endswith(".") for s in ex.narrative)
    assert "end_user.own_decisions_only" in err.details.metadata["reasons"]
    assert "end_user.no_submitted_instances" in submitted.details.metadata["reasons"]
    # The denial is audited: a regulator finds it.
    async with client(demo, "regulator") as reg:
        page = await reg.query_audit("credit", purpose="audit", decision_id=err.details.metadata["decision_id"])
    assert len(page.entries) == 1 and not page.entries[0].allowed and page.entries[0].role == "end_user"


async def test_an_end_user_lists_their_own_decisions_and_explains_one(demo: Running) -> None:
    async with client(demo, "ml_engineer") as eng:
        mine = [await eng.predict("credit", APPLICANT, subject_id="applicant-0001") for _ in range(3)]
        theirs = await eng.predict("credit", APPLICANT, subject_id="applicant-0002")
        refused = await denied(eng.list_decisions("credit", purpose="debugging", subject_id="applicant-0001"))
    async with client(demo, "end_user") as user:
        first = await user.list_decisions("credit", purpose="transparency", page_size=2)
        token = first.next_page_token
        rest = await user.list_decisions("credit", purpose="transparency", page_size=2, page_token=token)
        listed = [*first.decisions, *rest.decisions]
        ex = await user.explain_decision(listed[0].decision_id, purpose="transparency")
        other = await denied(user.list_decisions("credit", purpose="transparency", subject_id="applicant-0002"))
        with pytest.raises(DesiderataRpcError) as bad:
            await user.list_decisions("credit", purpose="transparency", page_token="not-a-token")
    assert [d.decision_id for d in listed] == [r.decision_id for r in reversed(mine)]  # newest first
    assert first.next_page_token and not rest.next_page_token
    assert all(d.model == "credit" and d.predicted_class in ("good", "bad") for d in listed)
    assert ex.disclosure.tier == "feature_attribution/narrative"
    assert "end_user.own_decisions_only" in other.details.metadata["reasons"]
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in bad.value.details.field_violations] == ["page_token"]
    assert "policy.default_deny" in refused.details.metadata["reasons"]
    # A loan officer handling a contest lists another subject's; every list is audited.
    async with client(demo, "domain_expert") as officer:
        contest = await officer.list_decisions("credit", purpose="contest", subject_id="applicant-0002")
    assert [d.decision_id for d in contest.decisions] == [theirs.decision_id]
    async with client(demo, "regulator") as reg:
        lists = [e async for e in reg.audit_entries("credit", purpose="audit", action="decisions/list")]
    # (the bad token was refused before the policy was asked: nothing to audit)
    assert [(e.role, e.allowed) for e in lists] == [
        ("ml_engineer", False),
        ("end_user", True),
        ("end_user", True),
        ("end_user", False),
        ("domain_expert", True),
    ]


async def test_regulator_reads_the_audit_log_and_global_summaries(demo: Running) -> None:
    async with client(demo, "ml_engineer") as eng:
        explained = [await eng.explain("credit", APPLICANT, purpose="debugging") for _ in range(2)]
    async with client(demo, "regulator") as reg:
        await denied(reg.explain("credit", APPLICANT, purpose="audit"))
        summary = await reg.global_summary("credit", purpose="transparency")
        first = await reg.query_audit("credit", purpose="audit", page_size=1)
        entries = [e async for e in reg.audit_entries("credit", purpose="audit", page_size=1)]
        verified = await reg.verify_audit("credit", purpose="audit")
    assert first.entries[0].role == "ml_engineer" and first.entries[0].allowed and first.next_page_token
    # One record per page, every page followed: the engineer's answers, the regulator's denial
    # and its own reads, in the order of the chain.
    assert [e.seq for e in entries] == list(range(first.entries[0].seq, first.entries[0].seq + len(entries)))
    assert {e.disclosure.decision_id for e in explained} <= {e.decision_id for e in entries}
    assert any(e.role == "regulator" and not e.allowed for e in entries)
    assert verified.ok and verified.records >= len(entries)
    assert {c.class_label for c in summary.classes} <= {"good", "bad"} and summary.classes
    assert len(summary.classes[0].features) == 13 and summary.disclosure.tier == "global/summary"


async def test_executive_gets_global_summaries_only(demo: Running) -> None:
    async with client(demo, "executive") as exe:
        summary = await exe.global_summary("credit", purpose="monitoring")
        await denied(exe.explain("credit", APPLICANT, purpose="monitoring"))
        caps = await exe.capabilities("credit", purpose="monitoring")
        await denied(exe.query_audit("credit", purpose="audit"))
        await denied(exe.verify_audit("credit", purpose="audit"))
    assert summary.classes and not caps.capabilities


async def test_feedback_needs_dynamic_consumption(demo: Running, tmp_path: Path) -> None:
    feedback = {
        "verdict": "disagree",
        "should_not_matter": ["age"],
        "text": "age should not drive this",
        "purpose": "debugging",
    }
    async with client(demo, "ml_engineer") as eng:
        ok = await eng.submit_feedback("credit", "dec_x", **feedback)
    assert ok.decision_id.startswith("dec_")
    async with client(demo, "executive") as exe:
        await denied(exe.submit_feedback("credit", "dec_x", **feedback))
    stored = demo.app.pipeline.feedback.all("credit")
    assert [f.should_not_matter for f in stored] == [("age",)]


async def test_the_blocking_client_reads_the_audit_log_and_gives_feedback(demo: Running) -> None:
    def as_auditor() -> tuple[list[au.AuditEntry], list[au.AuditEntry], au.VerifyAuditResponse]:
        with Client(demo.address, api_key=KEY["ml_engineer"]) as eng:
            ex = eng.explain("credit", APPLICANT, purpose="debugging")
            eng.submit_feedback("credit", ex.disclosure.decision_id, verdict="agree", purpose="debugging")
            with pytest.raises(DesiderataRpcError) as info:
                list(eng.audit_entries("credit", purpose="audit"))
            assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
        with Client(demo.address, api_key=KEY["regulator"]) as reg:
            since = datetime.now(UTC) - timedelta(minutes=5)
            every = list(reg.audit_entries("credit", purpose="audit", page_size=2, since=since))
            denials = list(reg.audit_entries("credit", purpose="audit", outcome="denied", role="ml_engineer"))
            return every, denials, reg.verify_audit("credit", purpose="audit")

    every, denials, verified = await asyncio.to_thread(as_auditor)
    assert [e.action for e in every[:2]] == ["feature_attribution", "feedback"]
    assert [e.seq for e in every] == sorted({e.seq for e in every})  # every page, no repeats
    assert len(denials) == 1 and denials[0].action == "audit/read"
    assert verified.ok


def test_request_builders_refuse_what_the_server_would_misread() -> None:
    with pytest.raises(ValueError, match="verdict"):
        Requests.submit_feedback("credit", "dec_x", purpose="debugging", verdict="maybe")
    with pytest.raises(ValueError, match="outcome"):
        Requests.query_audit("credit", purpose="audit", outcome="refused")
    with pytest.raises(ValueError, match="timezone"):
        Requests.query_audit("credit", purpose="audit", since=datetime(2026, 1, 1))
    at = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert Requests.query_audit("credit", purpose="audit", until=at).until.ToDatetime(UTC) == at
