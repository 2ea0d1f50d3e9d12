"""Oracle: influence functions predict leave-one-out retraining (Koh & Liang 2017, Fig. 2).

L2-regularised softmax regression on credit_data, fitted and re-fitted by an
independent float64 Newton solver written here (closed-form gradient and
Hessian, warm-started, converged to ‖∇‖ < 1e-10). The library's prediction of
the change in a test point's loss when each of the top-50 training points is
removed must correlate with the actual change at Pearson ≥ 0.95.
"""

from __future__ import annotations

import numpy as np
import torch

from desiderata.explainers.influence_config import InfluenceConfig
from desiderata.explainers.influence_index import build_index
from tests.unit.explainers._credit import Logistic, credit, reference

N_TRAIN = 1000
L2 = 1e-2


def _design(x: np.ndarray) -> np.ndarray:
    return np.hstack([x, np.ones((len(x), 1))])


def _probs(theta: np.ndarray, xt: np.ndarray) -> np.ndarray:
    z = xt @ theta.reshape(2, -1).T
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def _newton(theta: np.ndarray, xt: np.ndarray, y: np.ndarray, n_norm: int) -> np.ndarray:
    """Minimises (1/n_norm) Σ CE + L2/2 ‖θ‖² with θ = W̃ (2, d+1) row-major."""
    onehot = np.eye(2)[y]
    for _ in range(50):
        p = _probs(theta, xt)
        g = ((p - onehot).T @ xt).ravel() / n_norm + L2 * theta
        if np.abs(g).max() < 1e-10:
            return theta
        cov = np.einsum("nk,kl->nkl", p, np.eye(2)) - np.einsum("nk,nl->nkl", p, p)
        h = np.einsum("nkl,ni,nj->kilj", cov, xt, xt).reshape(theta.size, theta.size) / n_norm
        theta = theta - np.linalg.solve(h + L2 * np.eye(theta.size), g)
    raise AssertionError("Newton did not converge")


def test_influence_predicts_leave_one_out_retraining() -> None:
    torch.set_num_threads(1)
    data = credit()
    order = np.random.default_rng(0).permutation(len(data.x))
    tr, te = order[:N_TRAIN], order[N_TRAIN : N_TRAIN + 200]
    x, y = data.x[tr], data.y[tr]
    xt = _design(x)
    d = x.shape[1]
    theta = _newton(np.zeros(2 * (d + 1)), xt, y, N_TRAIN)

    module = Logistic(d).double()
    w = theta.reshape(2, d + 1)
    with torch.no_grad():
        module.linear.weight.copy_(torch.as_tensor(w[:, :d]))
        module.linear.bias.copy_(torch.as_tensor(w[:, d]))
    index = build_index(
        module, reference(x, y), "influence", "all", InfluenceConfig(damping=L2, solver="exact")
    )

    # the test point the model fits worst among 200 held-out rows: a clear signal
    p_te = _probs(theta, _design(data.x[te]))
    losses = -np.log(p_te[np.arange(len(te)), data.y[te]])
    j = te[int(np.argmax(losses))]
    x_test, y_test = data.x[j : j + 1], data.y[j : j + 1]

    predicted = index.scores(index.query_vectors(module, x_test, y_test))[0] / N_TRAIN
    top = np.argsort(-np.abs(predicted))[:50]

    def test_loss(th: np.ndarray) -> float:
        return float(-np.log(_probs(th, _design(x_test))[0, y_test[0]]))

    base = test_loss(theta)
    actual = []
    for i in top:
        keep = np.arange(N_TRAIN) != i
        # removing z keeps the 1/n weighting of the others (Koh & Liang's ε = −1/n)
        refit = _newton(theta.copy(), xt[keep], y[keep], N_TRAIN)
        actual.append(test_loss(refit) - base)
    r = float(np.corrcoef(predicted[top], np.array(actual))[0, 1])
    assert r >= 0.95, f"Pearson {r:.4f}"
    # the magnitudes agree too, not just the ordering
    slope = float(np.polyfit(np.array(actual), predicted[top], 1)[0])
    assert 0.8 < slope < 1.25, f"slope {slope:.3f}"
