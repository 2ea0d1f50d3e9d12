"""Building v1 request messages from plain Python values."""

from __future__ import annotations

import math
from collections.abc import Mapping

from desiderata.v1 import types_pb2 as pb

__all__ = ["Value", "fill_instance", "instance", "parse_feature", "value"]

Value = float | int | str | bool


def value(v: Value) -> pb.FeatureValue:
    """The typed wire value of a Python value (bool, int, float or str)."""
    out = pb.FeatureValue()
    _set(out, v)
    return out


def _set(out: pb.FeatureValue, v: Value) -> None:
    if isinstance(v, bool):
        out.boolean = v
    elif isinstance(v, int):
        out.integer = v
    elif isinstance(v, float):
        out.number = v
    elif isinstance(v, str):
        out.category = v
    else:
        raise TypeError(f"unsupported feature value type {type(v).__name__}")


def fill_instance(target: pb.Instance, features: Mapping[str, Value]) -> pb.Instance:
    """Appends one Feature per mapping entry to `target`, in place, and returns it.

    Building inside the request message avoids a Feature and a FeatureValue object
    per entry and the copy of the finished Instance into the request: 4x faster for
    30 features (25 vs 91 us).
    """
    add = target.features.add
    for k, v in features.items():
        _set(add(name=k).value, v)
    return target


def instance(features: Mapping[str, Value]) -> pb.Instance:
    """An Instance with one Feature per mapping entry."""
    return fill_instance(pb.Instance(), features)


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
