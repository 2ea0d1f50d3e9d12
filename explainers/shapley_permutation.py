"""Permutation-sampling Shapley values: anytime, antithetic, background-stratified.

The interventional Shapley value is an expectation over two independent draws:
a random order π of the players and a background row b (with its weight),
``φ_i = E_{π,b}[f(x_{pre_π(i) ∪ {i}}, b) − f(x_{pre_π(i)}, b)]``. Classic
samplers (shap's PermutationExplainer) walk each sampled order with the
*whole* background, paying b model rows per coalition. Here each order is
walked with *one* background row, so a pass costs d − 1 rows instead of
(d − 1)·b (f(x) and f(b) for every background row are computed once), and
the error budget goes where the variance is:

- antithetic orders: every order π is paired with its reverse on the same
  background row, and the pair's two marginal vectors are averaged (negatively
  correlated, since together they see each coalition and its complement);
- stratified background: the rows of each batch are a systematic sample of
  the weighted background (each row of a uniform b-row background appears
  once per b pairs), removing the between-row variance a random choice adds;
- efficiency projection: the estimate is moved onto Σφ = f(x) − E_b f(b)
  by distributing the residual in proportion to each player's variance (the
  minimum-variance correction, as KernelSHAP's constrained solve does);
- batches sized from the measured variance: after a small first batch the
  next batch is as large as the target error predicts, so few Python round
  trips happen and every model call is large.

The standard error of each player is the i.i.d. standard error of the pair
means, which ignores the stratification's gain and is therefore conservative.
Sampling stops at the target relative standard error (Σ s.e. / ‖φ‖₁), at the
row budget, or raises DEADLINE_EXCEEDED at the deadline; each batch's
estimate is reported through ``ctx.progress`` (the anytime stream).
"""

from __future__ import annotations

import time

import numpy as np

from desiderata.explainers._attribution import AttributionExplainer, CoalitionGame, Computed
from desiderata.explainers.background import Background
from desiderata.explainers.base import Capabilities, ExplainableModel, ExplainContext, Kind
from desiderata.explainers.registry import register
from desiderata.explainers.types import AttributionParams
from desiderata.server.errors import InvalidArgument

__all__ = ["DEFAULT_TARGET", "PermutationShapley", "order_masks", "systematic_sample"]

DEFAULT_TARGET = 0.005
"""Relative standard error aimed at when the caller sets neither target nor budget."""
DEFAULT_MAX_ROWS = 2_000_000
STREAMS = 16
"""Independent replicate streams; their spread is the standard error."""
FIRST_BATCH_PAIRS = 2 * STREAMS
MIN_BATCH_PAIRS = STREAMS


def systematic_sample(weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n indices drawn ∝ weights by systematic sampling, shuffled, shape ``(n,)``."""
    u = (np.arange(n) + rng.random()) / n
    idx = np.searchsorted(np.cumsum(weights), u, side="right")
    return rng.permutation(np.minimum(idx, weights.shape[0] - 1))


def order_masks(orders: np.ndarray) -> np.ndarray:
    """Coalitions met walking each order, sizes 1..d−1, ``(n, d)`` → ``(n, d−1, d)`` bool."""
    n, d = orders.shape
    rank = np.empty_like(orders)
    rank[np.arange(n)[:, None], orders] = np.arange(d)[None, :]
    return rank[:, None, :] < np.arange(1, d)[None, :, None]


def _marginals(orders: np.ndarray, walk: np.ndarray) -> np.ndarray:
    """Per-player marginals from the values met along each order.

    Args:
        orders: player orders, shape ``(n, d)``.
        walk: values v_0..v_d along each order, shape ``(n, d + 1)``.
    """
    n, d = orders.shape
    out = np.empty((n, d))
    out[np.arange(n)[:, None], orders] = np.diff(walk, axis=1)
    return out


class PermutationShapley(AttributionExplainer):
    """Anytime permutation-sampling Shapley values (the default sampling method)."""

    name = "permutation_shapley"
    version = "1"
    capabilities = Capabilities(kind=Kind.FEATURE_ATTRIBUTION, needs_background=True, streaming=True)

    def _compute(
        self,
        model: ExplainableModel,
        x: np.ndarray,
        params: AttributionParams,
        ctx: ExplainContext,
        target: int,
        background: Background | None,
    ) -> Computed:
        if background is None:
            raise InvalidArgument.single("background", "permutation_shapley needs a background")
        started = time.perf_counter()
        rng = ctx.rng()
        game = CoalitionGame(model, x, background, target, self.limits.batch_rows, ctx)
        d = game.d
        f_x = float(game.f(x[None, :])[0])
        f_b = game.f(background.x)
        v_empty = float(background.weights @ f_b)
        if d == 1:
            return Computed(np.array([f_x - v_empty]), f_x, v_empty, game.evaluations, np.zeros(1))
        target_se = params.target_std_error
        budget = params.max_samples or (DEFAULT_MAX_ROWS if target_se else 0)
        if not target_se and not params.max_samples:
            target_se, budget = DEFAULT_TARGET, DEFAULT_MAX_ROWS
        rows_per_pair = 2 * (d - 1)
        max_pairs = max(STREAMS, (budget - game.evaluations) // rows_per_pair // STREAMS * STREAMS)
        sums = np.zeros((STREAMS, d))
        total_sq = np.zeros(d)
        n = 0
        batch = min(FIRST_BATCH_PAIRS, max_pairs)
        while True:
            ctx.check()
            y = self._pairs(game, f_x, f_b, batch, rng)  # (batch, d), stream-major
            sums += y.reshape(STREAMS, -1, d).sum(axis=1)
            total_sq += (y**2).sum(axis=0)
            n += batch
            phi, se = _estimate(sums, total_sq, n, f_x - v_empty)
            l1 = float(np.abs(phi).sum())
            rel = float(se.sum()) / l1 if l1 > 0 else 0.0
            done_target = bool(target_se) and rel <= target_se
            done_budget = n >= max_pairs
            computed = Computed(
                values=phi,
                output=f_x,
                baseline_output=v_empty,
                evaluations=game.evaluations,
                std_errors=se,
                converged=done_target or not target_se,
                used={
                    "pairs": n,
                    "max_samples": budget,
                    "target_std_error": target_se,
                    "background_rows": int(background.x.shape[0]),
                },
            )
            if done_target or done_budget:
                if not computed.converged:
                    computed.warnings.append(
                        f"row budget reached at relative standard error {rel:.3g} above {target_se:g}"
                    )
                return computed
            if ctx.progress is not None:
                ctx.progress(self.package(model, computed, target, started))
            batch = self._next_batch(n, rel, target_se, max_pairs, background.x.shape[0])

    @staticmethod
    def _next_batch(n: int, rel: float, target_se: float, max_pairs: int, b: int) -> int:
        """Pairs of the next batch: what the target predicts (s.e. ∝ 1/√n), within limits."""
        if target_se and rel > 0:
            wanted = int(np.ceil(n * (rel / target_se) ** 2 * 1.1)) - n
        else:
            wanted = max_pairs - n
        wanted = max(wanted, MIN_BATCH_PAIRS)
        wanted = min(wanted, max_pairs - n, 4 * n + b)
        return int(-(-wanted // STREAMS) * STREAMS)

    @staticmethod
    def _pairs(
        game: CoalitionGame, f_x: float, f_b: np.ndarray, n: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Pair means of antithetic marginals, shape ``(n, d)``, costing 2n(d−1) rows."""
        d = game.d
        forward = rng.permuted(np.tile(np.arange(d), (n, 1)), axis=1)
        orders = np.concatenate([forward, forward[:, ::-1]])
        per = n // STREAMS
        bg = np.concatenate([systematic_sample(game.bg.weights, per, rng) for _ in range(STREAMS)])
        bg2 = np.concatenate([bg, bg])
        masks = order_masks(orders)  # (2n, d-1, d)
        rows = game.rows_for(masks.reshape(-1, d), np.repeat(bg2, d - 1))
        inner = game.f(rows).reshape(2 * n, d - 1)
        walk = np.concatenate([f_b[bg2][:, None], inner, np.full((2 * n, 1), f_x)], axis=1)
        marg = _marginals(orders, walk)
        return np.asarray(0.5 * (marg[:n] + marg[n:]))


def _estimate(
    sums: np.ndarray, total_sq: np.ndarray, n: int, delta: float
) -> tuple[np.ndarray, np.ndarray]:
    """Estimate projected onto Σφ = delta, and its standard errors from the streams.

    Args:
        sums: per-stream sums of pair means, shape ``(STREAMS, d)``.
        total_sq: sum of squared pair means over all pairs, shape ``(d,)``.
        n: pairs so far (a multiple of STREAMS).
        delta: f(x) − E_b f(b).
    """
    k = sums.shape[0]
    means = sums / (n // k)
    pooled = total_sq / n - (sums.sum(axis=0) / n) ** 2
    var = np.maximum(pooled, 0.0)
    share = var / var.sum() if var.sum() > 0 else np.full(var.shape, 1.0 / var.shape[0])
    projected = means + (delta - means.sum(axis=1, keepdims=True)) * share[None, :]
    return projected.mean(axis=0), projected.std(axis=0, ddof=1) / np.sqrt(k)


register(PermutationShapley, default_for_kind=False)
