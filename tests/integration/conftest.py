"""A real grpc.aio server on port 0 over the tiny repository (and one over the demo)."""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from desiderata.server.config import Settings
from desiderata.server.grpc.app import App, build_server
from desiderata.server.model_handle import ModelHandle

KEYS = [
    {"principal": "eng", "role": "ml_engineer", "key": "k-eng"},
    {"principal": "officer", "role": "domain_expert", "key": "k-officer"},
    {"principal": "alice", "role": "end_user", "key": "k-alice", "subject_id": "alice"},
    {"principal": "bob", "role": "end_user", "key": "k-bob", "subject_id": "bob"},
]


@dataclass
class Running:
    app: App
    address: str


def settings_for(repo: Path | None, state: Path, **extra: object) -> Settings:
    """Settings of a test server; sample-importance precomputation is off unless asked for."""
    cfg: dict[str, object] = {
        "server": {"port": 0, "max_receive_message_bytes": 64 * 1024},
        "auth": {"api_keys": KEYS},
        "store": {"state_dir": str(state)},
        "logging": {"format": "json", "level": "warning"},
    }
    model_cfg: dict[str, object] = {"precompute": False}
    if repo is not None:
        model_cfg["path"] = str(repo)
    extra_models = extra.pop("models", {})
    if isinstance(extra_models, dict):
        model_cfg.update(extra_models)
    cfg["models"] = model_cfg
    cfg.update(extra)
    return Settings.load(None, **cfg)


def gradient_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the rows of every forward/backward pass any served model makes, in order."""
    passes: list[int] = []
    evaluate = ModelHandle.target_gradients

    def counted(self: ModelHandle, rows: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
        passes.append(rows.shape[0])
        return evaluate(self, rows, target)

    monkeypatch.setattr(ModelHandle, "target_gradients", counted)
    return passes


def scrape(running: Running) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """The server's metrics page, and its samples by (name, sorted labels)."""
    assert running.app.metrics_endpoint is not None
    url = f"http://127.0.0.1:{running.app.metrics_endpoint.port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return text, samples


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Running]:
    """A server built from `settings`, started, and stopped on exit (the body of server fixtures)."""
    app = build_server(settings)
    await app.start()
    try:
        yield Running(app, app.address)
    finally:
        await app.stop(0.5)


@pytest.fixture
async def tiny_server(tiny_repo: Path, tmp_path: Path) -> AsyncIterator[Running]:
    async with serving(settings_for(tiny_repo, tmp_path)) as running:
        yield running
