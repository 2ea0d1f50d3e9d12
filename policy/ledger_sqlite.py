"""SQLite budget ledger: the embedded default, safe across threads and processes.

Every operation is one ``BEGIN IMMEDIATE`` transaction, which takes SQLite's
write lock up front, so "read the spend, check the cap, insert the
reservation" cannot interleave with another writer in any thread or process.
The database runs in WAL mode so readers never block writers. Each thread
(and each forked process) gets its own connection. Any `sqlite3.Error` (file
missing, disk full, lock timeout) becomes `Unavailable`: the pipeline then
serves nothing, which is the fail-closed behaviour the design asks for.

``synchronous=NORMAL`` (default) survives a crash of the server process, the
failure the reservation protocol is built for; ``FULL`` also survives power
loss at the cost of one fsync per commit.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from desiderata.policy.ledger import (
    RHO_TOLERANCE,
    BudgetLedger,
    Limits,
    Reservation,
    ReservationNotActive,
    Usage,
    budget_exhausted,
    check_rate,
    check_request,
)
from desiderata.server.errors import Unavailable

__all__ = ["SqliteLedger"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
  principal TEXT NOT NULL, model TEXT NOT NULL,
  queries INTEGER NOT NULL, rho REAL NOT NULL,
  PRIMARY KEY (principal, model));
CREATE TABLE IF NOT EXISTS reservations (
  id TEXT PRIMARY KEY, principal TEXT NOT NULL, model TEXT NOT NULL,
  queries INTEGER NOT NULL, rho REAL NOT NULL, expires_at REAL NOT NULL, digest TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS reservations_pm ON reservations (principal, model);
CREATE TABLE IF NOT EXISTS answered (
  principal TEXT NOT NULL, model TEXT NOT NULL, digest TEXT NOT NULL,
  PRIMARY KEY (principal, model, digest));
CREATE TABLE IF NOT EXISTS buckets (
  principal TEXT NOT NULL, model TEXT NOT NULL, tokens REAL NOT NULL, updated REAL NOT NULL,
  PRIMARY KEY (principal, model));
"""


class SqliteLedger(BudgetLedger):
    """Budget ledger in one SQLite file.

    Args:
        path: database file; created with its tables if missing.
        busy_timeout_s: how long a transaction waits for the write lock before
            the store counts as unavailable.
        synchronous: SQLite ``synchronous`` pragma, "NORMAL" or "FULL".
        clock: Unix-seconds clock (injectable for tests).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout_s: float = 5.0,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = str(path)
        self._timeout = busy_timeout_s
        self._sync = synchronous
        self._clock = clock
        self._local = threading.local()
        conn = self._conn()
        try:
            conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise Unavailable("the budget ledger is unavailable") from exc

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            return conn
        try:
            conn = sqlite3.connect(self._path, timeout=self._timeout, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._sync}")
        except sqlite3.Error as exc:
            raise Unavailable("the budget ledger is unavailable") from exc
        self._local.conn = conn
        self._local.pid = os.getpid()
        return conn

    def _begin(self) -> sqlite3.Connection:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise Unavailable("the budget ledger is unavailable") from exc
        return conn

    @staticmethod
    def _live(conn: sqlite3.Connection, principal: str, model: str, now: float) -> tuple[int, float]:
        conn.execute(
            "DELETE FROM reservations WHERE principal=? AND model=? AND expires_at<=?",
            (principal, model, now),
        )
        q, r = conn.execute(
            "SELECT COALESCE(SUM(queries),0), COALESCE(SUM(rho),0.0) FROM reservations WHERE principal=? AND model=?",
            (principal, model),
        ).fetchone()
        return int(q), float(r)

    @staticmethod
    def _spent(conn: sqlite3.Connection, principal: str, model: str) -> tuple[int, float]:
        row = conn.execute(
            "SELECT queries, rho FROM spend WHERE principal=? AND model=?", (principal, model)
        ).fetchone()
        return (0, 0.0) if row is None else (int(row[0]), float(row[1]))

    def reserve(
        self,
        principal: str,
        model: str,
        *,
        queries: int,
        rho: float,
        limits: Limits,
        ttl_s: float,
        digest: str = "",
    ) -> Reservation:
        check_request(queries, rho, ttl_s)
        conn = self._begin()
        try:
            now = self._clock()
            if (
                digest
                and conn.execute(
                    "SELECT 1 FROM answered WHERE principal=? AND model=? AND digest=?",
                    (principal, model, digest),
                ).fetchone()
            ):
                conn.execute("COMMIT")
                return Reservation(uuid.uuid4().hex, principal, model, 0, 0.0, now + ttl_s, free=True)
            rq, rr = self._live(conn, principal, model, now)
            sq, sr = self._spent(conn, principal, model)
            which = ""
            if limits.max_queries is not None and sq + rq + queries > limits.max_queries:
                which = "queries"
            elif limits.max_rho is not None and sr + rr + rho > limits.max_rho * (1 + RHO_TOLERANCE):
                which = "rho"
            if which:
                conn.execute("COMMIT")  # keeps the expired-reservation cleanup
                raise budget_exhausted(principal, model, which, limits)
            res = Reservation(uuid.uuid4().hex, principal, model, queries, rho, now + ttl_s)
            conn.execute(
                "INSERT INTO reservations VALUES (?,?,?,?,?,?,?)",
                (res.id, principal, model, queries, rho, res.expires_at, digest),
            )
            conn.execute("COMMIT")
            return res
        except sqlite3.Error as exc:
            _rollback(conn)
            raise Unavailable("the budget ledger is unavailable") from exc

    def commit(self, reservation: Reservation) -> None:
        if reservation.free:
            return
        conn = self._begin()
        try:
            row = conn.execute(
                "SELECT queries, rho, expires_at, digest FROM reservations WHERE id=?", (reservation.id,)
            ).fetchone()
            if row is None or float(row[2]) <= self._clock():
                conn.execute("DELETE FROM reservations WHERE id=?", (reservation.id,))
                conn.execute("COMMIT")
                raise ReservationNotActive("the budget reservation expired before the answer was ready")
            p, m = reservation.principal, reservation.model
            conn.execute(
                "INSERT INTO spend VALUES (?,?,?,?) ON CONFLICT (principal, model) DO UPDATE"
                " SET queries = queries + excluded.queries, rho = rho + excluded.rho",
                (p, m, int(row[0]), float(row[1])),
            )
            if row[3]:
                conn.execute("INSERT OR IGNORE INTO answered VALUES (?,?,?)", (p, m, row[3]))
            conn.execute("DELETE FROM reservations WHERE id=?", (reservation.id,))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(conn)
            raise Unavailable("the budget ledger is unavailable") from exc

    def release(self, reservation: Reservation) -> None:
        if reservation.free:
            return
        try:
            self._conn().execute("DELETE FROM reservations WHERE id=?", (reservation.id,))
        except sqlite3.Error as exc:
            raise Unavailable("the budget ledger is unavailable") from exc

    def take(self, principal: str, model: str, *, rate_per_minute: float, burst: int) -> float:
        check_rate(rate_per_minute, burst)
        rate = rate_per_minute / 60.0
        conn = self._begin()
        try:
            now = self._clock()
            row = conn.execute(
                "SELECT tokens, updated FROM buckets WHERE principal=? AND model=?", (principal, model)
            ).fetchone()
            tokens = float(burst) if row is None else min(float(burst), row[0] + (now - row[1]) * rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / rate
            conn.execute(
                "INSERT INTO buckets VALUES (?,?,?,?) ON CONFLICT (principal, model) DO UPDATE"
                " SET tokens = excluded.tokens, updated = excluded.updated",
                (principal, model, tokens, now),
            )
            conn.execute("COMMIT")
            return wait
        except sqlite3.Error as exc:
            _rollback(conn)
            raise Unavailable("the budget ledger is unavailable") from exc

    def usage(self, principal: str, model: str) -> Usage:
        conn = self._begin()
        try:
            rq, rr = self._live(conn, principal, model, self._clock())
            sq, sr = self._spent(conn, principal, model)
            conn.execute("COMMIT")
            return Usage(sq, sr, rq, rr)
        except sqlite3.Error as exc:
            _rollback(conn)
            raise Unavailable("the budget ledger is unavailable") from exc

    def close(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass
