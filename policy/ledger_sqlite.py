"""SQLite budget ledger: the embedded default, safe across threads and processes.

Every write is one ``BEGIN IMMEDIATE`` transaction, which takes SQLite's
write lock up front, so "read the spend, check the cap, insert the
reservation" cannot interleave with another writer in any thread or process.
The database runs in WAL mode so readers never block writers. Each thread
(and each forked process) gets its own connection. Any `sqlite3.Error` (file
missing, disk full, lock timeout) becomes `Unavailable`: the pipeline then
serves nothing, which is the fail-closed behaviour the design asks for.

Why it is laid out for speed (the guard's budget is ≤ 0.3 ms per request):
an admission is one transaction (token bucket, repeat check, spend and live
reservations read by a single SELECT; expired reservations deleted only when
there are some), and a commit is one statement: it marks a live reservation
settled (``UPDATE … WHERE expires_at > ledger_now()``; no row back means it
was not live), and a trigger on that update, inside the statement's own
transaction and under the write lock, adds it to the spend, records its digest
and deletes it. The same statement returns the spend and live reservations
around it (``RETURNING``), which is the budget left that every answer's
disclosure block reports. `ledger_now()` is the ledger's clock registered on
each connection, read when the statement runs, so a commit that waited for
the lock cannot charge a reservation that expired meanwhile and was given
to another request. Tables are ``WITHOUT ROWID`` keyed by (principal,
model, …), so each write touches one B-tree instead of a table
plus its key index, which halves the pages a transaction appends to the WAL.
Statements are prepared once per connection (the `sqlite3` statement cache,
keyed by the SQL text, which is why every statement is a module constant).
Files made by earlier versions keep their rowid tables; every statement here
works on both layouts. The previous version's commit (an insert into
``commits`` whose trigger charges) stays in the schema, so processes of both
versions can share one file during an upgrade.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from desiderata.policy.ledger import (
    RHO_TOLERANCE,
    BudgetLedger,
    Limits,
    Rate,
    Reservation,
    ReservationNotActive,
    Usage,
    budget_exhausted,
    check_rate,
    check_request,
    new_reservation_id,
    rate_limited,
)
from desiderata.server.errors import Unavailable

__all__ = ["SqliteLedger"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
  principal TEXT NOT NULL, model TEXT NOT NULL,
  queries INTEGER NOT NULL, rho REAL NOT NULL,
  PRIMARY KEY (principal, model)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reservations (
  id TEXT NOT NULL, principal TEXT NOT NULL, model TEXT NOT NULL,
  queries INTEGER NOT NULL, rho REAL NOT NULL, expires_at REAL NOT NULL, digest TEXT NOT NULL,
  PRIMARY KEY (principal, model, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS answered (
  principal TEXT NOT NULL, model TEXT NOT NULL, digest TEXT NOT NULL,
  PRIMARY KEY (principal, model, digest)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS buckets (
  principal TEXT NOT NULL, model TEXT NOT NULL, tokens REAL NOT NULL, updated REAL NOT NULL,
  PRIMARY KEY (principal, model)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS commits (
  principal TEXT NOT NULL, model TEXT NOT NULL, id TEXT NOT NULL,
  PRIMARY KEY (principal, model, id)) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS charge_reservation BEFORE INSERT ON commits BEGIN
  SELECT RAISE(ABORT, 'reservation_not_active') WHERE NOT EXISTS (SELECT 1 FROM reservations
    WHERE principal=NEW.principal AND model=NEW.model AND id=NEW.id AND expires_at > ledger_now());
  INSERT INTO spend SELECT principal, model, queries, rho FROM reservations
    WHERE principal=NEW.principal AND model=NEW.model AND id=NEW.id
    ON CONFLICT (principal, model) DO UPDATE SET queries = queries + excluded.queries, rho = rho + excluded.rho;
  INSERT OR IGNORE INTO answered SELECT principal, model, digest FROM reservations
    WHERE principal=NEW.principal AND model=NEW.model AND id=NEW.id AND digest <> '';
  DELETE FROM reservations WHERE principal=NEW.principal AND model=NEW.model AND id=NEW.id;
  SELECT RAISE(IGNORE);
END;
-- the commit since version 2 (the insert into commits above is the previous version's)
CREATE TRIGGER IF NOT EXISTS settle_reservation AFTER UPDATE OF expires_at ON reservations
WHEN NEW.expires_at < 0 BEGIN
  INSERT INTO spend VALUES (NEW.principal, NEW.model, NEW.queries, NEW.rho)
    ON CONFLICT (principal, model) DO UPDATE SET queries = queries + excluded.queries, rho = rho + excluded.rho;
  INSERT OR IGNORE INTO answered SELECT NEW.principal, NEW.model, NEW.digest WHERE NEW.digest <> '';
  DELETE FROM reservations WHERE principal=NEW.principal AND model=NEW.model AND id=NEW.id;
END;
"""

# Everything an admission reads, in one statement: ?1 principal, ?2 model, ?3 now, ?4 digest.
# Columns: spent queries, spent rho, live reserved queries, live reserved rho, expired
# reservations, bucket tokens, bucket updated, whether the digest was answered.
_STATE = """
SELECT
  (SELECT queries FROM spend WHERE principal=?1 AND model=?2),
  (SELECT rho FROM spend WHERE principal=?1 AND model=?2),
  COALESCE(SUM(CASE WHEN expires_at > ?3 THEN queries END), 0),
  COALESCE(SUM(CASE WHEN expires_at > ?3 THEN rho END), 0.0),
  COUNT(*) - COUNT(CASE WHEN expires_at > ?3 THEN 1 END),
  (SELECT tokens FROM buckets WHERE principal=?1 AND model=?2),
  (SELECT updated FROM buckets WHERE principal=?1 AND model=?2),
  EXISTS (SELECT 1 FROM answered WHERE principal=?1 AND model=?2 AND digest=?4)
FROM reservations WHERE principal=?1 AND model=?2
"""
_DELETE_EXPIRED = "DELETE FROM reservations WHERE principal=? AND model=? AND expires_at<=?"
_PUT_BUCKET = (
    "INSERT INTO buckets VALUES (?,?,?,?) ON CONFLICT (principal, model) DO UPDATE"
    " SET tokens = excluded.tokens, updated = excluded.updated"
)
_HOLD = "INSERT INTO reservations VALUES (?,?,?,?,?,?,?)"
# Marks a live reservation settled (expires_at −1), which fires `settle_reservation`; no row
# back means it was not live. RETURNING is computed before that AFTER trigger runs, so it
# reads the spend before this charge and the live reservations without this one.
# ?1 principal, ?2 model, ?3 reservation id.
_COMMIT = """
UPDATE reservations SET expires_at = -1 WHERE principal=?1 AND model=?2 AND id=?3 AND expires_at > ledger_now()
RETURNING queries, rho,
  (SELECT queries FROM spend WHERE principal=?1 AND model=?2),
  (SELECT rho FROM spend WHERE principal=?1 AND model=?2),
  (SELECT COALESCE(SUM(queries), 0) FROM reservations WHERE principal=?1 AND model=?2 AND expires_at > ledger_now()),
  (SELECT COALESCE(SUM(rho), 0.0) FROM reservations WHERE principal=?1 AND model=?2 AND expires_at > ledger_now())
"""
_RELEASE = "DELETE FROM reservations WHERE principal=? AND model=? AND id=?"


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
            conn.create_function("ledger_now", 0, self._clock)  # the commit trigger's clock
            conn.execute("PRAGMA journal_mode=WAL")
            # In WAL mode synchronous=NORMAL fsyncs only at checkpoints, not at every commit:
            # a committed transaction survives a crash of the application (the server being
            # killed between reserve and commit, the failure the reservation protocol is
            # built for), though the last commits may be lost if the machine loses power.
            # FULL adds one fsync of the WAL per commit for that.
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

    def take_and_reserve(
        self,
        principal: str,
        model: str,
        *,
        rate: Rate | None,
        queries: int,
        rho: float,
        limits: Limits,
        ttl_s: float,
        digest: str = "",
    ) -> Reservation:
        check_request(queries, rho, ttl_s)
        if rate is not None:
            check_rate(rate.per_minute, rate.burst)
        conn = self._begin()
        try:
            now = self._clock()
            sq, sr, rq, rr, expired, tokens, updated, answered = conn.execute(
                _STATE, (principal, model, now, digest)
            ).fetchone()
            if rate is not None:
                wait = self._refill(conn, principal, model, rate, now, tokens, updated)
                if wait > 0.0:
                    conn.execute("COMMIT")
                    raise rate_limited(principal, model, rate, wait)
            if digest and answered:
                conn.execute("COMMIT")
                return Reservation(new_reservation_id(), principal, model, 0, 0.0, now + ttl_s, free=True)
            if expired:
                conn.execute(_DELETE_EXPIRED, (principal, model, now))
            sq, sr = (0, 0.0) if sq is None else (int(sq), float(sr))
            which = ""
            if limits.max_queries is not None and sq + int(rq) + queries > limits.max_queries:
                which = "queries"
            elif limits.max_rho is not None and sr + float(rr) + rho > limits.max_rho * (1 + RHO_TOLERANCE):
                which = "rho"
            if which:
                conn.execute("COMMIT")  # keeps the token taken and the expired-reservation cleanup
                raise budget_exhausted(principal, model, which, limits)
            res = Reservation(new_reservation_id(), principal, model, queries, rho, now + ttl_s)
            conn.execute(_HOLD, (res.id, principal, model, queries, rho, res.expires_at, digest))
            conn.execute("COMMIT")
            return res
        except sqlite3.Error as exc:
            _rollback(conn)
            raise Unavailable("the budget ledger is unavailable") from exc
        except BaseException:
            _rollback(conn)  # never leave the thread's connection inside a transaction
            raise

    @staticmethod
    def _refill(
        conn: sqlite3.Connection,
        principal: str,
        model: str,
        rate: Rate,
        now: float,
        tokens: float | None,
        updated: float | None,
    ) -> float:
        """Refills the bucket up to `now`, takes a token if there is one, stores it;
        returns 0.0 or the seconds until a token is available."""
        per_s = rate.per_minute / 60.0
        burst = float(rate.burst)
        level = burst if tokens is None or updated is None else min(burst, tokens + (now - updated) * per_s)
        wait = 0.0
        if level >= 1.0:
            level -= 1.0
        else:
            wait = (1.0 - level) / per_s
        conn.execute(_PUT_BUCKET, (principal, model, level, now))
        return wait

    def commit(self, reservation: Reservation) -> None:
        if not reservation.free:
            self._settle(reservation)

    def commit_and_usage(self, reservation: Reservation) -> Usage:
        if reservation.free:
            return self.usage(reservation.principal, reservation.model)
        return self._settle(reservation)

    def _settle(self, reservation: Reservation) -> Usage:
        """Charges a live reservation in one statement; returns the usage after it."""
        key = (reservation.principal, reservation.model, reservation.id)
        try:
            rows = self._conn().execute(_COMMIT, key).fetchall()  # stepped to its end: the transaction ends
        except sqlite3.Error as exc:
            raise Unavailable("the budget ledger is unavailable") from exc
        if not rows:
            raise ReservationNotActive("the budget reservation expired before the answer was ready")
        q, rho, sq, sr, rq, rr = rows[0]
        return Usage((sq or 0) + q, (sr or 0.0) + rho, int(rq), float(rr))

    def release(self, reservation: Reservation) -> None:
        if reservation.free:
            return
        try:
            self._conn().execute(_RELEASE, (reservation.principal, reservation.model, reservation.id))
        except sqlite3.Error as exc:
            raise Unavailable("the budget ledger is unavailable") from exc

    def take(self, principal: str, model: str, *, rate_per_minute: float, burst: int) -> float:
        check_rate(rate_per_minute, burst)
        conn = self._begin()
        try:
            now = self._clock()
            row = conn.execute(_STATE, (principal, model, now, "")).fetchone()
            wait = self._refill(conn, principal, model, Rate(rate_per_minute, burst), now, row[5], row[6])
            conn.execute("COMMIT")
            return wait
        except sqlite3.Error as exc:
            _rollback(conn)
            raise Unavailable("the budget ledger is unavailable") from exc
        except BaseException:
            _rollback(conn)  # never leave the thread's connection inside a transaction
            raise

    def usage(self, principal: str, model: str) -> Usage:
        # One SELECT outside an explicit transaction reads one consistent snapshot.
        try:
            sq, sr, rq, rr = self._conn().execute(_STATE, (principal, model, self._clock(), "")).fetchone()[:4]
        except sqlite3.Error as exc:
            raise Unavailable("the budget ledger is unavailable") from exc
        return Usage(0 if sq is None else int(sq), 0.0 if sr is None else float(sr), int(rq), float(rr))

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
