"""Building v1 request messages from plain Python values."""

from __future__ import annotations

import math
from collections.abc import Mapping

from desiderata.v1 import types_pb2 as pb

__all__ = ["Value", "instance", "parse_feature", "value"]

Value = float | int | str | bool


def value(v: Value) -> pb.FeatureValue:
    """The typed wire value of a Python value (bool, int, float or str)."""
    if isinstance(v, bool):
        return pb.FeatureValue(boolean=v)
    if isinstance(v, int):
        return pb.FeatureValue(integer=v)
    if isinstance(v, float):
        return pb.FeatureValue(number=v)
    if isinstance(v, str):
        return pb.FeatureValue(category=v)
    raise TypeError(f"unsupported feature value type {type(v).__name__}")


def instance(features: Mapping[str, Value]) -> pb.Instance:
    """An Instance with one Feature per mapping entry."""
    return pb.Instance(features=[pb.Feature(name=k, value=value(v)) for k, v in features.items()])


def parse_feature(text: str) -> tuple[str, Value]:
    """Parses NAME=VALUE from a command line: true/false, integers, floats, else a category."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise ValueError(f"expected NAME=VALUE, got {text!r}")
    low = raw.lower()
    if low in ("true", "false"):
        return name, low == "true"
    try:
        return name, int(raw)
    except ValueError:
        pass
    try:
        number = float(raw)
    except ValueError:
        return name, raw
    return name, number if math.isfinite(number) or low in ("nan", "inf", "-inf") else raw
