"""Which backend each store seam uses, built from settings.

Why one module: the server (`grpc.app.build_pipeline`) and the CLI (feedback
export, audit verification) must open the same stores from the same
settings, and the PostgreSQL and Redis clients are imported only when
configured. Every function may raise `Unavailable` (a backend that cannot be
reached at start) or ValueError (a bad file), which stops the boot.
"""

from __future__ import annotations

import os
import secrets

from desiderata.policy.audit import AuditLog
from desiderata.policy.audit_sqlite import SqliteAuditLog
from desiderata.policy.feedback import FeedbackStore, SqliteFeedbackStore
from desiderata.policy.ledger import BudgetLedger
from desiderata.policy.ledger_sqlite import SqliteLedger
from desiderata.server.config import Settings
from desiderata.server.decision_store import DecisionStore, SqliteDecisionStore

__all__ = ["audit_log", "decision_store", "feedback_store", "ledger", "noise_secret"]


def noise_secret(settings: Settings) -> bytes:
    """The noise key: configured file, or one created once in the state folder (mode 0600)."""
    path = settings.privacy.secret_file or settings.store.state_dir / "noise.key"
    if not path.exists() and settings.privacy.secret_file is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
    key = path.read_bytes()
    if len(key) < 16:
        raise ValueError(f"privacy secret {path} is shorter than 16 bytes")
    return key


def audit_log(settings: Settings) -> AuditLog:
    """The hash-chained audit log: SQLite (embedded) or PostgreSQL."""
    if settings.audit.backend == "postgres":
        from desiderata.policy.audit_postgres import PostgresAuditLog

        return PostgresAuditLog(settings.audit.postgres_dsn)
    return SqliteAuditLog(settings.audit.sqlite_path or settings.store.state_dir / "audit.sqlite")


def decision_store(settings: Settings) -> DecisionStore:
    """Recorded decisions: SQLite (embedded) or PostgreSQL (shared by replicas)."""
    store = settings.store
    if store.decisions_backend == "postgres":
        from desiderata.server.decision_store_postgres import PostgresDecisionStore

        return PostgresDecisionStore(store.decisions_postgres_dsn)
    return SqliteDecisionStore(store.decisions_path or store.state_dir / "decisions.sqlite")


def feedback_store(settings: Settings) -> FeedbackStore:
    """Dynamic-consumption feedback: SQLite (embedded) or PostgreSQL (shared by replicas)."""
    store = settings.store
    if store.feedback_backend == "postgres":
        from desiderata.policy.feedback_postgres import PostgresFeedbackStore

        return PostgresFeedbackStore(store.feedback_postgres_dsn)
    return SqliteFeedbackStore(store.feedback_path or store.state_dir / "feedback.sqlite")


def ledger(settings: Settings) -> BudgetLedger:
    """The budget ledger: SQLite (embedded) or Redis (shared by replicas)."""
    if settings.privacy.ledger == "redis":
        from desiderata.policy.ledger_redis import RedisLedger

        return RedisLedger(settings.privacy.redis_url)
    return SqliteLedger(settings.privacy.sqlite_path or settings.store.state_dir / "ledger.sqlite")
