"""`pip install ./clients/python` into a fresh venv pulls no torch, and its
example runs against a real demo server (issue 2 acceptance)."""

from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

import pytest

from tests.integration.test_cli import _reap, _start

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_client_installs_without_torch_and_its_example_runs(tmp_path: Path) -> None:
    env_dir = tmp_path / "client-venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    pip_env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", str(ROOT / "clients" / "python")], check=True, env=pip_env, timeout=600
    )
    installed = subprocess.run(
        [str(py), "-m", "pip", "list", "--format=freeze"], check=True, capture_output=True, text=True
    ).stdout.lower()
    assert "desiderata-client" in installed and "torch" not in installed and "numpy" not in installed
    proc, address, _ = _start([], tmp_path, extra_lines=6)
    try:
        run = subprocess.run(
            [str(py), str(ROOT / "clients" / "python" / "examples" / "explain.py"), address],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
    finally:
        _reap(proc)
    assert run.returncode == 0, run.stderr
    assert "predicted" in run.stdout and "INVALID_ARGUMENT" in run.stdout and "applicant sees" in run.stdout
