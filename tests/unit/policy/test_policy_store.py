"""Hot reload: an edit changes decisions within 2 s; a broken edit changes nothing."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from desiderata.explainers.base import Kind
from desiderata.policy.decision import PolicyInput
from desiderata.policy.model import Consumption, Principal
from desiderata.policy.policy_bundle import BundleError
from desiderata.policy.store import PolicyStore

EXEC_ASKS = PolicyInput(
    Principal("exe", "executive"),
    "credit",
    {"domain": "credit", "dp_trained": False},
    Kind.ROBUSTNESS,
    "monitoring",
    Consumption.STATIC,
)
NEW_POLICY = (
    '@id("executive.robustness")\n'
    'permit (principal in Role::"executive", action == Action::"robustness/full", resource)\n'
    'when { context.purpose == "monitoring" };\n'
)
NEW_CASE = """
  - name: executive now gets robustness
    principal: {id: exe, role: executive}
    request: {model: credit, kind: robustness, purpose: monitoring}
    expect: {allowed: true, tier: robustness/full, reasons: [executive.robustness]}
"""


@pytest.fixture
def store(bundle_dir: Path) -> Iterator[PolicyStore]:
    s = PolicyStore(bundle_dir, interval_s=0.1)
    s.start()
    yield s
    s.stop()


def _wait_for(pred: object, timeout: float = 2.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if callable(pred) and pred():
            return time.monotonic() - start
        time.sleep(0.02)
    raise TimeoutError


def test_edit_changes_decisions_within_two_seconds(store: PolicyStore, bundle_dir: Path) -> None:
    old_version = store.version
    assert not store.decide(EXEC_ASKS).allowed
    (bundle_dir / "executive.cedar").write_text(NEW_POLICY)
    test_file = bundle_dir / "stakeholders_test.yaml"
    text = test_file.read_text().replace(
        "  - name: executive gets no single-instance attributions",
        NEW_CASE.strip("\n") + "\n  - name: executive gets no single-instance attributions",
    )
    test_file.write_text(text)
    elapsed = _wait_for(lambda: store.decide(EXEC_ASKS).allowed)
    assert elapsed < 2.0
    assert store.version != old_version
    assert store.decide(EXEC_ASKS).reasons == ("executive.robustness",)


def test_broken_edit_changes_nothing_and_is_logged(
    store: PolicyStore, bundle_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="desiderata.policy")
    old_version = store.version
    # A permit without a passing test case: valid Cedar, but its cases now fail
    # (executives must not get single-instance attributions).
    (bundle_dir / "oops.cedar").write_text('@id("oops")\npermit (principal in Role::"executive", action, resource);\n')
    _wait_for(lambda: store.last_error is not None, timeout=10.0)  # not a timing claim: room for a loaded CI
    assert store.version == old_version
    assert not store.decide(EXEC_ASKS).allowed
    assert any("reload refused" in r.message for r in caplog.records)
    # Fixing it makes the next poll load the good bundle again.
    (bundle_dir / "oops.cedar").unlink()
    (bundle_dir / "executive.cedar").write_text(NEW_POLICY.replace("robustness/full", "robustness/fulll"))
    _wait_for(lambda: store.last_error is not None and "fulll" in str(store.last_error), timeout=10.0)
    assert store.version == old_version


def test_invalid_initial_bundle_refuses_to_start(bundle_dir: Path) -> None:
    (bundle_dir / "profiles.yaml").write_text("profiles: {}\n")
    with pytest.raises(BundleError):
        PolicyStore(bundle_dir)


def test_check_once_reports_no_change(bundle_dir: Path) -> None:
    s = PolicyStore(bundle_dir)
    assert s.check_once() is False
    with pytest.raises(ValueError):
        PolicyStore(bundle_dir, interval_s=0)
