"""Gradient attributions of differentiable models: gradient×input, SmoothGrad
and expected gradients.

- ``gradient_x_input``: ``x ⊙ ∇f_t(x)``, one forward/backward row; its
  completeness gap is measured against the zero input (exact only for
  models linear through the origin, and reported as it is).
- ``smoothgrad`` (Smilkov et al. 2017) in captum's NoiseTunnel(InputXGradient)
  form: the mean over n noisy copies of ``(x+ε) ⊙ ∇f_t(x+ε)``, ε ~ N(0, σ²)
  with σ = 10% of each numeric column's reference standard deviation
  (one-hot columns are not noised); n = ``max_samples`` or 50.
- ``expected_gradients`` (Erion et al. 2021): Integrated Gradients averaged
  over the weighted background, ``Σ_b w_b (x − b) ⊙ ∫₀¹ ∇f_t(b + α(x − b)) dα``,
  with Gauss–Legendre quadrature in one batched pass; it satisfies
  Σφ = f(x) − E_b f(b) up to the quadrature error, which is reported.
"""

from __future__ import annotations

import numpy as np
import torch

from desiderata.explainers._attribution import AttributionExplainer, Computed
from desiderata.explainers.background import Background
from desiderata.explainers.base import Capabilities, ExplainableModel, ExplainContext, Kind, target_gradients
from desiderata.explainers.integrated_gradients import group_sum, quadrature
from desiderata.explainers.registry import register
from desiderata.explainers.types import AttributionParams
from desiderata.server.errors import InvalidArgument

__all__ = ["ExpectedGradients", "GradientXInput", "SmoothGrad", "input_gradients", "smoothgrad_noise"]

NOISE_LEVEL = 0.1
DEFAULT_NOISE_SAMPLES = 50
DEFAULT_EG_STEPS = 16
MAX_ROWS_PER_PASS = 1 << 14


def _require_gradients(model: ExplainableModel) -> None:
    if model.torch_module() is None:
        raise InvalidArgument.single("params.attribution.method", "gradient methods need a differentiable model")


def input_gradients(
    model: ExplainableModel, rows: np.ndarray, target: int, ctx: ExplainContext | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of the target output at each row, and the outputs.

    Args:
        model: a differentiable model (see `target_gradients`).
        rows: encoded rows, shape ``(n, n_columns)``.
        target: class index.
        ctx: checked before every pass of `MAX_ROWS_PER_PASS` rows (cancellation, deadline).

    Returns:
        ``(gradients (n, n_columns), outputs (n,))`` as float64.
    """
    grads, outs = [], []
    for start in range(0, rows.shape[0], MAX_ROWS_PER_PASS):
        if ctx is not None:
            ctx.check()
        t = torch.as_tensor(rows[start : start + MAX_ROWS_PER_PASS], dtype=torch.float32)
        g, out = target_gradients(model, t, target)
        grads.append(g.double().numpy())
        outs.append(out.double().numpy())
    return np.concatenate(grads), np.concatenate(outs)


def smoothgrad_noise(model: ExplainableModel, n: int, rng: np.random.Generator) -> np.ndarray:
    """SmoothGrad's noise, shape ``(n, n_columns)``: N(0, (0.1·std)²) on numeric columns."""
    ref = model.reference()
    cols = model.schema.n_columns
    std = ref.x.std(axis=0) if ref is not None else np.ones(cols)
    numeric = np.zeros(cols)
    for spec, sl in zip(model.schema.features, model.schema.slices, strict=True):
        numeric[sl] = 0.0 if spec.type == "category" else 1.0
    return np.asarray(rng.normal(size=(n, cols)) * (NOISE_LEVEL * std * numeric))


class GradientXInput(AttributionExplainer):
    """Gradient × input at the instance."""

    name = "gradient_x_input"
    version = "1"
    capabilities = Capabilities(kind=Kind.FEATURE_ATTRIBUTION, white_box=True)

    def _compute(
        self,
        model: ExplainableModel,
        x: np.ndarray,
        params: AttributionParams,
        ctx: ExplainContext,
        target: int,
        background: Background | None,
    ) -> Computed:
        _require_gradients(model)
        grads, outs = input_gradients(model, np.stack([x, np.zeros_like(x)]), target)
        values = group_sum(x * grads[0], model.schema.groups)
        return Computed(values, float(outs[0]), float(outs[1]), 2, used={"baseline": "zero"})


class SmoothGrad(AttributionExplainer):
    """SmoothGrad of gradient × input (captum's NoiseTunnel over InputXGradient)."""

    name = "smoothgrad"
    version = "1"
    capabilities = Capabilities(kind=Kind.FEATURE_ATTRIBUTION, white_box=True)

    def _compute(
        self,
        model: ExplainableModel,
        x: np.ndarray,
        params: AttributionParams,
        ctx: ExplainContext,
        target: int,
        background: Background | None,
    ) -> Computed:
        _require_gradients(model)
        n = params.max_samples or DEFAULT_NOISE_SAMPLES
        rng = ctx.rng()
        # Noise is drawn a pass at a time (the same stream as one draw of n rows), so memory
        # stays bounded at any sample count and a cancelled request stops between passes.
        total, squares = np.zeros(len(model.schema.groups)), np.zeros(len(model.schema.groups))
        for start in range(0, n, MAX_ROWS_PER_PASS):
            noisy = x[None, :] + smoothgrad_noise(model, min(MAX_ROWS_PER_PASS, n - start), rng)
            grads, _ = input_gradients(model, noisy, target, ctx)
            per_sample = group_sum(noisy * grads, model.schema.groups)  # (k, d)
            total += per_sample.sum(axis=0)
            squares += (per_sample**2).sum(axis=0)
        mean = total / n
        _, ends = input_gradients(model, np.stack([x, np.zeros_like(x)]), target)
        se = np.sqrt(np.maximum(squares - n * mean**2, 0.0) / (n - 1) / n) if n > 1 else None
        return Computed(
            mean,
            float(ends[0]),
            float(ends[1]),
            n + 2,
            std_errors=se,
            used={"samples": n, "noise_level": NOISE_LEVEL, "baseline": "zero"},
        )


class ExpectedGradients(AttributionExplainer):
    """Integrated Gradients averaged over the weighted background."""

    name = "expected_gradients"
    version = "1"
    capabilities = Capabilities(kind=Kind.FEATURE_ATTRIBUTION, white_box=True, needs_background=True)

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
            raise InvalidArgument.single("background", "expected_gradients needs a background")
        _require_gradients(model)
        rule = params.integration_rule or "gauss_legendre"
        steps = params.steps or DEFAULT_EG_STEPS
        alphas, weights = quadrature(rule, steps)
        bg, w = background.x, background.weights
        rows = bg.shape[0] * steps
        if params.max_samples and rows > params.max_samples:
            raise InvalidArgument.single("params.attribution.max_samples", f"expected_gradients needs {rows} rows here")
        diff = x[None, :] - bg  # (b, n_columns)
        avg = np.empty_like(diff)  # each background row's quadrature-weighted mean gradient
        # A pass of whole paths at a time: memory stays bounded at any step count and
        # background size, and a cancelled request stops between passes.
        block = max(1, MAX_ROWS_PER_PASS // steps)
        for start in range(0, bg.shape[0], block):
            d = diff[start : start + block]
            path = bg[start : start + block, None, :] + alphas[None, :, None] * d[:, None, :]  # (k, steps, cols)
            grads, _ = input_gradients(model, path.reshape(-1, bg.shape[1]), target, ctx)
            avg[start : start + block] = np.einsum("k,bkc->bc", weights, grads.reshape(d.shape[0], steps, -1))
        cols = w @ (diff * avg)
        _, f_bg = input_gradients(model, np.concatenate([x[None, :], bg]), target)
        gap_warning = []
        values = group_sum(cols, model.schema.groups)
        base = float(w @ f_bg[1:])
        delta = float(f_bg[0]) - base
        if abs(float(values.sum()) - delta) > 1e-3 * max(abs(delta), 1e-12):
            gap_warning.append("quadrature completeness gap above 1e-3 relative; raise params.steps")
        return Computed(
            values,
            float(f_bg[0]),
            base,
            rows + bg.shape[0] + 1,
            warnings=gap_warning,
            converged=not gap_warning,
            used={"steps": steps, "integration_rule": rule, "background_rows": int(bg.shape[0])},
        )


register(GradientXInput)
register(SmoothGrad)
register(ExpectedGradients)
