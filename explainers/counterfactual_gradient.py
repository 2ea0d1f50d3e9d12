"""Gradient counterfactuals (Wachter et al. 2017) for differentiable models.

Minimises, for each candidate z,

    distance(z, x) + λ · max(0, κ + log p_keep(z) − log p_flip(z))

where the distance is the MAD-scaled ℓ1 norm (averaged over features, which
also acts as the sparsity term) or plain ℓ2, ``p_keep`` is the original class
(or the best class other than the desired one) and ``p_flip`` the best other
class (or the desired one). λ doubles for candidates still invalid at each
checkpoint, as Wachter et al. raise it until the outcome flips.

Several searches run in one tensor: ``k × restarts`` candidates, each from a
different random start and with a random subset of the actionable features
free to move (candidate 0 may move all), which gives diverse answers. After
every Adam step the candidates are projected onto the feasible set;
integer and one-hot columns are relaxed during the search and rounded /
arg-maxed at checkpoints, where the model re-checks them and the best valid
finalized point of each candidate is kept (and streamed).
"""

from __future__ import annotations

import numpy as np
import torch

from desiderata.explainers.base import Capabilities, ExplainableModel, ExplainContext, Kind
from desiderata.explainers.counterfactual_base import CounterfactualSearch, Report
from desiderata.explainers.counterfactual_common import CounterfactualOptions, Outcome, cost
from desiderata.explainers.counterfactual_constraints import FeasibleSet
from desiderata.explainers.registry import register
from desiderata.server.errors import InvalidArgument

__all__ = ["GradientCounterfactual"]


class GradientCounterfactual(CounterfactualSearch):
    """Wachter et al. counterfactuals by projected Adam on a batch of candidates.

    Args:
        options: profile-derived settings.
        steps: maximum Adam steps.
        restarts: candidates per requested counterfactual.
        lr: Adam step size in MAD units (scaled coordinates).
        margin: κ, the log-probability margin asked of the flipped class.
        check_every: steps between checkpoints (re-check, stream, stop test).
        patience: checkpoints without improvement, once every candidate is
            valid, before the search stops.
        tol: relative distance decrease that counts as an improvement.
    """

    name = "counterfactual_gradient"
    version = "1"
    capabilities = Capabilities(kind=Kind.COUNTERFACTUAL, white_box=True, needs_background=True, streaming=True)

    def __init__(
        self,
        options: CounterfactualOptions | None = None,
        *,
        steps: int = 200,
        restarts: int = 4,
        lr: float = 0.2,
        margin: float = 0.005,
        check_every: int = 10,
        patience: int = 3,
        tol: float = 1e-2,
    ) -> None:
        super().__init__(options)
        self.steps, self.restarts, self.lr = steps, restarts, lr
        self.margin, self.check_every, self.patience, self.tol = margin, check_every, patience, tol

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
        n = k * self.restarts
        cols = fs.x0.shape[0]
        free = ~fs.frozen
        masks = np.tile(free, (n, 1))
        for i in range(1, n):  # random feature subsets for diversity; candidate 0 moves freely
            keep = rng.random(len(fs.schema.slices)) < rng.uniform(0.3, 0.9)
            for j, sl in enumerate(fs.schema.slices):
                masks[i, sl] &= keep[j]
            if not masks[i].any():
                masks[i] = free
        scale, x0 = fs.scale, fs.x0
        start = fs.project(x0 + masks * rng.normal(0.0, 0.05, (n, cols)) * scale * (np.arange(n) > 0)[:, None])
        u = torch.tensor((start - x0) / scale, dtype=torch.float64, requires_grad=True)
        mask_t = torch.as_tensor(masks, dtype=torch.float64)
        scale_t, x0_t = torch.as_tensor(scale), torch.as_tensor(x0)
        u_lo = torch.as_tensor((fs.lower - x0) / scale)
        u_hi = torch.as_tensor((fs.upper - x0) / scale)
        keep_idx, flip_idx = self._classes(model.n_classes, outcome)
        lr = self._step_size(module, x0_t, scale_t, mask_t[0], keep_idx, flip_idx)
        lam = torch.full((n,), 0.1, dtype=torch.float64)
        m1, m2 = torch.zeros_like(u), torch.zeros_like(u)  # Adam moments
        d = len(fs.schema.features)
        best = np.full((n, cols), np.nan)
        best_cost = np.full(n, np.inf)
        evals, stalled, step = 0, 0, 0
        for step in range(1, self.steps + 1):
            with torch.enable_grad():
                probs = module((x0_t + u * scale_t).float()).double()
                logp = torch.log(probs.clamp_min(1e-30))
                gap = logp[:, keep_idx].max(dim=1).values - logp[:, flip_idx].max(dim=1).values
                if self.options.distance == "l2":
                    dist = torch.sqrt(((u * scale_t) ** 2).sum(dim=1) + 1e-12)
                else:
                    dist = u.abs().sum(dim=1) / d
                loss = (dist + lam * torch.relu(gap + self.margin)).sum()
                (grad,) = torch.autograd.grad(loss, u)
            with torch.no_grad():
                m1.mul_(0.9).add_(grad, alpha=0.1)
                m2.mul_(0.999).addcmul_(grad, grad, value=0.001)
                m_hat, v_hat = m1 / (1 - 0.9**step), m2 / (1 - 0.999**step)
                u -= lr * m_hat / (v_hat.sqrt() + 1e-8)
                u.copy_(torch.clamp(u, u_lo, u_hi) * mask_t)
            if step % self.check_every and step != self.steps:
                continue
            ctx.check()
            cand = fs.finalize(x0 + u.detach().numpy() * scale)
            valid = outcome.valid(model.predict_proba(cand))
            evals += n
            c = cost(fs, cand, self.options.distance)
            better = valid & (c < best_cost * (1 - self.tol))
            best[better], best_cost[better] = cand[better], c[better]
            lam = torch.where(torch.as_tensor(valid), lam, lam * 2.0)
            if better.any():
                stalled = 0
                report(best[np.isfinite(best_cost)])
            elif np.isfinite(best_cost).all():
                stalled += 1
                lr *= 0.5  # settle: Adam's steps otherwise oscillate around the boundary
            if np.isfinite(best_cost).all() and stalled >= self.patience:
                break
        found = np.isfinite(best_cost)
        return best[found], evals + step * n, bool(found.sum() >= k)

    def _step_size(
        self,
        module: torch.nn.Module,
        x0: torch.Tensor,
        scale: torch.Tensor,
        free: torch.Tensor,
        keep_idx: list[int],
        flip_idx: list[int],
    ) -> float:
        """Adam's step in MAD units: `lr`, or a fifth of the linearised distance to
        the boundary (gap / ‖∇gap‖, as one DeepFool step) when that is smaller, so
        instances close to the boundary are not overshot."""
        u = torch.zeros_like(x0, requires_grad=True)
        with torch.enable_grad():
            logp = torch.log(module((x0 + u * scale).float()[None, :]).double().clamp_min(1e-30))
            gap = logp[0, keep_idx].max() - logp[0, flip_idx].max()
            (grad,) = torch.autograd.grad(gap, u)
        norm = float((grad * free).norm())
        if norm <= 0:
            return self.lr
        return float(min(self.lr, max(1e-4, 0.2 * abs(float(gap.detach())) / norm)))

    @staticmethod
    def _classes(n_classes: int, outcome: Outcome) -> tuple[list[int], list[int]]:
        """Classes whose best log-probability must fall below the other set's.

        The gap ``max log p[keep] − max log p[flip]`` is positive while the
        outcome has not flipped.
        """
        if outcome.desired is not None:
            return [c for c in range(n_classes) if c != outcome.desired], [outcome.desired]
        return [outcome.original], [c for c in range(n_classes) if c != outcome.original]


register(GradientCounterfactual, default_for_kind=True)
