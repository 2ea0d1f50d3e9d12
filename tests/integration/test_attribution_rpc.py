"""Every attribution method through the real server on the built-in credit demo:
all features attributed, honest quality figures, anytime streaming, and the
bad-input statuses of the attribution family (issue 3)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from itertools import pairwise
from pathlib import Path

import grpc
import pytest

from desiderata.client import AsyncClient, DesiderataRpcError
from desiderata.client._requests import Requests
from desiderata.server.demo_data import read_credit_csv
from desiderata.server.grpc.app import build_server
from desiderata.v1 import types_pb2 as pb
from tests.integration.conftest import Running, serving, settings_for
from tests.support.tiny_model import INSTANCE, build_tiny_repo

CREDIT = read_credit_csv().rows[0]
FEATURES = set(CREDIT)

SHAPLEY = {"exact_shapley", "kernel_shap", "permutation_shapley"}
PATH = {"integrated_gradients", "expected_gradients"}
SAMPLING = {"kernel_shap", "permutation_shapley", "lime", "smoothgrad"}
METHODS = sorted(
    {"integrated_gradients", "exact_shapley", "kernel_shap", "permutation_shapley"}
    | {"gradient_x_input", "smoothgrad", "expected_gradients", "lime"}
)


async def _serve(models: Path | None, state: Path, **extra: object) -> AsyncIterator[Running]:
    async with serving(settings_for(models, state, **extra)) as running:
        yield running


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[AsyncClient]:
    async for running in _serve(None, tmp_path):
        async with AsyncClient(running.address, api_key="k-eng") as client:
            yield client


@pytest.fixture
async def strict_demo(tmp_path: Path) -> AsyncIterator[AsyncClient]:
    """The demo with tighter limits than its 13 players and the default budget."""
    async for running in _serve(None, tmp_path, explain={"max_exact_players": 10, "max_samples": 100_000}):
        async with AsyncClient(running.address, api_key="k-eng") as client:
            yield client


def _params(method: str, **extra: object) -> pb.ExplanationParams:
    return Requests.attribution_params(method=method, seed=7, **extra)


@pytest.mark.parametrize("method", METHODS)
async def test_every_method_attributes_all_features_with_honest_quality(demo: AsyncClient, method: str) -> None:
    ex = await demo.explain("credit", CREDIT, purpose="debugging", params=_params(method))
    fa, q = ex.feature_attribution, ex.quality
    assert ex.method == method
    assert {a.feature for a in fa.attributions} == FEATURES
    assert q.model_evaluations > 0 and q.compute_ms > 0
    # The completeness gap is reported, and it is the gap of the values actually served.
    assert q.HasField("completeness_gap") and q.HasField("relative_completeness_gap")
    gap = sum(a.value for a in fa.attributions) - (fa.output - fa.baseline_output)
    assert abs(abs(gap) - abs(q.completeness_gap)) <= 1e-6 + 1e-6 * abs(fa.output - fa.baseline_output)
    if method in SHAPLEY:  # efficiency holds by construction
        assert q.relative_completeness_gap <= 1e-9
    if method in PATH:  # within the target, or says it is not
        assert q.relative_completeness_gap <= 1e-3 or (not q.converged and q.warnings)
    if method in SAMPLING:  # error bars on the estimate and on every feature
        assert q.HasField("relative_std_error") and 0 < q.relative_std_error < 1
        assert all(a.HasField("std_error") and a.std_error > 0 for a in fa.attributions)
    else:
        assert not q.HasField("relative_std_error")


async def test_same_seed_same_answer_across_calls(demo: AsyncClient) -> None:
    a = await demo.explain("credit", CREDIT, purpose="debugging", params=_params("kernel_shap"))
    b = await demo.explain("credit", CREDIT, purpose="debugging", params=_params("kernel_shap"))
    values = [[v.value for v in e.feature_attribution.attributions] for e in (a, b)]
    assert values[0] == values[1]


async def test_stream_refines_with_shrinking_error_then_final(demo: AsyncClient) -> None:
    target = 0.005
    items = [
        r
        async for r in demo.explain_stream(
            "credit",
            CREDIT,
            purpose="debugging",
            params=_params("permutation_shapley", target_std_error=target),
        )
    ]
    assert len(items) >= 3
    assert items[-1].final and not any(r.final for r in items[:-1])
    errors = [r.explanation.quality.relative_std_error for r in items]
    assert all(r.explanation.quality.HasField("relative_std_error") for r in items)
    assert all(later < earlier for earlier, later in pairwise(errors))
    final = items[-1].explanation
    assert final.quality.converged and final.quality.relative_std_error <= target
    assert {a.feature for a in final.feature_attribution.attributions} == FEATURES


async def test_deadline_too_short_is_deadline_exceeded_after_refinements(demo: AsyncClient) -> None:
    await demo.explain("credit", CREDIT, purpose="debugging", params=_params("gradient_x_input"))  # warm
    items: list[object] = []
    with pytest.raises(DesiderataRpcError) as info:
        async for r in demo.explain_stream(
            "credit",
            CREDIT,
            purpose="debugging",
            timeout_s=0.5,
            params=_params("permutation_shapley", target_std_error=1e-6),
        ):
            assert not r.final
            items.append(r)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(items) >= 2  # the best estimates so far reached the caller before the deadline


async def test_too_many_players_for_exact_shapley(strict_demo: AsyncClient) -> None:
    with pytest.raises(DesiderataRpcError) as info:
        await strict_demo.explain("credit", CREDIT, purpose="debugging", params=_params("exact_shapley"))
    err = info.value
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    ((field, text),) = err.details.field_violations
    assert field == "params.attribution.method" and "at most 10 players" in text and "13" in text


async def test_sample_budget_above_the_configured_maximum(strict_demo: AsyncClient) -> None:
    with pytest.raises(DesiderataRpcError) as info:
        await strict_demo.explain(
            "credit", CREDIT, purpose="debugging", params=_params("kernel_shap", max_samples=200_000)
        )
    err = info.value
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    ((field, text),) = err.details.field_violations
    assert field == "params.attribution.max_samples" and "100000" in text
    # At the limit it is served.
    ok = await strict_demo.explain(
        "credit", CREDIT, purpose="debugging", params=_params("kernel_shap", max_samples=100_000)
    )
    assert ok.quality.model_evaluations <= 100_000


@pytest.mark.parametrize("method", ["integrated_gradients", "gradient_x_input", "smoothgrad", "expected_gradients"])
async def test_gradients_of_a_non_differentiable_model(tmp_path: Path, method: str) -> None:
    repo = build_tiny_repo(tmp_path / "models", card_overrides={"differentiable": False})
    async for running in _serve(repo, tmp_path / "state"):
        async with AsyncClient(running.address, api_key="k-eng") as client:
            with pytest.raises(DesiderataRpcError) as info:
                await client.explain("tiny", INSTANCE, purpose="debugging", params=_params(method))
            err = info.value
            assert err.code == grpc.StatusCode.INVALID_ARGUMENT
            ((field, text),) = err.details.field_violations
            assert field == "params.attribution.method" and "needs gradients" in text
            # A black-box method still serves the same model.
            ok = await client.explain("tiny", INSTANCE, purpose="debugging", params=_params("exact_shapley"))
            assert {a.feature for a in ok.feature_attribution.attributions} == set(INSTANCE)


async def test_fused_concurrent_gradient_requests_answer_as_unfused(tmp_path: Path) -> None:
    """models.fuse_rows: concurrent requests share model batches, and every answer is the one
    a server without fusion gives the same request."""
    import asyncio

    rows = read_credit_csv().rows[:6]
    methods = ["integrated_gradients", "gradient_x_input", "smoothgrad", "expected_gradients"]
    asks = [(row, m) for row in rows for m in methods]

    def values(ex: pb.Explanation) -> dict[str, float]:
        return {a.feature: a.value for a in ex.feature_attribution.attributions}

    answers: dict[bool, list[dict[str, float]]] = {}
    for fused in (False, True):
        server = {"port": 0, "workers": 4}
        models = {"fuse_rows": 1024 * fused}
        app = build_server(settings_for(None, tmp_path / f"s{fused}", models=models, server=server))
        await app.start()
        try:
            async with AsyncClient(app.address, api_key="k-eng") as client:
                calls = [client.explain("credit", r, purpose="debugging", params=_params(m)) for r, m in asks]
                answers[fused] = [values(ex) for ex in await asyncio.gather(*calls)]
        finally:
            await app.stop(0.5)
        calls_made, batches = app.pipeline.models.resolve("credit").fusion_stats
        assert (calls_made > 0) is fused and batches <= calls_made
    for plain, fused_answer in zip(answers[False], answers[True], strict=True):
        assert plain.keys() == fused_answer.keys()
        scale = max(sum(abs(v) for v in plain.values()), 1e-9)
        assert max(abs(plain[k] - fused_answer[k]) for k in plain) <= 1e-5 * scale


async def test_a_contrastive_background_compares_with_the_rows_of_one_class(demo: AsyncClient) -> None:
    """reference_class: "why this, compared with the applicants the model rates good?"."""
    everyone = await demo.explain(
        "credit", CREDIT, purpose="debugging", params=_params("exact_shapley", target_class="good")
    )
    contrast = await demo.explain(
        "credit",
        CREDIT,
        purpose="debugging",
        params=_params("exact_shapley", target_class="good", reference_class="good"),
    )
    a, b = everyone.feature_attribution, contrast.feature_attribution
    assert a.output == pytest.approx(b.output)
    assert b.baseline_output > a.baseline_output  # rows rated good are likelier good
    assert sum(x.value for x in b.attributions) == pytest.approx(b.output - b.baseline_output, abs=1e-9)
    assert contrast.params.attribution.reference_class == "good" and not everyone.params.attribution.reference_class
    streamed = [
        r
        async for r in demo.explain_stream(
            "credit",
            CREDIT,
            purpose="debugging",
            params=_params("permutation_shapley", target_class="good", reference_class="good", target_std_error=0.01),
        )
    ]
    assert len(streamed) >= 2 and all(r.explanation.params.attribution.reference_class == "good" for r in streamed)
    for params, words in [
        (_params("exact_shapley", reference_class="excellent"), "unknown class"),
        (_params("integrated_gradients", reference_class="good"), "no background"),
    ]:
        with pytest.raises(DesiderataRpcError) as info:
            await demo.explain("credit", CREDIT, purpose="debugging", params=params)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        ((field, text),) = info.value.details.field_violations
        assert field == "params.attribution.reference_class" and words in text
