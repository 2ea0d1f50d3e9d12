"""Serving new model versions without a restart: the periodic rescan of the model repository.

Why: a deployment publishes model versions far more often than it upgrades
the server, and a restart drops in-flight explanations and every warm cache.
With `models.reload_interval_s` set, the server rescans its repository on that
schedule (`ModelRepository.refresh`, whose notes give the rules: new folders
once they stop changing, removed ones unloaded, versions immutable, broken
ones refused without touching what is served).

Each rescan runs on a thread of its own (loading a program takes a while), one
at a time. What it changed is reported by `ModelReloads`: log events
(`model_loaded`, `model_unloaded`, `model_served`, `model_refused`, from the
repository), metrics (`Metrics.model_reload`: alert `DesiderataModelRefused`),
and the sample-importance indexes of the new versions, built in the background
as at start-up. A failed rescan is logged and the schedule goes on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import structlog

from desiderata.server.metrics import Metrics
from desiderata.server.model_repository import ModelRepository, RepositoryChange
from desiderata.server.precompute import Precompute, start_precompute

__all__ = ["ModelReloads", "watch_models"]

log = structlog.get_logger("desiderata.models")


@dataclass
class ModelReloads:
    """What the server does with each change of its repository.

    Args:
        repository: the served models.
        metrics: where reloads are counted (None: not counted).
        precompute: build the new versions' sample-importance indexes in the background.
    """

    repository: ModelRepository
    metrics: Metrics | None = None
    precompute: bool = True
    builds: list[Precompute] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.metrics is not None:
            self.metrics.models(self.repository.handles(), self.repository.served())

    def apply(self, change: RepositoryChange) -> None:
        """Reports `change` and starts the new versions' index builds."""
        if self.metrics is not None:
            self.metrics.model_reload(change)
            self.metrics.models(self.repository.handles(), self.repository.served())
        if self.precompute and change.loaded:
            self.builds = [b for b in self.builds if not b.done.is_set()]
            self.builds.append(start_precompute(change.loaded))

    def stop(self, timeout_s: float) -> bool:
        """Stops the index builds it started; True when all ended."""
        return all([b.stop(timeout_s) for b in self.builds])


async def watch_models(repository: ModelRepository, interval_s: float, reloads: ModelReloads) -> None:
    """Rescans `repository` every `interval_s` seconds until cancelled.

    Cancelling does not interrupt a rescan already on its thread: the
    repository's `close` waits for it.
    """
    while True:
        await asyncio.sleep(interval_s)
        try:
            change = await asyncio.to_thread(repository.refresh)
        except Exception:
            log.exception("model_rescan_failed", path=str(repository.path))
            continue
        if change:
            reloads.apply(change)
