"""Oracles of the inverse-Hessian paths: the explicit Hessian against finite
differences of gradients, and CG / LiSSA / Arnoldi against a direct dense
solve of (H + δI) s = g on a small MLP (all parameters): the top-20
influential training points must agree at Spearman ≥ 0.9.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from desiderata.explainers._ihvp import (
    arnoldi,
    conjugate_gradient,
    inverse_sqrt_factor,
    lissa,
    top_eigenvalue,
)
from desiderata.explainers._loss_grads import LossGrad
from tests.unit.explainers._credit import credit, mlp, train_full_batch

DAMPING = 0.05


@pytest.fixture(scope="module")
def setup() -> tuple[LossGrad, np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]:
    torch.set_num_threads(1)
    data = credit()
    x, y = data.x[:600], data.y[:600]
    module = mlp(x.shape[1], hidden=8, seed=1)
    train_full_batch(module, x, y, l2=1e-3, steps=100)
    g = LossGrad(module, "all")
    h = g.hessian(x, y)
    q = g.grads(data.x[700:701], data.y[700:701])[0]
    return g, x, y, h, q


def _top20_spearman(reference: np.ndarray, other: np.ndarray) -> float:
    top = np.argsort(-reference)[:20]
    return float(spearmanr(reference[top], other[top]).statistic)


def test_hessian_matches_finite_differences(setup: tuple) -> None:
    g, x, y, h, _ = setup
    rng = np.random.default_rng(0)
    v = torch.as_tensor(rng.standard_normal(g.p))
    eps = 1e-5
    plus = LossGrad(g.module, "all", overrides=_shifted(g, eps * v))
    minus = LossGrad(g.module, "all", overrides=_shifted(g, -eps * v))
    fd = (plus.grads(x, y).mean(0) - minus.grads(x, y).mean(0)) / (2 * eps)
    np.testing.assert_allclose((h @ v).numpy(), fd.numpy(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(g.hvp(v, x, y).numpy(), (h @ v).numpy(), rtol=1e-9, atol=1e-12)


def _shifted(g: LossGrad, delta: torch.Tensor) -> dict[str, torch.Tensor]:
    theta = g.theta + delta
    return {n: c.reshape(s) for n, c, s in zip(g.names, torch.split(theta, g.numels), g.shapes, strict=True)}


def test_cg_lissa_arnoldi_agree_with_dense_solve(setup: tuple) -> None:
    g, x, y, h, q = setup
    grads = g.grads(x, y)
    eye = torch.eye(g.p, dtype=torch.float64)
    assert float(torch.linalg.eigvalsh(h + DAMPING * eye)[0]) > 0, "the damped Hessian must be PD"
    dense = torch.linalg.solve(h + DAMPING * eye, q)
    exact = (grads @ dense).numpy()

    factor = inverse_sqrt_factor(h, DAMPING).factor
    via_factor = ((grads @ factor) @ (factor.T @ q)).numpy()
    np.testing.assert_allclose(via_factor, exact, rtol=1e-6, atol=1e-9)

    s_cg, iters, residual = conjugate_gradient(lambda v: g.hvp(v, x, y), q, DAMPING, tol=1e-8)
    assert residual <= 1e-8 and iters < g.p
    cg = (grads @ s_cg).numpy()
    np.testing.assert_allclose(cg, exact, rtol=1e-4, atol=1e-6 * np.abs(exact).max())

    rng = np.random.default_rng(0)
    scale = 1.2 * (top_eigenvalue(lambda v: g.hvp(v, x, y), g.p, rng) + DAMPING)
    s_lissa = lissa(
        lambda v, rows: g.hvp(v, x[rows], y[rows]), q, len(x), DAMPING, scale, rng, depth=300, repeats=2
    )
    lissa_scores = (grads @ s_lissa).numpy()
    assert _top20_spearman(exact, lissa_scores) >= 0.9


def test_arnoldi_recovers_the_top_eigenspace_and_agrees_at_sufficient_rank(setup: tuple) -> None:
    """Arnoldi's only approximation is the rank truncation: at rank r it must equal
    the truncation to the exact top-r eigenpairs; at r = 200 of p = 306 the
    top-20 must agree with the full inverse (measured: r=60 → 0.78, r=150 → 0.90)."""
    g, x, y, h, q = setup
    grads = g.grads(x, y)
    eye = torch.eye(g.p, dtype=torch.float64)
    exact = (grads @ torch.linalg.solve(h + DAMPING * eye, q)).numpy()
    vals, vecs = torch.linalg.eigh(h)
    rng = np.random.default_rng(0)
    low = arnoldi(lambda v: g.hvp(v, x, y), g.p, n_iter=120, rank=60, damping=DAMPING, rng=rng)
    u, lam = vecs[:, -60:], vals[-60:]
    truncated = ((grads @ u) / (lam + DAMPING)) @ (u.T @ q)
    arnoldi_scores = ((grads @ low.factor) @ (low.factor.T @ q)).numpy()
    np.testing.assert_allclose(arnoldi_scores, truncated.numpy(), rtol=1e-5, atol=1e-8)

    low = arnoldi(lambda v: g.hvp(v, x, y), g.p, n_iter=260, rank=200, damping=DAMPING, rng=rng)
    arnoldi_scores = ((grads @ low.factor) @ (low.factor.T @ q)).numpy()
    rho = _top20_spearman(exact, arnoldi_scores)
    assert rho >= 0.9, f"Arnoldi top-20 Spearman {rho:.3f}"
