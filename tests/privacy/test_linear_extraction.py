"""Linear extraction through explanations (Milli et al. 2019), unguarded vs guarded.

A logistic regression with d = 20. Unguarded (engineer tier, no noise): one
gradient or Integrated-Gradients answer reveals the weight direction (Tramèr
et al. need d+1 confidence queries without explanations). Guarded (end-user
tier: clip C, noise z, K answers): the best unbiased reconstruction from K
answers has squared error d·z²C²/K, query K+1 is refused and repeats return
the identical answer. Figures are printed (pytest -s).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from desiderata.policy.guard import PrivacyGuard
from desiderata.policy.ledger_sqlite import SqliteLedger
from desiderata.policy.privacy_params import PrivacyParams
from desiderata.server.errors import BudgetExhausted

D = 20
SECRET = b"attack-test-secret-0123456789"
RNG = np.random.default_rng(20)
W = RNG.normal(size=D)
B = 0.3


def _sigmoid(s: np.ndarray | float) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.asarray(s))))


def gradient_answer(x: np.ndarray) -> np.ndarray:
    """Gradient of the logit w.r.t. the input: w (independent of x)."""
    return W.copy()


def ig_answer(x: np.ndarray) -> np.ndarray:
    """Integrated Gradients of the probability with a zero baseline, in closed form:
    IG_i = x_i w_i (σ(w·x + b) − σ(b)) / (w·x)."""
    s = float(W @ x)
    return np.asarray(x * W * (float(_sigmoid(s + B)) - float(_sigmoid(B))) / s)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _serve(guard: PrivacyGuard, who: str, params: PrivacyParams, x: np.ndarray, method: str) -> np.ndarray:
    adm = guard.admit(who, "logreg", "v1", params, x, method=method)
    raw = gradient_answer(x) if method == "gradient" else ig_answer(x)
    out, _ = guard.noise(adm, raw)
    guard.commit(adm)
    return out


def test_unguarded_explanations_reveal_the_weights(tmp_path: Path) -> None:
    guard = PrivacyGuard(SqliteLedger(tmp_path / "l.db"), SECRET)
    engineer = PrivacyParams()
    x = np.random.default_rng(1).normal(size=D)
    w_grad = _serve(guard, "eng", engineer, x, "gradient")
    w_ig = _serve(guard, "eng", engineer, x, "integrated_gradients") / x
    # Tramèr et al.: d+1 confidence answers, no explanation, solve logit(p) = w·x + b
    xs = np.random.default_rng(2).normal(size=(D + 1, D))
    sol = np.linalg.solve(np.c_[xs, np.ones(D + 1)], xs @ W + B)
    figures = {"gradient (1 query)": _cos(w_grad, W), "IG (1 query)": _cos(w_ig, W)}
    figures[f"predictions only ({D + 1} queries)"] = _cos(sol[:D], W)
    print("\n[linear extraction, unguarded] cosine to w:", {k: round(v, 6) for k, v in figures.items()})
    assert all(c >= 0.999 for c in figures.values())


def test_guarded_reconstruction_stays_above_the_floor(tmp_path: Path) -> None:
    z, c, k = 1.0, 1.0, 20
    params = PrivacyParams(clip_norm=c, noise_multiplier=z, lifetime_queries=k)
    guard = PrivacyGuard(SqliteLedger(tmp_path / "l.db"), SECRET)
    target = W * min(1.0, c / np.linalg.norm(W))  # what an attacker can at best learn: the clipped answer
    floor = D * z**2 * c**2 / k
    rng = np.random.default_rng(3)
    errors, cosines = [], []
    for attacker in range(40):
        who = f"eve{attacker}"
        xs = rng.normal(size=(k, D))
        answers = np.stack([_serve(guard, who, params, x, "gradient") for x in xs])
        est = answers.mean(axis=0)  # the minimum-variance unbiased estimate
        errors.append(float(np.sum((est - target) ** 2)))
        cosines.append(_cos(est, W))
        # repeats are identical and free; query K+1 is refused
        np.testing.assert_array_equal(_serve(guard, who, params, xs[0], "gradient"), answers[0])
        with pytest.raises(BudgetExhausted):
            guard.admit(who, "logreg", "v1", params, rng.normal(size=D), method="gradient")
    mse = float(np.mean(errors))
    print(
        f"\n[linear extraction, guarded z={z} C={c} K={k}] floor d·z²C²/K = {floor:.3f}; "
        f"MSE over 40 attackers = {mse:.3f} (min {min(errors):.3f}); "
        f"cosine mean {np.mean(cosines):.3f} (max {max(cosines):.3f})"
    )
    assert mse >= 0.85 * floor  # 40·d = 800 χ² degrees of freedom: sd of MSE/floor ≈ 0.05
    assert mse <= 1.15 * floor  # the noise is as calibrated, not larger by accident
    assert max(cosines) < 0.95
