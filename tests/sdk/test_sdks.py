"""Each SDK's own toolchain test (go test, npm test, mvn test) against a real server.

These run scripts/sdk_tests.sh, which installs the pinned tools, checks the
committed generated code is fresh, and runs the language's unit and smoke
tests; the smoke tests start the server of this checkout (this venv's
`desiderata serve --port 0`) as a separate process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.sdk


def _serve_cmd() -> str:
    return os.environ.get("DESIDERATA_SERVE_CMD") or f"{Path(sys.executable).parent / 'desiderata'} serve --port 0"


@pytest.mark.parametrize("sdk", ["go", "typescript", "java"])
def test_sdk_smoke(sdk: str) -> None:
    env = {**os.environ, "DESIDERATA_SERVE_CMD": _serve_cmd()}
    run = subprocess.run(
        ["bash", str(ROOT / "scripts" / "sdk_tests.sh"), sdk],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, f"{sdk} SDK tests failed:\n{run.stdout[-4000:]}\n{run.stderr[-6000:]}"
    assert f"sdk tests passed: {sdk}" in run.stdout
