"""The answer cache: identical requests are served from it, it never crosses
tiers or disclosure profiles, it stays bounded, and a hit is still admitted and
charged by the privacy guard."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest

from desiderata.client import AsyncClient, DesiderataRpcError
from desiderata.client._requests import Requests
from desiderata.explainers.base import Kind
from desiderata.explainers.types import AttributionParams, AttributionResult, Explanation
from desiderata.policy.profiles import DisclosureProfile
from desiderata.server.answer_cache import AnswerCache
from desiderata.v1 import types_pb2 as pb
from tests.integration.conftest import Running, serving, settings_for
from tests.support.tiny_model import INSTANCE


def _ig(seed: int = 0) -> pb.ExplanationParams:
    return Requests.attribution_params(method="integrated_gradients", seed=seed)


async def test_repeat_is_served_from_the_cache(tiny_server: Running) -> None:
    cache = tiny_server.app.pipeline.answers
    async with AsyncClient(tiny_server.address, api_key="k-eng") as client:
        first = await client.explain("tiny", INSTANCE, purpose="debugging", params=_ig())
        hits = cache.hits
        second = await client.explain("tiny", INSTANCE, purpose="debugging", params=_ig())
        assert cache.hits == hits + 1
        # Same raw explanation (its compute time included), fresh decision and explanation ids.
        assert second.quality.compute_ms == first.quality.compute_ms
        assert second.feature_attribution == first.feature_attribution
        assert second.disclosure.decision_id != first.disclosure.decision_id
        # Another seed, input or method is another answer.
        await client.explain("tiny", INSTANCE, purpose="debugging", params=_ig(seed=3))
        await client.explain("tiny", {**INSTANCE, "x1": 2.0}, purpose="debugging", params=_ig())
        shapley = Requests.attribution_params(method="exact_shapley")
        await client.explain("tiny", INSTANCE, purpose="debugging", params=shapley)
        assert cache.hits == hits + 1


async def test_cache_never_crosses_disclosure_tiers(tiny_server: Running) -> None:
    cache = tiny_server.app.pipeline.answers
    async with AsyncClient(tiny_server.address, api_key="k-eng") as eng:
        rec = await eng.predict("tiny", INSTANCE, subject_id="alice")
        full = await eng.explain_decision(rec.decision_id, purpose="debugging")
    async with AsyncClient(tiny_server.address, api_key="k-alice") as alice:
        hits = cache.hits
        mine = await alice.explain_decision(rec.decision_id, purpose="transparency")
        assert mine.disclosure.tier != full.disclosure.tier
        assert cache.hits == hits  # same input and method, another tier: another entry
        again = await alice.explain_decision(rec.decision_id, purpose="transparency")
    assert cache.hits == hits + 1 and again.disclosure.tier == mine.disclosure.tier
    # The hit went through the end user's disclosure again, not the engineer's.
    assert len(again.feature_attribution.attributions) == len(mine.feature_attribution.attributions)
    assert len(again.feature_attribution.attributions) < len(full.feature_attribution.attributions)


async def test_a_hit_is_still_admitted_and_charged(tiny_server: Running) -> None:
    # The end user's narrative tier allows 10 requests a minute and 50 in a lifetime;
    # identical repeats are one query for the ledger (they reveal nothing new), but
    # every request, hit or not, passes the rate limit.
    cache = tiny_server.app.pipeline.answers
    async with AsyncClient(tiny_server.address, api_key="k-eng") as eng:
        rec = await eng.predict("tiny", INSTANCE, subject_id="alice")
    async with AsyncClient(tiny_server.address, api_key="k-alice") as alice:
        first = await alice.explain_decision(rec.decision_id, purpose="transparency")
        hits = cache.hits
        served = [first]
        with pytest.raises(DesiderataRpcError) as info:
            for _ in range(20):
                served.append(await alice.explain_decision(rec.decision_id, purpose="transparency"))
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert 2 <= len(served) <= 11 and cache.hits == hits + len(served) - 1
    assert first.disclosure.budget.HasField("queries_remaining")
    assert {e.disclosure.budget.queries_remaining for e in served} == {first.disclosure.budget.queries_remaining}


async def test_a_server_lets_old_answers_go_without_being_asked(tiny_repo: Path, tmp_path: Path) -> None:
    # explain.cache_max_age_s bounds how long a server keeps answers derived from someone's
    # features: an idle server sweeps them out, and a repeat past the age is computed anew.
    settings = settings_for(tiny_repo, tmp_path, explain={"cache_max_age_s": 0.4})
    async with serving(settings) as running, AsyncClient(running.address, api_key="k-eng") as client:
        cache = running.app.pipeline.answers
        await client.explain("tiny", INSTANCE, purpose="debugging", params=_ig())
        assert len(cache) == 1
        for _ in range(300):
            if len(cache) == 0:
                break
            await asyncio.sleep(0.01)
        assert len(cache) == 0
        misses = cache.misses
        await client.explain("tiny", INSTANCE, purpose="debugging", params=_ig())
        assert cache.misses == misses + 1


def _explanation(i: int) -> Explanation:
    return Explanation(
        kind=Kind.FEATURE_ATTRIBUTION,
        method="m",
        method_version="1",
        parameters={},
        result=AttributionResult(("a",), np.array([float(i)]), None, 1, 0.0, 0.0),
    )


def test_lru_is_bounded_and_evicts_the_least_recently_used() -> None:
    cache = AnswerCache(2)
    profile = DisclosureProfile(tier="feature_attribution/full")
    keys = [
        cache.key(
            model="m",
            version="1",
            x=np.array([float(i)]),
            method="integrated_gradients",
            params=AttributionParams(),
            seed=0,
            tier=profile.tier,
            profile=profile,
        )
        for i in range(3)
    ]
    cache.put(keys[0], _explanation(0))
    cache.put(keys[1], _explanation(1))
    assert cache.get(keys[0]) is not None  # 0 is now the most recent
    cache.put(keys[2], _explanation(2))
    assert len(cache) == 2 and cache.get(keys[1]) is None and cache.get(keys[0]) is not None
    other = DisclosureProfile(tier="feature_attribution/full", top_k=3)
    assert (
        cache.key(
            model="m",
            version="1",
            x=np.array([0.0]),
            method="integrated_gradients",
            params=AttributionParams(),
            seed=0,
            tier=other.tier,
            profile=other,
        )
        != keys[0]
    )
    disabled = AnswerCache(0)
    disabled.put(keys[0], _explanation(0))
    assert len(disabled) == 0 and disabled.get(keys[0]) is None
