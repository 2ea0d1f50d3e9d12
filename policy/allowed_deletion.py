"""The two deletions that the append-only stores allow: rows older than a cutoff, one subject's rows.

Why: recorded decisions and feedback are append-only, so that nothing the
server answered from can be altered behind its back; yet they hold personal
data, which a retention period and the right to erasure must be able to
delete. Each such table has a control table ``<table>_deletion``. A deleting
transaction inserts its allowance there (a cutoff time or a subject id),
deletes, and removes the allowance before it commits, so no other transaction
ever sees one; the table's delete trigger lets through only rows that an
allowance covers, and refuses every other delete from any client. One module
draws this for both stores (decisions, feedback) and both backends (SQLite,
PostgreSQL):

    <table>_deletion (before TEXT, subject_id TEXT)
        ▲ inserted, then removed, inside the deleting transaction
    trigger BEFORE DELETE ON <table>:
        pass if  row time < before  OR  row subject = subject_id
        else     RAISE '<message>'

A deletion runs `DELETE_BATCH` rows per transaction (`delete_in_batches`), so
a first expiry over a large backlog never holds the write lock for long.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Literal

from desiderata.policy.postgres import Conn

__all__ = [
    "BATCH_PAUSE_S",
    "DELETE_BATCH",
    "Allow",
    "control_table",
    "delete_in_batches",
    "pg_allowed_delete",
    "pg_delete_guard",
    "sqlite_allowed_delete",
    "sqlite_delete_trigger",
]

Allow = Literal["before", "subject_id"]
"""The control table's column an allowance fills: a cutoff time, or a subject id."""

DELETE_BATCH = 5000
"""Most rows one deleting transaction removes: a first expiry over a large backlog holds the
write lock for one batch at a time, and the store's writers (Predict, feedback) go in between."""

BATCH_PAUSE_S = 0.002
"""Pause between two deleting transactions, so that the calls waiting for the store get it."""


def delete_in_batches(one_batch: Callable[[], int], size: int) -> int:
    """Runs `one_batch` (one deleting transaction of at most `size` rows, returning how many it
    deleted) until one comes back short; returns the total.

    Pauses `BATCH_PAUSE_S` between batches: a released lock is not handed to a waiting thread, and
    without the pause Predict's inserts starved until the whole deletion was over.
    """
    total = 0
    while True:
        n = one_batch()
        total += n
        if n < size:
            return total
        time.sleep(BATCH_PAUSE_S)


def control_table(table: str) -> str:
    """SQL creating `table`'s control table (idempotent)."""
    return f"CREATE TABLE IF NOT EXISTS {table}_deletion (before TEXT, subject_id TEXT);"


def sqlite_delete_trigger(table: str, message: str, *, row_time: str, row_subject: str) -> str:
    """SQLite SQL (re)creating `table`'s delete trigger, idempotent, so a file made by an earlier
    schema gets it at open.

    Args:
        table: the append-only table.
        message: the refusal's message.
        row_time: SQL of a row's time (as text that sorts in time order), in terms of ``OLD``.
        row_subject: SQL of a row's subject id, in terms of ``OLD``.
    """
    return f"""
DROP TRIGGER IF EXISTS {table}_no_delete;
CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table}
WHEN NOT EXISTS (SELECT 1 FROM {table}_deletion WHERE {row_time} < before OR {row_subject} = subject_id)
BEGIN SELECT RAISE(ABORT, '{message}'); END;
"""


def pg_delete_guard(table: str, message: str, *, row_time: str, row_subject: str) -> str:
    """PostgreSQL SQL that narrows `policy.postgres.append_only`'s triggers on `table`: UPDATE and
    TRUNCATE are still refused, DELETE passes for allowed rows only (idempotent). Arguments as
    `sqlite_delete_trigger`'s."""
    return f"""
CREATE OR REPLACE FUNCTION {table}_guard_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM {table}_deletion d WHERE {row_time} < d.before OR {row_subject} = d.subject_id)
  THEN RETURN OLD; END IF;
  RAISE EXCEPTION '{message}';
END $$;
DROP TRIGGER IF EXISTS {table}_append_only ON {table};
CREATE TRIGGER {table}_append_only BEFORE UPDATE ON {table}
FOR EACH ROW EXECUTE FUNCTION {table}_refuse();
DROP TRIGGER IF EXISTS {table}_expire_only ON {table};
CREATE TRIGGER {table}_expire_only BEFORE DELETE ON {table}
FOR EACH ROW EXECUTE FUNCTION {table}_guard_delete();
"""


def sqlite_allowed_delete(
    db: sqlite3.Connection, table: str, allow: Allow, value: str, delete: str, params: tuple[object, ...]
) -> int:
    """Runs `delete` in one immediate transaction that allows it; returns the rows deleted. The
    caller holds the connection's lock; `sqlite3.Error` propagates.

    Args:
        db: an autocommit (``isolation_level=None``) connection.
        table: the append-only table.
        allow: which allowance `value` is.
        value: the cutoff (in the table's stored time form) or the subject id.
        delete: the DELETE statement (``?`` placeholders).
        params: its parameters.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(f"INSERT INTO {table}_deletion ({allow}) VALUES (?)", (value,))
        n = int(db.execute(delete, params).rowcount)
        db.execute(f"DELETE FROM {table}_deletion")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return n


def pg_allowed_delete(conn: Conn, table: str, allow: Allow, value: str, delete: str, params: tuple[object, ...]) -> int:
    """`sqlite_allowed_delete` for PostgreSQL (``%s`` placeholders), on one connection."""
    with conn.transaction():
        conn.execute(f"INSERT INTO {table}_deletion ({allow}) VALUES (%s)", (value,))
        n = conn.execute(delete, params).rowcount
        conn.execute(f"DELETE FROM {table}_deletion")
    return int(n)
