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
- control variate: per player a statistic of the background row whose
  weighted mean is known (x_i − b_i, or the one-hot distance of a group)
  removes the part of the background draw's noise that is linear in it;
- batches sized from the measured variance: after a small first batch the
  next batch is as large as the target error predicts, so few Python round
  trips happen and every model call is large.

Pairs are dealt to 16 independent streams, each with its own systematic
background sample; the spread of the 16 stream estimates (each corrected and
projected the same way) is the standard error, honest under stratification.
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
        max_pairs = (budget - game.evaluations) // rows_per_pair // STREAMS * STREAMS
        if max_pairs < STREAMS:
            raise InvalidArgument.single(
                "params.attribution.max_samples",
                f"permutation_shapley needs at least {game.evaluations + STREAMS * rows_per_pair} rows here",
            )
        acc = _Moments(control_variates(model, x, background), background.weights)
        n = 0
        batch = min(FIRST_BATCH_PAIRS, max_pairs)
        while True:
            ctx.check()
            y, bg_rows = self._pairs(game, f_x, f_b, batch, rng)  # stream-major
            acc.add(y, bg_rows)
            n += batch
            phi, se = acc.estimate(f_x - v_empty)
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
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pair means of antithetic marginals ``(n, d)`` and their background rows ``(n,)``.

        Costs 2n(d−1) model rows.
        """
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
        return np.asarray(0.5 * (marg[:n] + marg[n:])), bg


def control_variates(model: ExplainableModel, x: np.ndarray, background: Background) -> np.ndarray:
    """Per background row and player, a cheap statistic correlated with the marginals.

    ``x_i − b_i`` for a numeric player (the whole marginal when the model is
    linear in it) and the L1 distance of the one-hot columns for a group.
    Its weighted mean over the background is known exactly, which makes it a
    control variate for the background draw. Shape ``(b, d)``.
    """
    cols = x[None, :] - background.x
    out = np.empty((background.x.shape[0], len(model.schema.groups)))
    for i, (spec, group) in enumerate(zip(model.schema.features, model.schema.groups, strict=True)):
        out[:, i] = np.abs(cols[:, group]).sum(axis=1) if spec.type == "category" else cols[:, group[0]]
    return out


class _Moments:
    """Running sums of the pair means and control variates, per stream and pooled."""

    def __init__(self, cv: np.ndarray, weights: np.ndarray) -> None:
        self.cv = cv
        self.cv_mean = weights @ cv
        d = cv.shape[1]
        self.y = np.zeros((STREAMS, d))
        self.c = np.zeros((STREAMS, d))
        self.yy = np.zeros(d)
        self.cc = np.zeros(d)
        self.yc = np.zeros(d)
        self.n = 0

    def add(self, y: np.ndarray, bg_rows: np.ndarray) -> None:
        c = self.cv[bg_rows]
        d = y.shape[1]
        self.y += y.reshape(STREAMS, -1, d).sum(axis=1)
        self.c += c.reshape(STREAMS, -1, d).sum(axis=1)
        self.yy += (y**2).sum(axis=0)
        self.cc += (c**2).sum(axis=0)
        self.yc += (y * c).sum(axis=0)
        self.n += y.shape[0]

    def estimate(self, delta: float) -> tuple[np.ndarray, np.ndarray]:
        """Estimate (control variate, then projected onto Σφ = delta) and standard errors.

        The standard error is the spread of the STREAMS independent stream
        estimates, each corrected and projected the same way.
        """
        n, k = self.n, STREAMS
        my, mc = self.y.sum(0) / n, self.c.sum(0) / n
        var_c = self.cc / n - mc**2
        cov = self.yc / n - my * mc
        beta = np.where(var_c > 1e-12 * np.maximum(self.cc / n, 1e-300), cov / np.where(var_c > 0, var_c, 1), 0)
        var = np.maximum(self.yy / n - my**2 - beta * cov, 0.0)  # residual variance per player
        share = var / var.sum() if var.sum() > 0 else np.full(var.shape, 1.0 / var.shape[0])
        per_stream = n // k
        streams = self.y / per_stream - beta * (self.c / per_stream - self.cv_mean)
        projected = streams + (delta - streams.sum(axis=1, keepdims=True)) * share[None, :]
        return projected.mean(axis=0), projected.std(axis=0, ddof=1) / np.sqrt(k)


register(PermutationShapley, default_for_kind=False)
