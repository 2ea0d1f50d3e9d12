"""ExplainBatch over the wire: each instance answered as if asked alone, all or nothing."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import grpc
import pytest
import yaml

from desiderata.client import AsyncClient, DesiderataRpcError
from desiderata.client._requests import Requests
from desiderata.policy.audit import AuditFilter
from desiderata.policy.guard import Admission, Budget
from desiderata.policy.privacy_params import PrivacyParams
from desiderata.policy.store import default_bundle_dir
from desiderata.server.config import Settings
from desiderata.server.errors import Unavailable
from desiderata.v1 import types_pb2 as pb
from tests.integration.conftest import Running, gradient_passes, serving, settings_for
from tests.integration.test_stakeholders import APPLICANT, client
from tests.support.tiny_model import INSTANCE

ROWS = [INSTANCE, {**INSTANCE, "x1": -0.7, "color": "blue"}, {**INSTANCE, "x2": 75, "flag": False}]


def _values(ex: pb.Explanation) -> list[tuple[str, float]]:
    return [(a.feature, a.value) for a in ex.feature_attribution.attributions]


async def test_each_row_is_the_answer_it_would_get_alone(
    tiny_server: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    passes = gradient_passes(monkeypatch)
    params = Requests.attribution_params(method="integrated_gradients", target_class="yes", steps=50)
    async with AsyncClient(tiny_server.address, api_key="k-eng") as client:
        batch = await client.explain_batch("tiny", ROWS, purpose="debugging", params=params)
        in_batch, passes[:] = list(passes), []
        # Another seed (which IG does not use) keeps the answer cache, filled by the batch, out of it.
        fresh = Requests.attribution_params(method="integrated_gradients", target_class="yes", steps=50, seed=7)
        alone = [await client.explain("tiny", row, purpose="debugging", params=fresh) for row in ROWS]
    # The batch's rows shared one forward/backward pass (52 rows each: 50 steps and the two ends).
    assert in_batch == [52 * len(ROWS)] and passes == [52] * len(ROWS)
    assert len(batch) == len(ROWS)
    assert len({tuple(_values(b)) for b in batch}) == len(ROWS)  # three rows, three different answers
    for b, a in zip(batch, alone, strict=True):
        # The same answer up to float32 rounding: a larger product may round a last bit differently.
        assert [f for f, _ in _values(b)] == [f for f, _ in _values(a)]
        assert [v for _, v in _values(b)] == pytest.approx([v for _, v in _values(a)], rel=1e-5, abs=1e-9)
        assert b.prediction == a.prediction
        assert b.quality.relative_completeness_gap <= 1e-3
        assert b.disclosure.tier == "feature_attribution/full"
    assert len({b.disclosure.decision_id for b in batch}) == 1  # one policy decision for the batch
    records = tiny_server.app.pipeline.audit.query(AuditFilter(principal="eng")).records
    ids = [s.record.decision_id for s in records if s.record.action == "feature_attribution"]
    assert ids.count(batch[0].disclosure.decision_id) == len(ROWS)  # every answer audited


async def test_bad_batches_name_the_field(tiny_repo: Path, tmp_path: Path) -> None:
    settings = settings_for(tiny_repo, tmp_path, explain={"max_batch_instances": 3})
    async with serving(settings) as running, AsyncClient(running.address, api_key="k-eng") as client:
        cases = [
            ([], "instances"),
            ([*ROWS, INSTANCE], "instances"),
            ([INSTANCE, {**INSTANCE, "bogus": 1.0}], "instances[1].features[bogus]"),
            ([{k: v for k, v in INSTANCE.items() if k != "x2"}], "instances[0].features[x2]"),
        ]
        for rows, field in cases:
            with pytest.raises(DesiderataRpcError) as info:
                await client.explain_batch("tiny", rows, purpose="debugging")
            assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert field in [f for f, _ in info.value.details.field_violations], (field, info.value.details)
        with pytest.raises(DesiderataRpcError) as info:
            await client.explain_batch("tiny", ROWS, purpose="no-such-purpose")
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert len(await client.explain_batch("tiny", ROWS, purpose="debugging")) == 3  # still serving


async def test_end_users_may_not_batch_submitted_instances(tiny_server: Running) -> None:
    async with AsyncClient(tiny_server.address, api_key="k-alice") as alice:
        with pytest.raises(DesiderataRpcError) as info:
            await alice.explain_batch("tiny", ROWS, purpose="transparency")
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
    records = tiny_server.app.pipeline.audit.query(AuditFilter(principal="alice")).records
    assert [(s.record.action, s.record.allowed) for s in records] == [("feature_attribution", False)]


def _budgeted(tmp_path: Path, queries: int) -> Settings:
    """The demo with the domain expert's summary tier limited to `queries` lifetime queries, noised."""
    bundle = tmp_path / "bundle"
    shutil.copytree(default_bundle_dir(), bundle)
    profiles = yaml.safe_load((bundle / "profiles.yaml").read_text())
    profiles["profiles"]["feature_attribution/summary"]["privacy"] = {
        "lifetime_queries": queries,
        "clip_norm": 0.5,
        "noise_multiplier": 0.5,
    }
    (bundle / "profiles.yaml").write_text(yaml.safe_dump(profiles))
    keys = {"api_keys": [], "demo_keys": True}
    return settings_for(None, tmp_path, auth=keys, policy={"bundle_dir": str(bundle)})


ROWS_CREDIT = [{**APPLICANT, "amount": 1000.0 + 250 * i} for i in range(6)]


async def test_a_batch_over_the_budget_charges_nothing(tmp_path: Path) -> None:
    rows = ROWS_CREDIT[:4]
    async with serving(_budgeted(tmp_path, 3)) as running, client(running, "domain_expert") as officer:
        with pytest.raises(DesiderataRpcError) as info:
            await officer.explain_batch("credit", rows, purpose="transparency")
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and info.value.details.quota_violations
        # Nothing was charged: the whole budget is left for three rows.
        batch = await officer.explain_batch("credit", rows[:3], purpose="transparency")
        assert [b.disclosure.budget.queries_remaining for b in batch] == [2, 1, 0]
        assert all(b.disclosure.noised and b.disclosure.noise_stddev == pytest.approx(0.25) for b in batch)
        # Each row was noised as its own query: asked alone again, it is the same answer, at no charge.
        for row, b in zip(rows[:3], batch, strict=True):
            again = await officer.explain("credit", row, purpose="transparency")
            assert _values(again) == _values(b)
        with pytest.raises(DesiderataRpcError) as info:
            await officer.explain("credit", rows[3], purpose="transparency")
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_ledger_failure_while_charging_releases_the_rest(tmp_path: Path) -> None:
    async with serving(_budgeted(tmp_path, 4)) as running, client(running, "domain_expert") as officer:
        guard = running.app.pipeline.guard
        commit = guard.commit_with_budget
        calls = 0

        def flaky(admission: Admission, privacy: PrivacyParams) -> Budget:
            nonlocal calls
            calls += 1
            if calls == 2:
                raise Unavailable("the budget ledger is unavailable")
            return commit(admission, privacy)

        guard.commit_with_budget = flaky  # type: ignore[method-assign]
        with pytest.raises(DesiderataRpcError) as info:
            await officer.explain_batch("credit", ROWS_CREDIT[:3], purpose="transparency")
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        del guard.commit_with_budget
        # One row was charged; the second and third were released, so three queries are left.
        batch = await officer.explain_batch("credit", ROWS_CREDIT[3:6], purpose="transparency")
        assert [b.disclosure.budget.queries_remaining for b in batch] == [2, 1, 0]


async def test_a_passed_deadline_releases_every_instance(tmp_path: Path) -> None:
    slow = Requests.attribution_params(method="permutation_shapley", target_std_error=1e-6, max_samples=4_000_000)
    async with serving(_budgeted(tmp_path, 3)) as running, client(running, "domain_expert") as officer:
        with pytest.raises(DesiderataRpcError) as info:
            await officer.explain_batch("credit", ROWS_CREDIT[:3], purpose="transparency", params=slow, timeout_s=0.5)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        # The worker releases the reservations as it stops, just after the caller's deadline.
        started = time.monotonic()
        while True:
            try:
                batch = await officer.explain_batch("credit", ROWS_CREDIT[3:6], purpose="transparency")
                break
            except DesiderataRpcError as exc:
                assert exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert time.monotonic() - started < 10, "the timed-out batch kept its reservations"
                await asyncio.sleep(0.1)
        assert [b.disclosure.budget.queries_remaining for b in batch] == [2, 1, 0]
