"""Conformance of every decision-store backend: typed round trip, recent decisions of a
version, unknown and repeated ids, append-only rows, expiry and erasure, concurrent writers, and a lost
connection. PostgreSQL runs as a real server."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest

from desiderata.server.decision_store import (
    FIRST_PAGE,
    TABLE,
    DecisionRecord,
    DecisionStore,
    SqliteDecisionStore,
    new_record_id,
    page_after,
)
from desiderata.server.decision_store_postgres import PostgresDecisionStore
from desiderata.server.errors import DecisionNotFound, InternalError, Unavailable
from tests.support.postgres_server import run_sql, terminate_other_connections
from tests.support.raw_sql import run_sqlite
from tests.support.sql_backends import SQL_BACKENDS, open_backend


@dataclass
class Backend:
    store: DecisionStore
    raw: Callable[[str], None]
    """Runs SQL on a connection of its own, as another client of the same database would."""
    reopen: Callable[[], DecisionStore]
    """A second store over the same database (another replica, or a restart)."""


def _sqlite(tmp_path: Path) -> Iterator[Backend]:
    path = tmp_path / "decisions.db"
    store = SqliteDecisionStore(path)

    yield Backend(store, lambda sql: run_sqlite(path, sql), lambda: SqliteDecisionStore(path))
    store.close()


def _postgres(dsn: str) -> Iterator[Backend]:
    run_sql(dsn, "DROP TABLE IF EXISTS decisions, decisions_deletion CASCADE")
    store = PostgresDecisionStore(dsn)
    yield Backend(store, lambda sql: run_sql(dsn, sql), lambda: PostgresDecisionStore(dsn))
    store.close()


@pytest.fixture(params=SQL_BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from open_backend(request, tmp_path, _sqlite, _postgres)


def _record(i: int = 0, **kw: object) -> DecisionRecord:
    fields: dict[str, object] = {
        "decision_id": new_record_id(),
        "subject_id": f"subject-{i}",
        "principal_id": "risk-service",
        "model": "credit",
        "model_version": "3",
        "features": {"age": 30 + i, "income": 1234.5, "home": "rent", "records": i % 2 == 0, "zero": 0.0},
        "probabilities": (0.25, 0.75),
        "created_at": datetime(2026, 11, 23, 1, 2, 3, 456789, tzinfo=UTC) + timedelta(seconds=i),
    }
    fields.update(kw)
    return DecisionRecord(**fields)  # type: ignore[arg-type]


def test_round_trip_keeps_every_type(backend: Backend) -> None:
    rec = _record(1)
    backend.store.record(rec)
    got = backend.store.get(rec.decision_id)
    assert got == rec
    assert type(got.features["age"]) is int and type(got.features["records"]) is bool
    assert type(got.features["income"]) is float and got.created_at.tzinfo is not None
    reopened = backend.reopen()  # another replica, or the same one restarted, reads it too
    try:
        assert reopened.get(rec.decision_id) == rec
    finally:
        reopened.close()


def test_recent_decisions_are_one_versions_newest_first(backend: Backend) -> None:
    """What attribution drift reads: the newest decisions of one model version."""
    records = [_record(i) for i in (3, 0, 4, 1, 2)]  # recorded out of time order
    for rec in [*records, _record(9, model_version="2"), _record(8, model="other")]:
        backend.store.record(rec)
    got = backend.store.recent("credit", "3", 3)
    assert [r.subject_id for r in got] == ["subject-4", "subject-3", "subject-2"]
    assert got[0] == records[2]
    assert len(backend.store.recent("credit", "3", 100)) == 5
    assert [r.subject_id for r in backend.store.recent("credit", "2", 100)] == ["subject-9"]
    assert backend.store.recent("credit", "7", 100) == []


def test_a_subjects_decisions_page_newest_first_over_every_version(backend: Backend) -> None:
    """What ListDecisions reads: one subject's decisions of one model, any version."""
    base = datetime(2026, 11, 23, 1, 2, 3, tzinfo=UTC)
    mine = [
        _record(i, subject_id="carol", model_version=str(1 + i % 2), created_at=base + timedelta(seconds=i))
        for i in (2, 0, 3, 1)
    ]
    tie = _record(5, subject_id="carol", created_at=base + timedelta(seconds=1))  # same time as another
    for rec in [*mine, tie, _record(4, subject_id="dan"), _record(6, subject_id="carol", model="other")]:
        backend.store.record(rec)
    pages: list[list[DecisionRecord]] = []
    after = FIRST_PAGE
    while True:
        page = backend.store.of_subject("carol", "credit", after, 2)
        pages.append(page)
        if len(page) < 2:
            break
        after = page_after(page[-1])
    got = [r for p in pages for r in p]
    at_one = sorted((r for r in (mine[3], tie)), key=lambda r: r.decision_id, reverse=True)
    assert got == [mine[2], mine[0], *at_one, mine[1]]  # time, then id, both descending
    assert [len(p) for p in pages] == [2, 2, 1]
    assert backend.store.of_subject("carol", "other", FIRST_PAGE, 10)[0].model == "other"
    assert backend.store.of_subject("erin", "credit", FIRST_PAGE, 10) == []


def test_unknown_id_is_not_found(backend: Backend) -> None:
    with pytest.raises(DecisionNotFound, match="no recorded decision 'rec_missing'"):
        backend.store.get("rec_missing")


def test_a_recorded_decision_is_never_replaced(backend: Backend) -> None:
    rec = _record(2)
    backend.store.record(rec)
    with pytest.raises(InternalError, match="recorded already"):
        backend.store.record(_record(3, decision_id=rec.decision_id))
    assert backend.store.get(rec.decision_id) == rec


@pytest.mark.parametrize(
    "sql",
    ["UPDATE decisions SET subject_id = 'mallory'", "DELETE FROM decisions"],
)
def test_rows_are_append_only_for_every_client(backend: Backend, sql: str) -> None:
    rec = _record(4)
    backend.store.record(rec)
    with pytest.raises((sqlite3.DatabaseError, psycopg.Error), match="append-only"):
        backend.raw(sql)
    assert backend.store.get(rec.decision_id) == rec


def test_expiry_deletes_only_decisions_older_than_the_cutoff(backend: Backend) -> None:
    records = [_record(i) for i in range(5)]  # one second apart
    for rec in records:
        backend.store.record(rec)
    cutoff = records[2].created_at + timedelta(milliseconds=500)
    assert backend.store.expire(cutoff) == 3
    for rec in records[:3]:
        with pytest.raises(DecisionNotFound):
            backend.store.get(rec.decision_id)
    assert [backend.store.get(r.decision_id) for r in records[3:]] == records[3:]
    assert backend.store.expire(cutoff) == 0
    # The cutoff does not outlive its transaction: other deletes are still refused.
    with pytest.raises((sqlite3.DatabaseError, psycopg.Error), match="append-only"):
        backend.raw("DELETE FROM decisions")
    assert backend.store.expire(records[-1].created_at + timedelta(days=1)) == 2


def test_expiry_and_erasure_delete_a_batch_per_transaction(backend: Backend) -> None:
    backend.store.delete_batch = 2  # type: ignore[attr-defined]  # both backends have it
    old = [_record(i) for i in range(5)]
    mine = [_record(10 + i, subject_id="carol") for i in range(4)]
    for rec in [*old, *mine]:
        backend.store.record(rec)
    assert backend.store.expire(old[-1].created_at + timedelta(microseconds=1)) == 5  # 2 + 2 + 1
    assert backend.store.erase_subject("carol") == 4  # 2 + 2 + 0
    for rec in [*old, *mine]:
        with pytest.raises(DecisionNotFound):
            backend.store.get(rec.decision_id)


def test_expiry_takes_a_cutoff_in_any_time_zone(backend: Backend) -> None:
    rec = _record(1)
    backend.store.record(rec)
    eastern = timezone(timedelta(hours=-5))
    assert backend.store.expire(rec.created_at.astimezone(eastern)) == 0  # not older than itself
    assert backend.store.expire((rec.created_at + timedelta(microseconds=1)).astimezone(eastern)) == 1


def test_erasure_deletes_every_decision_of_one_subject_and_nothing_else(backend: Backend) -> None:
    alice = [_record(i, subject_id="alice") for i in range(3)]
    others = [_record(i, subject_id="bob") for i in range(2)] + [_record(9, subject_id="alice-2")]
    for rec in [*alice, *others]:
        backend.store.record(rec)
    assert backend.store.erase_subject("alice") == 3
    for rec in alice:
        with pytest.raises(DecisionNotFound):
            backend.store.get(rec.decision_id)
    assert [backend.store.get(r.decision_id) for r in others] == others
    assert backend.store.erase_subject("alice") == 0
    with pytest.raises((sqlite3.DatabaseError, psycopg.Error), match="append-only"):
        backend.raw("DELETE FROM decisions WHERE subject_id = 'bob'")


def test_sqlite_files_of_the_earlier_schema_expire_too(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    run_sqlite(  # the triggers as shipped before expiry existed: every delete refused
        path,
        TABLE
        + "CREATE TRIGGER decisions_no_delete BEFORE DELETE ON decisions "
        + "BEGIN SELECT RAISE(ABORT, 'decisions are append-only'); END;",
        script=True,
    )
    store = SqliteDecisionStore(path)
    try:
        rec = _record(0)
        store.record(rec)
        assert store.expire(rec.created_at + timedelta(seconds=1)) == 1
    finally:
        store.close()


def test_concurrent_writers_lose_nothing(backend: Backend) -> None:
    records = [_record(i) for i in range(160)]
    errors: list[BaseException] = []

    def write(part: list[DecisionRecord]) -> None:
        try:
            for rec in part:
                backend.store.record(rec)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(records[k::8],)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(backend.store.get(r.decision_id) == r for r in records)


@pytest.mark.needs_postgres
def test_postgres_lost_connection_fails_the_call_then_reconnects(postgres_dsn: str) -> None:
    backend = next(_postgres(postgres_dsn))
    rec = _record(5)
    backend.store.record(rec)
    terminate_other_connections(postgres_dsn)
    with pytest.raises(Unavailable):
        backend.store.get(rec.decision_id)
    assert backend.store.get(rec.decision_id) == rec  # the next call opens a new connection
    backend.store.close()


def test_postgres_down_at_start_is_unavailable() -> None:
    with pytest.raises(Unavailable):
        PostgresDecisionStore("postgresql://nobody@127.0.0.1:1/none", connect_timeout_s=1)
