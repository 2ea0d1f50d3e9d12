"""Happy paths of every RPC against a real server on port 0 (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from desiderata.client import AsyncClient
from desiderata.client._values import instance as instance_proto
from desiderata.policy.audit import AuditFilter
from desiderata.server.logging import configure_logging
from desiderata.v1 import types_pb2 as pb
from tests.integration.conftest import Running, serving, settings_for
from tests.support.tiny_model import INSTANCE


async def test_explain_returns_ig_with_quality_and_disclosure(tiny_server: Running) -> None:
    async with AsyncClient(tiny_server.address, api_key="k-eng") as client:
        ex = await client.explain("tiny", INSTANCE, purpose="debugging")
    fa = ex.feature_attribution
    assert {a.feature for a in fa.attributions} == set(INSTANCE)
    assert [a.rank for a in fa.attributions] == [1, 2, 3, 4]
    total = sum(a.value for a in fa.attributions)
    assert abs(total - (fa.output - fa.baseline_output)) <= 1e-3 * abs(fa.output - fa.baseline_output) + 1e-6
    assert abs(sum(abs(a.share) for a in fa.attributions) - 1.0) < 1e-9
    assert ex.method == "integrated_gradients" and ex.params.attribution.steps >= 64
    assert ex.quality.relative_completeness_gap <= 1e-3 and ex.quality.model_evaluations > 0
    assert ex.disclosure.tier == "feature_attribution/full"
    assert ex.disclosure.decision_id.startswith("dec_") and ex.disclosure.policy_version
    assert ex.prediction.label in ("no", "yes") and len(ex.prediction.probabilities) == 2
    assert fa.attributions[0].display_name in ("First", "x2", "color", "flag")


async def test_predict_then_explain_decision(tiny_server: Running) -> None:
    async with AsyncClient(tiny_server.address, api_key="k-eng") as client:
        rec = await client.predict("tiny", INSTANCE, subject_id="alice")
        assert rec.decision_id.startswith("rec_") and rec.model_version == "3"
        ex = await client.explain_decision(rec.decision_id, purpose="debugging")
        direct = await client.explain("tiny", INSTANCE, purpose="debugging")
    assert ex.recorded_decision_id == rec.decision_id
    assert [a.value for a in ex.feature_attribution.attributions] == [
        a.value for a in direct.feature_attribution.attributions
    ]
    assert ex.prediction.probabilities[1].probability == rec.prediction.probabilities[1].probability


async def test_models_list_get_and_capabilities(tiny_server: Running) -> None:
    async with AsyncClient(tiny_server.address, api_key="k-eng") as client:
        listed = await client.list_models()
        card = await client.get_model("tiny")
        caps = await client.capabilities("tiny", purpose="debugging")
    assert [m.name for m in listed.models] == ["tiny"] and listed.next_page_token == ""
    assert card.version == "3" and [f.name for f in card.features] == ["x1", "x2", "color", "flag"]
    assert card.features[2].categories == ["red", "green", "blue"] and card.features[2].protected
    assert card.features[0].max == 10.0 and card.features[1].unit == "years"
    assert caps.role == "ml_engineer"
    fa = [c for c in caps.capabilities if c.kind == pb.EXPLANATION_KIND_FEATURE_ATTRIBUTION]
    assert fa and fa[0].tier == "feature_attribution/full" and "integrated_gradients" in fa[0].methods


async def test_explain_stream_ends_with_final_answer(tiny_server: Running) -> None:
    async with AsyncClient(tiny_server.address, api_key="k-eng") as client:
        items = [r async for r in client.explain_stream("tiny", INSTANCE, purpose="debugging")]
    assert items[-1].final and all(not r.final for r in items[:-1])
    assert items[-1].explanation.feature_attribution.attributions


async def test_health_and_reflection_answer_without_credentials(tiny_server: Running) -> None:
    async with grpc.aio.insecure_channel(tiny_server.address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        services = [s.name async for r in responses for s in r.list_services_response.service]
    assert "desiderata.v1.ExplanationService" in services and "desiderata.v1.ModelService" in services
    assert "grpc.health.v1.Health" in services


async def test_request_id_is_echoed(tiny_server: Running) -> None:
    async with grpc.aio.insecure_channel(tiny_server.address) as channel:
        from desiderata.v1 import model_service_pb2 as ms
        from desiderata.v1 import model_service_pb2_grpc as ms_grpc

        call = ms_grpc.ModelServiceStub(channel).ListModels(
            ms.ListModelsRequest(), metadata=(("authorization", "Bearer k-eng"), ("x-request-id", "abc123"))
        )
        await call
        trailers = dict(await call.trailing_metadata())
    assert trailers.get("x-request-id") == "abc123"


async def test_a_callers_trace_context_is_in_every_log_line_of_its_call(
    tiny_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from desiderata.v1 import explanation_service_pb2 as es
    from desiderata.v1 import explanation_service_pb2_grpc as es_grpc

    trace, span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    settings = settings_for(tiny_repo, tmp_path, logging={"format": "json", "level": "info"})
    request = es.ExplainRequest(model="tiny", purpose="debugging", instance=instance_proto(INSTANCE))
    saved = structlog.get_config()
    configure_logging(settings.logging)  # as `desiderata serve` does: JSON lines on (captured) stderr
    try:
        async with serving(settings) as running, grpc.aio.insecure_channel(running.address) as channel:
            stub = es_grpc.ExplanationServiceStub(channel)
            capsys.readouterr()
            await stub.Explain(request, metadata=(("x-api-key", "k-eng"), ("traceparent", f"00-{trace}-{span}-01")))
            traced = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
            await stub.Explain(request, metadata=(("x-api-key", "k-eng"), ("traceparent", "00-bad-01")))
            untraced = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
            records = running.app.pipeline.audit.query(AuditFilter(principal="eng")).records
            audited = [s.record for s in records if s.record.action == "feature_attribution"]
    finally:
        structlog.configure(**saved)
    # The decision is logged on a worker thread, the access line on the event loop: both carry
    # the trace and the request id, and so does the call's audit record.
    assert {"policy_decision", "explanation_served", "rpc"} <= {e["event"] for e in traced}
    assert [e for e in traced if (e.get("trace_id"), e.get("parent_span_id")) != (trace, span)] == []
    assert len({e["request_id"] for e in traced}) == 1
    assert {"policy_decision", "rpc"} <= {e["event"] for e in untraced}
    rids = [next(e["request_id"] for e in lines if e["event"] == "rpc") for lines in (traced, untraced)]
    assert [r.request_id for r in audited] == rids
    assert not any("trace_id" in e for e in untraced)
