"""Gradient counterfactuals for differentiable models: batched, linearised minimal steps.

Wachter et al. (2017) minimise ``distance(z, x) + λ · loss(f(z), desired)`` by
gradient descent, raising λ until the outcome flips. With the distance the
MAD-scaled ℓ1 norm, the minimiser of the *linearised* problem has a closed
form, and iterating it (as DeepFool does for ℓ2) reaches the boundary in a
handful of model calls instead of hundreds of optimiser steps:

* linearise the log-probability gap ``g(u) = max log p[keep] − max log p[flip]``
  (positive while the outcome has not flipped) in MAD-scaled coordinates u;
* "mad_l1": the cheapest way to lower g by ``g + κ`` under box bounds moves the
  coordinates in order of |∂g/∂u| (the ℓ1 norm's dual), each to its bound,
  the last one partially — a sparse step; "l2": the Euclidean projection onto
  the linearised boundary (in encoded columns), coordinates stuck at a bound
  taken out;
* take the step, clip to the feasible set, and re-check the finalized point
  (integers rounded away from the instance, one-hot groups arg-maxed) with the
  model; κ doubles for a candidate whose relaxed point flips but whose
  finalized point does not (as λ doubles in Wachter et al.).

Several searches run in one tensor: ``k × restarts`` candidates, each allowed
to move a different random subset of the actionable features (candidate 0 may
move all), which gives diverse answers. A candidate stops at its first valid
finalized point (streamed to the caller); the shared `refine` step then
shortens every answer (reverting features, bisecting toward the instance).
"""

from __future__ import annotations

import numpy as np
import torch

from desiderata.explainers.base import Capabilities, ExplainableModel, ExplainContext, Kind
from desiderata.explainers.counterfactual_base import CounterfactualSearch, Report
from desiderata.explainers.counterfactual_common import CounterfactualOptions, Outcome
from desiderata.explainers.counterfactual_constraints import FeasibleSet
from desiderata.explainers.registry import register
from desiderata.server.errors import InvalidArgument

__all__ = ["GradientCounterfactual"]


class GradientCounterfactual(CounterfactualSearch):
    """Counterfactuals by iterated linearised minimal steps on a batch of candidates.

    Args:
        options: profile-derived settings.
        steps: maximum steps (one batched forward and backward pass each).
        restarts: candidates per requested counterfactual.
        margin: κ, the log-probability margin first asked of the flipped class.
        overshoot: relative length added to each step (DeepFool's η).
        patience: steps without a newly valid candidate, once k are found, before stopping.
    """

    name = "counterfactual_gradient"
    version = "2"
    capabilities = Capabilities(kind=Kind.COUNTERFACTUAL, white_box=True, needs_background=True, streaming=True)

    def __init__(
        self,
        options: CounterfactualOptions | None = None,
        *,
        steps: int = 8,
        restarts: int = 8,
        margin: float = 0.02,
        overshoot: float = 0.02,
        patience: int = 2,
    ) -> None:
        super().__init__(options)
        if min(steps, restarts, patience) < 1 or margin <= 0 or overshoot < 0:
            raise InvalidArgument.single("options", "steps, restarts, patience must be ≥ 1, margin > 0, overshoot ≥ 0")
        self.steps, self.restarts, self.margin, self.overshoot = steps, restarts, margin, overshoot
        self.patience = patience

    def _search(
        self,
        model: ExplainableModel,
        fs: FeasibleSet,
        outcome: Outcome,
        k: int,
        ctx: ExplainContext,
        report: Report,
    ) -> tuple[np.ndarray, int, bool]:
        module = model.torch_module()
        if module is None:
            raise InvalidArgument.single(
                "params.counterfactual.method",
                f"{self.name} needs gradients; use counterfactual_genetic for this black-box model",
            )
        rng = ctx.rng()
        scale, x0 = fs.scale, fs.x0
        masks = self._masks(fs, k * self.restarts, rng)
        u = np.zeros(masks.shape)
        switched, switch_masks = self._switches(fs, 3 * k, rng)
        u, masks = np.concatenate([u, switched]), np.concatenate([masks, switch_masks])
        n = len(u)
        with np.errstate(invalid="ignore"):
            u_lo = np.where(masks, (fs.lower - x0) / scale, u)
            u_hi = np.where(masks, (fs.upper - x0) / scale, u)
        keep_idx, flip_idx = self._classes(model.n_classes, outcome)
        x0_t, scale_t = torch.as_tensor(x0), torch.as_tensor(scale)
        kappa = np.full(n, self.margin)
        best = np.full((n, len(x0)), np.nan)
        live = np.ones(n, bool)
        evals, quiet = 0, 0
        if len(switched):  # a switch of category alone may already flip the outcome
            start = fs.finalize(x0 + u * scale)
            valid = outcome.valid(model.predict_proba(start))
            evals += n
            best[valid], live[valid] = start[valid], False
        for _ in range(self.steps):
            if not live.any():
                break
            ctx.check()
            rows = np.flatnonzero(live)
            gap, grad = _gap_and_grad(module, x0_t, scale_t, u[rows], keep_idx, flip_idx)
            evals += len(rows)
            need = np.maximum(gap + kappa[rows], 0.0) * (1.0 + self.overshoot)
            if self.options.distance == "l2":
                step = _l2_step(grad, need, u[rows], u_lo[rows], u_hi[rows], scale)
            else:
                step = _l1_step(grad, need, u[rows], u_lo[rows], u_hi[rows])
            moved = np.abs(step).max(axis=1) > 1e-12
            u[rows] = np.clip(u[rows] + step, u_lo[rows], u_hi[rows])
            cand = self._discretize(fs, x0 + u[rows] * scale)
            valid = outcome.valid(model.predict_proba(cand))
            evals += len(rows)
            best[rows[valid]] = cand[valid]
            live[rows[valid]] = False
            # the relaxed point is past the boundary but its rounding is not: ask for more margin
            kappa[rows[~valid & (gap < 0)]] *= 2.0
            live[rows[~valid & ~moved & (gap >= 0)]] = False  # no room or no gradient left
            if valid.any():
                report(best[np.isfinite(best[:, 0])])
            quiet = 0 if valid.any() else quiet + 1
            if quiet >= self.patience and np.isfinite(best[:, 0]).sum() >= k:
                break  # the rest are stuck at a rounding or a bound
        found = np.isfinite(best[:, 0])
        return best[found], evals, bool(found.sum() >= k)

    @staticmethod
    def _masks(fs: FeasibleSet, n: int, rng: np.random.Generator) -> np.ndarray:
        """Columns each candidate may move, bool ``(n, n_columns)``: random feature
        subsets for diversity; candidate 0 moves every actionable feature."""
        free = ~fs.frozen
        masks = np.tile(free, (n, 1))
        for i in range(1, n):
            keep = rng.random(len(fs.schema.slices)) < rng.uniform(0.3, 0.9)
            for j, sl in enumerate(fs.schema.slices):
                masks[i, sl] &= keep[j]
            if not masks[i].any():
                masks[i] = free
        return masks

    @staticmethod
    def _switches(fs: FeasibleSet, limit: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Starts that switch one actionable category to another level, in
        MAD-scaled coordinates, each free to move only the numeric columns:
        ``(starts, masks)``, at most `limit` of them (chosen at random).

        A switch is a discrete move the linearisation cannot see whole (its
        relaxed half-way point rarely flips the outcome), and on tabular data
        it is often the cheapest change.
        """
        numeric = ~fs.frozen & ~fs.boolean
        for sl in fs.category_slices:
            numeric[sl] = False
        starts = []
        for sl in fs.category_slices:
            if fs.frozen[sl].any():
                continue
            current = sl.start + int(np.argmax(fs.x0[sl]))
            for col in range(sl.start, sl.stop):
                if col != current:
                    u = np.zeros(len(fs.x0))
                    u[col], u[current] = 1.0 / fs.scale[col], -1.0 / fs.scale[current]
                    starts.append(u)
        if len(starts) > limit:
            starts = [starts[i] for i in sorted(rng.choice(len(starts), limit, replace=False))]
        out = np.array(starts).reshape(len(starts), len(fs.x0))
        masks = np.tile(numeric, (len(out), 1))
        if len(out):  # each switch again with a random half of the numeric columns
            out = np.concatenate([out, out])
            masks = np.concatenate([masks, masks & (rng.random(masks.shape) < 0.5)])
        return out, masks

    @staticmethod
    def _discretize(fs: FeasibleSet, z: np.ndarray) -> np.ndarray:
        """Finalized candidates; integers round away from the instance, so a relaxed
        move that flips the outcome is not undone by rounding back."""
        z = z.copy()
        up = z[:, fs.integer] > fs.x0[fs.integer]
        z[:, fs.integer] = np.where(up, np.ceil(z[:, fs.integer] - 1e-9), np.floor(z[:, fs.integer] + 1e-9))
        return fs.finalize(z)

    @staticmethod
    def _classes(n_classes: int, outcome: Outcome) -> tuple[list[int], list[int]]:
        """Classes whose best log-probability must fall below the other set's.

        The gap ``max log p[keep] − max log p[flip]`` is positive while the
        outcome has not flipped.
        """
        if outcome.desired is not None:
            return [c for c in range(n_classes) if c != outcome.desired], [outcome.desired]
        return [outcome.original], [c for c in range(n_classes) if c != outcome.original]


def _gap_and_grad(
    module: torch.nn.Module,
    x0: torch.Tensor,
    scale: torch.Tensor,
    u: np.ndarray,
    keep_idx: list[int],
    flip_idx: list[int],
) -> tuple[np.ndarray, np.ndarray]:
    """The log-probability gap of candidates ``(m, n_columns)`` in MAD-scaled
    coordinates and its gradient there: one batched forward and backward pass."""
    ut = torch.tensor(u, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        logp = torch.log(module((x0 + ut * scale).float()).double().clamp_min(1e-30))
        gap = logp[:, keep_idx].max(dim=1).values - logp[:, flip_idx].max(dim=1).values
        (grad,) = torch.autograd.grad(gap.sum(), ut)
    return gap.detach().numpy(), grad.numpy()


def _l1_step(grad: np.ndarray, need: np.ndarray, u: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The least-ℓ1 step lowering the linearised gap by `need` ``(m,)`` within the
    bounds: coordinates in order of |gradient|, each to its bound, the last partly."""
    rate = np.abs(grad)
    room = np.where(grad < 0, hi - u, u - lo)  # moving against the gradient lowers the gap
    rate = np.where(room > 0, rate, 0.0)
    order = np.argsort(-rate, axis=1)
    r = np.take_along_axis(rate, order, axis=1)
    room_s = np.take_along_axis(room, order, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        gain = np.where(r > 0, r * room_s, 0.0)  # +inf for a coordinate without a bound
        before = np.cumsum(gain, axis=1)
        before = np.concatenate([np.zeros((len(gain), 1)), before[:, :-1]], axis=1)  # exclusive: no inf − inf
        move = np.where(r > 0, np.clip((need[:, None] - before) / r, 0.0, room_s), 0.0)
    step = np.zeros_like(u)
    np.put_along_axis(step, order, move, axis=1)
    return np.asarray(-np.sign(grad) * step)


def _l2_step(
    grad: np.ndarray, need: np.ndarray, u: np.ndarray, lo: np.ndarray, hi: np.ndarray, scale: np.ndarray
) -> np.ndarray:
    """The least-Euclidean (in encoded columns) step to the linearised boundary,
    leaving out coordinates already at the bound they would be pushed through."""
    stuck = ((grad < 0) & (u >= hi - 1e-12)) | ((grad > 0) & (u <= lo + 1e-12))
    g = np.where(stuck, 0.0, grad)
    w = g / scale**2  # direction in u of the steepest Euclidean descent in x
    norm = (g * w).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(norm > 1e-20, need / norm, 0.0)
    return np.asarray(-t[:, None] * w)


register(GradientCounterfactual, default_for_kind=True)
