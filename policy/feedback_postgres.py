"""PostgreSQL feedback store: the one that server replicas share.

Why: feedback submitted to any replica must land in one data set (the export
that feeds a model update), and must survive the replica: a pod's local SQLite
file goes with the pod. Rows are append-only (triggers refuse UPDATE, DELETE
and TRUNCATE, except the two deletions `FeedbackStore` allows); a lost
connection fails the call in flight with `Unavailable` and the next call
reconnects (`PgConnection`). Same validation, export and conformance suite as
the SQLite default.
"""

from __future__ import annotations

from desiderata.policy.allowed_deletion import (
    Allow,
    control_table,
    delete_in_batches,
    pg_allowed_delete,
    pg_delete_guard,
)
from desiderata.policy.feedback import FeedbackStore
from desiderata.policy.postgres import Conn, PgConnection, append_only, create_schema

__all__ = ["PostgresFeedbackStore"]

_LOCK_KEY = 0x66656564  # "feed": advisory lock taken while the schema is created

_TABLE = """
CREATE TABLE IF NOT EXISTS feedback (
    id    BIGSERIAL PRIMARY KEY,
    body  TEXT NOT NULL,
    model TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_model ON feedback (model, id);
"""

# Times compare as text in the C collation: a locale's collation may order punctuation otherwise.
_WHERE: dict[Allow, str] = {
    "before": "(body::jsonb ->> 'time') COLLATE \"C\" < %s",
    "subject_id": "(body::jsonb ->> 'subject_id') = %s",
}

_SCHEMA = (
    _TABLE
    + control_table("feedback")
    + append_only("feedback", "feedback is append-only")
    + pg_delete_guard(
        "feedback",
        "feedback is append-only",
        row_time="(OLD.body::jsonb ->> 'time') COLLATE \"C\"",
        row_subject="(OLD.body::jsonb ->> 'subject_id')",
    )
)


class PostgresFeedbackStore(FeedbackStore):
    """Feedback in a PostgreSQL table.

    Args:
        dsn: libpq connection string.
        connect_timeout_s: how long opening a connection may take before the store
            counts as unavailable.
    """

    def __init__(self, dsn: str, *, connect_timeout_s: float = 5.0) -> None:
        self._pg = PgConnection(dsn, "feedback store", connect_timeout_s=connect_timeout_s)
        create_schema(self._pg, _LOCK_KEY, _SCHEMA)

    def _append(self, body: str, model: str) -> None:
        self._pg.run(lambda conn: conn.execute("INSERT INTO feedback (body, model) VALUES (%s, %s)", (body, model)))

    def _bodies(self, model: str) -> list[str]:
        rows = self._pg.run(
            lambda conn: conn.execute(
                "SELECT body FROM feedback WHERE %s = '' OR model = %s ORDER BY id", (model, model)
            ).fetchall()
        )
        return [str(body) for (body,) in rows]

    def _delete(self, allow: Allow, value: str) -> int:
        delete = f"DELETE FROM feedback WHERE id IN (SELECT id FROM feedback WHERE {_WHERE[allow]} LIMIT %s)"

        def one_batch(conn: Conn) -> int:
            return pg_allowed_delete(conn, "feedback", allow, value, delete, (value, self.delete_batch))

        return delete_in_batches(lambda: self._pg.run(one_batch), self.delete_batch)

    def ping(self) -> None:
        self._pg.run(lambda conn: conn.execute("SELECT 1 FROM feedback LIMIT 1").fetchall())

    def close(self) -> None:
        self._pg.close()
