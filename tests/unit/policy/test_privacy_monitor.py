"""PRADA monitor: natural queries pass, synthetic extraction series are caught,
alarms are sticky and state is bounded."""

from __future__ import annotations

import numpy as np
import pytest

from desiderata.policy.extraction_monitor import ExtractionMonitor
from desiderata.policy.privacy_params import ExtractionMonitorParams

BLOCK = ExtractionMonitorParams(window=50, threshold=0.8, action="block")
DOWN = ExtractionMonitorParams(window=50, threshold=0.8, action="downgrade", downgrade_to="fa/summary")


def test_natural_queries_are_allowed() -> None:
    rng = np.random.default_rng(7)
    mon = ExtractionMonitor()
    for p in range(8):
        verdicts = [mon.observe(f"user{p}", "m", rng.normal(size=20), BLOCK) for _ in range(200)]
        assert {v.action for v in verdicts} == {"allow"}
        assert verdicts[-1].statistic is not None and verdicts[-1].statistic > 0.8
    assert verdicts[10].statistic is None  # window not full yet


def test_axis_probing_is_blocked_and_stays_blocked() -> None:
    mon = ExtractionMonitor()
    verdicts = []
    for i in range(120):
        x = np.zeros(20)
        x[i % 20] = 1.0 + 0.1 * (i // 20)
        verdicts.append(mon.observe("thief", "m", x, BLOCK))
    assert verdicts[-1].action == "block"
    assert sum(v.alarmed_now for v in verdicts) == 1
    assert all(v.action == "allow" for v in verdicts[:50])
    rng = np.random.default_rng(0)
    assert mon.observe("thief", "m", rng.normal(size=20), BLOCK).action == "block"
    assert mon.observe("thief", "other-model", rng.normal(size=20), BLOCK).action == "allow"
    mon.reset("thief", "m")
    assert mon.observe("thief", "m", rng.normal(size=20), BLOCK).action == "allow"


def test_seed_perturbation_is_downgraded() -> None:
    rng = np.random.default_rng(3)
    seeds = rng.normal(size=(5, 20))
    mon = ExtractionMonitor()
    last = None
    for i in range(200):
        last = mon.observe("thief", "m", seeds[i % 5] + 0.01 * (i // 5) * rng.normal(size=20), DOWN)
    assert last is not None and last.action == "downgrade" and last.downgrade_to == "fa/summary"


def test_state_is_bounded() -> None:
    params = ExtractionMonitorParams(window=5, threshold=0.8, history=7)
    mon = ExtractionMonitor(max_principals=3)
    rng = np.random.default_rng(1)
    for p in range(10):
        for _ in range(20):
            mon.observe(f"u{p}", "m", rng.normal(size=4), params)
    series = mon._series  # bounded internals checked directly
    assert len(series) == 3
    assert all(len(s.history) <= 7 and len(s.distances) <= 5 for s in series.values())
    off = ExtractionMonitorParams(enabled=False)
    assert ExtractionMonitor().observe("x", "m", np.zeros(3), off).action == "allow"


def test_incremental_w_matches_scipy_shapiro() -> None:
    """The sorted window and cached coefficients give scipy's Shapiro–Wilk W."""
    from scipy import stats

    from desiderata.policy.extraction_monitor import _shapiro_w

    rng = np.random.default_rng(5)
    for n in (3, 4, 5, 6, 7, 11, 50, 51, 400):
        for x in (rng.normal(size=n), rng.exponential(size=n), np.abs(rng.normal(size=n)) ** 3):
            assert _shapiro_w(sorted(x.tolist())) == pytest.approx(float(stats.shapiro(x).statistic), abs=1e-8)
    assert _shapiro_w([2.0, 2.0, 2.0]) == 0.0


def test_monitor_statistic_is_the_shapiro_w_of_the_last_window_of_nearest_distances() -> None:
    """Same answers as the direct computation: nearest earlier query over the kept
    history (a ring), then W over the last `window` distances."""
    from scipy import stats

    params = ExtractionMonitorParams(window=8, threshold=0.01, history=20)
    rng = np.random.default_rng(11)
    mon = ExtractionMonitor()
    seen: list[np.ndarray] = []
    distances: list[float] = []
    for _ in range(70):
        x = rng.normal(size=6)
        if seen:
            distances.append(float(np.min(np.linalg.norm(np.stack(seen[-20:]) - x, axis=1))))
        seen.append(x)
        verdict = mon.observe("u", "m", x, params)
        if len(distances) >= 8:
            expected = float(stats.shapiro(distances[-8:]).statistic)
            assert verdict.statistic == pytest.approx(expected, abs=1e-8)
        else:
            assert verdict.statistic is None


def test_nearest_distance_is_exact_for_near_duplicates_far_from_the_origin() -> None:
    """The ranking shortcut (‖r‖² − 2r·v) loses digits far from the origin; the
    nearest distance must still be the directly measured one, duplicates included."""
    from desiderata.policy.extraction_monitor import _Series

    rng = np.random.default_rng(5)
    series = _Series(history=300, window=10, dim=8)
    kept = 1e6 + rng.normal(size=(300, 8))
    for row in kept:
        series.remember(row)
    for probe in (kept[17], kept[42] + 1e-7, kept[99] + rng.normal(size=8) * 1e-3, 1e6 + rng.normal(size=8)):
        direct = float(np.min(np.linalg.norm(kept - probe, axis=1)))
        assert series.nearest(probe) == pytest.approx(direct, rel=1e-9, abs=1e-12)
