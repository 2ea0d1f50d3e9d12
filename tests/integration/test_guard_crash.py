"""The server SIGKILLed between reserve and commit, then restarted on the same state.

Why through the real server: the reservation protocol exists for this crash.
The conformance suite kills a process that only holds a ledger; here the
process killed is `desiderata serve` itself, in the middle of a guarded
request. The test-only fault-injection knob `FAULT_HOLD_AFTER_ADMIT_ENV`
(unset in production) makes the guard sleep right after the reservation, so
the kill lands between reserve and commit deterministically. Afterwards the
ledger file must show the reservation outstanding and nothing charged; the
restarted server must count the dead reservation against the budget until
its ttl runs out and then give it back, so that the principal gets exactly K
answers in total, never more, and a repeat is never charged twice.

The ttl must outlast a restart, which takes from ~5 s (quiet machine) to
~15 s (busy one), and the test waits it out, so it is set from the first
boot's duration (a hot-reloaded edit of the profile) rather than fixed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from desiderata.client import Client, DesiderataRpcError
from desiderata.policy.guard import FAULT_HOLD_AFTER_ADMIT_ENV
from desiderata.policy.store import default_bundle_dir
from tests.integration.conftest import KEYS
from tests.integration.test_cli import ADDRESS
from tests.integration.test_stakeholders import APPLICANT

K = 3
"""Lifetime query budget of the engineer's tier in this test's bundle."""
PRINCIPAL, MODEL = "eng", "credit"


def set_tier(bundle: Path, ttl_s: float) -> None:
    """The engineer's full-fidelity tier: K answers, reservations living `ttl_s`."""
    profiles = yaml.safe_load((bundle / "profiles.yaml").read_text())
    profiles["profiles"]["feature_attribution/full"]["privacy"] = {"lifetime_queries": K, "reservation_ttl_s": ttl_s}
    (bundle / "profiles.yaml").write_text(yaml.safe_dump(profiles))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A server config over the built-in demo and a copy of the shipped bundle (hot-reloaded)."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for f in default_bundle_dir().iterdir():
        if f.is_file():
            (bundle / f.name).write_bytes(f.read_bytes())
    set_tier(bundle, 30.0)
    cfg = {
        "auth": {"api_keys": KEYS, "demo_keys": False},
        "store": {"state_dir": str(tmp_path / "state")},
        "models": {"precompute": False},
        "policy": {"bundle_dir": str(bundle), "reload_interval_s": 0.2},
        "logging": {"format": "json", "level": "warning"},
    }
    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@contextlib.contextmanager
def serving(config: Path, hold_after_admit_s: float | None = None) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`desiderata serve` as a subprocess; yields (process, address) and kills it on exit."""
    env = {k: v for k, v in os.environ.items() if k != FAULT_HOLD_AFTER_ADMIT_ENV}
    if hold_after_admit_s is not None:
        env[FAULT_HOLD_AFTER_ADMIT_ENV] = str(hold_after_admit_s)
    proc = subprocess.Popen(
        [sys.executable, "-m", "desiderata.server.cli", "serve", "--config", str(config), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        address = ""
        for line in proc.stdout:
            match = ADDRESS.search(line)
            if match:
                address = match.group(1)
                break
        assert address, f"the server did not start (exit code {proc.poll()})"
        yield proc, address
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def ledger_rows(state: Path) -> dict[str, list[tuple[object, ...]]]:
    """The engineer's rows in the ledger file, read directly (not through the server)."""
    with contextlib.closing(sqlite3.connect(state / "ledger.sqlite", timeout=5)) as conn:
        where, args = " WHERE principal=? AND model=?", (PRINCIPAL, MODEL)
        return {
            "reservations": conn.execute("SELECT queries, expires_at FROM reservations" + where, args).fetchall(),
            "spend": conn.execute("SELECT queries FROM spend" + where, args).fetchall(),
            "answered": conn.execute("SELECT digest FROM answered" + where, args).fetchall(),
        }


def policy_version(address: str) -> str:
    with Client(address, api_key="k-eng", timeout_s=10) as eng:
        return eng.capabilities(MODEL, purpose="debugging").policy_version


def ask(address: str, amount: float) -> str:
    """One guarded explanation of a distinct instance: "ok", "exhausted" or the status name."""
    with Client(address, api_key="k-eng", timeout_s=30) as eng:
        try:
            eng.explain(MODEL, {**APPLICANT, "amount": amount}, purpose="debugging")
        except DesiderataRpcError as err:
            if err.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                assert err.details.quota_violations and err.details.retry_after_s is None  # lifetime budget
                return "exhausted"
            return err.code.name
    return "ok"


def test_server_killed_between_reserve_and_commit_returns_the_budget_after_the_ttl(
    config: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    started = time.monotonic()
    with serving(config, hold_after_admit_s=60.0) as (proc, address):
        boot_s = time.monotonic() - started
        before = policy_version(address)
        set_tier(tmp_path / "bundle", ttl_s=1.25 * boot_s + 3.0)  # outlasts a restart a quarter slower
        deadline = time.monotonic() + 10
        while policy_version(address) == before:
            assert time.monotonic() < deadline, "the edited profile was not reloaded"
            time.sleep(0.1)
        outcome: list[str] = []
        request = threading.Thread(target=lambda: outcome.append(ask(address, 1000.0)))
        request.start()
        deadline = time.monotonic() + 30
        while not (state / "ledger.sqlite").exists() or not ledger_rows(state)["reservations"]:
            assert time.monotonic() < deadline, "the request never reserved its budget"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # between reserve and commit: the guard is holding
        proc.wait(timeout=10)
        request.join(timeout=30)
    assert outcome == ["UNAVAILABLE"]  # the caller got no answer

    rows = ledger_rows(state)
    assert [r[0] for r in rows["reservations"]] == [1]  # outstanding, durable across the crash
    assert rows["spend"] in ([], [(0,)]) and rows["answered"] == []  # nothing committed
    expires_at = float(rows["reservations"][0][1])  # type: ignore[arg-type]

    served: list[str] = []
    with serving(config) as (_, address):
        # Restarted within the ttl: the dead request still holds one unit.
        assert time.time() < expires_at - 1.0, "the restart took much longer than the first boot"
        served += [ask(address, 2000.0 + i) for i in range(K - 1)]
        assert served == ["ok"] * (K - 1)
        assert ask(address, 2100.0) == "exhausted"
        assert len(ledger_rows(state)["reservations"]) == 1
        time.sleep(max(0.0, expires_at - time.time() + 0.2))
        served += [ask(address, 3000.0 + i) for i in range(K - len(served))]
        assert served == ["ok"] * K  # the budget came back: K answers in total
        assert ask(address, 4000.0) == "exhausted"  # and never more
        assert ask(address, 3000.0) == "ok"  # a repeat of a served query is answered free
    rows = ledger_rows(state)
    assert rows["reservations"] == []
    assert rows["spend"] == [(K,)] and len(rows["answered"]) == K  # each answer charged exactly once
