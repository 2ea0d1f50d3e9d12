"""The size- and age-bounded LRU behind the answer cache and the row cache: an entry is never
returned past its age, touching it does not make it younger, and a sweep frees old entries
from an idle cache."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from desiderata.explainers.base import ExplainContext
from desiderata.server.aged_cache import AgedLru, sweep_interval, watch_ages
from desiderata.server.global_views import RowAttributions
from tests.unit.explainers.attribution_models import Identity2, TorchModel, numeric, reference_rows


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_is_served_until_its_age_and_never_after() -> None:
    clock = Clock()
    cache: AgedLru[str, int] = AgedLru(10, max_age_s=60, clock=clock)
    cache.put("a", 1)
    clock.now += 59.9
    assert cache.get("a") == 1
    clock.now += 0.1
    assert cache.get("a") is None
    assert len(cache) == 0  # a stale get also frees it


def test_use_does_not_make_an_entry_younger_but_storing_it_again_does() -> None:
    clock = Clock()
    cache: AgedLru[str, int] = AgedLru(10, max_age_s=60, clock=clock)
    cache.put("a", 1)
    for _ in range(5):
        clock.now += 11
        assert cache.get("a") == 1
    clock.now += 6  # 61 s after it was stored, 6 s after its last use
    assert cache.get("a") is None
    cache.put("a", 2)
    clock.now += 59
    assert cache.get_many(["a", "b"]) == [2, None]


def test_sweep_drops_only_the_old_entries() -> None:
    clock = Clock()
    cache: AgedLru[str, int] = AgedLru(10, max_age_s=60, clock=clock)
    cache.put_many([("a", 1), ("b", 2)])
    clock.now += 30
    cache.put("c", 3)
    clock.now += 31
    assert cache.sweep() == 2
    assert len(cache) == 1 and cache.get("c") == 3


def test_no_age_limit_keeps_entries_until_evicted_by_size() -> None:
    clock = Clock()
    cache: AgedLru[str, int] = AgedLru(2, max_age_s=0, clock=clock)
    cache.put("a", 1)
    cache.put("b", 2)
    clock.now += 1e9
    assert cache.sweep() == 0
    assert cache.get("a") == 1  # now the most recent
    cache.put("c", 3)
    assert cache.get_many(["a", "b", "c"]) == [1, None, 3]


def test_size_zero_stores_nothing_and_bad_bounds_are_refused() -> None:
    cache: AgedLru[str, int] = AgedLru(0, max_age_s=60)
    cache.put("a", 1)
    assert len(cache) == 0 and cache.get("a") is None
    with pytest.raises(ValueError, match="size"):
        AgedLru(-1)
    with pytest.raises(ValueError, match="age"):
        AgedLru(1, max_age_s=-1)


def test_sweep_interval_is_a_quarter_of_the_age_and_at_most_a_minute() -> None:
    assert sweep_interval(0) == 0
    assert sweep_interval(20) == 5
    assert sweep_interval(3600) == 60


async def test_an_idle_cache_is_swept_on_schedule() -> None:
    cache: AgedLru[str, int] = AgedLru(10, max_age_s=0.05)
    cache.put("a", 1)
    watch = asyncio.create_task(watch_ages([cache], 0.02))
    try:
        for _ in range(200):  # no get: only the watch can free it
            if len(cache) == 0:
                break
            await asyncio.sleep(0.01)
        assert len(cache) == 0
    finally:
        watch.cancel()


def test_a_row_past_its_age_is_explained_again(explained: list[int]) -> None:
    clock = Clock()
    rows_cache = RowAttributions(capacity=100, max_age_s=60, clock=clock)
    model = TorchModel(Identity2(torch.ones(3), 0.0), numeric(3), reference_rows(50, 3, 0, 1), name="lin")
    x = np.random.default_rng(0).normal(size=(4, 3))
    first = rows_cache.get(model, ["a", "b", "c", "d"], x.__getitem__, np.ones(4, dtype=int), ExplainContext())
    clock.now += 30
    rows_cache.get(model, ["a", "b", "c", "d"], x.__getitem__, np.ones(4, dtype=int), ExplainContext())
    assert sum(explained) == 4  # reused
    clock.now += 31
    again = rows_cache.get(model, ["a", "b", "c", "d"], x.__getitem__, np.ones(4, dtype=int), ExplainContext())
    assert sum(explained) == 8  # explained again, to the same answer (each row seeded by its key)
    np.testing.assert_allclose(again, first)
