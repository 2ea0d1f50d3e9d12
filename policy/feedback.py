"""Feedback on explanations (dynamic consumption) and its export as a data set.

Why: Bhatt et al. (section 5.1) distinguish static consumption from dynamic
consumption, where stakeholders' feedback on an explanation flows back into
the model. The pipeline stores feedback only after the PDP allowed dynamic
consumption for the caller; this module validates it, keeps it in an
append-only store (SQLite embedded; PostgreSQL, shared by replicas, in
`feedback_postgres`) and exports it as CSV or JSONL for a model update.
Feedback holds feature NAMES the caller flagged, never feature values.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from desiderata.policy.audit import utc_now
from desiderata.server.errors import InvalidArgument, Unavailable

__all__ = ["Feedback", "FeedbackStore", "SqliteFeedbackStore"]

Verdict = Literal["agree", "disagree"]
MAX_TEXT = 4000


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
    time: str = ""


class FeedbackStore(ABC):
    """Validated feedback, stored in submission order; backends store JSON bodies by model."""

    @abstractmethod
    def _append(self, body: str, model: str) -> None:
        """Stores one JSON body (raises `Unavailable` when the store cannot be reached)."""

    @abstractmethod
    def _bodies(self, model: str) -> list[str]:
        """JSON bodies in submission order, of `model` or of all ("")."""

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
            known_features: the model's feature names (flagged names must be among them).
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


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (id INTEGER PRIMARY KEY, body TEXT NOT NULL, model TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS feedback_no_update BEFORE UPDATE ON feedback
BEGIN SELECT RAISE(ABORT, 'feedback is append-only'); END;
CREATE TRIGGER IF NOT EXISTS feedback_no_delete BEFORE DELETE ON feedback
BEGIN SELECT RAISE(ABORT, 'feedback is append-only'); END;
"""


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
