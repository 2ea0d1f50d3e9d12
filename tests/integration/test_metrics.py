"""Prometheus metrics of a real server: what is counted, and what never appears.

Calls of known outcome are made (served explanations, a repeat answered from
the cache, a policy refusal, bad input, an unknown credential); the scraped
exposition, parsed with prometheus_client's own parser, must count exactly
them, the stores must show as up, and no principal, subject or feature value
may appear anywhere in it. The shipped alert rules may only name metrics and
error codes that exist.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from desiderata.client import AsyncClient, DesiderataRpcError
from desiderata.client._requests import Requests
from desiderata.server.config import Settings
from tests.integration.conftest import Running, scrape, serving, settings_for
from tests.support.tiny_model import INSTANCE

EXPLAIN = "/desiderata.v1.ExplanationService/Explain"


@pytest.fixture
async def metered(tiny_repo: Path, tmp_path: Path) -> AsyncIterator[Running]:
    settings = settings_for(tiny_repo, tmp_path, metrics={"enabled": True, "port": 0})
    async with serving(settings) as running:
        yield running


async def _fails(coro: object) -> DesiderataRpcError:
    with pytest.raises(DesiderataRpcError) as info:
        await coro  # type: ignore[misc]
    return info.value


async def test_calls_explanations_refusals_and_stores_are_counted_and_nothing_personal_leaks(
    metered: Running,
) -> None:
    async with AsyncClient(metered.address, api_key="k-eng") as eng:
        first = await eng.explain("tiny", INSTANCE, purpose="debugging")
        again = await eng.explain("tiny", INSTANCE, purpose="debugging")  # same raw answer: a cache hit
        assert [a.value for a in first.feature_attribution.attributions] == [
            a.value for a in again.feature_attribution.attributions
        ]
        bad = await _fails(eng.explain("tiny", {**INSTANCE, "x1": float("nan")}, purpose="debugging"))
        recorded = await eng.predict("tiny", INSTANCE, subject_id="alice")
    async with AsyncClient(metered.address, api_key="k-bob") as bob:  # someone else's decision
        denied = await _fails(bob.explain_decision(recorded.decision_id, purpose="transparency"))
    async with AsyncClient(metered.address, api_key="no-such-key") as stranger:
        unknown = await _fails(stranger.explain("tiny", INSTANCE, purpose="debugging"))
    codes = (bad.code.name, denied.code.name, unknown.code.name)
    assert codes == ("INVALID_ARGUMENT", "PERMISSION_DENIED", "UNAUTHENTICATED")
    text, samples = scrape(metered)
    assert "desiderata_rpcs_total" in text

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("desiderata_rpcs_total", method=EXPLAIN, code="OK") == 2
    assert value("desiderata_rpcs_total", method=EXPLAIN, code="INVALID_ARGUMENT") == 1
    assert value("desiderata_rpcs_total", method=EXPLAIN, code="UNAUTHENTICATED") == 1
    decision = "/desiderata.v1.ExplanationService/ExplainDecision"
    assert value("desiderata_rpcs_total", method=decision, code="PERMISSION_DENIED") == 1
    assert value("desiderata_rpc_duration_seconds_count", method=EXPLAIN) == 4
    for code in ("invalid_argument", "permission_denied", "unauthenticated"):
        assert value("desiderata_rpc_errors_total", code=code) == 1, code
    served = {k: v for k, v in samples.items() if k[0] == "desiderata_explanations_total"}
    assert sum(served.values()) == 2
    labels = dict(next(iter(served))[1])
    assert labels["model"] == "tiny" and labels["kind"] == "feature_attribution" and labels["noised"] == "false"
    assert labels["method"] == first.method and labels["tier"] == first.disclosure.tier
    assert value("desiderata_answer_cache_lookups_total", result="hit") == 1
    assert value("desiderata_answer_cache_lookups_total", result="miss") == 1
    assert value("desiderata_explainer_seconds_count", method=first.method) == 1  # the hit is not timed
    assert value("desiderata_model_rows_total", model="tiny") == first.quality.model_evaluations
    for store in ("ledger", "audit_log", "decision_store", "feedback_store"):
        assert value("desiderata_store_up", store=store) == 1.0, store
    assert value("process_resident_memory_bytes") > 0
    label_values = {v for _, labels in samples for k, v in labels if k != "le"}  # le: bucket bounds
    personal = ("eng", "bob", "alice", "k-eng", "k-bob", recorded.decision_id, first.explanation_id)
    features = tuple(str(v) for v in INSTANCE.values())
    for secret in (*personal, *features):
        assert not any(secret in v for v in label_values), secret
    assert recorded.decision_id not in text and first.explanation_id not in text


async def test_coalesced_calls_are_counted_by_group(metered: Running) -> None:
    params = Requests.attribution_params(method="integrated_gradients", target_class="yes")
    async with AsyncClient(metered.address, api_key="k-eng") as eng:
        await eng.explain("tiny", INSTANCE, purpose="debugging", params=params)
    _, samples = scrape(metered)
    # A lone call is a group of one (calls that queue for a busy worker: tests/integration/test_coalescing.py).
    assert samples[("desiderata_coalesced_calls_count", ())] == 1
    assert samples[("desiderata_coalesced_calls_sum", ())] == 1


def test_metrics_are_off_unless_enabled(tmp_path: Path) -> None:
    assert Settings.load(None).metrics.enabled is False
    assert settings_for(None, tmp_path).metrics.enabled is False


ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yaml"


async def test_the_shipped_alert_rules_name_metrics_and_error_codes_that_exist(metered: Running) -> None:
    import re

    import yaml

    from desiderata.server import errors

    async with AsyncClient(metered.address, api_key="k-eng") as eng:
        await eng.explain("tiny", INSTANCE, purpose="debugging")
    text, samples = scrape(metered)
    families = {f.name for f in text_string_to_metric_families(text)}
    names = families | {name for name, _ in samples}
    codes = {getattr(errors, n).code for n in errors.__all__ if hasattr(getattr(errors, n), "code")}
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    assert len(rules) >= 4
    for rule in rules:
        assert rule["alert"] and rule["labels"]["severity"] and rule["annotations"]["summary"], rule
        used = set(re.findall(r"\b(desiderata_[a-z_]+)", rule["expr"]))
        assert used, rule["alert"]
        for metric in used:
            base = re.sub(r"_(total|bucket|count|sum)$", "", metric)
            assert metric in names or base in families, f"{rule['alert']}: no metric {metric}"
        for quoted in re.findall(r'code=~?"([^"]+)"', rule["expr"]):
            assert set(quoted.split("|")) <= codes, f"{rule['alert']}: unknown error code in {quoted}"


async def test_calls_their_callers_cancel_are_counted_as_cancelled(metered: Running) -> None:
    stream_method = "/desiderata.v1.ExplanationService/ExplainStream"
    endless = Requests.attribution_params(method="permutation_shapley", target_std_error=1e-9, max_samples=4_000_000)
    async with AsyncClient(metered.address, api_key="k-eng") as eng:
        stream = eng.explain_stream("tiny", INSTANCE, purpose="debugging", params=endless)
        first = await anext(aiter(stream))
        assert not first.final
        await stream.aclose()  # type: ignore[attr-defined]  # cancels the call
        call = asyncio.ensure_future(eng.explain("tiny", INSTANCE, purpose="debugging", params=endless))
        await asyncio.sleep(0.3)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    for _ in range(100):  # the server learns of a cancellation a moment after the client
        _, samples = scrape(metered)
        counts = [
            samples.get(("desiderata_rpcs_total", (("code", "CANCELLED"), ("method", m))), 0.0)
            for m in (stream_method, EXPLAIN)
        ]
        if counts == [1.0, 1.0]:
            break
        await asyncio.sleep(0.05)
    assert counts == [1.0, 1.0]
    assert not any(k[0] == "desiderata_explanations_total" for k in samples)  # nothing was served
