"""PostgreSQL audit log: the production backend of the decision log.

Why: several server replicas must append to one chain and regulators query it
at scale. Appends serialise on a transaction-scoped advisory lock, so reading
the head and inserting the next link is atomic across replicas; triggers
refuse UPDATE, DELETE and TRUNCATE (append-only for every client that does
not drop them first, and `verify` catches those that do). Same interface and
conformance suite as the SQLite default.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg

from desiderata.policy.audit import (
    GENESIS_HASH,
    AuditFilter,
    AuditLog,
    AuditPage,
    AuditRecord,
    StoredRecord,
    check_page_size,
    page_query,
    record_hash,
    to_page,
)
from desiderata.policy.audit_sqlite import COLUMNS, record_params, row_to_stored

__all__ = ["PostgresAuditLog"]

_LOCK_KEY = 0x6465736964  # "desid": advisory lock of the audit chain

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    seq BIGINT PRIMARY KEY,
    decision_id TEXT NOT NULL,
    time TEXT NOT NULL,
    principal TEXT NOT NULL,
    role TEXT NOT NULL,
    purpose TEXT NOT NULL,
    consumption TEXT NOT NULL,
    model TEXT NOT NULL,
    model_version TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    action TEXT NOT NULL,
    allowed BOOLEAN NOT NULL,
    tier TEXT NOT NULL,
    privacy_charge DOUBLE PRECISION NOT NULL,
    reasons TEXT NOT NULL,
    request_id TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_principal ON audit_log (principal, seq);
CREATE INDEX IF NOT EXISTS audit_log_model ON audit_log (model, seq);
CREATE INDEX IF NOT EXISTS audit_log_decision ON audit_log (decision_id);
CREATE OR REPLACE FUNCTION audit_log_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$;
DROP TRIGGER IF EXISTS audit_log_append_only ON audit_log;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
FOR EACH ROW EXECUTE FUNCTION audit_log_refuse();
DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log;
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse();
"""


class PostgresAuditLog(AuditLog):
    """Audit log in a PostgreSQL table.

    Args:
        dsn: libpq connection string, e.g. ``postgresql://u@127.0.0.1:5432/db``.
    """

    def __init__(self, dsn: str) -> None:
        self._lock = threading.Lock()
        self._conn = psycopg.connect(dsn, autocommit=False)
        with self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            self._conn.execute(_SCHEMA)

    def append(self, record: AuditRecord) -> StoredRecord:
        with self._lock, self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            head = self._conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (int(head[0]) + 1, str(head[1])) if head else (1, GENESIS_HASH)
            digest = record_hash(seq, record, prev)
            placeholders = ", ".join(["%s"] * 18)
            self._conn.execute(
                f"INSERT INTO audit_log ({COLUMNS}) VALUES ({placeholders})",
                record_params(seq, record, prev, digest),
            )
        return StoredRecord(seq, record, prev, digest)

    def iter_all(self) -> Iterator[StoredRecord]:
        with self._lock, self._conn.transaction():
            rows = self._conn.execute(f"SELECT {COLUMNS} FROM audit_log ORDER BY seq").fetchall()
        return (row_to_stored(r) for r in rows)

    def query(self, filters: AuditFilter, page_size: int = 100, page_token: str = "") -> AuditPage:
        size = check_page_size(page_size)
        tail, params = page_query(filters, page_token, size, "%s")
        with self._lock, self._conn.transaction():
            rows = self._conn.execute(f"SELECT {COLUMNS} FROM audit_log {tail}", params).fetchall()
        return to_page([row_to_stored(r) for r in rows], size)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
