"""PRADA-style model-extraction monitor (Juuti et al., "PRADA: Protecting
against DNN Model Stealing Attacks", EuroS&P 2019).

Why: extraction attacks need many *synthetic* queries (perturbations of a few
seeds, points along axes or decision boundaries), and the distances between
such queries are not distributed like those of natural inputs. For each new
query of a principal we take its minimum L2 distance to that principal's
earlier queries (overall, or per predicted class as in PRADA); once the window
is full, a Shapiro–Wilk test on the last `window` distances gives W, and
W < threshold raises an alarm. Natural queries give near-normal distances
(W close to 1); synthetic series do not.

The alarm is sticky (an attacker cannot wash it out with benign queries) and
turns into the tier's action: "downgrade" to a named stricter tier or "block".
State is bounded: at most `history` vectors and `window` distances per
(principal, model, class), and at most `max_principals` tracked series (least
recently used dropped first). State is per process; see the report for
sharing it across replicas.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

from desiderata.policy.privacy_params import ExtractionMonitorParams

__all__ = ["ExtractionMonitor", "MonitorVerdict"]

Action = Literal["allow", "downgrade", "block"]


@dataclass(frozen=True)
class MonitorVerdict:
    """The monitor's answer for one query.

    Args:
        action: "allow", "downgrade" or "block".
        statistic: the latest Shapiro–Wilk W, or None before the window is full.
        downgrade_to: tier to serve when action is "downgrade".
        alarmed_now: whether this query raised the alarm (audit it once).
    """

    action: Action
    statistic: float | None = None
    downgrade_to: str = ""
    alarmed_now: bool = False


@dataclass
class _Series:
    history: deque[np.ndarray]
    distances: deque[float]
    statistic: float | None = None
    alarmed: bool = False


class ExtractionMonitor:
    """Per-principal PRADA test with bounded memory; thread-safe.

    Args:
        max_principals: tracked (principal, model, class) series before LRU eviction.
    """

    def __init__(self, max_principals: int = 10_000) -> None:
        if max_principals < 1:
            raise ValueError("max_principals must be ≥ 1")
        self._max = max_principals
        self._series: OrderedDict[tuple[str, str, int], _Series] = OrderedDict()
        self._alarmed: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def observe(
        self,
        principal: str,
        model: str,
        x: np.ndarray,
        params: ExtractionMonitorParams,
        label: int | None = None,
    ) -> MonitorVerdict:
        """Records one query and returns what to do with it.

        Args:
            principal: principal id.
            model: model name.
            x: encoded query, shape ``(n_columns,)``.
            params: the tier's monitor settings.
            label: predicted class when `params.per_class`, else ignored.
        """
        if not params.enabled:
            return MonitorVerdict("allow")
        v = np.asarray(x, dtype=np.float64).ravel()
        cls = int(label) if params.per_class and label is not None else -1
        key = (principal, model, cls)
        alarmed_now = False
        with self._lock:
            s = self._series.get(key)
            if s is None or s.history.maxlen != params.history or s.distances.maxlen != params.window:
                s = _Series(deque(maxlen=params.history), deque(maxlen=params.window))
                self._series[key] = s
            self._series.move_to_end(key)
            while len(self._series) > self._max:
                self._series.popitem(last=False)
            if s.history and s.history[0].shape == v.shape:
                d = float(np.min(np.linalg.norm(np.stack(s.history) - v, axis=1)))
                s.distances.append(d)
            s.history.append(v)
            if len(s.distances) >= params.window:
                s.statistic = _shapiro_w(np.fromiter(s.distances, dtype=np.float64))
                if s.statistic < params.threshold and (principal, model) not in self._alarmed:
                    self._alarmed[(principal, model)] = s.statistic
                    alarmed_now = True
                    while len(self._alarmed) > self._max:
                        self._alarmed.popitem(last=False)
            alarmed = (principal, model) in self._alarmed
            statistic = s.statistic
        if not alarmed:
            return MonitorVerdict("allow", statistic)
        if params.action == "block":
            return MonitorVerdict("block", statistic, alarmed_now=alarmed_now)
        return MonitorVerdict("downgrade", statistic, params.downgrade_to, alarmed_now)

    def alarmed(self, principal: str, model: str) -> bool:
        """Whether (principal, model) is under a (sticky) alarm: every further query is
        refused or downgraded, whatever it is."""
        with self._lock:
            return (principal, model) in self._alarmed

    def reset(self, principal: str, model: str) -> None:
        """Clears a principal's alarm and history (an operator decision, audited by the caller)."""
        with self._lock:
            self._alarmed.pop((principal, model), None)
            for key in [k for k in self._series if k[:2] == (principal, model)]:
                del self._series[key]


def _shapiro_w(distances: np.ndarray) -> float:
    """Shapiro–Wilk W; identical distances (zero range) are maximally non-normal."""
    if float(np.ptp(distances)) == 0.0:
        return 0.0
    return float(stats.shapiro(distances).statistic)
