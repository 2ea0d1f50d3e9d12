"""One PostgreSQL connection shared by a store's threads, reopened after a failure.

Why: the PostgreSQL stores (decisions, feedback) need the same failure
behaviour: an error that may have lost the connection fails the call in flight
with `Unavailable` (fail closed; a write is never re-sent, since the first
attempt may have committed) and the next call opens a new connection. An
integrity error (a duplicate key) is the caller's to interpret and leaves the
connection open. Statements run in autocommit mode, one transaction each.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import psycopg

from desiderata.server.errors import Unavailable

__all__ = ["Conn", "PgConnection", "append_only", "create_schema"]

T = TypeVar("T")
Conn = psycopg.Connection[tuple[object, ...]]


class PgConnection:
    """A lazily (re)opened autocommit connection, used under a lock.

    Args:
        dsn: libpq connection string.
        what: the store's name, for error messages ("decision store").
        connect_timeout_s: how long opening a connection may take (whole seconds, ≥ 1).
    """

    def __init__(self, dsn: str, what: str, *, connect_timeout_s: float = 5.0) -> None:
        self._dsn = dsn
        self._what = what
        self._timeout = max(1, round(connect_timeout_s))
        self._lock = threading.Lock()
        self._conn: Conn | None = None

    def run(self, fn: Callable[[Conn], T]) -> T:
        """``fn(connection)`` under the lock.

        Raises:
            Unavailable: no connection, or any database error but an integrity error.
            psycopg.errors.IntegrityError: as raised by `fn`.
        """
        with self._lock:
            conn = self._open()
            try:
                return fn(conn)
            except psycopg.errors.IntegrityError:
                raise
            except psycopg.Error as exc:
                self._drop()
                raise Unavailable(f"{self._what} unavailable: {exc.__class__.__name__}") from exc

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _open(self) -> Conn:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=self._timeout)
            except psycopg.Error as exc:
                raise Unavailable(f"{self._what} unavailable: {exc.__class__.__name__}") from exc
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def create_schema(pg: PgConnection, lock_key: int, schema: str) -> None:
    """Runs `schema` in one transaction under an advisory lock (replicas start at once)."""

    def create(conn: Conn) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key,))
            conn.execute(schema.encode())

    pg.run(create)


def append_only(table: str, message: str) -> str:
    """SQL that makes `table` append-only for every client: triggers refuse UPDATE,
    DELETE and TRUNCATE with `message` (idempotent, so it runs at every start)."""
    return f"""
CREATE OR REPLACE FUNCTION {table}_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION '{message}'; END $$;
DROP TRIGGER IF EXISTS {table}_append_only ON {table};
CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
FOR EACH ROW EXECUTE FUNCTION {table}_refuse();
DROP TRIGGER IF EXISTS {table}_no_truncate ON {table};
CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
FOR EACH STATEMENT EXECUTE FUNCTION {table}_refuse();
"""
