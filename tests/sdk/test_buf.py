"""API hygiene: buf lint and breaking pass, and breaking really fails on a break."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF_SH = ROOT / "scripts" / "buf.sh"
pytestmark = pytest.mark.sdk


def _buf(command: str, api_root: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if api_root is not None:
        env["DESIDERATA_API_ROOT"] = str(api_root)
    return subprocess.run(
        ["bash", str(BUF_SH), command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )


def _workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "api"
    ws.mkdir()
    shutil.copy(ROOT / "buf.yaml", ws / "buf.yaml")
    shutil.copytree(ROOT / "protos", ws / "protos")
    return ws


def test_lint_and_breaking_pass_on_this_checkout() -> None:
    run = _buf("check")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "buf lint: clean" in run.stdout
    assert "no breaking change against protos/baseline.binpb" in run.stdout


def test_breaking_fails_when_a_field_is_removed(tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    proto = ws / "protos" / "desiderata" / "v1" / "explanation_service.proto"
    text = proto.read_text()
    edited = text.replace("  string locale = 8;\n", "", 1)
    assert edited != text
    proto.write_text(edited)
    run = _buf("breaking", ws)
    assert run.returncode != 0, run.stdout
    out = run.stdout + run.stderr
    assert re.search(r'field "8" with name "locale" on message "ExplainRequest" was deleted', out, re.I), out


def test_breaking_allows_an_added_field(tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    proto = ws / "protos" / "desiderata" / "v1" / "explanation_service.proto"
    added = proto.read_text().replace("  string locale = 8;\n", "  string locale = 8;\n  string note = 9;\n", 1)
    proto.write_text(added)
    run = _buf("breaking", ws)
    assert run.returncode == 0, run.stdout + run.stderr


def test_lint_fails_on_a_nonstandard_name(tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    proto = ws / "protos" / "desiderata" / "v1" / "types.proto"
    proto.write_text(proto.read_text() + "\nmessage bad_row {}\n")
    run = _buf("lint", ws)
    assert run.returncode != 0, run.stdout
    assert "PascalCase" in run.stdout + run.stderr, run.stdout + run.stderr
