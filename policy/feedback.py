"""Feedback on explanations (dynamic consumption) and its export as a data set.

Why: Bhatt et al. (section 5.1) distinguish static consumption from dynamic
consumption, where stakeholders' feedback on an explanation flows back into
the model. The pipeline stores feedback only after the PDP allowed dynamic
consumption for the caller; this module validates it, keeps it in an
append-only store (SQLite embedded; PostgreSQL, shared by replicas, in
`feedback_postgres`) and exports it as CSV or JSONL for a model update.
Feedback holds feature NAMES the caller flagged, never feature values; its
free text and its giver (an end user's subject id) are personal data, so the
stores let through exactly two deletions, as the decision stores do: feedback
given before a cutoff (`expire`, run by `store.feedback_retention_days`) and
all feedback given by one subject (`erase_subject`). Feedback is written by
people, a few rows per explanation at most, so each runs as one transaction.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from desiderata.policy.allowed_deletion import (
    DELETE_BATCH,
    Allow,
    control_table,
    delete_in_batches,
    sqlite_allowed_delete,
    sqlite_delete_trigger,
)
from desiderata.policy.audit import utc_now
from desiderata.server.errors import InvalidArgument, Unavailable

__all__ = ["Feedback", "FeedbackStore", "SqliteFeedbackStore", "feedback_time"]

Verdict = Literal["agree", "disagree"]
MAX_TEXT = 4000


def feedback_time(t: datetime) -> str:
    """A time in the stored form (`utc_now`'s, which sorts as text); naive times count as UTC."""
    aware = t if t.tzinfo is not None else t.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Feedback:
    """One piece of feedback on one explanation.

    Args:
        decision_id: the policy decision that served the explanation.
        explanation_id: the explanation's id.
        principal: who gave the feedback.
        role: their stakeholder role.
        model: model name.
        model_version: model version.
        verdict: agree or disagree.
        should_matter: features the caller thinks should matter.
        should_not_matter: features the caller thinks should not matter.
        text: free text.
        subject_id: the subject an end user giving feedback acts for ("" for staff).
        time: ISO UTC time (filled in when stored).
    """

    decision_id: str
    explanation_id: str
    principal: str
    role: str
    model: str
    model_version: str
    verdict: Verdict
    should_matter: tuple[str, ...] = ()
    should_not_matter: tuple[str, ...] = ()
    text: str = ""
    subject_id: str = ""
    time: str = ""


class FeedbackStore(ABC):
    """Validated feedback, stored in submission order; backends store JSON bodies by model."""

    delete_batch = DELETE_BATCH
    """Most rows one deleting transaction removes (`policy.allowed_deletion`)."""

    @abstractmethod
    def _append(self, body: str, model: str) -> None:
        """Stores one JSON body (raises `Unavailable` when the store cannot be reached)."""

    @abstractmethod
    def _bodies(self, model: str) -> list[str]:
        """JSON bodies in submission order, of `model` or of all ("")."""

    @abstractmethod
    def _delete(self, allow: Allow, value: str) -> int:
        """Deletes the feedback that `value` in column `allow` of feedback_deletion allows,
        `delete_batch` rows per transaction; returns how many (raises `Unavailable` as `_append`)."""

    @abstractmethod
    def ping(self) -> None:
        """One cheap read (raises `Unavailable` when the store cannot be reached)."""

    @abstractmethod
    def close(self) -> None:
        """Releases the store."""

    def submit(self, fb: Feedback, known_features: frozenset[str]) -> Feedback:
        """Validates and stores feedback; returns it with its time.

        Args:
            fb: the feedback.
            known_features: the model's feature and feature-group names (flagged names must be among them).
        """
        if fb.verdict not in ("agree", "disagree"):
            raise InvalidArgument.single("verdict", "must be 'agree' or 'disagree'")
        for field in ("should_matter", "should_not_matter"):
            unknown = sorted(set(getattr(fb, field)) - known_features)
            if unknown:
                raise InvalidArgument.single(field, f"unknown features {unknown}")
        if set(fb.should_matter) & set(fb.should_not_matter):
            raise InvalidArgument.single("should_not_matter", "a feature cannot both matter and not matter")
        if len(fb.text) > MAX_TEXT:
            raise InvalidArgument.single("text", f"at most {MAX_TEXT} characters")
        if not fb.decision_id:
            raise InvalidArgument.single("decision_id", "required")
        stored = Feedback(**{**asdict(fb), "time": utc_now()})
        self._append(json.dumps(asdict(stored)), stored.model)
        return stored

    def expire(self, before: datetime) -> int:
        """Deletes the feedback given before `before`; returns how many.

        Args:
            before: the cutoff (a naive time counts as UTC).
        """
        return self._delete("before", feedback_time(before))

    def erase_subject(self, subject_id: str) -> int:
        """Deletes every piece of feedback given by end users acting for `subject_id`; returns how many.

        Args:
            subject_id: the subject (must not be empty: staff feedback has none).
        """
        if not subject_id:
            raise InvalidArgument.single("subject_id", "required")
        return self._delete("subject_id", subject_id)

    def all(self, model: str = "") -> list[Feedback]:
        """Stored feedback in submission order, optionally of one model.

        Args:
            model: model name, or "" for all.
        """
        out = []
        for body in self._bodies(model):
            d = json.loads(body)
            d["should_matter"], d["should_not_matter"] = (
                tuple(d["should_matter"]),
                tuple(d["should_not_matter"]),
            )
            out.append(Feedback(**d))
        return out

    def export(self, path: Path, fmt: Literal["csv", "jsonl"] = "jsonl", model: str = "") -> int:
        """Writes feedback as a data set; returns the number of rows.

        Args:
            path: output file.
            fmt: "csv" (feature lists joined by ';') or "jsonl".
            model: model name, or "" for all.
        """
        rows = self.all(model)
        with path.open("w", newline="") as fh:
            if fmt == "jsonl":
                for fb in rows:
                    fh.write(json.dumps(asdict(fb)) + "\n")
            elif fmt == "csv":
                writer = csv.DictWriter(fh, fieldnames=list(Feedback.__dataclass_fields__))
                writer.writeheader()
                for fb in rows:
                    d = asdict(fb)
                    d["should_matter"], d["should_not_matter"] = (
                        ";".join(fb.should_matter),
                        ";".join(fb.should_not_matter),
                    )
                    writer.writerow(d)
            else:
                raise InvalidArgument.single("format", "must be 'csv' or 'jsonl'")
        return len(rows)


_SQLITE_WHERE: dict[Allow, str] = {
    "before": "json_extract(body, '$.time') < ?",
    "subject_id": "json_extract(body, '$.subject_id') = ?",
}

_SQLITE_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS feedback (id INTEGER PRIMARY KEY, body TEXT NOT NULL, model TEXT NOT NULL);
{control_table("feedback")}
CREATE TRIGGER IF NOT EXISTS feedback_no_update BEFORE UPDATE ON feedback
BEGIN SELECT RAISE(ABORT, 'feedback is append-only'); END;
""" + sqlite_delete_trigger(
    "feedback",
    "feedback is append-only",
    row_time="json_extract(OLD.body, '$.time')",
    row_subject="json_extract(OLD.body, '$.subject_id')",
)


class SqliteFeedbackStore(FeedbackStore):
    """Feedback in one SQLite file.

    Args:
        path: database file (created if missing).
    """

    def __init__(self, path: Path | str) -> None:
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._conn.executescript(_SQLITE_SCHEMA)

    def _append(self, body: str, model: str) -> None:
        try:
            with self._lock:
                self._conn.execute("INSERT INTO feedback (body, model) VALUES (?, ?)", (body, model))
        except sqlite3.Error as exc:
            raise Unavailable(f"feedback store unavailable: {exc.__class__.__name__}") from exc

    def _bodies(self, model: str) -> list[str]:
        try:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT body FROM feedback WHERE ? = '' OR model = ? ORDER BY id", (model, model)
                ).fetchall()
        except sqlite3.Error as exc:
            raise Unavailable(f"feedback store unavailable: {exc.__class__.__name__}") from exc
        return [str(body) for (body,) in rows]

    def _delete(self, allow: Allow, value: str) -> int:
        delete = f"DELETE FROM feedback WHERE id IN (SELECT id FROM feedback WHERE {_SQLITE_WHERE[allow]} LIMIT ?)"

        def one_batch() -> int:
            try:
                with self._lock:
                    params = (value, self.delete_batch)
                    return sqlite_allowed_delete(self._conn, "feedback", allow, value, delete, params)
            except sqlite3.Error as exc:
                raise Unavailable(f"feedback store unavailable: {exc.__class__.__name__}") from exc

        return delete_in_batches(one_batch, self.delete_batch)

    def ping(self) -> None:
        try:
            with self._lock:
                self._conn.execute("SELECT 1 FROM feedback LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise Unavailable(f"feedback store unavailable: {exc.__class__.__name__}") from exc

    def close(self) -> None:
        """Closes the database."""
        with self._lock:
            self._conn.close()
