"""PostgreSQL decision store: the one that server replicas share.

Why: with several replicas behind a load balancer, Predict may record a
decision on one replica and the end user's ExplainDecision reach another. With
the embedded SQLite store that second replica answers NOT_FOUND; with this
store every replica reads the same table. Rows are append-only (triggers
refuse UPDATE, DELETE and TRUNCATE). A lost connection fails the call in
flight with `Unavailable` and is reopened by the next call; a record is never
re-sent, since the first attempt may have committed. Same row encoding and
conformance suite as the SQLite default.
"""

from __future__ import annotations

import psycopg

from desiderata.policy.postgres import PgConnection, create_schema
from desiderata.server.decision_store import DecisionRecord, decode_row, encode_row
from desiderata.server.errors import DecisionNotFound, InternalError

__all__ = ["PostgresDecisionStore"]

_LOCK_KEY = 0x64656369  # "deci": advisory lock taken while the schema is created

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    decision_id   TEXT PRIMARY KEY,
    subject_id    TEXT NOT NULL,
    principal_id  TEXT NOT NULL,
    model         TEXT NOT NULL,
    model_version TEXT NOT NULL,
    features      TEXT NOT NULL,
    probabilities TEXT NOT NULL,
    created_at    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_subject ON decisions (subject_id);
CREATE OR REPLACE FUNCTION decisions_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'decisions are append-only'; END $$;
DROP TRIGGER IF EXISTS decisions_append_only ON decisions;
CREATE TRIGGER decisions_append_only BEFORE UPDATE OR DELETE ON decisions
FOR EACH ROW EXECUTE FUNCTION decisions_refuse();
DROP TRIGGER IF EXISTS decisions_no_truncate ON decisions;
CREATE TRIGGER decisions_no_truncate BEFORE TRUNCATE ON decisions
FOR EACH STATEMENT EXECUTE FUNCTION decisions_refuse();
"""

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

    def close(self) -> None:
        self._pg.close()
