"""Membership inference through gradient explanations (Shokri et al. 2021), unguarded vs guarded.

An overfit MLP (few training rows, noisy labels, long training) is confident on
its members, so the saliency explanation (gradient of the predicted-class
probability w.r.t. the input) is small and flat for members. Two threshold
attacks: the explanation-variance attack of Shokri et al. and a gradient-norm
attack. Guarded, every explanation is clipped to C and noised with std z·C by
the PrivacyGuard (keyed noise). AUC and TPR at 1% FPR are printed (pytest -s).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from desiderata.policy.guard import PrivacyGuard
from desiderata.policy.ledger_sqlite import SqliteLedger
from desiderata.policy.privacy_params import PrivacyParams

D, N = 20, 200
SECRET = b"attack-test-secret-0123456789"


def _data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2 * N, D)).astype(np.float32)
    w = rng.normal(size=D)
    y = (x @ w + rng.normal(scale=4.0, size=2 * N) > 0).astype(np.int64)  # noisy labels
    return x, y


def _mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(D, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))


def _train_overfit(x: np.ndarray, y: np.ndarray) -> torch.nn.Module:
    torch.manual_seed(0)
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    for _ in range(600):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model


def saliency(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Gradient of the predicted-class probability w.r.t. the input, ``(n, D)``."""
    xt = torch.as_tensor(x).requires_grad_(True)
    prob = torch.softmax(model(xt), dim=1)
    top = prob.max(dim=1).values
    (grad,) = torch.autograd.grad(top.sum(), xt)
    return grad.double().numpy()


def _figures(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> tuple[float, float]:
    """AUC and TPR at 1% FPR of 'higher score = member'."""
    labels = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]
    scores = np.r_[member_scores, nonmember_scores]
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(roc_auc_score(labels, scores)), float(np.interp(0.01, fpr, tpr))


def _attacks(expl: np.ndarray) -> dict[str, tuple[float, float]]:
    mem, non = expl[:N], expl[N:]
    return {
        "variance": _figures(-mem.var(axis=1), -non.var(axis=1)),
        "norm": _figures(-np.linalg.norm(mem, axis=1), -np.linalg.norm(non, axis=1)),
    }


def _report(label: str, figs: dict[str, tuple[float, float]]) -> None:
    text = ", ".join(f"{k}: AUC {a:.3f} TPR@1%FPR {t:.3f}" for k, (a, t) in figs.items())
    print(f"\n[membership inference, {label}] {text}")


@pytest.fixture(scope="module")
def overfit() -> tuple[torch.nn.Module, np.ndarray, np.ndarray]:
    torch.set_num_threads(1)
    x, y = _data(5)
    model = _train_overfit(x[:N], y[:N])  # first N rows are members
    return model, x, y


def test_unguarded_explanations_leak_membership(
    overfit: tuple[torch.nn.Module, np.ndarray, np.ndarray],
) -> None:
    model, x, y = overfit
    with torch.no_grad():
        acc_in = float((model(torch.as_tensor(x[:N])).argmax(1).numpy() == y[:N]).mean())
        acc_out = float((model(torch.as_tensor(x[N:])).argmax(1).numpy() == y[N:]).mean())
    figs = _attacks(saliency(model, x))
    _report(f"unguarded; train acc {acc_in:.2f}, test acc {acc_out:.2f}", figs)
    assert acc_in - acc_out > 0.2  # the model is overfit
    # 2N = 400 scored rows: the AUC's standard error is ≈ 0.03, so 0.62 is far above chance
    assert figs["variance"][0] >= 0.62 and figs["norm"][0] >= 0.62


def test_output_noise_defeats_the_attacks(
    overfit: tuple[torch.nn.Module, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    model, x, _ = overfit
    raw = saliency(model, x)
    c = float(np.median(np.linalg.norm(raw, axis=1)))
    params = PrivacyParams(clip_norm=c, noise_multiplier=2.0, lifetime_queries=4 * N)
    guard = PrivacyGuard(SqliteLedger(tmp_path / "l.db"), SECRET)
    noised = []
    for xi, ai in zip(x, raw, strict=True):
        adm = guard.admit("mallory", "mlp", "v1", params, xi, method="saliency")
        noised.append(guard.noise(adm, ai)[0])
        guard.commit(adm)
    figs = _attacks(np.stack(noised))
    _report(f"guarded by output noise z=2, C={c:.3g}", figs)
    assert all(auc <= 0.55 for auc, _ in figs.values())
