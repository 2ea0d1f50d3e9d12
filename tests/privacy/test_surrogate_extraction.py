"""Surrogate extraction of a two-layer ReLU network (d = 50, 16 hidden units),
with predictions plus gradient explanations versus predictions alone
(Milli et al. 2019), unguarded vs guarded.

The attacker trains a surrogate of the same architecture on the answers:
soft-label cross-entropy on the returned probabilities, plus (with
explanations) a squared error between the surrogate's input gradient and the
returned one. Agreement = share of 2000 fresh inputs on which surrogate and
victim predict the same class. Unguarded explanations give a far better
surrogate per query; guarded (clip C, noise z via the PrivacyGuard, budget K)
the advantage falls to within noise of predictions alone, both for a naive
attacker (fitting the noisy gradients at full weight hurts it) and for one
that down-weights them by the expected noise energy. The curves (means
over three surrogate initialisations and noise secrets) are printed
(pytest -s).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from desiderata.policy.guard import PrivacyGuard
from desiderata.policy.ledger_sqlite import SqliteLedger
from desiderata.policy.privacy_params import PrivacyParams

D, H = 50, 16
COUNTS = (25, 50, 100, 200)
SECRET = b"attack-test-secret-0123456789"
REPEATS = 3


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.ReLU(), torch.nn.Linear(H, 1))


def _grad(model: torch.nn.Module, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).sum(), x, create_graph=create_graph)
    return g


def _surrogate(
    x: torch.Tensor, prob: torch.Tensor, grads: torch.Tensor | None, seed: int, weight: float = 1.0
) -> torch.nn.Module:
    s = _net(1000 + seed)
    opt = torch.optim.Adam(s.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(s(x).squeeze(1), prob)
        if grads is not None:
            loss = loss + weight * ((_grad(s, x, create_graph=True) - grads) ** 2).sum(1).mean()
        loss.backward()
        opt.step()
    return s


def _agreement(victim: torch.nn.Module, s: torch.nn.Module, x_test: torch.Tensor) -> float:
    with torch.no_grad():
        return float(((victim(x_test) > 0) == (s(x_test) > 0)).float().mean())


def test_explanations_help_extraction_only_when_unguarded(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    victim = _net(0)
    rng = np.random.default_rng(11)
    x_all = torch.as_tensor(rng.normal(size=(max(COUNTS), D)), dtype=torch.float32)
    x_test = torch.as_tensor(rng.normal(size=(2000, D)), dtype=torch.float32)
    with torch.no_grad():
        prob = torch.sigmoid(victim(x_all)).squeeze(1)
    raw = _grad(victim, x_all).double().numpy()
    c = float(np.median(np.linalg.norm(raw, axis=1)))
    params = PrivacyParams(clip_norm=c, noise_multiplier=2.0, lifetime_queries=max(COUNTS))
    exact = torch.as_tensor(raw, dtype=torch.float32)
    # a noise-aware attacker down-weights the gradient term by the expected noise energy d·z²
    aware = 1.0 / (1.0 + D * params.noise_multiplier**2)
    names = ("predictions only", "+ explanations", "+ guarded expl. (naive)", "+ guarded expl. (aware)")
    # One surrogate trained on 25 answers is a noisy figure (its initialisation alone moves it by
    # several points), so every curve is the mean over REPEATS surrogate initialisations, each
    # guarded one drawing its noise under its own server secret; repeat r of every curve starts
    # from the same initialisation, and the guarded advantage is judged on those paired differences.
    runs: dict[str, np.ndarray] = {k: np.empty((REPEATS, len(COUNTS))) for k in names}
    for r in range(REPEATS):
        noisy = _guarded_answers(tmp_path / f"l{r}.db", SECRET + bytes([r]), params, x_all, raw)
        for j, n in enumerate(COUNTS):
            x, p, seed = x_all[:n], prob[:n], n + 7919 * r
            runs[names[0]][r, j] = _agreement(victim, _surrogate(x, p, None, seed), x_test)
            runs[names[1]][r, j] = _agreement(victim, _surrogate(x, p, exact[:n], seed), x_test)
            runs[names[2]][r, j] = _agreement(victim, _surrogate(x, p, noisy[:n], seed), x_test)
            runs[names[3]][r, j] = _agreement(victim, _surrogate(x, p, noisy[:n], seed, aware), x_test)
    head = f"[surrogate extraction, d={D} h={H}, guarded z=2 C={c:.3g} K={max(COUNTS)}, mean of {REPEATS}]"
    print(f"\n{head} agreement at {COUNTS} queries:")
    for name, run in runs.items():
        print(f"  {name:<24} " + "  ".join(f"{a:.3f}" for a in run.mean(axis=0)))
    plain, expl, naive, aware_runs = runs.values()
    gain = (expl - plain).mean(axis=0)
    assert np.all(gain >= 0.03) and float(gain.mean()) >= 0.05
    for guarded in (naive, aware_runs):
        diff = guarded - plain  # (REPEATS, counts), paired by initialisation
        se = diff.std(axis=0, ddof=1) / np.sqrt(REPEATS) + np.sqrt(0.5 / len(x_test) / REPEATS)
        assert np.all(diff.mean(axis=0) <= np.maximum(0.03, 3 * se)), diff  # no advantage left


def _guarded_answers(
    path: Path, secret: bytes, params: PrivacyParams, x_all: torch.Tensor, raw: np.ndarray
) -> torch.Tensor:
    """The K gradient answers as the PrivacyGuard serves them under one server secret, ``(K, D)``."""
    guard = PrivacyGuard(SqliteLedger(path), secret)
    noised = []
    for xi, gi in zip(x_all.double().numpy(), raw, strict=True):
        adm = guard.admit("eve", "relu", "v1", params, xi, method="gradient")
        noised.append(guard.noise(adm, gi)[0])
        guard.commit(adm)
    return torch.as_tensor(np.stack(noised), dtype=torch.float32)
