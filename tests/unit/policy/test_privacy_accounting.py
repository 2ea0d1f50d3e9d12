"""Accounting: the ledger's ε equals Opacus' RDP accountant's for the same history,
and the ε cap refuses the overflowing query before any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from desiderata.policy.accounting import (
    accountant_from_history,
    epsilon_from_rho,
    gaussian_rho,
    rho_budget,
    rho_from_history,
)
from desiderata.policy.guard import PrivacyGuard
from desiderata.policy.ledger import Limits
from desiderata.policy.ledger_sqlite import SqliteLedger
from desiderata.policy.privacy_params import PrivacyParams
from desiderata.server.errors import BudgetExhausted

SECRET = b"0123456789abcdef-test-secret"


def test_ledger_epsilon_equals_opacus_accountant(tmp_path: Path) -> None:
    history = [(1.0, 3), (2.5, 4), (0.8, 2), (1.0, 1)]
    led = SqliteLedger(tmp_path / "l.db")
    for z, n in history:
        for _ in range(n):
            led.commit(led.reserve("a", "m", queries=1, rho=gaussian_rho(z), limits=Limits(), ttl_s=30))
    acc = accountant_from_history(history)
    rho = led.usage("a", "m").rho
    assert rho == pytest.approx(rho_from_history(acc.history), rel=1e-12)
    for delta in (1e-5, 1e-7):
        assert epsilon_from_rho(rho, delta) == pytest.approx(acc.get_epsilon(delta), rel=1e-9)
    assert epsilon_from_rho(0.0, 1e-5) == 0.0 == accountant_from_history([]).get_epsilon(1e-5)


def test_rho_budget_is_the_tight_inverse() -> None:
    for eps in (0.5, 3.0, 40.0):
        r = rho_budget(eps, 1e-5)
        assert epsilon_from_rho(r, 1e-5) <= eps
        assert epsilon_from_rho(r * (1 + 1e-6), 1e-5) > eps


def test_epsilon_cap_refuses_before_work_and_reports_remaining(tmp_path: Path) -> None:
    z, delta = 1.0, 1e-5
    eps = epsilon_from_rho(3 * gaussian_rho(z), delta)  # exactly three answers fit
    params = PrivacyParams(clip_norm=1.0, noise_multiplier=z, delta=delta, lifetime_epsilon=eps)
    guard = PrivacyGuard(SqliteLedger(tmp_path / "l.db"), SECRET)
    left = []
    for i in range(3):
        adm = guard.admit("a", "m", "v1", params, np.full(4, float(i)), method="ig")
        guard.commit(adm)
        left.append(guard.remaining("a", "m", params).answers_remaining)
    assert left == [2, 1, 0]
    with pytest.raises(BudgetExhausted) as err:
        guard.admit("a", "m", "v1", params, np.full(4, 9.0), method="ig")
    assert "epsilon" in err.value.violations[0].description
    b = guard.remaining("a", "m", params)
    assert b.privacy.epsilon == pytest.approx(eps, rel=1e-9)
    assert b.privacy.epsilon_remaining == pytest.approx(0.0, abs=1e-9)
    assert b.queries_used == 3


def test_params_refuse_epsilon_without_noise() -> None:
    with pytest.raises(ValueError, match="noise_multiplier"):
        PrivacyParams(noise_multiplier=0.0, lifetime_epsilon=1.0)
    with pytest.raises(ValueError, match="downgrade_to"):
        PrivacyParams.model_validate({"monitor": {"action": "downgrade"}})
