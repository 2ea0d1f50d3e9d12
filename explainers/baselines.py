"""Baselines of path attributions: the model card's, zero, or the reference mean."""

from __future__ import annotations

import numpy as np

from desiderata.explainers.base import ExplainableModel
from desiderata.server.errors import FailedPrecondition, InvalidArgument

__all__ = ["BASELINES", "baseline_vector"]

BASELINES = ("card", "zero", "mean")


def baseline_vector(model: ExplainableModel, kind: str) -> np.ndarray:
    """The encoded baseline row, shape ``(n_columns,)``.

    Args:
        model: the served model.
        kind: "zero"; "mean" (mean of the encoded training reference, i.e.
            category frequencies for one-hot groups); or "card": each feature's
            card baseline where declared, the reference mean elsewhere.
    """
    schema = model.schema
    if kind == "zero":
        return np.zeros(schema.n_columns)
    if kind not in BASELINES:
        raise InvalidArgument.single("params.attribution.baseline", f"must be one of {list(BASELINES)}")
    ref = model.reference()
    mean = ref.x.mean(axis=0) if ref is not None else None
    if kind == "mean":
        if mean is None:
            raise FailedPrecondition("the mean baseline needs a training reference in the model card")
        return np.asarray(mean)
    out = np.zeros(schema.n_columns) if mean is None else mean.copy()
    missing = []
    for spec, sl in zip(schema.features, schema.slices, strict=True):
        if spec.baseline is None:
            if mean is None:
                missing.append(spec.name)
            continue
        if spec.type == "category":
            out[sl] = 0.0
            out[sl.start + spec.categories.index(str(spec.baseline))] = 1.0
        else:
            out[sl.start] = float(spec.baseline)
    if missing:
        raise FailedPrecondition(f"the card baseline is missing for {missing} and there is no training reference")
    return out
