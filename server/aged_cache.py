"""A thread-safe LRU bounded by size and by age, for caches of data derived from people's records.

Why: the answer cache and the global views' row cache hold explanations
computed from end users' feature values. Retention and erasure delete the
records from the stores, but an erasure run by the CLI happens in another
process and cannot reach a running server's memory, and a size bound alone
lets an entry live as long as the server when traffic is light. With an age
bound, whatever a cache derived from a record is gone at most `max_age_s`
after it was computed, on every replica: `get` never returns an older entry,
and `sweep` (the server runs it on a schedule) drops them from memory.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, Protocol, TypeVar

import structlog

__all__ = ["AgedLru", "Sweepable", "sweep_interval", "watch_ages"]

log = structlog.get_logger("desiderata.cache")

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class AgedLru(Generic[K, V]):
    """Least-recently-used entries beyond `size` are evicted; entries older than `max_age_s`
    (counted from when they were stored) are never returned.

    Args:
        size: most entries held; 0 stores nothing.
        max_age_s: seconds an entry may be returned after it was stored; 0: no age limit.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, size: int, max_age_s: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        if size < 0:
            raise ValueError("a cache size must be ≥ 0")
        if max_age_s < 0:
            raise ValueError("a cache's maximum age must be ≥ 0 seconds (0: no limit)")
        self.size = size
        self.max_age_s = max_age_s
        self._clock = clock
        self._entries: OrderedDict[K, tuple[V, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def _fresh(self, stored_at: float, now: float) -> bool:
        return self.max_age_s == 0 or now - stored_at < self.max_age_s

    def get(self, key: K) -> V | None:
        """The entry of `key` (now the most recently used), or None when absent or too old."""
        now = self._clock()
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                return None
            if not self._fresh(found[1], now):
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return found[0]

    def get_many(self, keys: list[K]) -> list[V | None]:
        """`get` of each key under one lock; found entries become the most recently used."""
        now = self._clock()
        out: list[V | None] = []
        with self._lock:
            for key in keys:
                found = self._entries.get(key)
                if found is not None and not self._fresh(found[1], now):
                    del self._entries[key]
                    found = None
                if found is not None:
                    self._entries.move_to_end(key)
                out.append(None if found is None else found[0])
        return out

    def put(self, key: K, value: V) -> None:
        """Stores `value` under `key` as of now, evicting the least recently used beyond `size`."""
        self.put_many([(key, value)])

    def put_many(self, items: list[tuple[K, V]]) -> None:
        """`put` of each pair under one lock."""
        if self.size == 0:
            return
        now = self._clock()
        with self._lock:
            for key, value in items:
                self._entries[key] = (value, now)
                self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def sweep(self) -> int:
        """Drops every entry older than `max_age_s`; returns how many went."""
        if self.max_age_s == 0:
            return 0
        now = self._clock()
        with self._lock:
            old = [k for k, (_, stored_at) in self._entries.items() if not self._fresh(stored_at, now)]
            for k in old:
                del self._entries[k]
        return len(old)


class Sweepable(Protocol):
    """A cache whose expired entries can be dropped."""

    def sweep(self) -> int: ...


def sweep_interval(max_age_s: float) -> float:
    """Seconds between sweeps for a maximum age: a quarter of it, at most a minute; 0 for none."""
    return 0.0 if max_age_s <= 0 else min(max_age_s / 4, 60.0)


async def watch_ages(caches: Sequence[Sweepable], interval_s: float) -> None:
    """Sweeps `caches` every `interval_s` until cancelled, so that an idle server, whose
    caches see no `get`, also lets its old entries go."""
    while True:
        await asyncio.sleep(interval_s)
        dropped = await asyncio.to_thread(lambda: sum(c.sweep() for c in caches))
        if dropped:
            log.debug("cache_entries_expired", entries=dropped)
