"""Fixtures of the policy unit tests: a writable copy of the shipped bundle."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from desiderata.policy.store import default_bundle_dir


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    """A private copy of the shipped bundle that a test may edit."""
    target = tmp_path / "bundle"
    shutil.copytree(default_bundle_dir(), target)
    return target
