"""build_server(): the gRPC application assembled from settings.

Services: desiderata.v1 ExplanationService and ModelService, the Open Inference
Protocol (inference.GRPCInferenceService, server/grpc/oip.py), standard health
checking (grpc.health.v1) and server reflection; Prometheus metrics on their
own HTTP port when enabled (server/metrics.py). Interceptors, outermost
first: request id / error boundary, then authentication. TLS or mTLS when
certificate paths are configured; message-size limits from settings.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import structlog
import torch
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from threadpoolctl import threadpool_limits

import desiderata.explainers  # noqa: F401  (registers the built-in methods)
from desiderata.explainers.influence_store import stop_builds
from desiderata.oip import grpc_predict_v2_pb2_grpc as oip_grpc
from desiderata.policy.extraction_monitor import ExtractionMonitor
from desiderata.policy.guard import PrivacyGuard
from desiderata.policy.store import PolicyStore, default_bundle_dir
from desiderata.server import stores
from desiderata.server.aged_cache import Sweepable, sweep_interval, watch_ages
from desiderata.server.allocator import tune_malloc
from desiderata.server.chunk_runner import ChunkRunner
from desiderata.server.config import DEMO_KEYS, DriftSettings, Settings
from desiderata.server.drift_watch import watch_drift
from desiderata.server.grpc import oip
from desiderata.server.grpc.interceptors import AuthInterceptor, RequestIdInterceptor
from desiderata.server.grpc.policy_servicers import AuditServicer
from desiderata.server.grpc.servicers import ExplanationServicer, ModelServicer
from desiderata.server.listener import channel_options
from desiderata.server.metrics import Metrics, MetricsEndpoint
from desiderata.server.model_repository import BUILTIN_DEMO, ModelRepository
from desiderata.server.model_watch import ModelReloads, watch_models
from desiderata.server.pipeline import Pipeline
from desiderata.server.policy_services import PolicyServices
from desiderata.server.precompute import Precompute, assign_index_dirs, start_precompute
from desiderata.server.readiness import failing, store_checks, watch_readiness
from desiderata.server.retention import Retention, watch_retention
from desiderata.v1 import (
    audit_service_pb2,
    audit_service_pb2_grpc,
    explanation_service_pb2,
    explanation_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
)

__all__ = ["App", "build_pipeline", "build_server"]

SERVICE_NAMES = (
    explanation_service_pb2.DESCRIPTOR.services_by_name["ExplanationService"].full_name,
    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
    audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
    oip.SERVICE_NAME,
)

LIVENESS = "liveness"
"""Health service name that says SERVING while the process serves, whatever its stores
(for liveness probes: a store outage must not get the replica restarted)."""

log = structlog.get_logger("desiderata.server")


@dataclass
class App:
    """A built, not yet started server and what it serves."""

    server: aio.Server
    port: int
    pipeline: Pipeline
    health: HealthServicer
    demo: bool

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    host: str = "127.0.0.1"
    precompute_at_start: bool = True
    precompute: Precompute | None = None
    readiness_interval_s: float = 0.0
    metrics: Metrics | None = None
    metrics_address: tuple[str, int] = ("127.0.0.1", 0)
    metrics_endpoint: MetricsEndpoint | None = None
    drift: DriftSettings = field(default_factory=DriftSettings)
    services: PolicyServices | None = None
    models_reload_interval_s: float = 0.0
    reloads: ModelReloads | None = None
    retention: Retention | None = None
    retention_check_s: float = 3600.0
    _readiness: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _drift_watch: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _model_watch: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _retention: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _cache_ages: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    async def start(self) -> None:
        self.pipeline.policy.start()
        if self.metrics is not None:
            checks = store_checks(self.pipeline)
            self.metrics.stores([n for n, _ in checks], await asyncio.to_thread(failing, checks))
            self.metrics_endpoint = self.metrics.serve(*self.metrics_address)
        await self.server.start()
        if self.precompute_at_start:
            self.precompute = start_precompute(self.pipeline.models.served())
        for name in ("", LIVENESS, *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.readiness_interval_s > 0:
            checks = store_checks(self.pipeline)
            on_probe = None if self.metrics is None else self.metrics.stores
            self._readiness = asyncio.create_task(
                watch_readiness(self.health, SERVICE_NAMES, checks, self.readiness_interval_s, on_probe)
            )
        self.reloads = ModelReloads(self.pipeline.models, self.metrics, self.precompute_at_start)
        if self.models_reload_interval_s > 0:
            self._model_watch = asyncio.create_task(
                watch_models(self.pipeline.models, self.models_reload_interval_s, self.reloads)
            )
        if self.retention is not None and self.retention.on:
            self._retention = asyncio.create_task(watch_retention(self.retention, self.retention_check_s, self.metrics))
        interval = sweep_interval(self.pipeline.settings.cache_max_age_s)
        if interval > 0:
            caches: list[Sweepable] = [self.pipeline.answers]
            if self.services is not None:
                caches.append(self.services.rows)
            self._cache_ages = asyncio.create_task(watch_ages(caches, interval))
        if self.drift.interval_s > 0 and self.services is not None:
            p = self.pipeline
            self._drift_watch = asyncio.create_task(
                watch_drift(
                    p.models,
                    p.decisions,
                    self.services.drift,
                    self.drift.decisions,
                    self.drift.interval_s,
                    self.metrics,
                )
            )

    async def stop(self, grace_s: float) -> None:
        for task in (self._readiness, self._drift_watch, self._model_watch, self._retention, self._cache_ages):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for name in ("", LIVENESS, *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace_s)
        await asyncio.to_thread(self.pipeline.models.close)
        if self.precompute is not None:
            await asyncio.to_thread(self.precompute.stop, 30.0)
        if self.reloads is not None:
            await asyncio.to_thread(self.reloads.stop, 30.0)
        if not await asyncio.to_thread(stop_builds, 30.0):
            log.warning("index_build_still_running", timeout_s=30.0)
        self.pipeline.policy.stop()
        self.pipeline.close()
        if self.metrics_endpoint is not None:
            await asyncio.to_thread(self.metrics_endpoint.stop)


def _credentials(settings: Settings) -> grpc.ServerCredentials | None:
    tls = settings.server.tls
    if not tls.enabled or tls.cert_file is None or tls.key_file is None:
        return None
    root = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(tls.key_file.read_bytes(), tls.cert_file.read_bytes())],
        root_certificates=root,
        require_client_auth=root is not None,
    )


def build_pipeline(settings: Settings, metrics: Metrics | None = None) -> tuple[Pipeline, bool]:
    """Loads models, policy and stores (refusing to boot on any bad one); True when serving the demo."""
    torch.set_num_threads(settings.models.torch_threads)
    # numpy's BLAS keeps its own thread pool; unlimited, it fought the workers (a 10,000 × r
    # product took 15 ms instead of 0.2 ms on a busy 2-core machine).
    threadpool_limits(settings.models.torch_threads, user_api="blas")
    tune_malloc(settings.models.malloc_mmap_threshold_mb, settings.models.malloc_trim_threshold_mb)
    state = settings.store.state_dir
    repo = ModelRepository(
        Path(settings.models.path or BUILTIN_DEMO),
        skip_broken=settings.models.skip_broken,
        runner=ChunkRunner(settings.models.chunk_helpers),
        fuse_rows=settings.models.fuse_rows,
        prepare=lambda handle: assign_index_dirs([handle], state),
    )
    state.mkdir(parents=True, exist_ok=True)
    policy = PolicyStore(settings.policy.bundle_dir or default_bundle_dir(), settings.policy.reload_interval_s)
    pipeline = Pipeline(
        models=repo,
        decisions=stores.decision_store(settings),
        policy=policy,
        audit=stores.audit_log(settings),
        guard=PrivacyGuard(stores.ledger(settings), stores.noise_secret(settings), ExtractionMonitor()),
        feedback=stores.feedback_store(settings),
        settings=settings.explain,
        workers=settings.server.workers,
        metrics=metrics,
    )
    return pipeline, settings.models.path is None


def build_server(settings: Settings) -> App:
    """Loads the models, policy and stores, and binds the port (not started yet)."""
    metrics = Metrics() if settings.metrics.enabled else None
    pipeline, demo = build_pipeline(settings, metrics)
    services = PolicyServices(pipeline)
    keys = list(settings.auth.api_keys)
    demo_keys = settings.auth.demo_keys if settings.auth.demo_keys is not None else demo
    if demo_keys:
        keys.extend(DEMO_KEYS)
    if not keys:
        raise ValueError("no credentials configured (auth.api_keys); every RPC but health would be refused")
    options = [
        ("grpc.max_receive_message_length", settings.server.max_receive_message_bytes),
        ("grpc.max_send_message_length", settings.server.max_send_message_bytes),
        ("grpc.so_reuseport", 0),
        *channel_options(settings.server.connections),
    ]
    server = aio.server(
        interceptors=[RequestIdInterceptor(metrics, settings.server.max_concurrent_rpcs), AuthInterceptor(keys)],
        options=options,
    )
    explanation_service_pb2_grpc.add_ExplanationServiceServicer_to_server(
        ExplanationServicer(pipeline, settings.server.default_deadline_s, services), server
    )
    audit_service_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(services), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelServicer(pipeline, settings.server.default_deadline_s), server
    )
    oip_grpc.add_GRPCInferenceServiceServicer_to_server(
        oip.InferenceServicer(pipeline, settings.server.default_deadline_s), server
    )
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    address = f"{settings.server.host}:{settings.server.port}"
    creds = _credentials(settings)
    port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    if port == 0:
        raise ValueError(f"could not bind {address}")
    return App(
        server=server,
        port=port,
        pipeline=pipeline,
        health=health_servicer,
        demo=demo_keys,
        host=settings.server.host,
        precompute_at_start=settings.models.precompute,
        readiness_interval_s=settings.server.readiness_interval_s,
        metrics=metrics,
        metrics_address=(settings.metrics.host, settings.metrics.port),
        drift=settings.drift,
        services=services,
        models_reload_interval_s=settings.models.reload_interval_s,
        retention=Retention(
            pipeline.decisions,
            settings.store.decisions_retention_days,
            pipeline.feedback,
            settings.store.feedback_retention_days,
        ),
        retention_check_s=settings.store.retention_check_s,
    )
