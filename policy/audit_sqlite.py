"""SQLite audit log: the embedded default backend.

Why: a single server needs a durable, tamper-evident decision log without
running a database. WAL mode; appends take the write lock (`BEGIN IMMEDIATE`)
so reading the head and inserting the next link is atomic across threads and
processes; triggers refuse UPDATE and DELETE so the log is append-only for
every client that does not drop them first (and `verify` catches those that do).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from desiderata.policy.audit import (
    GENESIS_HASH,
    HEAD_QUERY,
    AuditFilter,
    AuditLog,
    AuditPage,
    AuditRecord,
    StoredRecord,
    check_page_size,
    decode_page_token,
    page_query,
    record_hash,
    to_page,
)

__all__ = ["COLUMNS", "SqliteAuditLog", "row_to_stored"]

COLUMNS = (
    "seq, decision_id, time, principal, role, purpose, consumption, model, model_version, "
    "policy_version, action, allowed, tier, privacy_charge, reasons, request_id, prev_hash, hash"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    seq INTEGER PRIMARY KEY,
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
    allowed INTEGER NOT NULL,
    tier TEXT NOT NULL,
    privacy_charge REAL NOT NULL,
    reasons TEXT NOT NULL,
    request_id TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_principal ON audit_log (principal, seq);
CREATE INDEX IF NOT EXISTS audit_log_model ON audit_log (model, seq);
CREATE INDEX IF NOT EXISTS audit_log_decision ON audit_log (decision_id);
CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
"""


def row_to_stored(row: tuple[Any, ...]) -> StoredRecord:
    """A database row in `COLUMNS` order as a stored record.

    Args:
        row: the row.
    """
    record = AuditRecord(
        decision_id=row[1],
        time=row[2],
        principal=row[3],
        role=row[4],
        purpose=row[5],
        consumption=row[6],
        model=row[7],
        model_version=row[8],
        policy_version=row[9],
        action=row[10],
        allowed=bool(row[11]),
        tier=row[12],
        privacy_charge=float(row[13]),
        reasons=tuple(json.loads(row[14])),
        request_id=row[15],
    )
    return StoredRecord(int(row[0]), record, row[16], row[17])


def record_params(seq: int, r: AuditRecord, prev: str, digest: str) -> tuple[Any, ...]:
    """Insert parameters in `COLUMNS` order.

    Args:
        seq: sequence number.
        r: the record.
        prev: previous hash.
        digest: this record's hash.
    """
    return (
        seq, r.decision_id, r.time, r.principal, r.role, r.purpose, r.consumption, r.model,
        r.model_version, r.policy_version, r.action, r.allowed, r.tier, r.privacy_charge,
        json.dumps(list(r.reasons)), r.request_id, prev, digest,
    )  # fmt: skip


class SqliteAuditLog(AuditLog):
    """Audit log in one SQLite file.

    Args:
        path: database file (created if missing).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)

    def append(self, record: AuditRecord) -> StoredRecord:
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                head = cur.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
                seq, prev = (head[0] + 1, head[1]) if head else (1, GENESIS_HASH)
                digest = record_hash(seq, record, prev)
                placeholders = ", ".join("?" * 18)
                cur.execute(
                    f"INSERT INTO audit_log ({COLUMNS}) VALUES ({placeholders})",
                    record_params(seq, record, prev, digest),
                )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return StoredRecord(seq, record, prev, digest)

    def iter_all(self) -> Iterator[StoredRecord]:
        with self._lock:
            rows = self._conn.execute(f"SELECT {COLUMNS} FROM audit_log ORDER BY seq").fetchall()
        return (row_to_stored(r) for r in rows)

    def query(self, filters: AuditFilter, page_size: int = 100, page_token: str = "") -> AuditPage:
        size = check_page_size(page_size)
        after, bound = decode_page_token(page_token)
        with self._lock:
            if bound is None:
                bound = int(self._conn.execute(HEAD_QUERY).fetchone()[0])
            tail, params = page_query(filters, after, bound, size, "?")
            rows = self._conn.execute(f"SELECT {COLUMNS} FROM audit_log {tail}", params).fetchall()
        return to_page([row_to_stored(r) for r in rows], size, bound)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
