"""The guard facade: order of checks, fail-closed, release, downgrade hand-off."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from desiderata.policy.extraction_monitor import ExtractionMonitor
from desiderata.policy.guard import PrivacyGuard
from desiderata.policy.ledger import Usage
from desiderata.policy.ledger_redis import RedisLedger
from desiderata.policy.ledger_sqlite import SqliteLedger
from desiderata.policy.privacy_params import ExtractionMonitorParams, PrivacyParams
from desiderata.server.errors import (
    BudgetExhausted,
    InternalError,
    PermissionDenied,
    RateLimited,
    Unavailable,
)

SECRET = b"0123456789abcdef-test-secret"


@pytest.fixture
def guard(tmp_path: Path) -> PrivacyGuard:
    return PrivacyGuard(SqliteLedger(tmp_path / "l.db"), SECRET)


def test_rate_limit_refuses_with_retry_after(guard: PrivacyGuard) -> None:
    params = PrivacyParams(rate_per_minute=60.0, burst=2)
    for i in range(2):
        guard.release(guard.admit("a", "m", "v1", params, np.array([float(i)])))
    with pytest.raises(RateLimited) as err:
        guard.admit("a", "m", "v1", params, np.array([5.0]))
    assert 0.0 < err.value.retry_after_s <= 1.0 + 1e-6
    assert err.value.violations[0].subject == "principal:a/model:m"


def test_query_budget_repeats_and_release(guard: PrivacyGuard) -> None:
    params = PrivacyParams(clip_norm=1.0, noise_multiplier=1.0, lifetime_queries=2)
    x = np.array([1.0, 2.0])
    first = guard.admit("a", "m", "v1", params, x, method="ig", method_params={"steps": 8})
    noised, info = guard.noise(first, np.array([3.0, 4.0]))
    guard.commit(first)
    again = guard.admit("a", "m", "v1", params, x, method="ig", method_params={"steps": 8})
    np.testing.assert_array_equal(guard.noise(again, np.array([3.0, 4.0]))[0], noised)
    assert again.explainer_seed == first.explainer_seed and info.noise_std == 1.0
    guard.commit(again)
    assert guard.remaining("a", "m", params).queries_used == 1  # the repeat was free
    failed = guard.admit("a", "m", "v1", params, x + 1)
    guard.release(failed)
    guard.commit(guard.admit("a", "m", "v1", params, x + 2))
    with pytest.raises(BudgetExhausted):
        guard.admit("a", "m", "v1", params, x + 3)
    b = guard.remaining("a", "m", params)
    assert (b.queries_used, b.queries_remaining, b.answers_remaining) == (2, 0, 0)


def test_noiseless_tier_passes_values_through(guard: PrivacyGuard) -> None:
    adm = guard.admit("eng", "m", "v1", PrivacyParams(), np.zeros(3))
    out, info = guard.noise(adm, np.array([5.0, 0.0, 0.0]))
    np.testing.assert_array_equal(out, [5.0, 0.0, 0.0])
    assert info.noise_std == 0.0
    guard.commit(adm)
    assert guard.remaining("eng", "m", PrivacyParams()).answers_remaining is None


def test_monitor_block_and_downgrade(tmp_path: Path) -> None:
    mon = ExtractionMonitor()
    guard = PrivacyGuard(SqliteLedger(tmp_path / "l.db"), SECRET, mon)
    block = PrivacyParams(monitor=ExtractionMonitorParams(window=10, threshold=0.8))
    mp = ExtractionMonitorParams(window=10, threshold=0.8, action="downgrade", downgrade_to="fa/summary")
    down = PrivacyParams(monitor=mp)
    probes = [np.eye(5)[i % 5] * (1 + 0.1 * (i // 5)) for i in range(40)]
    with pytest.raises(PermissionDenied) as err:
        for x in probes:
            guard.release(guard.admit("thief", "m", "v1", block, x))
    assert err.value.reasons == ("extraction_monitor",)
    adm = None
    for x in probes:
        adm = guard.admit("thief2", "m", "v1", down, x)
        if adm.downgrade_to:
            break
        guard.release(adm)
    assert adm is not None and adm.downgrade_to == "fa/summary" and adm.reservation is None
    with pytest.raises(InternalError):
        guard.commit(adm)
    stricter = PrivacyParams(noise_multiplier=2.0, lifetime_queries=5)
    guard.commit(guard.admit("thief2", "m", "v1", stricter, probes[0], observe=False))
    assert guard.remaining("thief2", "m", stricter).queries_used == 1


def test_unreachable_ledger_fails_closed() -> None:
    guard = PrivacyGuard(RedisLedger("redis://127.0.0.1:1/0", socket_timeout_s=0.2), SECRET)
    with pytest.raises(Unavailable):
        guard.admit("a", "m", "v1", PrivacyParams(lifetime_queries=3), np.zeros(2))


def test_monitor_refusals_hold_nothing_and_win_over_an_empty_budget(tmp_path: Path) -> None:
    """The ledger is asked before the monitor (one round trip for rate and budget);
    the checks still mean what they did one by one."""
    ledger = SqliteLedger(tmp_path / "l.db")
    mon = ExtractionMonitor()
    guard = PrivacyGuard(ledger, SECRET, mon)
    mp = ExtractionMonitorParams(window=10, threshold=0.8, action="downgrade", downgrade_to="fa/summary")
    params = PrivacyParams(lifetime_queries=100, monitor=mp)
    probes = [np.eye(5)[i % 5] * (1 + 0.1 * (i // 5)) for i in range(40)]
    for x in probes:
        adm = guard.admit("thief", "m", "v1", params, x)
        if adm.downgrade_to:
            break
        guard.commit(adm)
    assert adm.downgrade_to and adm.reservation is None
    assert ledger.usage("thief", "m").reserved_queries == 0  # the reservation made before the alarm is back
    used = ledger.usage("thief", "m").queries
    assert guard.admit("thief", "m", "v1", params, probes[0] * 3).downgrade_to  # sticky
    assert ledger.usage("thief", "m") == Usage(used, 0.0, 0, 0.0)
    # a blocked caller is told so even when its budget is spent as well
    spent = PrivacyParams(lifetime_queries=0, monitor=ExtractionMonitorParams(window=10, threshold=0.8))
    with pytest.raises(PermissionDenied):
        for x in probes:
            with pytest.raises(BudgetExhausted):
                guard.admit("thief2", "m", "v1", spent, x)
    # a rate-limited query is refused before the monitor sees it
    limited = PrivacyParams(rate_per_minute=0.001, burst=1, monitor=ExtractionMonitorParams(window=10))
    guard.release(guard.admit("u", "m", "v1", limited, np.ones(3)))
    with pytest.raises(RateLimited):
        guard.admit("u", "m", "v1", limited, np.zeros(3))
    assert len(mon._series[("u", "m", -1)].history) == 1


def test_fault_injection_hold_is_off_by_default_and_read_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from desiderata.policy.guard import FAULT_HOLD_AFTER_ADMIT_ENV

    monkeypatch.delenv(FAULT_HOLD_AFTER_ADMIT_ENV, raising=False)
    assert PrivacyGuard(SqliteLedger(tmp_path / "a.db"), SECRET)._hold_s == 0.0
    monkeypatch.setenv(FAULT_HOLD_AFTER_ADMIT_ENV, "0.2")
    guard = PrivacyGuard(SqliteLedger(tmp_path / "b.db"), SECRET)
    started = time.monotonic()
    adm = guard.admit("a", "m", "v1", PrivacyParams(lifetime_queries=1), np.zeros(2))
    assert time.monotonic() - started >= 0.2 and adm.reservation is not None
    monkeypatch.setenv(FAULT_HOLD_AFTER_ADMIT_ENV, "-1")
    with pytest.raises(ValueError):
        PrivacyGuard(SqliteLedger(tmp_path / "c.db"), SECRET)
