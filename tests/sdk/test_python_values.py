"""The Python SDK builds typed feature values in place, the same message as field by field."""

from __future__ import annotations

import pytest

from desiderata.client._requests import Requests
from desiderata.client._values import instance, value
from desiderata.v1 import types_pb2 as pb

FEATURES = {"age": 30, "records": True, "income": 80.5, "home": "rent", "debt": 0.0}


def test_each_python_type_gets_its_own_wire_kind() -> None:
    kinds = {k: f.value.WhichOneof("kind") for k, f in ((f.name, f) for f in instance(FEATURES).features)}
    assert kinds == {"age": "integer", "records": "boolean", "income": "number", "home": "category", "debt": "number"}
    assert value(True) == pb.FeatureValue(boolean=True) and value(1) == pb.FeatureValue(integer=1)


def test_requests_carry_the_same_instance_as_built_field_by_field() -> None:
    by_hand = pb.Instance(features=[pb.Feature(name=k, value=value(v)) for k, v in FEATURES.items()])
    assert Requests.explain("credit", FEATURES, purpose="debugging").instance == by_hand
    assert Requests.predict("credit", FEATURES, subject_id="s1").instance == by_hand


def test_unsupported_values_are_refused() -> None:
    with pytest.raises(TypeError, match="list"):
        instance({"x": [1, 2]})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="NoneType"):
        value(None)  # type: ignore[arg-type]
