"""Open Inference Protocol requests built from a served model's feature schema (tests only)."""

from __future__ import annotations

from collections.abc import Mapping

from desiderata.oip import grpc_predict_v2_pb2 as oip
from desiderata.server.model_card import FeatureValue
from desiderata.server.model_handle import ModelHandle

Tensor = oip.ModelInferRequest.InferInputTensor


def infer_tensor(handle: ModelHandle, name: str, values: list[FeatureValue]) -> Tensor:
    """One feature's input tensor, typed as the card declares the feature."""
    kind = handle.schema.by_name[name].type
    t = Tensor(name=name, shape=[len(values)])
    if kind == "category":
        t.datatype = "BYTES"
        t.contents.bytes_contents.extend(str(v).encode() for v in values)
    elif kind == "boolean":
        t.datatype = "BOOL"
        t.contents.bool_contents.extend(bool(v) for v in values)
    elif kind == "integer":
        t.datatype = "INT64"
        t.contents.int64_contents.extend(int(v) for v in values)
    else:
        t.datatype = "FP64"
        t.contents.fp64_contents.extend(float(v) for v in values)
    return t


def infer_request(
    handle: ModelHandle, rows: list[Mapping[str, FeatureValue]], subject: str | None = "alice"
) -> oip.ModelInferRequest:
    """A ModelInfer request of `rows` (one tensor per feature, in the card's order), id "req-1"."""
    req = oip.ModelInferRequest(model_name=handle.name, id="req-1")
    if subject is not None:
        req.parameters["subject_id"].string_param = subject
    req.inputs.extend(infer_tensor(handle, n, [r[n] for r in rows]) for n in handle.schema.names)
    return req
