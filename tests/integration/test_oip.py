"""The Open Inference Protocol (KServe V2) against a real server, with a client
generated from the published OIP proto (protos/inference/grpc_predict_v2.proto).

ModelInfer must give the probabilities of ModelService.Predict, record
decisions that ExplainDecision explains, and refuse malformed tensors with
field violations."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Mapping

import grpc
import numpy as np
import pytest

from desiderata.client import AsyncClient, DesiderataRpcError
from desiderata.oip import grpc_predict_v2_pb2 as oip
from desiderata.oip import grpc_predict_v2_pb2_grpc as oip_grpc
from desiderata.server.model_card import FeatureValue
from tests.integration.conftest import Running, serving, settings_for
from tests.support.oip_requests import Tensor, infer_request
from tests.support.tiny_model import INSTANCE

ENG = (("authorization", "Bearer k-eng"),)


@pytest.fixture
async def demo_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    async with serving(settings_for(None, tmp_path_factory.mktemp("demo-state"))) as running:
        yield running


def _outputs(resp: oip.ModelInferResponse) -> dict[str, oip.ModelInferResponse.InferOutputTensor]:
    return {t.name: t for t in resp.outputs}


async def _infer_and_compare(running: Running, model: str, rows: list[Mapping[str, FeatureValue]]) -> list[str]:
    """ModelInfer on `rows`; each row's probabilities equal Predict's; returns the decision ids."""
    handle = running.app.pipeline.models.resolve(model)
    async with grpc.aio.insecure_channel(running.address) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        resp = await stub.ModelInfer(infer_request(handle, rows), metadata=ENG)
    assert resp.model_name == model and resp.model_version == handle.version and resp.id == "req-1"
    out = _outputs(resp)
    probs = out["probabilities"]
    assert probs.datatype == "FP64" and list(probs.shape) == [len(rows), handle.n_classes]
    p = np.asarray(probs.contents.fp64_contents).reshape(len(rows), handle.n_classes)
    labels = [b.decode() for b in out["label"].contents.bytes_contents]
    ids = [b.decode() for b in out["decision_id"].contents.bytes_contents]
    assert out["label"].datatype == "BYTES" and len(labels) == len(ids) == len(rows)
    async with AsyncClient(running.address, api_key="k-eng") as client:
        for i, row in enumerate(rows):
            rec = await client.predict(model, dict(row), subject_id="alice")
            expected = [c.probability for c in rec.prediction.probabilities]
            assert np.max(np.abs(p[i] - expected)) <= 1e-12
            assert labels[i] == rec.prediction.label
    return ids


async def test_live_ready_and_metadata(tiny_server: Running) -> None:
    async with grpc.aio.insecure_channel(tiny_server.address) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        assert (await stub.ServerLive(oip.ServerLiveRequest(), metadata=ENG)).live
        assert (await stub.ServerReady(oip.ServerReadyRequest(), metadata=ENG)).ready
        assert (await stub.ModelReady(oip.ModelReadyRequest(name="tiny"), metadata=ENG)).ready
        assert (await stub.ModelReady(oip.ModelReadyRequest(name="tiny", version="3"), metadata=ENG)).ready
        server = await stub.ServerMetadata(oip.ServerMetadataRequest(), metadata=ENG)
        meta = await stub.ModelMetadata(oip.ModelMetadataRequest(name="tiny"), metadata=ENG)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ModelReady(oip.ModelReadyRequest(name="nope"), metadata=ENG)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ServerLive(oip.ServerLiveRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert server.name == "desiderata" and server.version
    assert meta.name == "tiny" and list(meta.versions) == ["3"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("x1", "FP64", [-1]),
        ("x2", "INT64", [-1]),
        ("color", "BYTES", [-1]),
        ("flag", "BOOL", [-1]),
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [
        ("probabilities", "FP64", [-1, 2]),
        ("label", "BYTES", [-1]),
        ("decision_id", "BYTES", [-1]),
    ]


async def test_model_infer_matches_predict_and_records_decisions(tiny_server: Running) -> None:
    rows: list[Mapping[str, FeatureValue]] = [INSTANCE, {"x1": -3.25, "x2": 7, "color": "blue", "flag": False}]
    ids = await _infer_and_compare(tiny_server, "tiny", rows)
    assert all(i.startswith("rec_") for i in ids) and len(set(ids)) == 2
    async with AsyncClient(tiny_server.address, api_key="k-eng") as client:
        ex = await client.explain_decision(ids[1], purpose="debugging")
        direct = await client.explain("tiny", dict(rows[1]), purpose="debugging")
    assert ex.recorded_decision_id == ids[1]
    assert [a.value for a in ex.feature_attribution.attributions] == [
        a.value for a in direct.feature_attribution.attributions
    ]


async def test_model_infer_on_the_demo_matches_predict(demo_server: Running) -> None:
    handle = demo_server.app.pipeline.models.resolve("credit")
    ref = handle.reference()
    assert ref is not None
    rows: list[Mapping[str, FeatureValue]] = [handle.schema.decode(np.asarray(r)) for r in ref.x[:3]]
    ids = await _infer_and_compare(demo_server, "credit", rows)
    async with AsyncClient(demo_server.address, api_key="k-eng") as client:
        ex = await client.explain_decision(ids[0], purpose="debugging")
    assert ex.recorded_decision_id == ids[0] and ex.feature_attribution.attributions


async def test_encoded_input_and_raw_contents(tiny_server: Running) -> None:
    handle = tiny_server.app.pipeline.models.resolve("tiny")
    x = handle.schema.encode(INSTANCE)
    async with grpc.aio.insecure_channel(tiny_server.address) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        encoded = oip.ModelInferRequest(model_name="tiny")
        encoded.parameters["subject_id"].string_param = "alice"
        encoded.inputs.add(name="input", datatype="FP64", shape=[1, handle.schema.n_columns])
        encoded.raw_input_contents.append(x.astype("<f8").tobytes())
        a = await stub.ModelInfer(encoded, metadata=ENG)
        raw = infer_request(handle, [INSTANCE])
        for t in raw.inputs:  # the same instance as raw contents, BYTES length-prefixed
            if t.datatype == "BYTES":
                raw.raw_input_contents.append(
                    b"".join(struct.pack("<I", len(b)) + b for b in t.contents.bytes_contents)
                )
            elif t.datatype == "BOOL":
                raw.raw_input_contents.append(np.asarray(t.contents.bool_contents, dtype="?").tobytes())
            elif t.datatype == "INT64":
                raw.raw_input_contents.append(np.asarray(t.contents.int64_contents, dtype="<i8").tobytes())
            else:
                raw.raw_input_contents.append(np.asarray(t.contents.fp64_contents, dtype="<f8").tobytes())
            t.ClearField("contents")
        raw.outputs.add(name="probabilities")
        b = await stub.ModelInfer(raw, metadata=ENG)
    assert [t.name for t in b.outputs] == ["probabilities"]
    assert list(_outputs(a)["probabilities"].contents.fp64_contents) == list(b.outputs[0].contents.fp64_contents)


async def _error(running: Running, req: oip.ModelInferRequest, key: str = "k-eng") -> DesiderataRpcError:
    async with grpc.aio.insecure_channel(running.address) as channel:
        stub = oip_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ModelInfer(req, metadata=(("authorization", f"Bearer {key}"),))
    return DesiderataRpcError.from_rpc_error(err.value)


async def test_bad_inputs_are_invalid_argument_with_field_violations(tiny_server: Running) -> None:
    handle = tiny_server.app.pipeline.models.resolve("tiny")

    e = await _error(tiny_server, infer_request(handle, [INSTANCE], subject=None))
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in e.details.field_violations] == ["parameters[subject_id]"]

    unknown = infer_request(handle, [INSTANCE])
    unknown.model_name = "nope"
    assert (await _error(tiny_server, unknown)).code == grpc.StatusCode.NOT_FOUND

    bad = infer_request(handle, [{**INSTANCE, "x1": 99.0, "color": "purple"}])
    e = await _error(tiny_server, bad)
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {f for f, _ in e.details.field_violations} == {"inputs[x1][0]", "inputs[color][0]"}

    wrong = infer_request(handle, [INSTANCE])
    del wrong.inputs[3]  # flag missing
    wrong.inputs[2].CopyFrom(Tensor(name="color", datatype="FP32", shape=[1]))  # a category needs BYTES
    wrong.inputs[2].contents.fp32_contents.append(1.0)
    wrong.inputs.add(name="extra", datatype="FP32", shape=[1]).contents.fp32_contents.append(1.0)
    wrong.inputs[0].shape[:] = [2]  # 1 element, shape says 2
    e = await _error(tiny_server, wrong)
    fields = {f for f, _ in e.details.field_violations}
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields == {"inputs[x1].shape", "inputs[color].datatype", "inputs[extra]", "inputs[flag]"}, fields

    encoded = oip.ModelInferRequest(model_name="tiny")
    encoded.parameters["subject_id"].string_param = "alice"
    enc = encoded.inputs.add(name="input", datatype="FP64", shape=[1, handle.schema.n_columns])
    enc.contents.fp64_contents.extend([0.5] * handle.schema.n_columns)  # not one-hot
    e = await _error(tiny_server, encoded)
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT and e.details.field_violations[0][0] == "inputs[input][0]"

    # end users may not submit feature vectors for prediction, here as in Predict
    assert (await _error(tiny_server, infer_request(handle, [INSTANCE]), key="k-alice")).code == (
        grpc.StatusCode.PERMISSION_DENIED
    )


async def test_reflection_and_health_list_the_oip_service(tiny_server: Running) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with grpc.aio.insecure_channel(tiny_server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        services = [s.name async for r in responses for s in r.list_services_response.service]
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
        )
    assert "inference.GRPCInferenceService" in services
    assert health.status == health_pb2.HealthCheckResponse.SERVING
