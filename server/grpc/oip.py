"""The Open Inference Protocol (KServe V2, `inference.GRPCInferenceService`) over the served models.

Existing KServe/Triton clients call predictions here; every row of a
`ModelInfer` is a prediction like `ModelService.Predict`: validated against
the model card, scored, and recorded as a decision bound to its subject, so
that it can be explained later with `ExplanationService.ExplainDecision`.
There is no Explain in the OIP: typed explanations live beside it in
desiderata.v1.

Inputs (either form; contents in the typed `contents` fields or in
`raw_input_contents`, row-major, little-endian, BYTES elements as 4-byte
little-endian length + bytes):

* **one tensor per feature** (what `ModelMetadata` lists): named by the
  feature, shape ``[batch]`` or ``[batch, 1]``. `number`: any numeric
  datatype; `integer`: INT*/UINT*, or FP* holding whole numbers; `boolean`:
  BOOL, or integers 0/1; `category`: BYTES (UTF-8 category name).
* **one encoded tensor** named ``input``, FP32 or FP64, shape
  ``[batch, n_columns]``: the model's encoded columns, in the order of the
  card's features (the order of `ModelMetadata.inputs`), a number, integer or
  boolean taking one column and a category one one-hot column per category in
  the card's order. A row must be an exact encoding (one-hot categories,
  whole integers, 0/1 booleans), so the recorded decision holds the feature
  values it encodes.

Request parameter ``subject_id`` (string, required): whom the decisions are
about (every row). Outputs: ``probabilities`` FP64 ``[batch, n_classes]`` (the
card's class order), ``label`` BYTES ``[batch]``, ``decision_id`` BYTES
``[batch]``; `outputs` in the request selects among them.
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Sequence
from importlib import metadata
from typing import TYPE_CHECKING, Any

import numpy as np
from grpc import aio

from desiderata.oip import grpc_predict_v2_pb2 as oip
from desiderata.oip import grpc_predict_v2_pb2_grpc as oip_grpc
from desiderata.server.errors import FieldViolation, InvalidArgument
from desiderata.server.grpc.interceptors import current_principal
from desiderata.server.model_card import FeatureSpec, FeatureValue
from desiderata.server.model_handle import ModelHandle
from desiderata.server.pipeline import Pipeline

if TYPE_CHECKING:
    Ctx = aio.ServicerContext[Any, Any]
else:
    Ctx = aio.ServicerContext

__all__ = ["ENCODED_INPUT", "MAX_BATCH", "SERVICE_NAME", "InferenceServicer"]

SERVICE_NAME = oip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
ENCODED_INPUT = "input"
MAX_BATCH = 1024
OUTPUTS = ("probabilities", "label", "decision_id")

_INT = {"INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8"}
_UINT = {"UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8"}
_FLOAT = {"FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}
_RAW_DTYPES = {"BOOL": "?", **_INT, **_UINT, **_FLOAT}
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_TYPE_TO_DATATYPE = {"number": "FP64", "integer": "INT64", "boolean": "BOOL", "category": "BYTES"}
_FEATURE_IN_PATH = re.compile(r"features\[(.+)\]$")


def _deadline(context: Ctx, default_s: float) -> float:
    remaining = context.time_remaining()
    return time.monotonic() + (default_s if remaining is None else max(float(remaining), 0.0))


def _server_version() -> str:
    try:
        return metadata.version("desiderata")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare tree
        return "0"


def _split_bytes(raw: bytes, path: str) -> list[bytes]:
    """BYTES raw content: each element is a 4-byte little-endian length, then the bytes."""
    out: list[bytes] = []
    pos = 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise InvalidArgument.single(path, "truncated BYTES element length")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise InvalidArgument.single(path, "BYTES element longer than the remaining content")
        out.append(raw[pos : pos + n])
        pos += n
    return out


def _tensor_values(
    tensor: oip.ModelInferRequest.InferInputTensor, raw: bytes | None, path: str
) -> tuple[np.ndarray | list[bytes], list[int]]:
    """The flat elements of one input tensor and its shape; InvalidArgument on a malformed tensor."""
    dt = tensor.datatype
    if dt not in _CONTENTS and dt not in _RAW_DTYPES:
        raise InvalidArgument.single(f"{path}.datatype", f"unsupported datatype {dt!r}")
    shape = list(tensor.shape)
    if not shape or any(d < 0 for d in shape):
        raise InvalidArgument.single(f"{path}.shape", "required, with non-negative dimensions")
    count = int(np.prod(shape))
    values: np.ndarray | list[bytes]
    if raw is not None:
        if dt == "BYTES":
            values = _split_bytes(raw, f"{path} (raw_input_contents)")
        else:
            dtype = np.dtype(_RAW_DTYPES[dt])
            if len(raw) != count * dtype.itemsize:
                raise InvalidArgument.single(
                    f"{path} (raw_input_contents)",
                    f"{len(raw)} bytes; shape {shape} of {dt} needs {count * dtype.itemsize}",
                )
            values = np.frombuffer(raw, dtype=dtype)
    else:
        if dt not in _CONTENTS:
            raise InvalidArgument.single(f"{path}.datatype", f"{dt} is only accepted as raw_input_contents")
        field = _CONTENTS[dt]
        for other in set(_CONTENTS.values()) - {field}:
            if len(getattr(tensor.contents, other)):
                raise InvalidArgument.single(f"{path}.contents.{other}", f"set, but the datatype is {dt}")
        items = getattr(tensor.contents, field)
        values = list(items) if dt == "BYTES" else np.asarray(list(items), dtype=np.dtype(_RAW_DTYPES[dt]))
    if len(values) != count:
        raise InvalidArgument.single(f"{path}.shape", f"shape {shape} holds {count} elements; {len(values)} given")
    return values, shape


def _feature_values(
    spec: FeatureSpec, dt: str, values: np.ndarray | list[bytes], path: str
) -> tuple[list[FeatureValue], list[FieldViolation]]:
    """Column values of one feature as the card's Python types, or violations."""
    problems: list[FieldViolation] = []
    if spec.type == "category":
        if dt != "BYTES":
            return [], [FieldViolation(f"{path}.datatype", f"category feature: BYTES expected, not {dt}")]
        out: list[FeatureValue] = []
        for i, b in enumerate(values):
            try:
                out.append(bytes(b).decode("utf-8"))
            except UnicodeDecodeError:
                problems.append(FieldViolation(f"{path}[{i}]", "not UTF-8"))
        return out, problems
    if dt == "BYTES":
        return [], [FieldViolation(f"{path}.datatype", f"{spec.type} feature: a numeric datatype expected, not BYTES")]
    arr = np.asarray(values)
    if spec.type == "number":
        if dt == "BOOL":
            return [], [FieldViolation(f"{path}.datatype", "number feature: a numeric datatype expected, not BOOL")]
        return [float(v) for v in arr.astype(np.float64)], []
    if spec.type == "boolean":
        if dt == "BOOL":
            return [bool(v) for v in arr], []
        if dt in _FLOAT or not np.isin(arr, (0, 1)).all():
            return [], [FieldViolation(f"{path}.datatype", "boolean feature: BOOL, or integers 0/1, expected")]
        return [bool(v) for v in arr], []
    # integer
    if dt == "BOOL":
        return [], [FieldViolation(f"{path}.datatype", "integer feature: an integer datatype expected, not BOOL")]
    if dt in _FLOAT:
        f = arr.astype(np.float64)
        bad = [i for i, v in enumerate(f) if not np.isfinite(v) or v != np.floor(v)]
        if bad:
            return [], [FieldViolation(f"{path}[{bad[0]}]", "integer feature: not a whole number")]
        return [int(v) for v in f], []
    return [int(v) for v in arr], []


def _rows_from_features(
    handle: ModelHandle, request: oip.ModelInferRequest, raws: Sequence[bytes | None]
) -> list[dict[str, FeatureValue]]:
    schema = handle.schema
    problems: list[FieldViolation] = []
    columns: dict[str, list[FeatureValue]] = {}
    batch: int | None = None
    for k, tensor in enumerate(request.inputs):
        path = f"inputs[{tensor.name or k}]"
        spec = schema.by_name.get(tensor.name)
        if spec is None:
            problems.append(FieldViolation(path, f"unknown input; the model's inputs are {schema.names}"))
            continue
        if tensor.name in columns:
            problems.append(FieldViolation(path, "input given more than once"))
            continue
        try:
            values, shape = _tensor_values(tensor, raws[k], path)
        except InvalidArgument as e:
            problems.extend(e.violations)
            continue
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            problems.append(FieldViolation(f"{path}.shape", f"[batch] or [batch, 1] expected, not {shape}"))
            continue
        if batch is None:
            batch = shape[0]
        elif shape[0] != batch:
            problems.append(FieldViolation(f"{path}.shape", f"batch {shape[0]} differs from the first input's {batch}"))
            continue
        col, bad = _feature_values(spec, tensor.datatype, values, path)
        problems.extend(bad)
        if not bad:
            columns[tensor.name] = col
    for name in schema.names:
        if name not in columns and not any(v.field.startswith(f"inputs[{name}]") for v in problems):
            problems.append(FieldViolation(f"inputs[{name}]", f"missing; a {schema.by_name[name].type} input"))
    if problems:
        raise InvalidArgument(f"{len(problems)} invalid input tensor(s)", problems)
    n = batch or 0
    return [{name: columns[name][i] for name in schema.names} for i in range(n)]


def _rows_from_encoded(
    handle: ModelHandle, tensor: oip.ModelInferRequest.InferInputTensor, raw: bytes | None
) -> list[dict[str, FeatureValue]]:
    schema = handle.schema
    path = f"inputs[{ENCODED_INPUT}]"
    if tensor.datatype not in ("FP32", "FP64"):
        raise InvalidArgument.single(f"{path}.datatype", f"FP32 or FP64 expected, not {tensor.datatype!r}")
    values, shape = _tensor_values(tensor, raw, path)
    if len(shape) != 2 or shape[1] != schema.n_columns:
        raise InvalidArgument.single(f"{path}.shape", f"[batch, {schema.n_columns}] expected, not {shape}")
    x = np.asarray(values, dtype=np.float64).reshape(shape)
    rows: list[dict[str, FeatureValue]] = []
    for i, row in enumerate(x):
        if not np.isfinite(row).all():
            raise InvalidArgument.single(f"{path}[{i}]", "non-finite value")
        features = schema.decode(row)
        if not np.array_equal(schema.encode(features), row):
            raise InvalidArgument.single(
                f"{path}[{i}]",
                "not an exact encoding (one-hot categories, whole integers, 0/1 booleans; see ModelMetadata)",
            )
        rows.append(features)
    return rows


def _validate_rows(handle: ModelHandle, rows: list[dict[str, FeatureValue]]) -> None:
    """The card's checks (ranges, categories) per row, reported by input tensor and row."""
    problems: list[FieldViolation] = []
    for i, row in enumerate(rows):
        try:
            handle.schema.validate(row)
        except InvalidArgument as e:
            for v in e.violations:
                m = _FEATURE_IN_PATH.search(v.field)
                problems.append(FieldViolation(f"inputs[{m.group(1) if m else v.field}][{i}]", v.description))
    if problems:
        raise InvalidArgument(f"{len(problems)} invalid input value(s)", problems)


def _bytes_tensor(name: str, items: list[str]) -> oip.ModelInferResponse.InferOutputTensor:
    return oip.ModelInferResponse.InferOutputTensor(
        name=name,
        datatype="BYTES",
        shape=[len(items)],
        contents=oip.InferTensorContents(bytes_contents=[s.encode() for s in items]),
    )


class InferenceServicer(oip_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService over the pipeline; predictions are recorded decisions."""

    def __init__(self, pipeline: Pipeline, default_deadline_s: float) -> None:
        self._pipeline = pipeline
        self._default_deadline_s = default_deadline_s

    async def ServerLive(self, request: oip.ServerLiveRequest, context: Ctx) -> oip.ServerLiveResponse:
        return oip.ServerLiveResponse(live=True)

    async def ServerReady(self, request: oip.ServerReadyRequest, context: Ctx) -> oip.ServerReadyResponse:
        return oip.ServerReadyResponse(ready=bool(self._pipeline.models.served()))

    async def ModelReady(self, request: oip.ModelReadyRequest, context: Ctx) -> oip.ModelReadyResponse:
        if not request.name:
            raise InvalidArgument.single("name", "required")
        self._pipeline.models.resolve(request.name, request.version)  # NOT_FOUND when unknown
        return oip.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: oip.ServerMetadataRequest, context: Ctx) -> oip.ServerMetadataResponse:
        return oip.ServerMetadataResponse(name="desiderata", version=_server_version(), extensions=[])

    async def ModelMetadata(self, request: oip.ModelMetadataRequest, context: Ctx) -> oip.ModelMetadataResponse:
        if not request.name:
            raise InvalidArgument.single("name", "required")
        handle = self._pipeline.models.resolve(request.name, request.version)
        tm = oip.ModelMetadataResponse.TensorMetadata
        return oip.ModelMetadataResponse(
            name=handle.name,
            versions=self._pipeline.models.versions(handle.name),
            platform="sklearn_skops" if handle.card.artifact.endswith(".skops") else "pytorch_torch_export",
            inputs=[tm(name=f.name, datatype=_TYPE_TO_DATATYPE[f.type], shape=[-1]) for f in handle.card.features],
            outputs=[
                tm(name="probabilities", datatype="FP64", shape=[-1, handle.n_classes]),
                tm(name="label", datatype="BYTES", shape=[-1]),
                tm(name="decision_id", datatype="BYTES", shape=[-1]),
            ],
        )

    async def ModelInfer(self, request: oip.ModelInferRequest, context: Ctx) -> oip.ModelInferResponse:
        if not request.model_name:
            raise InvalidArgument.single("model_name", "required")
        handle = self._pipeline.models.resolve(request.model_name, request.model_version)
        subject = request.parameters.get("subject_id")
        if subject is None or subject.WhichOneof("parameter_choice") != "string_param" or not subject.string_param:
            raise InvalidArgument.single(
                "parameters[subject_id]", "required: a string_param naming whom the decisions are about"
            )
        wanted = [o.name for o in request.outputs] or list(OUTPUTS)
        unknown = [n for n in wanted if n not in OUTPUTS]
        if unknown:
            raise InvalidArgument.single("outputs", f"unknown output(s) {unknown}; the model's outputs are {OUTPUTS}")
        if not request.inputs:
            raise InvalidArgument.single("inputs", "required")
        raws: list[bytes | None] = [None] * len(request.inputs)
        if request.raw_input_contents:
            if len(request.raw_input_contents) != len(request.inputs):
                raise InvalidArgument.single(
                    "raw_input_contents", f"{len(request.raw_input_contents)} given for {len(request.inputs)} inputs"
                )
            raws = list(request.raw_input_contents)
        if len(request.inputs) == 1 and request.inputs[0].name == ENCODED_INPUT:
            rows = _rows_from_encoded(handle, request.inputs[0], raws[0])
        else:
            rows = _rows_from_features(handle, request, raws)
        if not rows:
            raise InvalidArgument.single("inputs", "the batch is empty")
        if len(rows) > MAX_BATCH:
            raise InvalidArgument.single("inputs", f"batch of {len(rows)}; at most {MAX_BATCH}")
        _validate_rows(handle, rows)
        deadline = _deadline(context, self._default_deadline_s)
        principal = current_principal.get()
        records = []
        for row in rows:
            rec, _ = await self._pipeline.predict(
                principal, handle.name, handle.version, row, subject.string_param, deadline
            )
            records.append(rec)
        probs = np.asarray([rec.probabilities for rec in records], dtype=np.float64)
        tensors = {
            "probabilities": oip.ModelInferResponse.InferOutputTensor(
                name="probabilities",
                datatype="FP64",
                shape=list(probs.shape),
                contents=oip.InferTensorContents(fp64_contents=probs.ravel().tolist()),
            ),
            "label": _bytes_tensor("label", [handle.card.class_names[int(i)] for i in probs.argmax(axis=1)]),
            "decision_id": _bytes_tensor("decision_id", [rec.decision_id for rec in records]),
        }
        return oip.ModelInferResponse(
            model_name=handle.name,
            model_version=handle.version,
            id=request.id,
            outputs=[tensors[n] for n in wanted],
        )
