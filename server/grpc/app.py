"""build_server(): the gRPC application assembled from settings.

Services: desiderata.v1 ExplanationService and ModelService, standard health
checking (grpc.health.v1) and server reflection. Interceptors, outermost
first: request id / error boundary, then authentication. TLS or mTLS when
certificate paths are configured; message-size limits from settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import torch
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

import desiderata.explainers  # noqa: F401  (registers the built-in methods)
from desiderata.policy.decision import EngineersOnlyPDP, PolicyDecisionPoint
from desiderata.policy.model import BUILTIN_PURPOSES
from desiderata.server.config import DEMO_KEYS, Settings
from desiderata.server.decision_store import SqliteDecisionStore
from desiderata.server.grpc.interceptors import AuthInterceptor, RequestIdInterceptor
from desiderata.server.grpc.servicers import ExplanationServicer, ModelServicer
from desiderata.server.model_repository import BUILTIN_DEMO, ModelRepository
from desiderata.server.pipeline import Pipeline
from desiderata.v1 import (
    explanation_service_pb2,
    explanation_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
)

__all__ = ["App", "build_server"]

SERVICE_NAMES = (
    explanation_service_pb2.DESCRIPTOR.services_by_name["ExplanationService"].full_name,
    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
)


@dataclass
class App:
    """A built, not yet started server and what it serves."""

    server: aio.Server
    port: int
    pipeline: Pipeline
    health: health.aio.HealthServicer
    demo: bool

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    host: str = "127.0.0.1"

    async def start(self) -> None:
        await self.server.start()
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace_s: float) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace_s)
        self.pipeline.close()


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


def build_server(settings: Settings, pdp: PolicyDecisionPoint | None = None) -> App:
    """Loads the models and stores, and binds the port (not started yet)."""
    torch.set_num_threads(settings.models.torch_threads)
    models_path = settings.models.path or BUILTIN_DEMO
    demo = settings.models.path is None
    repo = ModelRepository(Path(models_path), skip_broken=settings.models.skip_broken)
    store = SqliteDecisionStore(settings.store.decisions_path or settings.store.state_dir / "decisions.sqlite")
    pipeline = Pipeline(
        models=repo,
        decisions=store,
        pdp=pdp or EngineersOnlyPDP(frozenset(BUILTIN_PURPOSES)),
        settings=settings.explain,
        workers=settings.server.workers,
    )
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
    ]
    server = aio.server(
        interceptors=[RequestIdInterceptor(), AuthInterceptor(keys)],
        options=options,
    )
    explanation_service_pb2_grpc.add_ExplanationServiceServicer_to_server(
        ExplanationServicer(pipeline, settings.server.default_deadline_s), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelServicer(pipeline, settings.server.default_deadline_s), server
    )
    health_servicer = health.aio.HealthServicer()
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
    )
