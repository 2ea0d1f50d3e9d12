"""Prometheus metrics: what an operator of several replicas watches.

Why: the access log says what happened to one call; running the server
needs rates and distributions — calls and their status codes, latency, how
often calls are refused and why (rate limits, spent budgets, policy),
which explanations are served at which tier and how long the explainers
take, how well the answer cache does, and whether every store answers.
They are exposed in Prometheus' text format on their own HTTP port
(`MetricsSettings`), scraped like any other exporter.

What labels may carry: RPC method names, status and error codes, model
names, explanation kinds and methods, tiers and store names — all bounded by
the configuration. Never a principal, subject, request id or feature value:
those would leak who asked what (and end users' data) to anyone who can
scrape, and make the series unbounded.

Every server owns its registry (tests run several servers in one process).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from threading import Thread
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from desiderata.server.attribution_drift import AttributionDrift
    from desiderata.server.model_handle import ModelHandle
    from desiderata.server.model_repository import RepositoryChange

__all__ = ["Metrics", "MetricsEndpoint"]

_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Histogram buckets (s): from a cached IG answer (~1 ms) to a counterfactual search (seconds)."""


class Metrics:
    """The server's metrics, in a registry of their own.

    Args:
        process: also export the process' CPU, memory, file descriptors and GC
            (Prometheus' standard process collectors).
    """

    def __init__(self, *, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        if process:
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                self.registry.register(collector)
        r = self.registry
        self.rpcs = Counter(
            "desiderata_rpcs", "Finished RPCs by method and gRPC status code.", ["method", "code"], registry=r
        )
        self.rpc_seconds = Histogram(
            "desiderata_rpc_duration_seconds",
            "RPC latency on the server, by method.",
            ["method"],
            buckets=_SECONDS,
            registry=r,
        )
        self.errors = Counter(
            "desiderata_rpc_errors",
            "Calls refused or failed, by the error's stable code (rate_limited, budget_exhausted, "
            "permission_denied, invalid_argument, unavailable, internal, ...).",
            ["code"],
            registry=r,
        )
        self.explanations = Counter(
            "desiderata_explanations",
            "Explanations served, by model, kind, method, disclosure tier and whether noise was added.",
            ["model", "kind", "method", "tier", "noised"],
            registry=r,
        )
        self.explainer_seconds = Histogram(
            "desiderata_explainer_seconds",
            "Explainer compute time of answers not taken from the answer cache, by method.",
            ["method"],
            buckets=_SECONDS,
            registry=r,
        )
        self.model_rows = Counter(
            "desiderata_model_rows", "Model rows evaluated by explainers, by model.", ["model"], registry=r
        )
        self.coalesced_calls = Histogram(
            "desiderata_coalesced_calls",
            "Unary calls a worker explained together from the coalescing queue (1: alone).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.answer_cache = Counter(
            "desiderata_answer_cache_lookups", "Answer-cache lookups by result (hit, miss).", ["result"], registry=r
        )
        self.drift_decisions = Gauge(
            "desiderata_attribution_drift_decisions",
            "Recorded decisions of the served version compared in the last drift check (fewer than 20: no check).",
            ["model"],
            registry=r,
        )
        self.drift_features = Gauge(
            "desiderata_attribution_drift_features",
            "Features whose attributions drifted from the training reference in the last check "
            "(two-sample KS, Bonferroni-adjusted at 0.05).",
            ["model"],
            registry=r,
        )
        self.drift_distance = Gauge(
            "desiderata_attribution_drift_share_distance",
            "Total-variation distance between the importance profiles of recent decisions and the reference.",
            ["model"],
            registry=r,
        )
        self.drift_threshold = Gauge(
            "desiderata_attribution_drift_share_threshold",
            "The share distance that random splits exceed with probability 0.05 (permutation test).",
            ["model"],
            registry=r,
        )
        self.store_up = Gauge(
            "desiderata_store_up",
            "1 while the store answered its last readiness probe, 0 while it does not.",
            ["store"],
            registry=r,
        )
        self.model_loaded = Gauge(
            "desiderata_model_versions_loaded", "Versions of the model loaded and answering.", ["model"], registry=r
        )
        self.model_served = Gauge(
            "desiderata_model_served_info",
            "1 for the version a request without model_version gets (compare replicas to find skew).",
            ["model", "version"],
            registry=r,
        )
        self.model_reloads = Counter(
            "desiderata_model_reloads",
            "Model folders the repository rescan loaded, unloaded or refused (broken, or a version changed in place).",
            ["outcome"],
            registry=r,
        )
        self.decisions_expired = Counter(
            "desiderata_decisions_expired",
            "Recorded decisions deleted after store.decisions_retention_days.",
            registry=r,
        )
        self.feedback_expired = Counter(
            "desiderata_feedback_expired",
            "Feedback deleted after store.feedback_retention_days.",
            registry=r,
        )
        self.decisions_not_reproduced = Counter(
            "desiderata_decisions_not_reproduced",
            "ExplainDecision calls whose recorded probabilities the loaded model version no longer gives.",
            ["model", "version"],
            registry=r,
        )
        for outcome in ("loaded", "unloaded", "refused"):  # from 0, so increase() sees the first refusal
            self.model_reloads.labels(outcome)
        self._names: set[str] = set()
        self._served: set[tuple[str, str]] = set()

    def rpc(self, method: str, code: str, seconds: float, error_code: str = "") -> None:
        """One finished RPC.

        Args:
            method: full gRPC method name.
            code: gRPC status code name ("OK", "INVALID_ARGUMENT", ...).
            seconds: time from the call's arrival to its answer.
            error_code: the error's stable code when the call failed (`DesiderataError.code`).
        """
        self.rpcs.labels(method, code).inc()
        self.rpc_seconds.labels(method).observe(seconds)
        if error_code:
            self.errors.labels(error_code).inc()

    def explanation(
        self, *, model: str, kind: str, method: str, tier: str, noised: bool, cached: bool, seconds: float, rows: int
    ) -> None:
        """One served explanation.

        Args:
            model: model name.
            kind: explanation kind.
            method: explainer name.
            tier: disclosure tier decided by policy.
            noised: whether output noise was added.
            cached: whether the raw answer came from the answer cache.
            seconds: explainer compute time (not counted for a cached answer).
            rows: model rows the explainer evaluated (not counted for a cached answer).
        """
        self.explanations.labels(model, kind, method, tier, "true" if noised else "false").inc()
        self.answer_cache.labels("hit" if cached else "miss").inc()
        if not cached:
            self.explainer_seconds.labels(method).observe(seconds)
            self.model_rows.labels(model).inc(rows)

    def drift(self, model: str, decisions: int, result: AttributionDrift | None) -> None:
        """One model's drift check: `result` is None when too few decisions were recorded."""
        self.drift_decisions.labels(model).set(decisions)
        if result is None:
            for gauge in (self.drift_features, self.drift_distance, self.drift_threshold):
                with contextlib.suppress(KeyError):  # no earlier check to forget
                    gauge.remove(model)
            return
        self.drift_features.labels(model).set(sum(f.drifted for f in result.features))
        self.drift_distance.labels(model).set(result.share_distance)
        self.drift_threshold.labels(model).set(result.share_threshold)

    def models(self, loaded: Sequence[ModelHandle], served: Sequence[ModelHandle]) -> None:
        """The loaded versions of every model and the version each serves; labels of gone ones removed."""
        counts: dict[str, int] = {}
        for h in loaded:
            counts[h.name] = counts.get(h.name, 0) + 1
        pairs = {(h.name, h.version) for h in served}
        for name in self._names - set(counts):
            self.model_loaded.remove(name)
        for pair in self._served - pairs:
            self.model_served.remove(*pair)
        for name, n in counts.items():
            self.model_loaded.labels(name).set(n)
        for pair in pairs:
            self.model_served.labels(*pair).set(1.0)
        self._names, self._served = set(counts), pairs

    def model_reload(self, change: RepositoryChange) -> None:
        """What one rescan of the repository loaded, unloaded and refused."""
        self.model_reloads.labels("loaded").inc(len(change.loaded))
        self.model_reloads.labels("unloaded").inc(len(change.unloaded))
        self.model_reloads.labels("refused").inc(len(change.refused))

    def stores(self, names: list[str], down: list[str]) -> None:
        """The result of one readiness probe of the stores `names`, of which `down` failed."""
        for name in names:
            self.store_up.labels(name).set(0.0 if name in down else 1.0)

    def serve(self, host: str, port: int) -> MetricsEndpoint:
        """Starts the HTTP endpoint (any path answers with the metrics) on a daemon thread.

        Args:
            host: interface to bind.
            port: port to bind; 0 picks a free one (see `MetricsEndpoint.port`).
        """
        server, thread = start_http_server(port, host, registry=self.registry)
        return MetricsEndpoint(server, thread)


@dataclass
class MetricsEndpoint:
    """A running metrics HTTP endpoint."""

    server: WSGIServer
    thread: Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5.0)
