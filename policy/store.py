"""The policy in force, and its atomic hot reload.

Why: policy owners change policy without restarting the server, and a broken
edit must never change a decision. `load_bundle` is the only way a bundle
becomes live: parse and validate every file, then run its ``*_test.yaml``
cases; any problem refuses it. `PolicyStore` holds the current `CedarPDP`
and polls the directory (file names, sizes, mtimes) every ``interval_s``
seconds from a daemon thread; on a change it loads the new bundle and swaps
one reference (atomic for readers), or logs the refusal and keeps the old
policy. The store is itself a `PolicyDecisionPoint`, so the pipeline may hold
it and always decide with the bundle in force.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from desiderata.policy.cedar_pdp import Capability, CedarPDP
from desiderata.policy.decision import Decision, PolicyInput
from desiderata.policy.model import Consumption, Principal
from desiderata.policy.policy_bundle import BundleError, PolicyBundle, parse_bundle
from desiderata.policy.testing import run_bundle_tests

__all__ = ["PolicyStore", "default_bundle_dir", "load_bundle"]

log = logging.getLogger("desiderata.policy")


def default_bundle_dir() -> Path:
    """The bundle shipped with the package (the demo credit policy)."""
    return Path(__file__).resolve().parent / "bundle"


def load_bundle(directory: Path) -> PolicyBundle:
    """Parses, validates and tests a bundle; raises `BundleError` on any problem.

    Args:
        directory: the bundle directory.
    """
    bundle = parse_bundle(directory)
    report = run_bundle_tests(bundle)
    if not report.passed:
        raise BundleError(report.failures)
    return bundle


def _fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    try:
        return tuple(
            sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir() if p.is_file())
        )
    except OSError:
        return ()


class PolicyStore:
    """Holds the policy in force and reloads it when its files change.

    Args:
        directory: the bundle directory.
        interval_s: polling interval of `start()`.

    Raises:
        BundleError: when the initial bundle is invalid (refuse to boot).
    """

    def __init__(self, directory: Path, interval_s: float = 0.5) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.directory = directory
        self.interval_s = interval_s
        self._seen = _fingerprint(directory)
        self._pdp = CedarPDP(load_bundle(directory))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: BundleError | None = None
        log.info("policy loaded", extra={"policy_version": self._pdp.version, "dir": str(directory)})

    # -------------------------------------------- PolicyDecisionPoint protocol

    @property
    def pdp(self) -> CedarPDP:
        """The decision point in force (one atomic read)."""
        return self._pdp

    @property
    def version(self) -> str:
        return self._pdp.version

    def known_purposes(self) -> frozenset[str]:
        return self._pdp.known_purposes()

    def decide(self, request: PolicyInput) -> Decision:
        """Decides with the bundle in force (see `CedarPDP.decide`).

        Args:
            request: the policy question.
        """
        return self._pdp.decide(request)

    def capabilities(
        self,
        principal: Principal,
        model: str,
        model_attributes: dict[str, str | bool | int | float],
        purpose: str,
        consumption: Consumption,
    ) -> list[Capability]:
        """See `CedarPDP.capabilities`.

        Args:
            principal: the caller.
            model: model name.
            model_attributes: the model's card attributes.
            purpose: declared purpose.
            consumption: static or dynamic.
        """
        return self._pdp.capabilities(principal, model, model_attributes, purpose, consumption)

    # ------------------------------------------------------------- reloading

    def check_once(self) -> bool:
        """Reloads if the files changed; True when a new bundle went live."""
        fp = _fingerprint(self.directory)
        if fp == self._seen:
            return False
        self._seen = fp
        try:
            bundle = load_bundle(self.directory)
        except BundleError as exc:
            log.error(
                "policy reload refused; the old policy stays in force",
                extra={"policy_version": self._pdp.version, "problems": [str(p) for p in exc.problems]},
            )
            self.last_error = exc  # after the log line: whoever sees the error can find it logged
            return False
        except OSError as exc:  # a file vanished mid-edit: retry on the next change
            self._seen = ()
            log.error("policy reload failed to read files: %s", exc)
            return False
        if bundle.version == self._pdp.version:
            return False
        old = self._pdp.version
        self._pdp = CedarPDP(bundle)
        self.last_error = None
        log.info("policy reloaded", extra={"policy_version": bundle.version, "previous_version": old})
        return True

    def start(self) -> None:
        """Starts the polling thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="policy-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stops the polling thread and waits for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check_once()
            except Exception:
                log.exception("policy reload crashed; the old policy stays in force")
