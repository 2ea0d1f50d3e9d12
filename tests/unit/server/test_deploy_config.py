"""The Kubernetes example's configuration is one the server accepts, with the stores
that replicas must share."""

from __future__ import annotations

from pathlib import Path

import yaml

from desiderata.server.config import Settings
from desiderata.server.grpc.app import LIVENESS

DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes.yaml"


def test_kubernetes_config_map_validates_and_shares_every_store() -> None:
    docs = list(yaml.safe_load_all(DEPLOY.read_text()))
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    settings = Settings.load(None, **yaml.safe_load(config_map["data"]["config.yaml"]))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] > 1
    # Replicas share budgets, audit chain, recorded decisions, feedback and the noise key.
    assert settings.privacy.ledger == "redis"
    assert settings.audit.backend == "postgres"
    assert settings.store.decisions_backend == "postgres"
    assert settings.store.feedback_backend == "postgres"
    assert settings.privacy.secret_file is not None


def test_a_headless_service_lets_clients_balance_calls() -> None:
    services = [d for d in yaml.safe_load_all(DEPLOY.read_text()) if d["kind"] == "Service"]
    headless = [s["metadata"]["name"] for s in services if s["spec"].get("clusterIP") == "None"]
    assert headless == ["desiderata-headless"]


def test_liveness_probes_ignore_store_outages() -> None:
    deployment = next(d for d in yaml.safe_load_all(DEPLOY.read_text()) if d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["grpc"]["service"] == LIVENESS  # stays SERVING in an outage
    assert "service" not in container["readinessProbe"]["grpc"]  # "" follows the stores


def test_every_replica_exposes_metrics_where_the_pod_says() -> None:
    docs = list(yaml.safe_load_all(DEPLOY.read_text()))
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    settings = Settings.load(None, **yaml.safe_load(config_map["data"]["config.yaml"]))
    template = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]
    (container,) = template["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert settings.metrics.enabled and settings.metrics.host == "0.0.0.0"
    assert ports["metrics"] == settings.metrics.port == int(template["metadata"]["annotations"]["prometheus.io/port"])
