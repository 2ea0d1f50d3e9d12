"""The budget ledger seam: atomic reserve → commit | release of query counts and
privacy loss per (principal, model), and token-bucket rate limits.

Why a reservation protocol: the pipeline must refuse an over-budget query
*before* computing anything, yet charge only answers that were actually
served. So `admit` reserves (atomically checking committed + live
reservations + this request against the limits), the explainer runs, and the
answer is released to the caller only after `commit` succeeded. A request
that crashes never commits; its reservation expires after its ttl and the
budget returns. A reservation is committed at most once: committing an
expired or released reservation raises `ReservationNotActive` (an
`Unavailable`: the answer must not be served, nothing is charged twice).

Privacy loss is stored as the RDP coefficient ρ (see
`desiderata.policy.accounting`): the RDP curve of every answer is ``ρ·α``, so
one scalar per (principal, model) is the accountant's whole state and can be
capped atomically by any backend.

Repeated identical queries (same keyed digest of principal, model version,
input, method and parameters) receive the same noisy answer; they reveal
nothing new, so once a digest has been committed a reservation carrying it is
*free* (charges no query and no ρ).

Admission is one store round trip: `take_and_reserve` takes the rate-limit
token and makes the reservation in one atomic step (one SQLite transaction,
one Redis script), and `commit` is the second and last. The base class
composes `take` and `reserve` for backends that have no such step.

Backends: `SqliteLedger` (embedded default, WAL, BEGIN IMMEDIATE) and
`RedisLedger` (server-side Lua scripts, shared by replicas). Both fail closed:
a store that cannot be reached raises `Unavailable`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass

from desiderata.server.errors import BudgetExhausted, QuotaViolation, RateLimited, Unavailable

__all__ = [
    "BudgetLedger",
    "Limits",
    "Rate",
    "Reservation",
    "ReservationNotActive",
    "Usage",
    "budget_exhausted",
    "new_reservation_id",
    "rate_limited",
    "subject",
]

RHO_TOLERANCE = 1e-12
"""Relative slack on the ρ cap, so that K answers that exactly meet ρ_max are
not refused because of floating-point summation order."""


class ReservationNotActive(Unavailable):
    """Commit of a reservation that expired or was released: the answer must not
    be served, since its budget is no longer held."""

    code = "reservation_not_active"


@dataclass(frozen=True)
class Limits:
    """Lifetime caps of one (principal, model) at one tier.

    Args:
        max_queries: K, the number of charged answers, or None for unlimited.
        max_rho: ρ_max derived from (lifetime ε, δ), or None for unlimited.
    """

    max_queries: int | None = None
    max_rho: float | None = None


@dataclass(frozen=True)
class Rate:
    """A token bucket of one (principal, model) at one tier.

    Args:
        per_minute: refill rate, tokens per minute (> 0).
        burst: bucket capacity (≥ 1); a new bucket starts full.
    """

    per_minute: float
    burst: int


@dataclass(frozen=True)
class Reservation:
    """Budget held for one request until commit, release or expiry.

    Args:
        id: unique reservation id.
        principal: principal id.
        model: model name (budgets are per model, across its versions).
        queries: answers held (1 per request; 0 when free).
        rho: ρ held (0 when free or noiseless).
        expires_at: backend clock (Unix seconds) after which it is void.
        free: a repeat of a committed digest; commit and release do nothing.
    """

    id: str
    principal: str
    model: str
    queries: int
    rho: float
    expires_at: float
    free: bool = False


@dataclass(frozen=True)
class Usage:
    """Committed and currently reserved budget of one (principal, model).

    Args:
        queries: committed answers.
        rho: committed ρ.
        reserved_queries: answers held by live reservations.
        reserved_rho: ρ held by live reservations.
    """

    queries: int
    rho: float
    reserved_queries: int = 0
    reserved_rho: float = 0.0


def new_reservation_id() -> str:
    """A random reservation id, 32 hex digits (128 bits; a few µs cheaper than a uuid4 object)."""
    return os.urandom(16).hex()


def subject(principal: str, model: str) -> str:
    """The QuotaFailure subject of a (principal, model) budget."""
    return f"principal:{principal}/model:{model}"


def budget_exhausted(principal: str, model: str, which: str, limits: Limits) -> BudgetExhausted:
    """The error of a refused reservation.

    Args:
        which: "queries" or "rho", the quota that would overflow.
    """
    if which == "queries":
        desc = f"lifetime query budget of {limits.max_queries} answers for this model is spent"
    else:
        desc = "lifetime privacy-loss (epsilon) budget for this model is spent"
    return BudgetExhausted(
        "the explanation budget for this model is exhausted",
        [QuotaViolation(subject(principal, model), desc)],
    )


def rate_limited(principal: str, model: str, rate: Rate, wait_s: float) -> RateLimited:
    """The error of a request refused by the token bucket; it may retry after `wait_s`."""
    return RateLimited(
        "too many explanation requests; retry later",
        [QuotaViolation(subject(principal, model), f"{rate.per_minute:g} requests per minute")],
        retry_after_s=wait_s,
    )


class BudgetLedger(ABC):
    """One interface over every budget store; every method is atomic."""

    def reserve(
        self,
        principal: str,
        model: str,
        *,
        queries: int,
        rho: float,
        limits: Limits,
        ttl_s: float,
        digest: str = "",
    ) -> Reservation:
        """Holds `queries` answers and `rho` privacy loss if committed + live
        reservations + this request stay within `limits` (`take_and_reserve` without a rate).

        Args:
            queries: answers to hold, ≥ 0 (1 per request).
            rho: ρ to hold, ≥ 0 (see `accounting.gaussian_rho`).
            limits: the tier's caps.
            ttl_s: seconds until the reservation is void if not committed.
            digest: keyed digest of the query; a committed digest makes this free.

        Raises:
            BudgetExhausted: a cap would be exceeded (nothing is held).
            Unavailable: the store cannot be reached.
        """
        return self.take_and_reserve(
            principal, model, rate=None, queries=queries, rho=rho, limits=limits, ttl_s=ttl_s, digest=digest
        )

    @abstractmethod
    def take_and_reserve(
        self,
        principal: str,
        model: str,
        *,
        rate: Rate | None,
        queries: int,
        rho: float,
        limits: Limits,
        ttl_s: float,
        digest: str = "",
    ) -> Reservation:
        """Takes a token from the rate bucket, then reserves as `reserve`: one atomic
        step and one round trip.

        The token is taken first: a rate-limited request reserves nothing, and a
        request refused for its budget has still used its token.

        Args:
            rate: the tier's token bucket, or None for no rate limit.
            queries, rho, limits, ttl_s, digest: as for `reserve`.

        Raises:
            RateLimited: the bucket is empty (retry_after_s set; nothing is held).
            BudgetExhausted: a cap would be exceeded (nothing is held).
            Unavailable: the store cannot be reached.
        """

    @abstractmethod
    def commit(self, reservation: Reservation) -> None:
        """Charges a live reservation exactly once.

        Raises:
            ReservationNotActive: it expired, was released or was already committed.
            Unavailable: the store cannot be reached.
        """

    def commit_and_usage(self, reservation: Reservation) -> Usage:
        """`commit`, then the (principal, model) `usage` after it; backends whose calls
        are round trips do both in one.

        Raises:
            ReservationNotActive: as `commit`.
            Unavailable: the store cannot be reached.
        """
        self.commit(reservation)
        return self.usage(reservation.principal, reservation.model)

    @abstractmethod
    def release(self, reservation: Reservation) -> None:
        """Returns a reservation's budget; idempotent."""

    @abstractmethod
    def take(self, principal: str, model: str, *, rate_per_minute: float, burst: int) -> float:
        """Takes one token from the (principal, model) bucket.

        Args:
            rate_per_minute: refill rate, tokens per minute (> 0).
            burst: bucket capacity (≥ 1); a new bucket starts full.

        Returns:
            0.0 when a token was taken, else the seconds until one is available.
        """

    @abstractmethod
    def usage(self, principal: str, model: str) -> Usage:
        """Committed and live-reserved budget (expired reservations excluded)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Releases connections."""


def check_request(queries: int, rho: float, ttl_s: float) -> None:
    """Validates reserve arguments common to every backend."""
    if queries < 0 or rho < 0.0 or ttl_s <= 0.0:
        raise ValueError("queries and rho must be ≥ 0 and ttl_s > 0")


def check_rate(rate_per_minute: float, burst: int) -> None:
    """Validates token-bucket arguments common to every backend."""
    if rate_per_minute <= 0.0 or burst < 1:
        raise ValueError("rate_per_minute must be > 0 and burst ≥ 1")
