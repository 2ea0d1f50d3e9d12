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

from collections.abc import Iterator, Sequence

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
    return np.asarray(rng.normal(size=(n, model.schema.n_columns)) * _noise_scale(model))


def _noise_scale(model: ExplainableModel) -> np.ndarray:
    """Standard deviation of SmoothGrad's noise per encoded column, ``(n_columns,)``."""
    ref = model.reference()
    cols = model.schema.n_columns
    std = ref.x.std(axis=0) if ref is not None else np.ones(cols)
    numeric = np.zeros(cols)
    for spec, sl in zip(model.schema.features, model.schema.slices, strict=True):
        numeric[sl] = 0.0 if spec.type == "category" else 1.0
    return np.asarray(NOISE_LEVEL * std * numeric)


_Piece = tuple[int, int, int]
"""(instance, first, count): a run of one instance's rows, at most one pass long."""


def _by_target(targets: Sequence[int]) -> list[tuple[int, list[int]]]:
    """Instances grouped by explained class (one gradient pass serves one class)."""
    return [(t, [i for i, u in enumerate(targets) if u == t]) for t in sorted(set(targets))]


def _packed(pieces: Sequence[_Piece], rows_per: int) -> Iterator[list[_Piece]]:
    """Consecutive pieces grouped into passes of at most `MAX_ROWS_PER_PASS` model rows.

    Args:
        pieces: in order; each of at most ``MAX_ROWS_PER_PASS // rows_per`` units.
        rows_per: model rows per unit of a piece's count.
    """
    group: list[_Piece] = []
    rows = 0
    for piece in pieces:
        if group and rows + piece[2] * rows_per > MAX_ROWS_PER_PASS:
            yield group
            group, rows = [], 0
        group.append(piece)
        rows += piece[2] * rows_per
    if group:
        yield group


def _ends(
    model: ExplainableModel, xs: Sequence[np.ndarray], idx: list[int], tail: np.ndarray, target: int
) -> tuple[np.ndarray, np.ndarray]:
    """Outputs at instances `idx` and at the rows of `tail`, in one pass: ``(len(idx),)``, ``(len(tail),)``."""
    _, outs = input_gradients(model, np.concatenate([np.stack([xs[i] for i in idx]), tail]), target)
    return outs[: len(idx)], outs[len(idx) :]


class _SharedPasses(AttributionExplainer):
    """A gradient method whose instances share model passes: one instance alone is a batch of
    one, so a batch answers each instance as it is answered alone. Subclasses implement
    `_compute_many`."""

    def _compute(
        self,
        model: ExplainableModel,
        x: np.ndarray,
        params: AttributionParams,
        ctx: ExplainContext,
        target: int,
        background: Background | None,
    ) -> Computed:
        return self._compute_many(model, [x], params, [ctx], [target], background)[0]


class GradientXInput(_SharedPasses):
    """Gradient × input at the instance."""

    name = "gradient_x_input"
    version = "1"
    capabilities = Capabilities(kind=Kind.FEATURE_ATTRIBUTION, white_box=True, batches=True)

    def _compute_many(
        self,
        model: ExplainableModel,
        xs: Sequence[np.ndarray],
        params: AttributionParams,
        ctxs: Sequence[ExplainContext],
        targets: Sequence[int],
        background: Background | None,
    ) -> list[Computed]:
        """All instances of a class, and the zero input, in one forward/backward pass."""
        _require_gradients(model)
        out: list[Computed | None] = [None] * len(xs)
        zero = np.zeros((1, model.schema.n_columns))
        for target, idx in _by_target(targets):
            rows = np.concatenate([np.stack([xs[i] for i in idx]), zero])
            grads, outs = input_gradients(model, rows, target, ctxs[idx[0]])
            values = group_sum(rows[:-1] * grads[:-1], model.schema.groups)
            for k, i in enumerate(idx):
                out[i] = Computed(values[k], float(outs[k]), float(outs[-1]), 2, used={"baseline": "zero"})
        return [c for c in out if c is not None]


class SmoothGrad(_SharedPasses):
    """SmoothGrad of gradient × input (captum's NoiseTunnel over InputXGradient)."""

    name = "smoothgrad"
    version = "1"
    capabilities = Capabilities(kind=Kind.FEATURE_ATTRIBUTION, white_box=True, batches=True)

    def _compute_many(
        self,
        model: ExplainableModel,
        xs: Sequence[np.ndarray],
        params: AttributionParams,
        ctxs: Sequence[ExplainContext],
        targets: Sequence[int],
        background: Background | None,
    ) -> list[Computed]:
        """Each instance's noisy copies come from its own generator, drawn a pass at a time
        (the same stream as one draw of n rows), so memory stays bounded at any sample count
        and a cancelled request stops between passes; the copies of several instances share
        passes of up to `MAX_ROWS_PER_PASS` rows."""
        _require_gradients(model)
        n = params.max_samples or DEFAULT_NOISE_SAMPLES
        scale = _noise_scale(model)
        d = len(model.schema.groups)
        total, squares = np.zeros((len(xs), d)), np.zeros((len(xs), d))
        f_x, f_zero = np.zeros(len(xs)), np.zeros(len(xs))
        rngs = [ctx.rng() for ctx in ctxs]
        for target, idx in _by_target(targets):
            pieces = [(i, s, min(MAX_ROWS_PER_PASS, n - s)) for i in idx for s in range(0, n, MAX_ROWS_PER_PASS)]
            for group in _packed(pieces, 1):
                noisy = [xs[i][None, :] + rngs[i].normal(size=(k, scale.shape[0])) * scale for i, _, k in group]
                grads, _ = input_gradients(model, np.concatenate(noisy), target, ctxs[group[0][0]])
                at = 0
                for (i, _, k), rows in zip(group, noisy, strict=True):
                    per_sample = group_sum(rows * grads[at : at + k], model.schema.groups)  # (k, d)
                    total[i] += per_sample.sum(axis=0)
                    squares[i] += (per_sample**2).sum(axis=0)
                    at += k
            f_x[idx], zero_out = _ends(model, xs, idx, np.zeros((1, scale.shape[0])), target)
            f_zero[idx] = zero_out[0]
        out = []
        for i in range(len(xs)):
            mean = total[i] / n
            se = np.sqrt(np.maximum(squares[i] - n * mean**2, 0.0) / (n - 1) / n) if n > 1 else None
            used = {"samples": n, "noise_level": NOISE_LEVEL, "baseline": "zero"}
            out.append(Computed(mean, float(f_x[i]), float(f_zero[i]), n + 2, std_errors=se, used=used))
        return out


class ExpectedGradients(_SharedPasses):
    """Integrated Gradients averaged over the weighted background."""

    name = "expected_gradients"
    version = "1"
    capabilities = Capabilities(kind=Kind.FEATURE_ATTRIBUTION, white_box=True, needs_background=True, batches=True)

    def _compute_many(
        self,
        model: ExplainableModel,
        xs: Sequence[np.ndarray],
        params: AttributionParams,
        ctxs: Sequence[ExplainContext],
        targets: Sequence[int],
        background: Background | None,
    ) -> list[Computed]:
        """Whole paths, of one instance or several, share forward/backward passes of up to
        `MAX_ROWS_PER_PASS` rows: memory stays bounded at any step count and background
        size, and a cancelled request stops between passes."""
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
        diffs = [x[None, :] - bg for x in xs]  # (b, n_columns) each
        avgs = [np.empty_like(bg) for _ in xs]  # each background row's quadrature-weighted mean gradient
        f_x, base = np.zeros(len(xs)), np.zeros(len(xs))
        block = max(1, MAX_ROWS_PER_PASS // steps)
        for target, idx in _by_target(targets):
            pieces = [(i, s, min(block, bg.shape[0] - s)) for i in idx for s in range(0, bg.shape[0], block)]
            for group in _packed(pieces, steps):
                paths = [
                    bg[s : s + k, None, :] + alphas[None, :, None] * diffs[i][s : s + k, None, :] for i, s, k in group
                ]  # (k, steps, n_columns) each
                grads, _ = input_gradients(
                    model, np.concatenate(paths).reshape(-1, bg.shape[1]), target, ctxs[group[0][0]]
                )
                at = 0
                for i, s, k in group:
                    g = grads[at : at + k * steps].reshape(k, steps, -1)
                    avgs[i][s : s + k] = np.einsum("k,bkc->bc", weights, g)
                    at += k * steps
            f_x[idx], f_bg = _ends(model, xs, idx, bg, target)
            base[idx] = float(w @ f_bg)
        out = []
        for i in range(len(xs)):
            values = group_sum(w @ (diffs[i] * avgs[i]), model.schema.groups)
            delta = float(f_x[i]) - float(base[i])
            gap_warning = []
            if abs(float(values.sum()) - delta) > 1e-3 * max(abs(delta), 1e-12):
                gap_warning.append("quadrature completeness gap above 1e-3 relative; raise params.steps")
            out.append(
                Computed(
                    values,
                    float(f_x[i]),
                    float(base[i]),
                    rows + bg.shape[0] + 1,
                    warnings=gap_warning,
                    converged=not gap_warning,
                    used={"steps": steps, "integration_rule": rule, "background_rows": int(bg.shape[0])},
                )
            )
        return out


register(GradientXInput)
register(SmoothGrad)
register(ExpectedGradients)
