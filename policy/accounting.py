"""Privacy-loss accounting of explanation answers with Opacus' RDP accountant.

Every noisy answer is one Gaussian mechanism: the attribution vector is
clipped to ‖·‖₂ ≤ C and Gaussian noise of std z·C is added per coordinate,
i.e. sensitivity C and noise multiplier z in Opacus' (add/remove) convention,
with sample rate 1 (no subsampling). Opacus'
`RDPAccountant` composes such steps as ``history = [(z, 1.0, steps), ...]``
and its RDP at order α is ``Σ steps·α / (2 z²)``: linear in α. The whole RDP
curve of any sequence of these answers is therefore one scalar
``ρ = Σ 1 / (2 z_i²)`` (the zCDP parameter), and that scalar is what the
budget ledger stores and caps atomically. This module converts between ρ, the
accountant's history and (ε, δ), with the accountant's own conversion
(`opacus.accountants.analysis.rdp.get_privacy_spent` over the accountant's
default orders), so the ledger's ε equals the accountant's for the same
history exactly.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis

from desiderata.server.errors import InvalidArgument

__all__ = [
    "ORDERS",
    "PrivacySpend",
    "accountant_from_history",
    "epsilon_from_rho",
    "gaussian_rho",
    "rho_budget",
    "rho_from_history",
    "spend",
]

ORDERS: tuple[float, ...] = tuple(float(a) for a in RDPAccountant.DEFAULT_ALPHAS)
"""RDP orders α searched in the (ε, δ) conversion: Opacus' defaults."""


def gaussian_rho(noise_multiplier: float) -> float:
    """ρ of one Gaussian answer with noise multiplier z (std z·C for sensitivity C).

    Args:
        noise_multiplier: z > 0.

    Returns:
        ``1 / (2 z²)``; the answer's RDP at order α is ``ρ·α``.
    """
    if noise_multiplier <= 0.0:
        raise InvalidArgument.single("privacy.noise_multiplier", "must be > 0 to be accounted")
    return 1.0 / (2.0 * noise_multiplier * noise_multiplier)


def rho_from_history(history: Iterable[tuple[float, float, int]]) -> float:
    """ρ of an Opacus accountant history of un-subsampled Gaussian steps.

    Args:
        history: ``(noise_multiplier, sample_rate, steps)`` entries as in
            `RDPAccountant.history`; every sample rate must be 1.

    Returns:
        the summed ρ.
    """
    total = 0.0
    for z, q, steps in history:
        if q != 1.0:
            raise InvalidArgument.single("history.sample_rate", "only sample rate 1 is linear in α")
        total += steps * gaussian_rho(z)
    return total


def accountant_from_history(history: Iterable[tuple[float, int]]) -> RDPAccountant:
    """An Opacus `RDPAccountant` that has taken the given Gaussian answers.

    Args:
        history: ``(noise_multiplier, answers)`` pairs in order.
    """
    acc = RDPAccountant()
    for z, n in history:
        for _ in range(n):
            acc.step(noise_multiplier=z, sample_rate=1.0)
    return acc


@lru_cache(maxsize=4096)
def epsilon_from_rho(rho: float, delta: float) -> float:
    """ε at δ of a composition whose RDP curve is ``ρ·α``, by the accountant's conversion
    (cached: spends are multiples of a tier's per-query ρ, so the same values recur).

    Args:
        rho: summed ρ ≥ 0 (0 means nothing was released: ε = 0).
        delta: target δ in (0, 1).
    """
    if rho < 0.0:
        raise InvalidArgument.single("rho", "must be ≥ 0")
    if rho == 0.0:
        return 0.0
    with warnings.catch_warnings():
        # for very large ρ the best order is the smallest one and the bound is loose:
        # conservative, hence safe for a budget cap
        warnings.filterwarnings("ignore", message="Optimal order is the smallest alpha")
        curve = [rho * a for a in ORDERS]
        eps, _ = rdp_analysis.get_privacy_spent(orders=list(ORDERS), rdp=curve, delta=delta)
    return float(eps)


@lru_cache(maxsize=256)
def rho_budget(epsilon: float, delta: float) -> float:
    """The largest ρ whose ε at δ is ≤ `epsilon` (ε is increasing in ρ; bisection).

    Args:
        epsilon: lifetime ε > 0.
        delta: δ in (0, 1).

    Returns:
        ρ_max, accurate to a relative 1e-12, never above the true bound.
    """
    if epsilon <= 0.0:
        raise InvalidArgument.single("privacy.lifetime_epsilon", "must be > 0")
    lo, hi = 0.0, 1.0
    while epsilon_from_rho(hi, delta) <= epsilon:
        lo, hi = hi, hi * 2.0
        if hi > 1e12:
            return lo
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if epsilon_from_rho(mid, delta) <= epsilon:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(hi, 1e-300):
            break
    return lo


@dataclass(frozen=True)
class PrivacySpend:
    """Spent and remaining privacy loss of one (principal, model).

    Args:
        rho: committed ρ.
        epsilon: ε at `delta` of the committed answers.
        delta: δ the ε is stated at.
        epsilon_limit: lifetime ε, or None when unbounded.
        epsilon_remaining: ``epsilon_limit − epsilon`` (≥ 0), or None.
        answers_remaining: further answers at the tier's z the ε budget allows, or None.
    """

    rho: float
    epsilon: float
    delta: float
    epsilon_limit: float | None
    epsilon_remaining: float | None
    answers_remaining: int | None


def spend(rho: float, delta: float, epsilon_limit: float | None, noise_multiplier: float) -> PrivacySpend:
    """Spent and remaining privacy loss for the disclosure block and GetCapabilities.

    Args:
        rho: committed ρ of the (principal, model).
        delta: δ of the tier.
        epsilon_limit: lifetime ε of the tier, or None.
        noise_multiplier: z of the tier (answers remaining are counted at this z).
    """
    eps = epsilon_from_rho(rho, delta)
    if epsilon_limit is None:
        return PrivacySpend(rho, eps, delta, None, None, None)
    left = max(0.0, rho_budget(epsilon_limit, delta) - rho)
    answers = int(left / gaussian_rho(noise_multiplier) * (1 + 1e-12)) if noise_multiplier > 0 else 0
    return PrivacySpend(rho, eps, delta, epsilon_limit, max(0.0, epsilon_limit - eps), answers)
