"""grpcurl and grpc_health_probe — real clients that know nothing of our protos —
against the demo server: reflection lists the services, health reports SERVING,
and the README's grpcurl example returns an explanation (issue 2 acceptance)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_cli import _reap, _start

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tools() -> Path:
    """The pinned tools folder (scripts/tools.sh installs grpcurl and grpc-health-probe)."""
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "tools.sh")], capture_output=True, text=True, timeout=900, check=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def _readme_example() -> tuple[list[str], str]:
    text = (ROOT / "README.md").read_text()
    block = text[text.index("grpcurl -plaintext -H 'authorization") :]
    block = block[: block.index("```")]
    data = re.search(r"-d '(.*?)'", block, re.S)
    assert data is not None
    headers = re.findall(r"-H '([^']*)'", block)
    return headers, data.group(1)


def test_grpcurl_and_health_probe_against_the_demo(tools: Path, tmp_path: Path) -> None:
    proc, address, _ = _start([], tmp_path, extra_lines=6)
    try:
        listed = subprocess.run(
            [str(tools / "grpcurl"), "-plaintext", address, "list"], capture_output=True, text=True, timeout=60
        )
        probe = subprocess.run(
            [str(tools / "grpc-health-probe"), f"-addr={address}"], capture_output=True, text=True, timeout=60
        )
        headers, data = _readme_example()
        args = [str(tools / "grpcurl"), "-plaintext"]
        for h in headers:
            args += ["-H", h]
        explained = subprocess.run(
            [*args, "-d", data, address, "desiderata.v1.ExplanationService/Explain"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        _reap(proc)
    services = set(listed.stdout.split())
    assert {"desiderata.v1.ExplanationService", "desiderata.v1.ModelService", "grpc.health.v1.Health"} <= services
    assert probe.returncode == 0 and "SERVING" in probe.stdout + probe.stderr
    assert explained.returncode == 0, explained.stderr
    answer = json.loads(explained.stdout)["explanation"]
    attribution = answer.get("featureAttribution") or answer["feature_attribution"]  # grpcurl keeps proto names
    assert len(attribution["attributions"]) == 13
    assert answer["disclosure"]["tier"] == "feature_attribution/full"
