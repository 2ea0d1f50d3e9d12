"""What every counterfactual method shares after its search: re-checking,
sparsifying, choosing diverse answers, and the facts each answer carries.

A search (gradient or genetic) hands over a pool of candidates that already
lie in the feasible set. This module then

1. re-checks each with the model's own `predict_proba` (validity is a fact);
2. shortens valid ones: greedily reverts features to the instance's values and
   bisects continuous changes toward the instance while the outcome holds
   (batched: a grid of points per candidate in each model call);
3. drops candidates within `training_row_radius` of a training record (unless
   the caller's profile allows raw training rows): a counterfactual must never
   be a real person's record;
4. picks up to k diverse answers, each with its changes, probabilities,
   normalized ℓ1 distance, sparsity and plausibility (distance to the nearest
   training rows of its predicted class, flagged off-manifold beyond the
   within-class nearest-neighbour quantile).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from desiderata.explainers.base import ExplainableModel, Reference
from desiderata.explainers.counterfactual_constraints import FeasibleSet
from desiderata.explainers.types import Counterfactual, FeatureChange

__all__ = [
    "CounterfactualOptions",
    "Outcome",
    "ReferenceIndex",
    "cost",
    "reference_index",
    "refine",
    "select",
]


@dataclass(frozen=True)
class CounterfactualOptions:
    """Per-request settings that come from the caller's disclosure profile.

    Args:
        allow_training_rows: whether a counterfactual may coincide with (lie
            within `training_row_radius` of) a training record.
        training_row_radius: radius in normalized ℓ1 units (MAD per feature, averaged).
        distance: "mad_l1" (default: MAD-scaled ℓ1 plus sparsity) or "l2"
            (plain Euclidean distance in encoded columns; the linear oracle's).
        off_manifold_quantile: quantile of within-class nearest-neighbour
            distances beyond which a counterfactual is flagged off-manifold.
    """

    allow_training_rows: bool = False
    training_row_radius: float = 0.02
    distance: str = "mad_l1"
    off_manifold_quantile: float = 0.95


GRID = 32
"""Points per candidate in each batched bisection round of `refine`."""

MARGIN = 1e-4
"""Least lead of the new class's probability: float32 evaluations of one row
alone and in a batch differ by ~1e-7, and on the demo a counterfactual found at
p = 0.50000006 in a batch was a tie when the caller re-checked it alone."""


class Outcome:
    """Which predictions count as a flipped outcome.

    Args:
        original: class predicted at the instance.
        desired: class wanted, or None for any class other than `original`.
    """

    def __init__(self, original: int, desired: int | None, margin: float = MARGIN) -> None:
        self.original = original
        self.desired = desired
        self.margin = margin

    def valid(self, probs: np.ndarray) -> np.ndarray:
        """Bool ``(n,)`` from probabilities ``(n, n_classes)``: the new class wins by `margin`."""
        pred = np.argmax(probs, axis=1)
        ok = pred == self.desired if self.desired is not None else pred != self.original
        top = probs[np.arange(len(probs)), pred]
        rest = np.where(np.eye(probs.shape[1], dtype=bool)[pred], -np.inf, probs).max(axis=1)
        return np.asarray(ok & (top - rest >= self.margin))


class ReferenceIndex:
    """Nearest-neighbour facts of a training reference in MAD units.

    Args:
        reference: the training reference.
        scale: per-column MAD scale, shape ``(n_columns,)``.
        quantile: off-manifold quantile of within-class nearest-neighbour distances.
        max_rows: rows per class used to estimate that quantile.
    """

    def __init__(self, reference: Reference, scale: np.ndarray, quantile: float, max_rows: int = 800) -> None:
        self.x = torch.as_tensor(reference.x / scale, dtype=torch.float64)
        self.y = np.asarray(reference.y)
        self.d_cols = reference.x.shape[1]
        self.scale = scale
        self.threshold: dict[int, float] = {}
        rng = np.random.default_rng(0)
        for cls in np.unique(self.y):
            idx = np.flatnonzero(self.y == cls)
            if len(idx) < 2:
                continue
            sub = rng.choice(idx, size=min(max_rows, len(idx)), replace=False)
            dist = torch.cdist(self.x[sub], self.x[idx], p=1)
            dist[torch.arange(len(sub)), torch.as_tensor(np.searchsorted(idx, sub))] = np.inf
            self.threshold[int(cls)] = float(np.quantile(dist.min(dim=1).values.numpy(), quantile))

    def distances(self, z: np.ndarray) -> np.ndarray:
        """Summed MAD-scaled ℓ1 distances of candidates ``(n, n_columns)`` to every row, ``(n, n_rows)``."""
        zt = torch.as_tensor(z / self.scale, dtype=torch.float64)
        return np.asarray(torch.cdist(zt, self.x, p=1).numpy())

    def rows_equal(self, row: np.ndarray) -> np.ndarray:
        """Which reference rows equal `row` ``(n_columns,)``, bool ``(n_rows,)``."""
        own = torch.as_tensor(row / self.scale, dtype=torch.float64)
        return np.asarray(((self.x - own).abs().sum(dim=1) <= 1e-12).numpy())

    def nearest(
        self, z: np.ndarray, n_features: int, cls: int | None = None, exclude: np.ndarray | None = None
    ) -> np.ndarray:
        """Normalized ℓ1 distance (averaged over `n_features`) to the nearest row, ``(n,)``.

        Args:
            z: candidates, shape ``(n, n_columns)``.
            n_features: number of features d the distance is averaged over.
            cls: only rows of this class; None for any row.
            exclude: a row ``(n_columns,)`` to leave out wherever it occurs (the
                instance's own record: being near it leaks nobody else's).
        """
        skip = self.rows_equal(exclude) if exclude is not None else None
        return self.nearest_in(self.distances(z), n_features, cls, skip)

    def nearest_in(
        self, dist: np.ndarray, n_features: int, cls: int | None = None, skip: np.ndarray | None = None
    ) -> np.ndarray:
        """`nearest` from a `distances` matrix, leaving out rows where `skip` ``(n_rows,)`` is True."""
        keep = np.ones(dist.shape[1], bool) if skip is None else ~skip
        if cls is not None:
            keep &= self.y == cls
        if not keep.any():
            return np.full(len(dist), np.inf)
        return np.asarray(dist[:, keep].min(axis=1)) / n_features


_INDEX_CACHE: list[tuple[np.ndarray, np.ndarray, float, ReferenceIndex]] = []


def reference_index(reference: Reference, scale: np.ndarray, quantile: float) -> ReferenceIndex:
    """A cached `ReferenceIndex` (the quantile estimate costs a pairwise pass)."""
    for x, s, q, index in _INDEX_CACHE:
        if x is reference.x and q == quantile and np.array_equal(s, scale):
            return index
    index = ReferenceIndex(reference, scale, quantile)
    _INDEX_CACHE.append((reference.x, scale, quantile, index))
    del _INDEX_CACHE[:-8]
    return index


def cost(fs: FeasibleSet, z: np.ndarray, distance: str) -> np.ndarray:
    """The search's distance of candidates ``(n, n_columns)`` to the instance, ``(n,)``:
    normalized ℓ1 ("mad_l1") or Euclidean in encoded columns ("l2")."""
    if distance == "l2":
        return np.asarray(np.linalg.norm(z - fs.x0, axis=1))
    return fs.distance(z)


def refine(
    model: ExplainableModel,
    fs: FeasibleSet,
    z: np.ndarray,
    outcome: Outcome,
    distance: str = "mad_l1",
    steps: int = 14,
) -> tuple[np.ndarray, int]:
    """Shortens valid candidates while keeping them valid and feasible.

    First reverts whole features to the instance's values (greedy, the one
    saving most distance first, all candidates in one batch per round), then
    bisects the remaining continuous change toward the instance.

    Args:
        model: the served model.
        fs: the feasible set.
        z: valid, finalized candidates, shape ``(n, n_columns)``.
        outcome: the validity rule.
        distance: "mad_l1" reverts features first (sparsity); "l2" only bisects.
        steps: bisection steps (halvings of the interval) to match at least.

    Returns:
        The refined candidates (same shape) and the model rows evaluated.
    """
    z = z.copy()
    evals = 0
    slices = fs.schema.slices
    for _ in range(len(slices) if distance == "mad_l1" else 0):
        changed = fs.changed_features(z)
        pairs = [(i, j) for i in range(len(z)) for j in range(len(slices)) if changed[i, j]]
        if not pairs:
            break
        trials = z[[i for i, _ in pairs]].copy()
        for t, (_, j) in enumerate(pairs):
            trials[t, slices[j]] = fs.x0[slices[j]]
        ok = fs.contains(trials) & outcome.valid(model.predict_proba(trials))
        evals += len(trials)
        gain = fs.distance(z[[i for i, _ in pairs]]) - fs.distance(trials)
        best: dict[int, tuple[float, int]] = {}
        for t, (i, _j) in enumerate(pairs):
            if ok[t] and gain[t] > best.get(i, (0.0, -1))[0]:
                best[i] = (float(gain[t]), t)
        if not best:
            break
        for i, (_, t) in best.items():
            z[i] = trials[t]
    # bisect numeric (number and integer) changes toward the instance; switches of
    # category or boolean stay as they are
    numeric = np.ones(z.shape[1], bool)
    for sl in fs.category_slices:
        numeric[sl] = False
    numeric &= ~fs.boolean
    lo, hi = np.zeros(len(z)), np.ones(len(z))
    # a grid of `GRID` points per candidate in each round (one batched call)
    # narrows [lo, hi] to its first valid point: 3 rounds reach 2^-15 of the move
    rounds = int(np.ceil(steps / np.log2(GRID)))
    grid = np.arange(1, GRID + 1) / GRID
    for _ in range(rounds):
        ts = (lo[:, None] + (hi - lo)[:, None] * grid[None, :]).ravel()
        trial = _blend(fs, np.repeat(z, GRID, axis=0), ts, numeric)
        ok = (fs.contains(trial) & outcome.valid(model.predict_proba(trial))).reshape(len(z), GRID)
        evals += len(trial)
        ok[:, -1] = True  # hi itself is valid (the candidate, or the last round's point)
        first = np.argmax(ok, axis=1)
        width = hi - lo
        hi = lo + width * grid[first]
        lo = lo + width * np.where(first > 0, grid[np.maximum(first - 1, 0)], 0.0)
    return _blend(fs, z, hi, numeric), evals


def _blend(fs: FeasibleSet, z: np.ndarray, t: np.ndarray, numeric: np.ndarray) -> np.ndarray:
    """Candidates whose numeric change is scaled by t, ``(n,)``, then finalized."""
    out = z.copy()
    out[:, numeric] = fs.x0[numeric] + t[:, None] * (z[:, numeric] - fs.x0[numeric])
    return fs.finalize(out)


def _as_served(fs: FeasibleSet, z: np.ndarray) -> np.ndarray:
    """The rows exactly as a caller will rebuild them: the instance with only the
    reported changes, through decode and encode.

    Validity is checked on these, not on the search's rows: on the demo a
    genetic candidate sat at p = 0.50000006 and unchanged features that
    differed from the instance below the change threshold (or float rounding
    through decode) flipped it back when the caller re-checked it.
    """
    x0 = fs.schema.decode(fs.x0)
    changed = fs.changed_features(z)
    out = np.empty_like(z)
    for i in range(len(z)):
        row = fs.schema.decode(z[i])
        moved = {spec.name: row[spec.name] for j, spec in enumerate(fs.schema.features) if changed[i, j]}
        out[i] = fs.schema.encode(x0 | moved)
    return out


def select(
    model: ExplainableModel,
    fs: FeasibleSet,
    z: np.ndarray,
    outcome: Outcome,
    k: int,
    options: CounterfactualOptions,
    index: ReferenceIndex | None,
) -> tuple[tuple[Counterfactual, ...], int, int]:
    """Re-checks candidates and returns up to k diverse, valid counterfactuals.

    Args:
        model: the served model.
        fs: the feasible set.
        z: candidates, shape ``(n, n_columns)``.
        outcome: the validity rule.
        k: number wanted.
        options: profile-derived settings.
        index: the reference's nearest-neighbour index, or None without a reference.

    Returns:
        ``(counterfactuals, model rows evaluated, candidates dropped as training rows)``.
    """
    z = _as_served(fs, fs.finalize(z))
    probs = model.predict_proba(z)
    keep = fs.contains(z) & outcome.valid(probs)
    d = len(fs.schema.features)
    dropped = 0
    dist_rows = index.distances(z[keep]) if index is not None else np.zeros((int(keep.sum()), 0))
    if index is not None and not options.allow_training_rows and keep.any():
        near = index.nearest_in(dist_rows, d, skip=index.rows_equal(fs.x0)) < options.training_row_radius
        dropped = int(near.sum())
        dist_rows = dist_rows[~near]
        keep[np.flatnonzero(keep)[near]] = False
    z, probs = z[keep], probs[keep]
    if len(z) == 0:
        return (), len(keep), dropped
    dist = cost(fs, z, options.distance)
    l1 = fs.distance(z)
    order: list[int] = []
    scaled = z / fs.scale
    for _ in range(min(k, len(z))):
        if order:
            spread = np.abs(scaled[:, None, :] - scaled[order][None, :, :]).sum(axis=2).min(axis=1)
            spread /= len(fs.schema.features)
            score = np.where(spread < 1e-9, np.inf, dist - 0.5 * spread)
        else:
            score = dist.copy()
        score[order] = np.inf
        best = int(np.argmin(score))
        if not np.isfinite(score[best]):
            break
        order.append(best)
    out = []
    decoded_x0 = fs.schema.decode(fs.x0)
    changed = fs.changed_features(z)
    for i in order:
        row = fs.schema.decode(z[i])
        changes = tuple(
            FeatureChange(spec.name, decoded_x0[spec.name], row[spec.name])
            for j, spec in enumerate(fs.schema.features)
            if changed[i, j]
        )
        cls = int(np.argmax(probs[i]))
        plaus = float(index.nearest_in(dist_rows[i : i + 1], d, cls)[0]) if index else float("nan")
        off = bool(index is not None and plaus > index.threshold.get(cls, np.inf))
        out.append(
            Counterfactual(
                changes=changes,
                probabilities=probs[i].copy(),
                valid=True,
                normalized_l1_distance=float(l1[i]),
                features_changed=int(changed[i].sum()),
                plausibility_distance=plaus,
                off_manifold=off,
            )
        )
    return tuple(out), len(keep), dropped
