"""PostgreSQL audit log: the production backend of the decision log.

Why: several server replicas must append to one chain and regulators query it
at scale. Appends serialise on a transaction-scoped advisory lock, so reading
the head and inserting the next link is atomic across replicas; triggers
refuse UPDATE, DELETE and TRUNCATE (append-only for every client that does
not drop them first, and `verify` catches those that do). A lost connection
(a restarted or failed-over server) fails the append in flight with
`Unavailable` (that request is refused: nothing is served unaudited), and the next
append reconnects (`PgConnection`). Same interface and conformance suite as
the SQLite default.
"""

from __future__ import annotations

from collections.abc import Iterator

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
from desiderata.policy.audit_sqlite import COLUMNS, record_params, row_to_stored
from desiderata.policy.postgres import Conn, PgConnection, append_only, create_schema

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
""" + append_only("audit_log", "audit_log is append-only")


class PostgresAuditLog(AuditLog):
    """Audit log in a PostgreSQL table.

    Args:
        dsn: libpq connection string, e.g. ``postgresql://u@127.0.0.1:5432/db``.
        connect_timeout_s: how long opening a connection may take before the log
            counts as unavailable.
    """

    def __init__(self, dsn: str, *, connect_timeout_s: float = 5.0) -> None:
        self._pg = PgConnection(dsn, "audit log", connect_timeout_s=connect_timeout_s)
        create_schema(self._pg, _LOCK_KEY, _SCHEMA)

    def append(self, record: AuditRecord) -> StoredRecord:
        def link(conn: Conn) -> StoredRecord:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                head = conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
                seq, prev = (int(str(head[0])) + 1, str(head[1])) if head else (1, GENESIS_HASH)
                digest = record_hash(seq, record, prev)
                placeholders = ", ".join(["%s"] * 18)
                conn.execute(
                    f"INSERT INTO audit_log ({COLUMNS}) VALUES ({placeholders})",
                    record_params(seq, record, prev, digest),
                )
            return StoredRecord(seq, record, prev, digest)

        return self._pg.run(link)

    def iter_all(self) -> Iterator[StoredRecord]:
        rows = self._pg.run(lambda conn: conn.execute(f"SELECT {COLUMNS} FROM audit_log ORDER BY seq").fetchall())
        return (row_to_stored(r) for r in rows)

    def query(self, filters: AuditFilter, page_size: int = 100, page_token: str = "") -> AuditPage:
        size = check_page_size(page_size)
        after, known = decode_page_token(page_token)

        def page(conn: Conn) -> tuple[int, list[tuple[object, ...]]]:
            head = conn.execute(HEAD_QUERY).fetchone() if known is None else (known,)
            bound = int(str(head[0])) if head is not None else 0
            tail, params = page_query(filters, after, bound, size, "%s")
            return bound, conn.execute(f"SELECT {COLUMNS} FROM audit_log {tail}", params).fetchall()

        bound, rows = self._pg.run(page)
        return to_page([row_to_stored(r) for r in rows], size, bound)

    def close(self) -> None:
        self._pg.close()
