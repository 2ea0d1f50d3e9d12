"""PostgreSQL decision store: the one that server replicas share.

Why: with several replicas behind a load balancer, Predict may record a
decision on one replica and the end user's ExplainDecision reach another. With
the embedded SQLite store that second replica answers NOT_FOUND; with this
store every replica reads the same table. Rows are append-only (triggers
refuse UPDATE and TRUNCATE, and every DELETE but `expire`'s). A lost connection fails the call in
flight with `Unavailable` and is reopened by the next call; a record is never
re-sent, since the first attempt may have committed. Same row encoding and
conformance suite as the SQLite default.
"""

from __future__ import annotations

from datetime import datetime

import psycopg

from desiderata.policy.allowed_deletion import (
    DELETE_BATCH,
    Allow,
    delete_in_batches,
    pg_allowed_delete,
    pg_delete_guard,
)
from desiderata.policy.postgres import Conn, PgConnection, append_only, create_schema
from desiderata.server.decision_store import (
    DELETION,
    OF_SUBJECT,
    RECENT,
    TABLE,
    DecisionRecord,
    decode_row,
    encode_row,
    of_subject_params,
    stored_time,
)
from desiderata.server.errors import DecisionNotFound, InternalError

__all__ = ["PostgresDecisionStore"]

_LOCK_KEY = 0x64656369  # "deci": advisory lock taken while the schema is created

_SCHEMA = (
    TABLE
    + DELETION
    + append_only("decisions", "decisions are append-only")
    + pg_delete_guard("decisions", "decisions are append-only", row_time="OLD.created_at", row_subject="OLD.subject_id")
)

_COLUMNS = "decision_id, subject_id, principal_id, model, model_version, features, probabilities, created_at"
_INSERT = f"INSERT INTO decisions ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
_SELECT = f"SELECT {_COLUMNS} FROM decisions WHERE decision_id = %s"


class PostgresDecisionStore:
    """Decision store in a PostgreSQL table.

    Args:
        dsn: libpq connection string, e.g. ``postgresql://u@127.0.0.1:5432/db``.
        connect_timeout_s: how long opening a connection may take before the store
            counts as unavailable.
    """

    delete_batch = DELETE_BATCH

    def __init__(self, dsn: str, *, connect_timeout_s: float = 5.0) -> None:
        self._pg = PgConnection(dsn, "decision store", connect_timeout_s=connect_timeout_s)
        create_schema(self._pg, _LOCK_KEY, _SCHEMA)

    def record(self, rec: DecisionRecord) -> None:
        row = encode_row(rec)
        try:
            self._pg.run(lambda conn: conn.execute(_INSERT, row))
        except psycopg.errors.UniqueViolation:
            raise InternalError(f"decision {rec.decision_id!r} is recorded already") from None

    def get(self, decision_id: str) -> DecisionRecord:
        row = self._pg.run(lambda conn: conn.execute(_SELECT, (decision_id,)).fetchone())
        if row is None:
            raise DecisionNotFound(f"no recorded decision {decision_id!r}")
        return decode_row(row)

    def recent(self, model: str, model_version: str, limit: int) -> list[DecisionRecord]:
        rows = self._pg.run(lambda conn: conn.execute(RECENT, (model, model_version, limit)).fetchall())
        return [decode_row(r) for r in rows]

    def of_subject(self, subject_id: str, model: str, after: tuple[str, str], limit: int) -> list[DecisionRecord]:
        params = of_subject_params(subject_id, model, after, limit)
        rows = self._pg.run(lambda conn: conn.execute(OF_SUBJECT, params).fetchall())
        return [decode_row(r) for r in rows]

    def expire(self, before: datetime) -> int:
        return self._delete("before", "created_at < %s", stored_time(before))

    def erase_subject(self, subject_id: str) -> int:
        return self._delete("subject_id", "subject_id = %s", subject_id)

    def _delete(self, allow: Allow, where: str, value: str) -> int:
        """Allows deletion by `value` in column `allow` of decisions_deletion and deletes the
        decisions matching `where`, `delete_batch` per transaction; returns how many."""
        batch = f"DELETE FROM decisions WHERE decision_id IN (SELECT decision_id FROM decisions WHERE {where} LIMIT %s)"

        def delete(conn: Conn) -> int:
            return pg_allowed_delete(conn, "decisions", allow, value, batch, (value, self.delete_batch))

        return delete_in_batches(lambda: self._pg.run(delete), self.delete_batch)

    def close(self) -> None:
        self._pg.close()
