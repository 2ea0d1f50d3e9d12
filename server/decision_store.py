"""The decision store: predictions made through the server, bound to their subject.

`Predict` records every decision (id, subject, model version, input, output,
time); `ExplainDecision` reads it back, so an end user explains *their own*
decision without submitting feature vectors. The embedded backend is SQLite
in WAL mode; PostgreSQL (`decision_store_postgres`) is the one that replicas
share. Records are append-only in both: triggers refuse every update, and
every delete except two, each allowed by a row that its own transaction
writes to ``decisions_deletion`` and removes before committing: `expire`
(decisions older than a cutoff, `desiderata.server.retention`) and
`erase_subject` (every decision about one person, the right to erasure). Both
backends pass the same conformance suite.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from desiderata.policy.allowed_deletion import (
    DELETE_BATCH,
    Allow,
    control_table,
    delete_in_batches,
    sqlite_allowed_delete,
    sqlite_delete_trigger,
)
from desiderata.server.errors import DecisionNotFound, InternalError, Unavailable
from desiderata.server.model_card import FeatureValue

__all__ = [
    "DELETION",
    "FIRST_PAGE",
    "OF_SUBJECT",
    "RECENT",
    "TABLE",
    "DecisionRecord",
    "DecisionStore",
    "SqliteDecisionStore",
    "decode_row",
    "encode_row",
    "new_record_id",
    "of_subject_params",
    "page_after",
    "stored_time",
]


def new_record_id() -> str:
    return "rec_" + uuid.uuid4().hex


@dataclass(frozen=True)
class DecisionRecord:
    """One recorded prediction.

    Args:
        decision_id: id returned by Predict.
        subject_id: whom the decision is about.
        principal_id: who asked for the prediction.
        model: model name.
        model_version: model version.
        features: the input, by feature name (never logged).
        probabilities: class probabilities, in the card's class order.
        created_at: UTC time of the prediction.
    """

    decision_id: str
    subject_id: str
    principal_id: str
    model: str
    model_version: str
    features: dict[str, FeatureValue]
    probabilities: tuple[float, ...]
    created_at: datetime


class DecisionStore(Protocol):
    """Where decisions are recorded. Errors: `Unavailable` when the store cannot be
    reached, `DecisionNotFound` for an unknown id, `InternalError` for an id recorded twice."""

    def record(self, rec: DecisionRecord) -> None: ...

    def get(self, decision_id: str) -> DecisionRecord: ...

    def recent(self, model: str, model_version: str, limit: int) -> list[DecisionRecord]:
        """The newest `limit` decisions of one model version, newest first."""
        ...

    def of_subject(self, subject_id: str, model: str, after: tuple[str, str], limit: int) -> list[DecisionRecord]:
        """Up to `limit` decisions about `subject_id` by any version of `model`, newest first,
        older than `after` (a `page_after` key: stored time and id; `FIRST_PAGE` for the newest)."""
        ...

    def expire(self, before: datetime) -> int:
        """Deletes the decisions recorded before `before`; how many."""
        ...

    def erase_subject(self, subject_id: str) -> int:
        """Deletes every decision about `subject_id`; how many."""
        ...

    def close(self) -> None: ...


Row = tuple[str, str, str, str, str, str, str, str]
"""decision_id, subject_id, principal_id, model, model_version, features JSON,
probabilities JSON, created_at ISO 8601: the column order of every backend."""


def encode_row(rec: DecisionRecord) -> Row:
    """A record as stored; typed values survive the JSON round trip (bool before int, ints stay ints)."""
    return (
        rec.decision_id,
        rec.subject_id,
        rec.principal_id,
        rec.model,
        rec.model_version,
        json.dumps(rec.features, sort_keys=True),
        json.dumps(list(rec.probabilities)),
        stored_time(rec.created_at),
    )


def stored_time(t: datetime) -> str:
    """A time as stored (ISO 8601 in UTC, which sorts as text)."""
    return t.astimezone(UTC).isoformat()


def decode_row(row: Sequence[Any]) -> DecisionRecord:
    """The record of a stored row (`Row` order)."""
    return DecisionRecord(
        decision_id=row[0],
        subject_id=row[1],
        principal_id=row[2],
        model=row[3],
        model_version=row[4],
        features=json.loads(row[5]),
        probabilities=tuple(json.loads(row[6])),
        created_at=datetime.fromisoformat(row[7]),
    )


TABLE = """
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
CREATE INDEX IF NOT EXISTS decisions_model ON decisions (model, model_version, created_at);
CREATE INDEX IF NOT EXISTS decisions_time ON decisions (created_at);
"""
"""The decisions table of every backend (`Row` order)."""

RECENT = (
    "SELECT decision_id, subject_id, principal_id, model, model_version, features, probabilities, created_at "
    "FROM decisions WHERE model = %s AND model_version = %s ORDER BY created_at DESC, decision_id DESC LIMIT %s"
)
"""The newest decisions of a model version (ISO 8601 UTC times sort as text); `%s` placeholders."""

OF_SUBJECT = (
    "SELECT decision_id, subject_id, principal_id, model, model_version, features, probabilities, created_at "
    "FROM decisions WHERE subject_id = %s AND model = %s "
    "AND (created_at < %s OR (created_at = %s AND decision_id < %s)) "
    "ORDER BY created_at DESC, decision_id DESC LIMIT %s"
)
"""A page of one subject's decisions of one model, newest first, after a (time, id) key."""

FIRST_PAGE = ("9999-12-31T23:59:59.999999+00:00", "")
"""The key before the newest decision: later than any stored time."""


def page_after(rec: DecisionRecord) -> tuple[str, str]:
    """The key a page that ended at `rec` resumes after: its stored time and id."""
    return stored_time(rec.created_at), rec.decision_id


def of_subject_params(subject_id: str, model: str, after: tuple[str, str], limit: int) -> tuple[object, ...]:
    """The parameters of `OF_SUBJECT`."""
    return subject_id, model, after[0], after[0], after[1], limit


DELETION = control_table("decisions")
"""The control table of `policy.allowed_deletion`: what a deleting transaction allows."""

_SQLITE_TRIGGERS = """
CREATE TRIGGER IF NOT EXISTS decisions_no_update BEFORE UPDATE ON decisions
BEGIN SELECT RAISE(ABORT, 'decisions are append-only'); END;
""" + sqlite_delete_trigger(
    "decisions", "decisions are append-only", row_time="OLD.created_at", row_subject="OLD.subject_id"
)


class SqliteDecisionStore:
    """SQLite (WAL) decision store, safe for the worker threads of one process.

    Args:
        path: database file; its folder is created.
    """

    delete_batch = DELETE_BATCH

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(TABLE + DELETION + _SQLITE_TRIGGERS)

    def record(self, rec: DecisionRecord) -> None:
        try:
            with self._lock:
                self._db.execute("INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", encode_row(rec))
        except sqlite3.IntegrityError:
            raise InternalError(f"decision {rec.decision_id!r} is recorded already") from None
        except sqlite3.Error as exc:
            raise Unavailable(f"decision store unavailable: {exc.__class__.__name__}") from exc

    def get(self, decision_id: str) -> DecisionRecord:
        try:
            with self._lock:
                row = self._db.execute("SELECT * FROM decisions WHERE decision_id = ?", (decision_id,)).fetchone()
        except sqlite3.Error as exc:
            raise Unavailable(f"decision store unavailable: {exc.__class__.__name__}") from exc
        if row is None:
            raise DecisionNotFound(f"no recorded decision {decision_id!r}")
        return decode_row(row)

    def recent(self, model: str, model_version: str, limit: int) -> list[DecisionRecord]:
        try:
            with self._lock:
                rows = self._db.execute(RECENT.replace("%s", "?"), (model, model_version, limit)).fetchall()
        except sqlite3.Error as exc:
            raise Unavailable(f"decision store unavailable: {exc.__class__.__name__}") from exc
        return [decode_row(r) for r in rows]

    def of_subject(self, subject_id: str, model: str, after: tuple[str, str], limit: int) -> list[DecisionRecord]:
        params = of_subject_params(subject_id, model, after, limit)
        try:
            with self._lock:
                rows = self._db.execute(OF_SUBJECT.replace("%s", "?"), params).fetchall()
        except sqlite3.Error as exc:
            raise Unavailable(f"decision store unavailable: {exc.__class__.__name__}") from exc
        return [decode_row(r) for r in rows]

    def expire(self, before: datetime) -> int:
        return self._delete("before", "created_at < ?", stored_time(before))

    def erase_subject(self, subject_id: str) -> int:
        return self._delete("subject_id", "subject_id = ?", subject_id)

    def _delete(self, allow: Allow, where: str, value: str) -> int:
        """Allows deletion by `value` in column `allow` of decisions_deletion and deletes the
        decisions matching `where`, `delete_batch` per transaction; returns how many."""
        batch = f"DELETE FROM decisions WHERE rowid IN (SELECT rowid FROM decisions WHERE {where} LIMIT ?)"

        def one_batch() -> int:
            try:
                with self._lock:
                    return sqlite_allowed_delete(self._db, "decisions", allow, value, batch, (value, self.delete_batch))
            except sqlite3.Error as exc:
                raise Unavailable(f"decision store unavailable: {exc.__class__.__name__}") from exc

        return delete_in_batches(one_batch, self.delete_batch)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def utcnow() -> datetime:
    return datetime.now(UTC)
