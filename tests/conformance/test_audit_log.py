"""Conformance of every audit-log backend: append, chain, verify, tampering,
query with filters and pagination. PostgreSQL runs as a real server."""

from __future__ import annotations

import base64
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg
import pytest

from desiderata.policy.audit import AuditFilter, AuditLog, AuditRecord, encode_page_token, record_hash, utc_now
from desiderata.policy.audit_postgres import PostgresAuditLog
from desiderata.policy.audit_sqlite import SqliteAuditLog
from desiderata.server.errors import InvalidArgument, Unavailable
from tests.support.postgres_server import run_sql, terminate_other_connections
from tests.support.raw_sql import run_sqlite
from tests.support.sql_backends import SQL_BACKENDS, open_backend


@dataclass
class Backend:
    log: AuditLog
    tamper: Callable[[str], None]
    """Runs raw SQL as an attacker with database access (append-only triggers off)."""
    raw: Callable[[str], None]
    """Runs raw SQL as another client of the database (triggers in place)."""


def _sqlite(tmp_path: Path) -> Iterator[Backend]:
    path = tmp_path / "audit.db"
    log = SqliteAuditLog(path)

    def tamper(sql: str) -> None:
        drop = "DROP TRIGGER IF EXISTS audit_log_no_update; DROP TRIGGER IF EXISTS audit_log_no_delete;"
        run_sqlite(path, drop + sql, script=True)

    yield Backend(log, tamper, lambda sql: run_sqlite(path, sql))
    log.close()


def _postgres(dsn: str) -> Iterator[Backend]:
    run_sql(dsn, "DROP TABLE IF EXISTS audit_log CASCADE")
    log = PostgresAuditLog(dsn)

    def tamper(sql: str) -> None:
        run_sql(dsn, "ALTER TABLE audit_log DISABLE TRIGGER USER;" + sql)

    yield Backend(log, tamper, lambda sql: run_sql(dsn, sql))
    log.close()


@pytest.fixture(params=SQL_BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from open_backend(request, tmp_path, _sqlite, _postgres)


def _record(i: int, **kw: object) -> AuditRecord:
    base = AuditRecord(
        decision_id=f"dec_{i}",
        time=utc_now(),
        principal=f"p{i % 3}",
        role="end_user" if i % 2 else "ml_engineer",
        purpose="transparency",
        consumption="static",
        model="credit",
        model_version="1",
        policy_version="sha256:abc",
        action="feature_attribution",
        allowed=i % 4 != 0,
        tier="feature_attribution/narrative",
        privacy_charge=0.1,
        reasons=("end_user.own_decision",),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def _fill(log: AuditLog, n: int = 5) -> None:
    for i in range(1, n + 1):
        log.append(_record(i))


def test_append_chains_and_verifies(backend: Backend) -> None:
    assert backend.log.verify().ok and backend.log.verify().records == 0
    first = backend.log.append(_record(1))
    second = backend.log.append(_record(2))
    assert (first.seq, second.seq) == (1, 2)
    assert second.prev_hash == first.hash == record_hash(1, _record(1, time=first.record.time), first.prev_hash)
    result = backend.log.verify()
    assert result.ok and result.records == 2 and result.head_hash == second.hash
    stored = list(backend.log.iter_all())
    assert stored[1].record == second.record


def test_append_only_at_the_database(backend: Backend) -> None:
    _fill(backend.log, 2)
    for sql in ("UPDATE audit_log SET tier = 'x' WHERE seq = 1", "DELETE FROM audit_log WHERE seq = 1"):
        with pytest.raises((sqlite3.DatabaseError, psycopg.Error), match="append-only"):
            backend.raw(sql)
    assert backend.log.verify().ok and backend.log.verify().records == 2


@pytest.mark.parametrize(
    ("case", "sql", "bad_seq"),
    [
        ("edit", "UPDATE audit_log SET tier = 'feature_attribution/full' WHERE seq = 3", 3),
        ("edit_reasons", "UPDATE audit_log SET reasons = '[]' WHERE seq = 2", 2),
        ("drop", "DELETE FROM audit_log WHERE seq = 3", 4),
        (
            "reorder",
            "UPDATE audit_log SET seq = -1 WHERE seq = 2; UPDATE audit_log SET seq = 2 WHERE seq = 3; "
            "UPDATE audit_log SET seq = 3 WHERE seq = -1",
            2,
        ),
    ],
)
def test_verify_detects_tampering(backend: Backend, case: str, sql: str, bad_seq: int) -> None:
    _fill(backend.log)
    assert backend.log.verify().ok
    backend.tamper(sql)
    result = backend.log.verify()
    assert not result.ok, case
    assert result.first_bad_seq == bad_seq and result.problem


def test_truncation_needs_an_anchor(backend: Backend) -> None:
    _fill(backend.log)
    anchor = (5, backend.log.verify().head_hash)
    backend.tamper("DELETE FROM audit_log WHERE seq = 5")
    assert backend.log.verify().ok  # a clean prefix: undetectable without an anchor
    truncated = backend.log.verify(anchor=anchor)
    assert not truncated.ok and "truncated" in truncated.problem


def test_concurrent_appends_keep_one_chain(backend: Backend) -> None:
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(10):
                backend.log.append(_record(k * 100 + i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    result = backend.log.verify()
    assert result.ok and result.records == 40


def test_query_filters_and_paginates(backend: Backend) -> None:
    _fill(backend.log, 12)
    page = backend.log.query(AuditFilter(), page_size=5)
    seqs = [r.seq for r in page.records]
    while page.next_page_token:
        page = backend.log.query(AuditFilter(), page_size=5, page_token=page.next_page_token)
        seqs += [r.seq for r in page.records]
    assert seqs == list(range(1, 13))
    denied = backend.log.query(AuditFilter(allowed=False), page_size=100)
    assert [r.record.decision_id for r in denied.records] == ["dec_4", "dec_8", "dec_12"]
    assert not denied.next_page_token
    p1 = backend.log.query(AuditFilter(principal="p1", role="end_user"), page_size=1)
    p1_next = backend.log.query(AuditFilter(principal="p1", role="end_user"), page_token=p1.next_page_token)
    assert [r.seq for r in p1.records + p1_next.records] == [1, 7]
    one = backend.log.query(AuditFilter(decision_id="dec_9"))
    assert [r.record.reasons for r in one.records] == [("end_user.own_decision",)]
    assert backend.log.query(AuditFilter(since="2999-01-01")).records == ()
    assert len(backend.log.query(AuditFilter(until="2999-01-01", model="credit")).records) == 12


def test_store_wide_records_are_read_apart_from_every_model(backend: Backend) -> None:
    # Erasures concern no model (they name no subject either); a model's query never lists
    # them, and a store-wide query lists only them.
    _fill(backend.log, 3)
    backend.log.append(_record(4, model="other"))
    backend.log.append(_record(90, model="", model_version="", action="erase_subject", role="operator"))
    backend.log.append(_record(5))
    backend.log.append(_record(91, model="", model_version="", action="audit/read", role="regulator"))
    store = backend.log.query(AuditFilter(store_only=True), page_size=1)
    ids = [r.record.decision_id for r in store.records]
    store = backend.log.query(AuditFilter(store_only=True), page_size=1, page_token=store.next_page_token)
    ids += [r.record.decision_id for r in store.records]
    assert ids == ["dec_90", "dec_91"] and not store.next_page_token
    erasures = backend.log.query(AuditFilter(store_only=True, action="erase_subject"))
    assert [r.record.decision_id for r in erasures.records] == ["dec_90"]
    reads = backend.log.query(AuditFilter(action="audit/read"))
    assert [r.record.decision_id for r in reads.records] == ["dec_91"]
    assert backend.log.query(AuditFilter(model="credit", action="audit/read")).records == ()
    credit = backend.log.query(AuditFilter(model="credit"))
    assert [r.record.decision_id for r in credit.records] == ["dec_1", "dec_2", "dec_3", "dec_5"]
    with pytest.raises(InvalidArgument):
        AuditFilter(store_only=True, model="credit")


def test_a_query_pages_through_the_log_as_its_first_page_saw_it(backend: Backend) -> None:
    # Reads are audited: a reader following pages to the newest record would find one record
    # more per page it read, and with one record per page it would never reach the end.
    _fill(backend.log, 3)
    page = backend.log.query(AuditFilter(), page_size=1)
    seqs = [r.seq for r in page.records]
    for _ in range(6):  # without the bound this never ends
        if not page.next_page_token:
            break
        backend.log.append(_record(99, role="regulator"))  # the read itself, audited
        page = backend.log.query(AuditFilter(), page_size=1, page_token=page.next_page_token)
        seqs += [r.seq for r in page.records]
    assert seqs == [1, 2, 3] and not page.next_page_token
    assert [r.seq for r in backend.log.query(AuditFilter(), page_token=encode_page_token(3, 5)).records] == [4, 5]
    fresh = backend.log.query(AuditFilter(role="regulator"))
    assert [r.seq for r in fresh.records] == [4, 5]  # a new query sees them
    # A token issued before snapshot bounds ("audit:<seq>") still resumes, up to today's head.
    legacy = base64.urlsafe_b64encode(b"audit:3").decode().rstrip("=")
    assert [r.seq for r in backend.log.query(AuditFilter(), page_token=legacy).records] == [4, 5]


def test_bad_pagination_input_is_invalid_argument(backend: Backend) -> None:
    with pytest.raises(InvalidArgument):
        backend.log.query(AuditFilter(), page_token="not-a-token")
    with pytest.raises(InvalidArgument):
        backend.log.query(AuditFilter(), page_size=5000)


@pytest.mark.needs_postgres
def test_postgres_lost_connection_fails_the_append_then_reconnects(postgres_dsn: str) -> None:
    backend = next(_postgres(postgres_dsn))
    backend.log.append(_record(1))
    terminate_other_connections(postgres_dsn)  # a restarted or failed-over server
    with pytest.raises(Unavailable):
        backend.log.append(_record(2))
    stored = backend.log.append(_record(3))  # the next append opens a new connection
    assert stored.seq == 2 and [r.record.decision_id for r in backend.log.iter_all()] == ["dec_1", "dec_3"]
    assert backend.log.verify().ok
    backend.log.close()
