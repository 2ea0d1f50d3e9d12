"""The feasible set of a counterfactual: card constraints merged with the request's.

Every counterfactual method (gradient, genetic) and the robustness search
work inside the same set, so the rules live here once:

* the card says which features are immutable, their declared ranges, which
  are integers, booleans or one-hot categories;
* the request may add immutability, tighter ranges and a direction of change
  ("increase" folds into a lower bound at the current value, "decrease" into
  an upper bound).

Contradictory requests (unknown feature, min > max, a range on a category)
raise `InvalidArgument` with one field violation per problem. A request that
is consistent but leaves nothing to change (every actionable feature frozen,
an empty range after merging) is *not* an error: `FeasibleSet.reason_none`
says why no counterfactual can exist, and the explainers answer with it.

Distances are measured per feature in units of its median absolute deviation
(MAD) over the training reference (Wachter et al. 2017): a switch of
category or boolean counts 1, so the encoded-space scale of a one-hot column
is 2 (the switch moves two columns by 1 each).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from desiderata.explainers.base import Reference
from desiderata.explainers.types import FeatureConstraint
from desiderata.server.errors import FieldViolation, InvalidArgument
from desiderata.server.model_card import FeatureSchema

__all__ = ["DIRECTIONS", "FeasibleSet", "build_feasible_set", "mad_scale"]

DIRECTIONS = ("any", "increase", "decrease")


_SCALE_CACHE: list[tuple[FeatureSchema, np.ndarray, np.ndarray]] = []


def mad_scale(schema: FeatureSchema, reference: Reference | None) -> np.ndarray:
    """Per-column distance scale, shape ``(n_columns,)`` (cached per schema and
    reference array: the medians cost more than a whole robustness search).

    Args:
        schema: the model's feature schema.
        reference: training reference; without one, numeric columns get scale 1.

    Returns:
        MAD of each number/integer column over the reference (falling back to
        the standard deviation, then 1, when the MAD is 0); 2 for one-hot
        columns; 1 for booleans.
    """
    if reference is not None:
        for cached_schema, x, scale in _SCALE_CACHE:
            if cached_schema is schema and x is reference.x:
                return scale.copy()
    scale = _mad_scale(schema, reference)
    if reference is not None:
        _SCALE_CACHE.append((schema, reference.x, scale.copy()))
        del _SCALE_CACHE[:-8]
    return scale


def _mad_scale(schema: FeatureSchema, reference: Reference | None) -> np.ndarray:
    scale = np.ones(schema.n_columns)
    for spec, sl in zip(schema.features, schema.slices, strict=True):
        if spec.type == "category":
            scale[sl] = 2.0
        elif spec.type in ("number", "integer") and reference is not None:
            col = reference.x[:, sl.start]
            mad = float(np.median(np.abs(col - np.median(col))))
            if mad <= 0:
                mad = float(np.std(col))
            scale[sl.start] = mad if mad > 0 else 1.0
    return scale


@dataclass(frozen=True)
class FeasibleSet:
    """Where counterfactuals of one instance may lie, in encoded columns.

    Args:
        schema: the model's feature schema.
        x0: the instance, shape ``(n_columns,)``.
        lower: lower bound per column (−inf when none), shape ``(n_columns,)``.
        upper: upper bound per column (+inf when none).
        frozen: columns that must keep their value, bool ``(n_columns,)``.
        frozen_features: per feature (card order), whether it is frozen.
        integer: integer columns (rounded after relaxation).
        boolean: boolean columns (0/1 after relaxation).
        scale: MAD scale per column (`mad_scale`).
        reason_none: why no counterfactual can exist, or "".
    """

    schema: FeatureSchema
    x0: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    frozen: np.ndarray
    frozen_features: tuple[bool, ...]
    integer: np.ndarray
    boolean: np.ndarray
    scale: np.ndarray
    reason_none: str = ""

    @property
    def feasible(self) -> bool:
        return not self.reason_none

    @property
    def category_slices(self) -> list[slice]:
        return [
            sl for spec, sl in zip(self.schema.features, self.schema.slices, strict=True) if spec.type == "category"
        ]

    def project(self, z: np.ndarray) -> np.ndarray:
        """Continuous projection: clip to the bounds, restore frozen columns.

        Args:
            z: candidates, shape ``(n, n_columns)``.
        """
        out = np.asarray(np.clip(z, self.lower, self.upper), dtype=np.float64)
        out[:, self.frozen] = self.x0[self.frozen]
        return out

    def finalize(self, z: np.ndarray) -> np.ndarray:
        """Maps relaxed candidates to valid encodings (round, argmax, clip).

        Integers are rounded inside their integer range, booleans to the
        nearest allowed of {0, 1}, each one-hot group to its largest column;
        frozen columns keep the instance's values.

        Args:
            z: candidates, shape ``(n, n_columns)``.

        Returns:
            New array of the same shape lying in the feasible set.
        """
        out = np.array(z, dtype=np.float64, copy=True)
        for sl in self.category_slices:
            idx = np.argmax(out[:, sl], axis=1)
            out[:, sl] = 0.0
            out[np.arange(len(out)), sl.start + idx] = 1.0
        out[:, self.integer] = np.clip(
            np.round(out[:, self.integer]),
            np.ceil(self.lower[self.integer]),
            np.floor(self.upper[self.integer]),
        )
        out[:, self.boolean] = np.clip(
            np.round(out[:, self.boolean]),
            np.ceil(self.lower[self.boolean]),
            np.floor(self.upper[self.boolean]),
        )
        out = np.clip(out, self.lower, self.upper)
        out[:, self.frozen] = self.x0[self.frozen]
        return out

    def contains(self, z: np.ndarray, tol: float = 1e-9) -> np.ndarray:
        """Which candidates satisfy every constraint, bool ``(n,)``."""
        ok = np.all(z >= self.lower - tol, axis=1) & np.all(z <= self.upper + tol, axis=1)
        ok &= np.all(np.abs(z[:, self.frozen] - self.x0[self.frozen]) <= tol, axis=1)
        discrete = self.integer | self.boolean
        ok &= np.all(np.abs(z[:, discrete] - np.round(z[:, discrete])) <= tol, axis=1)
        for sl in self.category_slices:
            block = z[:, sl]
            ok &= np.all((np.abs(block) <= tol) | (np.abs(block - 1) <= tol), axis=1)
            ok &= np.abs(block.sum(axis=1) - 1) <= tol
        return np.asarray(ok)

    def distance(self, z: np.ndarray) -> np.ndarray:
        """Normalized ℓ1 distance to the instance: MAD units averaged over features, ``(n,)``."""
        total = np.asarray(np.abs(z - self.x0) / self.scale).sum(axis=1)
        return np.asarray(total / len(self.schema.features), dtype=np.float64)

    def changed_features(self, z: np.ndarray, tol: float = 1e-9) -> np.ndarray:
        """Which features differ from the instance, bool ``(n, d)``."""
        diff = np.abs(z - self.x0) > tol
        return np.stack([diff[:, sl].any(axis=1) for sl in self.schema.slices], axis=1)


def build_feasible_set(
    schema: FeatureSchema,
    x0: np.ndarray,
    constraints: Sequence[FeatureConstraint],
    reference: Reference | None,
    field_prefix: str = "params.counterfactual.constraints",
) -> FeasibleSet:
    """Merges card and request constraints for one instance.

    Args:
        schema: the model's feature schema (the card's constraints).
        x0: the encoded instance, shape ``(n_columns,)``.
        constraints: the request's constraints, at most one per feature.
        reference: training reference for the MAD scale, or None.
        field_prefix: field path used in violations.

    Returns:
        The feasible set; `reason_none` is set when it admits no change.

    Raises:
        InvalidArgument: one violation per contradictory or unknown constraint.
    """
    violations: list[FieldViolation] = []
    by_feature: dict[str, FeatureConstraint] = {}
    for i, c in enumerate(constraints):
        path = f"{field_prefix}[{i}]"
        spec = schema.by_name.get(c.feature)
        if spec is None:
            violations.append(FieldViolation(f"{path}.feature", f"unknown feature {c.feature!r}"))
            continue
        if c.feature in by_feature:
            violations.append(FieldViolation(f"{path}.feature", f"a second constraint on {c.feature!r}"))
        if c.direction not in DIRECTIONS:
            violations.append(FieldViolation(f"{path}.direction", f"must be one of {list(DIRECTIONS)}"))
        if spec.type == "category" and (c.min is not None or c.max is not None or c.direction != "any"):
            violations.append(FieldViolation(path, "a category feature takes no range or direction"))
        if spec.type == "boolean" and (c.min is not None or c.max is not None):
            violations.append(FieldViolation(path, "a boolean feature takes no range"))
        for bound, value in (("min", c.min), ("max", c.max)):
            if value is not None and not np.isfinite(value):
                violations.append(FieldViolation(f"{path}.{bound}", "must be a finite number"))
        if c.min is not None and c.max is not None and c.min > c.max:
            violations.append(FieldViolation(path, f"min {c.min:g} is greater than max {c.max:g}"))
        by_feature[c.feature] = c
    if violations:
        raise InvalidArgument(f"{len(violations)} invalid counterfactual constraint(s)", violations)

    n = schema.n_columns
    x0 = np.asarray(x0, dtype=np.float64)
    lower, upper = np.full(n, -np.inf), np.full(n, np.inf)
    frozen, integer, boolean = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
    frozen_features: list[bool] = []
    reasons: list[str] = []
    for spec, sl in zip(schema.features, schema.slices, strict=True):
        req = by_feature.get(spec.name)
        is_frozen = spec.immutable or (req is not None and req.immutable)
        frozen_features.append(is_frozen)
        if is_frozen:
            frozen[sl] = True
        if spec.type == "category":
            lower[sl], upper[sl] = 0.0, 1.0
            continue
        j = sl.start
        integer[j] = spec.type == "integer"
        boolean[j] = spec.type == "boolean"
        lo = 0.0 if spec.type == "boolean" else (spec.min if spec.min is not None else -np.inf)
        hi = 1.0 if spec.type == "boolean" else (spec.max if spec.max is not None else np.inf)
        if req is not None:
            lo = max(lo, req.min) if req.min is not None else lo
            hi = min(hi, req.max) if req.max is not None else hi
            if req.direction == "increase":
                lo = max(lo, float(x0[j]))
            elif req.direction == "decrease":
                hi = min(hi, float(x0[j]))
        if integer[j] or boolean[j]:
            lo, hi = float(np.ceil(lo)), float(np.floor(hi))
        lower[j], upper[j] = lo, hi
        if is_frozen:
            continue
        if lo > hi:
            reasons.append(f"the allowed range of {spec.name!r} is empty")
        elif lo == hi and x0[j] == lo:
            frozen[j] = True  # a single-point range that is the current value: nothing to change
    lower[frozen], upper[frozen] = x0[frozen], x0[frozen]
    if not reasons and all(frozen_features):
        reasons.append("every feature is immutable")
    elif not reasons and bool(frozen.all()):
        reasons.append("no actionable feature may change within the constraints")
    return FeasibleSet(
        schema=schema,
        x0=x0,
        lower=lower,
        upper=upper,
        frozen=frozen,
        frozen_features=tuple(frozen_features),
        integer=integer,
        boolean=boolean,
        scale=mad_scale(schema, reference),
        reason_none="; ".join(reasons),
    )
