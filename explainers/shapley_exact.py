"""Exact interventional Shapley values over a weighted background.

For d players the value of every one of the 2^d coalitions is computed in
batched model evaluations (2^d · b rows for a b-row background), then
``φ_i = Σ_{S ∌ i} |S|!(d−|S|−1)!/d! · (v(S ∪ {i}) − v(S))``. The cost doubles
with each player, so more than `AttributionLimits.max_exact_players` players
are refused with INVALID_ARGUMENT naming the limit; sampling methods serve
larger models. Efficiency holds exactly: Σφ = f(x) − E_b f(b).
"""

from __future__ import annotations

from functools import lru_cache
from math import factorial

import numpy as np

from desiderata.explainers._attribution import AttributionExplainer, CoalitionGame, Computed
from desiderata.explainers.background import Background
from desiderata.explainers.base import Capabilities, ExplainableModel, ExplainContext, Kind
from desiderata.explainers.registry import register
from desiderata.explainers.types import AttributionParams
from desiderata.server.errors import InvalidArgument

__all__ = ["ExactShapley", "all_masks", "shapley_from_values"]


@lru_cache(maxsize=2)
def all_masks(d: int) -> np.ndarray:
    """Every coalition of d players as a bool mask, row k has bit i of k, ``(2^d, d)`` (cached, read-only)."""
    codes = np.arange(1 << d, dtype=np.int64)
    masks = ((codes[:, None] >> np.arange(d)[None, :]) & 1).astype(bool)
    masks.flags.writeable = False
    return masks


def shapley_from_values(v: np.ndarray, d: int) -> np.ndarray:
    """Shapley values from the values of all coalitions.

    The values are viewed as a ``(2,) * d`` cube (bit i of the code is axis d − 1 − i),
    so that for player i the marginals v(S ∪ {i}) − v(S) of all S ∌ i are one
    difference of two slices, weighted by coalition size. Measured against indexing
    the codes of each player: 0.17 → 0.06 ms at d = 10, 1.34 → 0.22 ms at d = 14,
    26.8 → 2.6 ms at d = 18, with the same sums.

    Args:
        v: coalition values indexed by bit code, shape ``(2^d,)``.
        d: number of players.

    Returns:
        Shapley values, shape ``(d,)``.
    """
    cube = np.asarray(v, dtype=np.float64).reshape((2,) * d)
    weights = _size_weights(d)
    phi = np.empty(d)
    for i in range(d):
        axis = d - 1 - i
        phi[i] = float(np.vdot(weights, np.take(cube, 1, axis=axis) - np.take(cube, 0, axis=axis)))
    return phi


@lru_cache(maxsize=2)
def _size_weights(d: int) -> np.ndarray:
    """|S|!(d−|S|−1)!/d! for every coalition S of the other d − 1 players, ``(2,) * (d − 1)``.

    It depends on |S| only, so it lines up with any order of the other players' axes.
    """
    codes = np.arange(1 << (d - 1), dtype=np.int64)
    weight = np.array([factorial(s) * factorial(d - s - 1) / factorial(d) for s in range(d)])
    out: np.ndarray = weight[_popcount(codes)].reshape((2,) * (d - 1))
    out.flags.writeable = False
    return out


def _popcount(codes: np.ndarray) -> np.ndarray:
    c = codes.copy()
    n = np.zeros_like(c)
    while c.any():
        n += c & 1
        c >>= 1
    return n


class ExactShapley(AttributionExplainer):
    """Exact interventional Shapley values (small numbers of players)."""

    name = "exact_shapley"
    version = "1"
    capabilities = Capabilities(kind=Kind.FEATURE_ATTRIBUTION, needs_background=True)

    def _compute(
        self,
        model: ExplainableModel,
        x: np.ndarray,
        params: AttributionParams,
        ctx: ExplainContext,
        target: int,
        background: Background | None,
    ) -> Computed:
        if background is None:  # the pipeline guarantees it; kept for the type checker
            raise InvalidArgument.single("background", "exact_shapley needs a background")
        d = len(model.schema.groups)
        if d > self.limits.max_exact_players:
            raise InvalidArgument.single(
                "params.attribution.method",
                f"exact_shapley enumerates 2^d coalitions; at most {self.limits.max_exact_players} "
                f"players (this model has {d}); use permutation_shapley or kernel_shap",
            )
        rows = (1 << d) * background.x.shape[0]
        if params.max_samples and rows > params.max_samples:
            raise InvalidArgument.single(
                "params.attribution.max_samples",
                f"exact_shapley needs {rows} model rows here; the budget is {params.max_samples}",
            )
        game = CoalitionGame(model, x, background, target, self.limits.batch_rows, ctx)
        v = game.values(all_masks(d))
        phi = shapley_from_values(v, d)
        return Computed(
            values=phi,
            output=float(v[-1]),
            baseline_output=float(v[0]),
            evaluations=game.evaluations,
            used={"background_rows": int(background.x.shape[0]), "coalitions": 1 << d},
        )


register(ExactShapley)
