"""Hot reload of the policy bundle under a running server, and the privacy
guards over the wire: rate limits with RetryInfo, lifetime budgets with
QuotaFailure only, deterministic noise (issues 4 and 5)."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import yaml

from desiderata.client import AsyncClient, DesiderataRpcError
from desiderata.policy.audit import AuditRecord
from desiderata.policy.store import default_bundle_dir
from desiderata.server.grpc.app import build_server
from desiderata.v1 import explanation_service_pb2 as es
from tests.integration.conftest import Running, settings_for
from tests.integration.test_stakeholders import APPLICANT, KEY


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(default_bundle_dir(), target)
    return target


async def _serve(tmp_path: Path, bundle: Path) -> Running:
    settings = settings_for(
        None,
        tmp_path,
        auth={"api_keys": [], "demo_keys": True},
        policy={"bundle_dir": str(bundle), "reload_interval_s": 0.2},
    )
    app = build_server(settings)
    await app.start()
    return Running(app, app.address)


@pytest.fixture
async def served(tmp_path: Path, bundle: Path) -> AsyncIterator[Running]:
    running = await _serve(tmp_path, bundle)
    try:
        yield running
    finally:
        await running.app.stop(0.5)


async def _summary(exe: AsyncClient) -> es.GetGlobalSummaryResponse:
    request = es.GetGlobalSummaryRequest(model="credit", purpose="monitoring")
    result: es.GetGlobalSummaryResponse = await exe.explanations.GetGlobalSummary(
        request, metadata=exe._creds.metadata()
    )
    return result


async def test_editing_the_policy_changes_decisions_without_restart(served: Running, bundle: Path) -> None:
    cedar = bundle / "stakeholders.cedar"
    async with AsyncClient(served.address, api_key=KEY["executive"]) as exe:
        before = await _summary(exe)
        version = before.disclosure.policy_version
        broken = cedar.read_text() + "\npermit ( principal, action, resource ) when { this is not cedar };\n"
        cedar.write_text(broken)
        await asyncio.sleep(1.0)
        still = await _summary(exe)  # a broken edit changes nothing
        assert still.disclosure.policy_version == version
        text = broken.replace("permit ( principal, action, resource ) when { this is not cedar };\n", "")
        text = text.replace(
            'action == Action::"global/summary",\n  resource\n)\nwhen { ["monitoring", "transparency"]',
            'action == Action::"global/summary",\n  resource\n)\nwhen { ["transparency"]',
        )
        assert text != broken
        cases = bundle / "stakeholders_test.yaml"
        cases.write_text(
            cases.read_text().replace(
                "request: {model: credit, action: global/summary, purpose: monitoring}\n"
                "    expect: {allowed: true, tier: global/summary, reasons: [executive.global_summary]}",
                "request: {model: credit, action: global/summary, purpose: monitoring}\n    expect: {allowed: false}",
            )
        )
        cedar.write_text(text)
        started = time.monotonic()
        while True:
            try:
                await _summary(exe)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
                break
            assert time.monotonic() - started < 2.0, "the edit did not take effect within 2 s"
            await asyncio.sleep(0.05)
    assert served.app.pipeline.policy.version != version


async def test_budget_rate_and_noise_over_the_wire(tmp_path: Path, bundle: Path) -> None:
    profiles = yaml.safe_load((bundle / "profiles.yaml").read_text())
    profiles["profiles"]["feature_attribution/narrative"]["privacy"] = {"lifetime_queries": 3}
    profiles["profiles"]["feature_attribution/summary"]["privacy"] = {
        "rate_per_minute": 2,
        "burst": 2,
        "clip_norm": 0.5,
        "noise_multiplier": 0.5,
    }
    (bundle / "profiles.yaml").write_text(yaml.safe_dump(profiles))
    running = await _serve(tmp_path, bundle)
    try:
        async with AsyncClient(running.address, api_key=KEY["ml_engineer"]) as eng:
            recs = [
                await eng.predict("credit", {**APPLICANT, "amount": 1000.0 + 100 * i}, subject_id="applicant-0001")
                for i in range(4)
            ]
        async with AsyncClient(running.address, api_key=KEY["end_user"]) as user:
            for rec in recs[:3]:
                ex = await user.explain_decision(rec.decision_id, purpose="transparency")
            repeat = await user.explain_decision(recs[0].decision_id, purpose="transparency")
            assert ex.disclosure.budget.queries_remaining == 0
            assert repeat.narrative  # a repeat of a committed query is answered again at no charge
            with pytest.raises(DesiderataRpcError) as info:
                await user.explain_decision(recs[3].decision_id, purpose="transparency")
        err = info.value
        assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and err.details.quota_violations
        assert err.details.retry_after_s is None  # a lifetime budget never refills
        async with AsyncClient(running.address, api_key=KEY["domain_expert"]) as officer:
            first = await officer.explain("credit", APPLICANT, purpose="transparency")
            again = await officer.explain("credit", APPLICANT, purpose="transparency")
            with pytest.raises(DesiderataRpcError) as info:
                await officer.explain("credit", APPLICANT, purpose="transparency")
        assert first.disclosure.noised and first.disclosure.noise_stddev == pytest.approx(0.25)
        assert [a.value for a in first.feature_attribution.attributions] == [
            a.value for a in again.feature_attribution.attributions
        ]  # identical queries, identical noisy answers
        err = info.value
        assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED and err.details.retry_after_s is not None
    finally:
        await running.app.stop(0.5)


def _monitored(bundle: Path, narrative_takes_instances: bool) -> None:
    """The domain expert's summary tier watched by a quick extraction monitor that moves an
    alarmed caller to the narrative tier."""
    profiles = yaml.safe_load((bundle / "profiles.yaml").read_text())
    summary = profiles["profiles"]["feature_attribution/summary"]
    summary["privacy"] = {"rate_per_minute": 1000, "burst": 100}  # the test counts downgrades, not rates
    summary["privacy"]["monitor"] = {
        "window": 5,
        "threshold": 0.8,
        "action": "downgrade",
        "downgrade_to": "feature_attribution/narrative",
    }
    narrative = profiles["profiles"]["feature_attribution/narrative"]
    narrative["may_submit_instances"] = narrative_takes_instances
    narrative["privacy"].update({"rate_per_minute": 1000, "burst": 100})
    (bundle / "profiles.yaml").write_text(yaml.safe_dump(profiles))


async def _probe_along_one_axis(officer: AsyncClient, calls: int) -> list[object]:
    """Queries one feature apart, a step at a time: the pattern PRADA's monitor flags."""
    out: list[object] = []
    for i in range(calls):
        try:
            out.append(await officer.explain("credit", {**APPLICANT, "amount": 1000.0 + i}, purpose="transparency"))
        except DesiderataRpcError as exc:
            out.append(exc)
    return out


async def _probe_monitored(
    tmp_path: Path, bundle: Path, narrative_takes_instances: bool
) -> tuple[list[object], list[AuditRecord]]:
    """The answers to 12 probes by the domain expert, and the audit log after them."""
    _monitored(bundle, narrative_takes_instances)
    running = await _serve(tmp_path, bundle)
    try:
        async with AsyncClient(running.address, api_key=KEY["domain_expert"]) as officer:
            answers = await _probe_along_one_axis(officer, 12)
        return answers, [r.record for r in running.app.pipeline.audit.iter_all()]
    finally:
        await running.app.stop(0.5)


async def test_a_downgraded_caller_is_served_the_stricter_tier_entirely(tmp_path: Path, bundle: Path) -> None:
    answers, audited = await _probe_monitored(tmp_path, bundle, narrative_takes_instances=True)
    tiers = [getattr(a, "disclosure", a).tier for a in answers]  # an error here shows in the assert
    assert tiers[0] == "feature_attribution/summary" and tiers[-1] == "feature_attribution/narrative"
    last = answers[-1]
    shown = last.disclosure  # type: ignore[attr-defined]
    assert shown.narrative_only and shown.top_k == 3 and "extraction_monitor.downgrade" in shown.reasons
    assert not last.feature_attribution.attributions  # type: ignore[attr-defined]  # narrative only
    assert audited[-1].tier == "feature_attribution/narrative"


async def test_a_downgrade_to_a_tier_without_submitted_instances_refuses_them(tmp_path: Path, bundle: Path) -> None:
    answers, audited = await _probe_monitored(tmp_path, bundle, narrative_takes_instances=False)
    last = answers[-1]
    assert isinstance(last, DesiderataRpcError) and last.code == grpc.StatusCode.PERMISSION_DENIED
    assert "recorded decisions only" in str(last)
    denied = [r for r in audited if not r.allowed]
    assert denied and "extraction_monitor.downgrade" in denied[-1].reasons
