"""`desiderata serve` as a real process: prints its address and demo keys, answers
health checks and explanations, and shuts down gracefully on SIGTERM/SIGINT."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from desiderata.client import Client, DesiderataRpcError
from desiderata.server.demo_data import read_credit_csv

ADDRESS = re.compile(r"desiderata listening on (\S+:\d+)")


def _start(args: list[str], tmp_path: Path, extra_lines: int = 0) -> tuple[subprocess.Popen[str], str, list[str]]:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), "DESIDERATA_LOGGING__LEVEL": "warning"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "desiderata.server.cli", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 90
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        match = ADDRESS.search(line)
        if match:
            for _ in range(extra_lines):  # e.g. the demo-key block after the address line
                extra = proc.stdout.readline()
                if not extra:
                    break
                lines.append(extra.rstrip("\n"))
            return proc, match.group(1), lines
    err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
    _reap(proc)
    raise AssertionError(f"server did not start: {lines} {err}")


def _reap(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


@pytest.fixture
def demo_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, list[str]]]:
    proc, address, lines = _start([], tmp_path, extra_lines=6)
    try:
        yield proc, address, lines
    finally:
        _reap(proc)


def test_serve_demo_prints_address_and_one_key_per_role(
    demo_process: tuple[subprocess.Popen[str], str, list[str]],
) -> None:
    proc, address, lines = demo_process
    text = "\n".join(lines)
    for role in ("ml_engineer", "domain_expert", "end_user", "regulator", "executive"):
        assert f"demo-{role}-key" in text
    with grpc.insecure_channel(address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    with Client(address, api_key="demo-ml_engineer-key") as client:
        models = client.list_models()
        assert [m.name for m in models.models] == ["credit"]
    # `desiderata explain` against it: every feature attributed, and contrastive backgrounds, whose
    # mean score (P(good)) is above one half for the rows rated good and below it for the others.
    row = [f"--feature={k}={v}" for k, v in read_credit_csv().rows[0].items()]
    scores = {}
    for reference in ("", "good", "bad"):
        extra = ["--method", "kernel_shap", "--reference-class", reference] if reference else []
        run = subprocess.run(
            [sys.executable, "-m", "desiderata.server.cli", "explain", "--address", address, *row, *extra],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        out = run.stdout.splitlines()
        assert out[0].startswith("credit v") and " by " + (extra[1] if extra else "integrated_gradients") in out[0]
        assert len([line for line in out if line.strip().endswith("%)")]) == len(row)
        compared = [line for line in out if f"compared with the training rows predicted {reference} " in line]
        assert len(compared) == (1 if reference else 0)
        if reference:
            scores[reference] = float(compared[0].rsplit(" ", 1)[1].rstrip(")"))
    assert scores["good"] > 0.5 > scores["bad"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_sigint_also_stops_gracefully(tiny_repo: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("auth:\n  api_keys:\n    - {principal: p, role: ml_engineer, key: secret-k}\n")
    proc, address, _ = _start(["--models", str(tiny_repo), "--config", str(config)], tmp_path)
    try:
        with Client(address, api_key="secret-k") as client:
            card = client.get_model("tiny")
            assert card.name == "tiny"
        with Client(address, api_key="demo-ml_engineer-key") as client, pytest.raises(DesiderataRpcError) as err:
            client.list_models()  # demo keys are off outside the demo
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        _reap(proc)


def test_broken_model_stops_the_boot_with_a_clear_message(tiny_repo: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "broken").mkdir(parents=True)
    (repo / "broken" / "card.yaml").write_text("name: broken\nversion: '1'\nfeatures: []\nclass_names: [a]\n")
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    done = subprocess.run(
        [sys.executable, "-m", "desiderata.server.cli", "serve", "--port", "0", "--models", str(repo)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1
    assert "invalid model card" in done.stderr and "card.yaml" in done.stderr


def test_bad_configuration_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("server:\n  port: 99999\n")
    done = subprocess.run(
        [sys.executable, "-m", "desiderata.server.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "port" in done.stderr
