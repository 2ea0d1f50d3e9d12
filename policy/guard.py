"""The privacy-guard facade the pipeline calls: admit → (explain) → noise → commit | release.

Why one facade: the order matters and is easy to get wrong. `admit` runs
every check that must happen *before* any model evaluation — the rate limit,
the extraction monitor, and the atomic reservation of one answer and its
privacy loss against the lifetime budgets (K answers, (ε, δ) via the RDP
coefficient ρ) — and raises when one fails, so refused requests cost nothing.
`noise` clips and perturbs the attribution with the query-keyed noise;
`commit` charges the reservation (the answer may be served only after it
succeeds); `release` returns it when the request fails. `remaining` reports
the budget left for the disclosure block and GetCapabilities.

Why the ledger is called before the monitor: the rate-limit token and the
reservation are taken in one ledger round trip (`take_and_reserve`), and the
monitor, which is in-process and cheap, looks at the query afterwards; when it
refuses or downgrades a query that was just reserved, the reservation is
released at once. The checks mean what they meant when each was a call of its
own: a rate-limited query is not shown to the monitor, a blocked caller gets
PERMISSION_DENIED even when its budget is spent too, and a caller already
under a (sticky) alarm never holds budget at the tier it was moved away from.

Fault injection, for tests only: with the environment variable
``DESIDERATA_FAULT_INJECTION_HOLD_AFTER_ADMIT_S`` set to a number of seconds
when the guard is built, `admit` sleeps that long after the reservation is
made, so that a test can kill the server deterministically between reserve
and commit. Unset (the default) it does nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from desiderata.policy.accounting import PrivacySpend, rho_budget, spend
from desiderata.policy.extraction_monitor import ExtractionMonitor, MonitorVerdict
from desiderata.policy.ledger import BudgetLedger, Limits, Rate, Reservation, Usage, rate_limited
from desiderata.policy.noise import NoiseInfo, QueryKey, clip_and_noise, query_key
from desiderata.policy.privacy_params import PrivacyParams
from desiderata.server.errors import BudgetExhausted, InternalError, PermissionDenied, Unavailable

__all__ = ["FAULT_HOLD_AFTER_ADMIT_ENV", "Admission", "Budget", "PrivacyGuard"]

FAULT_HOLD_AFTER_ADMIT_ENV = "DESIDERATA_FAULT_INJECTION_HOLD_AFTER_ADMIT_S"
"""Test-only fault injection: seconds `admit` sleeps after reserving (unset: no sleep)."""


@dataclass(frozen=True)
class Admission:
    """A request that passed the guards, holding its budget until commit or release.

    Args:
        principal: principal id.
        model: model name.
        model_version: exact version answering.
        params: the tier's privacy settings the reservation was made under.
        reservation: the held budget; None when `downgrade_to` is set.
        key: keyed identity of the query (noise seed and repeat digest).
        verdict: the extraction monitor's verdict.
    """

    principal: str
    model: str
    model_version: str
    params: PrivacyParams
    reservation: Reservation | None
    key: QueryKey
    verdict: MonitorVerdict = field(default_factory=lambda: MonitorVerdict("allow"))

    @property
    def downgrade_to(self) -> str:
        """Non-empty when the monitor moved the caller to a stricter tier: nothing is
        held; decide again at that tier and call `admit(..., observe=False)`."""
        return self.verdict.downgrade_to if self.verdict.action == "downgrade" else ""

    @property
    def explainer_seed(self) -> int:
        """Seed for the explainer's RNG, derived from the query key, so that a repeat
        is answered by the same raw explanation as well as the same noise."""
        return int.from_bytes(hashlib.sha256(b"explainer" + self.key.noise_seed).digest()[:8], "big")


@dataclass(frozen=True)
class Budget:
    """What is left of a (principal, model)'s lifetime budget at one tier.

    Args:
        queries_used: committed answers.
        queries_limit: K, or None.
        queries_remaining: K − used (≥ 0), or None.
        privacy: spent/remaining ε at the tier's δ.
        answers_remaining: answers still possible under both caps, or None if unbounded.
    """

    queries_used: int
    queries_limit: int | None
    queries_remaining: int | None
    privacy: PrivacySpend
    answers_remaining: int | None


class PrivacyGuard:
    """Rate limits, extraction monitor, budgets and output noise behind one object.

    Args:
        ledger: the budget ledger (SQLite or Redis).
        secret: server secret keying the noise (≥ 16 bytes; keep it stable across
            restarts and replicas, or repeats would get fresh noise).
        monitor: the extraction monitor; a fresh one when None.
        hold_after_admit_s: TEST-ONLY fault injection: seconds to sleep after each
            reservation, between reserve and commit; None reads
            `FAULT_HOLD_AFTER_ADMIT_ENV` (unset means 0, no sleep).
    """

    def __init__(
        self,
        ledger: BudgetLedger,
        secret: bytes,
        monitor: ExtractionMonitor | None = None,
        *,
        hold_after_admit_s: float | None = None,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the privacy secret must be at least 16 bytes")
        self._ledger = ledger
        self._secret = secret
        self._monitor = monitor or ExtractionMonitor()
        if hold_after_admit_s is None:
            hold_after_admit_s = float(os.environ.get(FAULT_HOLD_AFTER_ADMIT_ENV) or 0.0)
        if hold_after_admit_s < 0.0:
            raise ValueError(f"{FAULT_HOLD_AFTER_ADMIT_ENV} must be ≥ 0 seconds")
        self._hold_s = hold_after_admit_s

    def admit(
        self,
        principal: str,
        model: str,
        model_version: str,
        params: PrivacyParams,
        features: np.ndarray,
        *,
        method: str = "",
        method_params: Mapping[str, Any] | None = None,
        label: int | None = None,
        observe: bool = True,
    ) -> Admission:
        """Runs the pre-work guards and reserves one answer.

        Args:
            principal: principal id (from the credential).
            model: model name; budgets are per model across versions.
            model_version: version answering (part of the noise key).
            params: the decided tier's privacy settings.
            features: encoded instance, shape ``(n_columns,)``.
            method: explainer name (part of the noise key).
            method_params: explainer parameters as used (part of the noise key).
            label: predicted class, for a per-class monitor.
            observe: False when re-admitting the same query after a downgrade.

        Raises:
            RateLimited: the short-window rate is spent (retry_after_s set).
            PermissionDenied: the extraction monitor blocks this principal.
            BudgetExhausted: the query or ε budget would be exceeded.
            Unavailable: the ledger cannot be reached.
        """
        rate = None if params.rate_per_minute is None else Rate(params.rate_per_minute, params.burst)
        key = query_key(self._secret, principal, model_version, features, method, method_params or {})
        monitored = observe and params.monitor.enabled
        verdict = MonitorVerdict("allow")
        if monitored and self._monitor.alarmed(principal, model):
            # The alarm is sticky, so this query will be refused or downgraded: hold no budget.
            if rate is not None:
                wait = self._ledger.take(principal, model, rate_per_minute=rate.per_minute, burst=rate.burst)
                if wait > 0.0:
                    raise rate_limited(principal, model, rate, wait)
                rate = None  # the token is taken
            verdict = self._monitor.observe(principal, model, features, params.monitor, label)
            if verdict.action != "allow":
                return self._refused(principal, model, model_version, params, key, verdict)
            monitored = False  # reset meanwhile by an operator: observed already, go on
        limits = Limits(
            max_queries=params.lifetime_queries,
            max_rho=None if params.lifetime_epsilon is None else rho_budget(params.lifetime_epsilon, params.delta),
        )
        budgeted = params.noisy or params.lifetime_queries is not None
        try:
            reservation = self._ledger.take_and_reserve(
                principal,
                model,
                rate=rate,
                queries=1,
                rho=params.rho_per_query,
                limits=limits,
                ttl_s=params.reservation_ttl_s,
                digest=key.digest if budgeted else "",
            )
        except BudgetExhausted:
            # the monitor still sees a query that passed the rate limit, and its refusal wins
            if monitored:
                verdict = self._monitor.observe(principal, model, features, params.monitor, label)
                if verdict.action != "allow":
                    return self._refused(principal, model, model_version, params, key, verdict)
            raise
        if monitored:
            verdict = self._monitor.observe(principal, model, features, params.monitor, label)
            if verdict.action != "allow":
                with contextlib.suppress(Unavailable):  # if the release is lost, the reservation expires
                    self._ledger.release(reservation)
                return self._refused(principal, model, model_version, params, key, verdict)
        if self._hold_s > 0.0:
            time.sleep(self._hold_s)  # test-only fault injection, see FAULT_HOLD_AFTER_ADMIT_ENV
        return Admission(principal, model, model_version, params, reservation, key, verdict)

    @staticmethod
    def _refused(
        principal: str, model: str, model_version: str, params: PrivacyParams, key: QueryKey, verdict: MonitorVerdict
    ) -> Admission:
        """The monitor's refusal: PERMISSION_DENIED, or an admission holding nothing that
        names the stricter tier to decide again at."""
        if verdict.action == "block":
            raise PermissionDenied(
                "explanations of this model are suspended for this caller", reasons=("extraction_monitor",)
            )
        return Admission(principal, model, model_version, params, None, key, verdict)

    def noise(self, admission: Admission, values: np.ndarray) -> tuple[np.ndarray, NoiseInfo]:
        """Clips and noises an attribution vector with the query's keyed noise.

        Args:
            admission: from `admit`.
            values: raw attributions, shape ``(d,)``.

        Returns:
            ``(values, info)``; unchanged values (info.noise_std 0) when the tier has no noise.
        """
        p = admission.params
        if not p.noisy:
            v = np.asarray(values, dtype=np.float64).copy()
            return v, NoiseInfo(p.clip_norm, 0.0, float(np.linalg.norm(v)), False)
        return clip_and_noise(values, p.clip_norm, p.noise_multiplier, admission.key.noise_seed)

    def commit(self, admission: Admission) -> None:
        """Charges the admission; serve the answer only after this returns.

        Raises:
            ReservationNotActive: the reservation expired or was released.
            InternalError: the admission holds nothing (a downgrade not re-admitted).
        """
        if admission.reservation is None:
            raise InternalError("commit of an admission that holds no budget")
        self._ledger.commit(admission.reservation)

    def commit_with_budget(self, admission: Admission, params: PrivacyParams) -> Budget:
        """`commit`, returning the budget left after it (one ledger call with Redis).

        Raises:
            ReservationNotActive: the reservation expired or was released.
            InternalError: the admission holds nothing (a downgrade not re-admitted).
        """
        if admission.reservation is None:
            raise InternalError("commit of an admission that holds no budget")
        return _budget(self._ledger.commit_and_usage(admission.reservation), params)

    def release(self, admission: Admission) -> None:
        """Returns the admission's budget (the request failed before an answer)."""
        if admission.reservation is not None:
            self._ledger.release(admission.reservation)

    @property
    def ledger(self) -> BudgetLedger:
        """The budget ledger (for readiness probes)."""
        return self._ledger

    def remaining(self, principal: str, model: str, params: PrivacyParams) -> Budget:
        """Budget left at a tier, for the disclosure block and GetCapabilities."""
        return _budget(self._ledger.usage(principal, model), params)


def _budget(u: Usage, params: PrivacyParams) -> Budget:
    """The budget left at a tier after usage `u`."""
    priv = spend(u.rho, params.delta, params.lifetime_epsilon, params.noise_multiplier)
    k = params.lifetime_queries
    q_left = None if k is None else max(0, k - u.queries)
    bounds = [b for b in (q_left, priv.answers_remaining) if b is not None]
    return Budget(u.queries, k, q_left, priv, min(bounds) if bounds else None)
