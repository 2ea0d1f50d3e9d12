"""Conformance of every feedback-store backend: validation, storage in submission
order, export as CSV / JSONL, append-only rows except expiry and erasure,
concurrent writers and a lost connection. PostgreSQL runs as a real server."""

from __future__ import annotations

import csv
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest

from desiderata.policy.feedback import Feedback, FeedbackStore, SqliteFeedbackStore, feedback_time
from desiderata.policy.feedback_postgres import PostgresFeedbackStore
from desiderata.server.errors import InvalidArgument, Unavailable
from tests.support.postgres_server import run_sql, terminate_other_connections
from tests.support.raw_sql import run_sqlite
from tests.support.sql_backends import SQL_BACKENDS, open_backend

FEATURES = frozenset({"income", "age", "debt"})


@dataclass
class Backend:
    store: FeedbackStore
    raw: Callable[[str], None]
    """Runs SQL on a connection of its own, as another client of the same database would."""


def _sqlite(tmp_path: Path) -> Iterator[Backend]:
    path = tmp_path / "fb.db"
    store = SqliteFeedbackStore(path)

    yield Backend(store, lambda sql: run_sqlite(path, sql))
    store.close()


def _postgres(dsn: str) -> Iterator[Backend]:
    run_sql(dsn, "DROP TABLE IF EXISTS feedback, feedback_deletion CASCADE")
    store = PostgresFeedbackStore(dsn)
    yield Backend(store, lambda sql: run_sql(dsn, sql))
    store.close()


@pytest.fixture(params=SQL_BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from open_backend(request, tmp_path, _sqlite, _postgres)


def _fb(**kw: object) -> Feedback:
    base = dict(decision_id="dec_1", explanation_id="ex_1", principal="lou", role="domain_expert",
                model="credit", model_version="1", verdict="disagree", should_matter=("income",),
                should_not_matter=("age",), text="age should not count")  # fmt: skip
    base.update(kw)
    return Feedback(**base)  # type: ignore[arg-type]


def test_submit_and_export(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    stored = store.submit(_fb(), FEATURES)
    store.submit(_fb(decision_id="dec_2", verdict="agree", should_not_matter=(), model="other"), FEATURES)
    assert stored.time.endswith("Z")
    assert store.all("credit") == [stored]
    assert [f.decision_id for f in store.all()] == ["dec_1", "dec_2"]
    assert store.export(tmp_path / "fb.jsonl", "jsonl") == 2
    lines = [json.loads(x) for x in (tmp_path / "fb.jsonl").read_text().splitlines()]
    assert lines[0]["should_not_matter"] == ["age"] and lines[1]["verdict"] == "agree"
    assert store.export(tmp_path / "fb.csv", "csv", model="credit") == 1
    with (tmp_path / "fb.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["should_matter"] == "income" and rows[0]["text"] == "age should not count"


@pytest.mark.parametrize(
    "bad",
    [
        {"verdict": "maybe"},
        {"should_matter": ("shoe_size",)},
        {"should_matter": ("age",), "should_not_matter": ("age",)},
        {"text": "x" * 5000},
        {"decision_id": ""},
    ],
)
def test_invalid_feedback_is_refused(backend: Backend, bad: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        backend.store.submit(_fb(**bad), FEATURES)
    assert backend.store.all() == []


@pytest.mark.parametrize("sql", ["UPDATE feedback SET body = '{}'", "DELETE FROM feedback"])
def test_rows_are_append_only_for_every_client(backend: Backend, sql: str) -> None:
    stored = backend.store.submit(_fb(), FEATURES)
    with pytest.raises((sqlite3.DatabaseError, psycopg.Error), match="append-only"):
        backend.raw(sql)
    assert backend.store.all() == [stored]


def _given_at(backend: Backend, when: datetime, **kw: object) -> Feedback:
    """Feedback stored with a given time, as the store would have written it then."""
    fb = Feedback(**{**_fb(**kw).__dict__, "time": feedback_time(when)})
    backend.store._append(json.dumps(fb.__dict__), fb.model)
    return fb


def test_expiry_deletes_exactly_the_feedback_given_before_the_cutoff(backend: Backend) -> None:
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    old = _given_at(backend, now - timedelta(days=40), decision_id="old")
    edge = _given_at(backend, now - timedelta(days=30), decision_id="edge")
    new = _given_at(backend, now - timedelta(days=1), decision_id="new")
    assert backend.store.expire(now - timedelta(days=30)) == 1
    assert [f.decision_id for f in backend.store.all()] == [edge.decision_id, new.decision_id]
    assert old not in backend.store.all()
    assert backend.store.expire(now - timedelta(days=30)) == 0
    # The same instant in another zone, and a naive time taken as UTC, cut in the same place.
    assert backend.store.expire((now - timedelta(days=2)).astimezone(timezone(timedelta(hours=-5)))) == 1
    assert backend.store.expire(datetime(2026, 11, 22, 11, 59)) == 0
    assert [f.decision_id for f in backend.store.all()] == ["new"]


def test_erasure_deletes_one_subjects_feedback_and_no_one_elses(backend: Backend) -> None:
    store = backend.store
    store.submit(_fb(decision_id="a1", principal="alice-app", role="end_user", subject_id="alice"), FEATURES)
    store.submit(_fb(decision_id="s1"), FEATURES)  # staff feedback: no subject
    store.submit(_fb(decision_id="a2", principal="alice-app", role="end_user", subject_id="alice"), FEATURES)
    store.submit(_fb(decision_id="al", principal="alicia-app", role="end_user", subject_id="alice2"), FEATURES)
    assert store.erase_subject("alice") == 2
    assert [f.decision_id for f in store.all()] == ["s1", "al"]
    assert store.erase_subject("alice") == 0
    with pytest.raises(InvalidArgument, match="subject_id"):
        store.erase_subject("")  # would match every staff row
    assert len(store.all()) == 2


def test_expiry_and_erasure_delete_a_batch_per_transaction(backend: Backend) -> None:
    store = backend.store
    store.delete_batch = 2  # one transaction deletes at most two rows
    for i in range(5):
        store.submit(_fb(decision_id=f"old{i}"), FEATURES)
    for i in range(4):
        store.submit(_fb(decision_id=f"c{i}", principal="carol-app", role="end_user", subject_id="carol"), FEATURES)
    store.submit(_fb(decision_id="kept", principal="dan-app", role="end_user", subject_id="dan"), FEATURES)
    assert store.erase_subject("carol") == 4  # 2 + 2 + 0
    assert [f.decision_id for f in store.all()] == [*(f"old{i}" for i in range(5)), "kept"]
    assert store.expire(datetime.now(UTC) + timedelta(seconds=1)) == 6  # 2 + 2 + 2 + 0
    assert store.all() == []


@pytest.mark.parametrize("sql", ["UPDATE feedback SET body = '{}'", "DELETE FROM feedback"])
def test_other_clients_still_cannot_delete_after_expiry_or_erasure(backend: Backend, sql: str) -> None:
    backend.store.submit(_fb(subject_id="bob"), FEATURES)
    kept = backend.store.submit(_fb(decision_id="kept"), FEATURES)
    backend.store.expire(datetime(2000, 1, 1, tzinfo=UTC))
    backend.store.erase_subject("bob")
    with pytest.raises((sqlite3.DatabaseError, psycopg.Error), match="append-only"):
        backend.raw(sql)
    assert backend.store.all() == [kept]


def test_sqlite_files_of_the_earlier_schema_gain_the_deletions(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    run_sqlite(
        path,
        """CREATE TABLE feedback (id INTEGER PRIMARY KEY, body TEXT NOT NULL, model TEXT NOT NULL);
        CREATE TRIGGER feedback_no_update BEFORE UPDATE ON feedback
        BEGIN SELECT RAISE(ABORT, 'feedback is append-only'); END;
        CREATE TRIGGER feedback_no_delete BEFORE DELETE ON feedback
        BEGIN SELECT RAISE(ABORT, 'feedback is append-only'); END;""",
        script=True,
    )
    old = {**_fb().__dict__, "time": "2020-01-01T00:00:00.000000Z"}
    del old["subject_id"]  # bodies written before subjects were recorded
    run_sqlite(path, f"INSERT INTO feedback (body, model) VALUES ('{json.dumps(old)}', 'credit')")
    store = SqliteFeedbackStore(path)
    try:
        assert store.all()[0].subject_id == ""
        assert store.erase_subject("lou") == 0  # a principal id is not a subject
        assert store.expire(datetime(2021, 1, 1, tzinfo=UTC)) == 1
        store.submit(_fb(), FEATURES)
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            run_sqlite(path, "DELETE FROM feedback")
    finally:
        store.close()


def test_concurrent_writers_lose_nothing(backend: Backend) -> None:
    def write(k: int) -> None:
        for i in range(20):
            backend.store.submit(_fb(decision_id=f"dec_{k}_{i}"), FEATURES)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [f.decision_id for f in backend.store.all()]
    assert sorted(ids) == sorted(f"dec_{k}_{i}" for k in range(6) for i in range(20))
    for k in range(6):  # each writer's submissions keep their order
        mine = [i for i in ids if i.startswith(f"dec_{k}_")]
        assert mine == [f"dec_{k}_{i}" for i in range(20)]


@pytest.mark.needs_postgres
def test_postgres_lost_connection_fails_the_call_then_reconnects(postgres_dsn: str) -> None:
    backend = next(_postgres(postgres_dsn))
    stored = backend.store.submit(_fb(), FEATURES)
    terminate_other_connections(postgres_dsn)
    with pytest.raises(Unavailable):
        backend.store.all()
    assert backend.store.all() == [stored]  # the next call opens a new connection
    backend.store.close()


@pytest.mark.needs_postgres
def test_cli_exports_what_the_configured_store_holds(postgres_dsn: str, tmp_path: Path) -> None:
    from desiderata.server.cli import main

    backend = next(_postgres(postgres_dsn))
    backend.store.submit(_fb(), FEATURES)
    backend.store.submit(_fb(decision_id="dec_2", model="other"), FEATURES)
    backend.store.close()
    config = tmp_path / "config.yaml"
    config.write_text(
        "store:\n"
        f"  state_dir: {tmp_path / 'state'}\n"
        "  feedback_backend: postgres\n"
        f"  feedback_postgres_dsn: {postgres_dsn}\n"
    )
    out = tmp_path / "feedback.jsonl"
    assert main(["feedback", "export", str(out), "--config", str(config), "--model", "credit"]) == 0
    assert [json.loads(line)["decision_id"] for line in out.read_text().splitlines()] == ["dec_1"]
