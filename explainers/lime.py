"""LIME (Ribeiro et al. 2016) over players, with the interventional value function.

Interpretable inputs are player masks z ∈ {0,1}^d. As in lime's tabular
explainer, a sample first draws how many players to switch off (uniformly in
1..d) and then which. A sample's value is v(z) = Σ_b w_b f_t(x_z, b_¬z), the
same coalition value the Shapley methods use, and its weight is the
exponential kernel ``exp(−D²/σ²)`` of its distance D = √(#off players) to
the instance, σ = ``params.kernel_width`` or lime's default 0.75·√d. A
weighted least-squares line (with intercept) through the samples gives the
attribution; standard errors are the WLS ones. On a model linear in the
inputs v is exactly linear in z, so LIME then returns w_i (x_i − E_b[x_i])
whatever the kernel (the closed form the tests check).
"""

from __future__ import annotations

import numpy as np

from desiderata.explainers._attribution import AttributionExplainer, CoalitionGame, Computed
from desiderata.explainers.background import Background
from desiderata.explainers.base import Capabilities, ExplainableModel, ExplainContext, Kind
from desiderata.explainers.registry import register
from desiderata.explainers.types import AttributionParams
from desiderata.server.errors import InvalidArgument

__all__ = ["DEFAULT_LIME_SAMPLES", "Lime", "weighted_linear_fit"]

DEFAULT_LIME_SAMPLES = 1000


def weighted_linear_fit(z: np.ndarray, y: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Weighted least squares with intercept.

    Args:
        z: design, shape ``(n, d)``.
        y: responses, shape ``(n,)``.
        weights: sample weights, shape ``(n,)``, non-negative.

    Returns:
        ``(coefficients (d,), intercept, standard errors (d,))``.
    """
    n, d = z.shape
    design = np.concatenate([np.ones((n, 1)), z], axis=1)
    sw = np.sqrt(weights)[:, None]
    coef, *_ = np.linalg.lstsq(design * sw, y * sw[:, 0], rcond=None)
    resid = y - design @ coef
    dof = max(n - d - 1, 1)
    sigma2 = float((weights * resid**2).sum()) / dof
    cov = sigma2 * np.linalg.pinv(design.T @ (design * weights[:, None]))
    return coef[1:], float(coef[0]), np.sqrt(np.maximum(np.diag(cov)[1:], 0.0))


class Lime(AttributionExplainer):
    """LIME with an exponential kernel over player masks."""

    name = "lime"
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
        if background is None:
            raise InvalidArgument.single("background", "lime needs a background")
        if params.kernel_width < 0:
            raise InvalidArgument.single("params.attribution.kernel_width", "must be ≥ 0 (0 = default)")
        game = CoalitionGame(model, x, background, target, self.limits.batch_rows, ctx)
        d, b = game.d, background.x.shape[0]
        n = DEFAULT_LIME_SAMPLES if not params.max_samples else params.max_samples // b
        if n < d + 2:
            raise InvalidArgument.single(
                "params.attribution.max_samples", f"lime needs at least {(d + 2) * b} model rows here"
            )
        width = params.kernel_width or 0.75 * np.sqrt(d)
        rng = ctx.rng()
        off = rng.integers(1, d + 1, size=n - 1)
        ranks = rng.random((n - 1, d)).argsort(axis=1).argsort(axis=1)
        masks = np.concatenate([np.ones((1, d), bool), ranks >= off[:, None]])  # the instance first
        ends = game.values(np.array([np.zeros(d, bool)]))
        v = game.values(masks)
        distance2 = (~masks).sum(axis=1).astype(np.float64)
        kernel = np.exp(-distance2 / width**2)
        coef, _, se = weighted_linear_fit(masks.astype(np.float64), v, kernel)
        return Computed(
            values=coef,
            output=float(v[0]),
            baseline_output=float(ends[0]),
            evaluations=game.evaluations,
            std_errors=se,
            used={"samples": n, "kernel_width": float(width), "background_rows": b},
        )


register(Lime)
