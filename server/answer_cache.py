"""A bounded LRU cache of raw explanations, keyed by everything that determines them.

Identical requests — same model version, same encoded input, same method and
parameters, same seed — get the same raw explanation, so a repeat is answered
without running the explainer again. The key also holds the caller's tier and
a fingerprint of its disclosure profile, so an entry is never served across
principals whose disclosure differs (and a policy reload that changes a
profile starts a fresh set of keys).

Only the *raw* explanation is cached: the pipeline still admits (and charges)
every request before looking here, and still applies noise and disclosure to
the cached answer, so privacy accounting is the same whether or not it hits.
An entry is served for at most `explain.cache_max_age_s` after it was
computed (it derives from the features it explains; see `aged_cache`).
Thread-safe: worker threads read and write it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from desiderata.explainers.types import Explanation
from desiderata.policy.profiles import DisclosureProfile
from desiderata.server.aged_cache import AgedLru
from desiderata.server.serving import params_dict

__all__ = ["AnswerCache", "AnswerKey"]


@dataclass(frozen=True)
class AnswerKey:
    """What determines a raw explanation and who may see it (hashable)."""

    model: str
    version: str
    input_digest: bytes
    method: str
    params: str
    seed: int
    tier: str
    profile: str


class AnswerCache:
    """LRU of raw explanations, bounded by size and by age (see `aged_cache`).

    Args:
        size: most entries held; 0 disables the cache (nothing is stored).
        max_age_s: seconds an entry is served after it was computed; 0: no age limit.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, size: int, max_age_s: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        if size < 0:
            raise ValueError("the answer cache size must be ≥ 0")
        self.size = size
        self.hits = 0
        self.misses = 0
        self._entries: AgedLru[AnswerKey, Explanation] = AgedLru(size, max_age_s, clock)
        self._lock = threading.Lock()
        self._profiles: dict[int, tuple[DisclosureProfile, str]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def key(
        self,
        *,
        model: str,
        version: str,
        x: np.ndarray,
        method: str,
        params: Any,
        seed: int,
        tier: str,
        profile: DisclosureProfile,
    ) -> AnswerKey:
        """The key of a request: model version, encoded input, method, parameters, seed, tier, profile."""
        row = np.ascontiguousarray(x)
        digest = hashlib.blake2b(row.tobytes(), digest_size=16)
        digest.update(f"{row.dtype.str}{row.shape}".encode())
        described = f"{type(params).__name__}{sorted(params_dict(params).items())!r}"
        return AnswerKey(model, version, digest.digest(), method, described, seed, tier, self._fingerprint(profile))

    def get(self, key: AnswerKey) -> Explanation | None:
        """The cached explanation of `key` (now most recently used), or None."""
        found = self._entries.get(key)
        with self._lock:
            if found is None:
                self.misses += 1
            else:
                self.hits += 1
        return found

    def put(self, key: AnswerKey, explanation: Explanation) -> None:
        """Stores `explanation` under `key`, evicting the least recently used beyond `size`."""
        self._entries.put(key, explanation)

    def sweep(self) -> int:
        """Drops the entries past their age; returns how many went."""
        return self._entries.sweep()

    def _fingerprint(self, profile: DisclosureProfile) -> str:
        # Profiles are immutable objects of the loaded bundle: fingerprint each once.
        with self._lock:
            known = self._profiles.get(id(profile))
            if known is not None and known[0] is profile:
                return known[1]
        text = hashlib.blake2b(profile.model_dump_json().encode(), digest_size=16).hexdigest()
        with self._lock:
            if len(self._profiles) > 256:
                self._profiles.clear()
            self._profiles[id(profile)] = (profile, text)
        return text
