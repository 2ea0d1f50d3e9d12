"""One conformance suite for every budget-ledger backend (SQLite, real Redis).

Each test runs against both backends through the `BudgetLedger` interface:
atomic reserve/commit/release, expiry, exactly-once commit, free repeats,
token buckets, the one-round-trip take-and-reserve, fail-closed, a 32-way race on the last unit of budget (threads,
and separate processes), and a SIGKILLed holder whose reservation returns.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from desiderata.policy.ledger import BudgetLedger, Limits, Rate, Reservation, ReservationNotActive, Usage
from desiderata.policy.ledger_redis import RedisLedger
from desiderata.policy.ledger_sqlite import SqliteLedger
from desiderata.server.errors import BudgetExhausted, RateLimited, Unavailable

P, M = "alice", "credit"
BACKENDS = ["sqlite", pytest.param("redis", marks=pytest.mark.needs_redis)]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(kind, location): a SQLite path or a flushed Redis URL."""
    if request.param == "sqlite":
        yield "sqlite", str(tmp_path / "ledger.db")
    else:
        url: str = request.getfixturevalue("redis_url")
        redis.Redis.from_url(url).flushdb()
        yield "redis", url


def _open(kind: str, where: str) -> BudgetLedger:
    return SqliteLedger(where) if kind == "sqlite" else RedisLedger(where)


@pytest.fixture
def ledger(backend: tuple[str, str]) -> Iterator[BudgetLedger]:
    led = _open(*backend)
    yield led
    led.close()


def _spend(led: BudgetLedger, n: int, limits: Limits, rho: float = 0.0) -> None:
    for _ in range(n):
        led.commit(led.reserve(P, M, queries=1, rho=rho, limits=limits, ttl_s=30))


def test_reserve_commit_charges_exactly_once(ledger: BudgetLedger) -> None:
    lim = Limits(max_queries=3, max_rho=1.0)
    res = ledger.reserve(P, M, queries=1, rho=0.25, limits=lim, ttl_s=30)
    assert ledger.usage(P, M).reserved_queries == 1
    assert ledger.usage(P, M).reserved_rho == pytest.approx(0.25)
    ledger.commit(res)
    u = ledger.usage(P, M)
    assert (u.queries, u.rho, u.reserved_queries) == (1, pytest.approx(0.25), 0)
    with pytest.raises(ReservationNotActive):
        ledger.commit(res)
    assert ledger.usage(P, M).queries == 1
    assert ledger.usage("bob", M).queries == 0  # budgets are per principal


def test_commit_and_usage_is_commit_then_usage(ledger: BudgetLedger) -> None:
    lim = Limits(max_queries=5, max_rho=2.0)
    held = ledger.reserve(P, M, queries=1, rho=0.5, limits=lim, ttl_s=30)  # stays live
    res = ledger.reserve(P, M, queries=1, rho=0.25, limits=lim, ttl_s=30, digest="d1")
    u = ledger.commit_and_usage(res)
    assert u == ledger.usage(P, M)
    assert (u.queries, u.rho, u.reserved_queries, u.reserved_rho) == (1, pytest.approx(0.25), 1, pytest.approx(0.5))
    with pytest.raises(ReservationNotActive):
        ledger.commit_and_usage(res)  # charged exactly once
    repeat = ledger.reserve(P, M, queries=1, rho=0.25, limits=lim, ttl_s=30, digest="d1")
    assert repeat.free and ledger.commit_and_usage(repeat) == u  # an answered query is free
    ledger.release(held)
    gone = ledger.reserve(P, M, queries=1, rho=0.1, limits=lim, ttl_s=30)
    ledger.release(gone)
    with pytest.raises(ReservationNotActive):
        ledger.commit_and_usage(gone)
    assert ledger.usage(P, M).queries == 1


def test_query_cap_refuses_and_holds_nothing(ledger: BudgetLedger) -> None:
    lim = Limits(max_queries=2)
    _spend(ledger, 2, lim)
    with pytest.raises(BudgetExhausted) as err:
        ledger.reserve(P, M, queries=1, rho=0.0, limits=lim, ttl_s=30)
    assert err.value.violations and err.value.violations[0].subject == "principal:alice/model:credit"
    u = ledger.usage(P, M)
    assert (u.queries, u.reserved_queries) == (2, 0)


def test_rho_cap_counts_live_reservations(ledger: BudgetLedger) -> None:
    lim = Limits(max_rho=1.0)
    held = ledger.reserve(P, M, queries=1, rho=0.6, limits=lim, ttl_s=30)
    with pytest.raises(BudgetExhausted):
        ledger.reserve(P, M, queries=1, rho=0.6, limits=lim, ttl_s=30)
    ledger.release(held)
    ledger.release(held)  # idempotent
    ledger.commit(ledger.reserve(P, M, queries=1, rho=0.6, limits=lim, ttl_s=30))
    assert ledger.usage(P, M).rho == pytest.approx(0.6)


def test_released_reservation_cannot_be_committed(ledger: BudgetLedger) -> None:
    res = ledger.reserve(P, M, queries=1, rho=0.1, limits=Limits(), ttl_s=30)
    ledger.release(res)
    with pytest.raises(ReservationNotActive):
        ledger.commit(res)
    assert ledger.usage(P, M).queries == 0


def test_expired_reservation_returns_budget_and_cannot_commit(ledger: BudgetLedger) -> None:
    lim = Limits(max_queries=1)
    res = ledger.reserve(P, M, queries=1, rho=0.0, limits=lim, ttl_s=0.3)
    with pytest.raises(BudgetExhausted):
        ledger.reserve(P, M, queries=1, rho=0.0, limits=lim, ttl_s=30)
    time.sleep(0.4)
    assert ledger.usage(P, M).reserved_queries == 0
    with pytest.raises(ReservationNotActive):
        ledger.commit(res)
    ledger.commit(ledger.reserve(P, M, queries=1, rho=0.0, limits=lim, ttl_s=30))
    assert ledger.usage(P, M).queries == 1


def test_repeated_digest_is_free(ledger: BudgetLedger) -> None:
    lim = Limits(max_queries=1, max_rho=0.5)
    ledger.commit(ledger.reserve(P, M, queries=1, rho=0.5, limits=lim, ttl_s=30, digest="d1"))
    again = ledger.reserve(P, M, queries=1, rho=0.5, limits=lim, ttl_s=30, digest="d1")
    assert again.free and again.queries == 0
    ledger.commit(again)
    assert ledger.usage(P, M).queries == 1
    with pytest.raises(BudgetExhausted):
        ledger.reserve(P, M, queries=1, rho=0.5, limits=lim, ttl_s=30, digest="d2")
    assert not ledger.reserve("bob", M, queries=1, rho=0.5, limits=lim, ttl_s=30, digest="d1").free


def test_token_bucket_bursts_then_refills(ledger: BudgetLedger) -> None:
    rate = 600.0  # 10 per second
    waits = [ledger.take(P, M, rate_per_minute=rate, burst=3) for _ in range(4)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert 0.0 < waits[3] <= 0.1 + 1e-6
    time.sleep(waits[3] + 0.05)
    assert ledger.take(P, M, rate_per_minute=rate, burst=3) == 0.0
    assert ledger.take("bob", M, rate_per_minute=rate, burst=3) == 0.0


def test_take_and_reserve_is_one_step_with_two_refusals(ledger: BudgetLedger) -> None:
    rate, lim = Rate(per_minute=600.0, burst=3), Limits(max_queries=2)

    def admit(digest: str) -> Reservation:
        return ledger.take_and_reserve(P, M, rate=rate, queries=1, rho=0.1, limits=lim, ttl_s=30, digest=digest)

    ledger.commit(admit("d1"))
    held = admit("d2")
    assert ledger.usage(P, M).reserved_queries == 1
    with pytest.raises(BudgetExhausted):  # the cap counts the live reservation; the token is used all the same
        admit("d3")
    with pytest.raises(RateLimited) as err:  # three tokens taken: the bucket is empty
        admit("d1")
    assert 0.0 < err.value.retry_after_s <= 0.1 + 1e-6
    assert err.value.violations[0].subject == "principal:alice/model:credit"
    ledger.commit(held)
    u = ledger.usage(P, M)
    assert (u.queries, u.rho, u.reserved_queries) == (2, pytest.approx(0.2), 0)
    time.sleep(err.value.retry_after_s + 0.05)
    assert admit("d1").free  # a committed repeat is free, after the rate check
    with pytest.raises(RateLimited):
        admit("d1")
    unlimited = ledger.take_and_reserve("bob", M, rate=None, queries=1, rho=0.0, limits=lim, ttl_s=30)
    assert not unlimited.free and ledger.usage("bob", M).reserved_queries == 1


def test_unreachable_store_fails_closed(backend: tuple[str, str], tmp_path: Path) -> None:
    if backend[0] == "sqlite":
        with pytest.raises(Unavailable):
            SqliteLedger(tmp_path / "missing-dir" / "ledger.db")
        return
    dead = RedisLedger("redis://127.0.0.1:1/0", socket_timeout_s=0.2)
    with pytest.raises(Unavailable):
        dead.reserve(P, M, queries=1, rho=0.0, limits=Limits(), ttl_s=30)
    with pytest.raises(Unavailable):
        dead.take(P, M, rate_per_minute=60, burst=1)
    with pytest.raises(Unavailable):
        dead.take_and_reserve(P, M, rate=Rate(60, 1), queries=1, rho=0.0, limits=Limits(), ttl_s=30)


def _race_threads(make: Callable[[], BudgetLedger], n: int, lim: Limits, rate: Rate | None = None) -> list[str]:
    barrier = threading.Barrier(n)
    out: list[str] = []
    lock = threading.Lock()

    def run() -> None:
        led = make()
        barrier.wait()
        try:
            res = led.take_and_reserve(P, M, rate=rate, queries=1, rho=0.5, limits=lim, ttl_s=30)
            led.commit(res)
            r = "ok"
        except BudgetExhausted:
            r = "refused"
        except RateLimited:
            r = "limited"
        with lock:
            out.append(r)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return out


def test_32_threads_race_on_the_last_unit(backend: tuple[str, str], ledger: BudgetLedger) -> None:
    lim = Limits(max_queries=5, max_rho=2.5)
    _spend(ledger, 4, lim, rho=0.5)
    out = _race_threads(lambda: _open(*backend), 32, lim, Rate(per_minute=1.0, burst=100))
    assert sorted(out) == ["ok"] + ["refused"] * 31
    u = ledger.usage(P, M)
    assert (u.queries, u.rho, u.reserved_queries) == (5, pytest.approx(2.5), 0)


def test_32_threads_race_on_the_last_tokens(backend: tuple[str, str], ledger: BudgetLedger) -> None:
    out = _race_threads(lambda: _open(*backend), 32, Limits(), Rate(per_minute=0.001, burst=5))
    assert sorted(out) == ["limited"] * 27 + ["ok"] * 5
    u = ledger.usage(P, M)
    assert (u.queries, u.reserved_queries) == (5, 0)


_ROWID_LAYOUT = """
CREATE TABLE spend (principal TEXT NOT NULL, model TEXT NOT NULL, queries INTEGER NOT NULL, rho REAL NOT NULL,
  PRIMARY KEY (principal, model));
CREATE TABLE reservations (id TEXT PRIMARY KEY, principal TEXT NOT NULL, model TEXT NOT NULL,
  queries INTEGER NOT NULL, rho REAL NOT NULL, expires_at REAL NOT NULL, digest TEXT NOT NULL);
CREATE INDEX reservations_pm ON reservations (principal, model);
CREATE TABLE answered (principal TEXT NOT NULL, model TEXT NOT NULL, digest TEXT NOT NULL,
  PRIMARY KEY (principal, model, digest));
CREATE TABLE buckets (principal TEXT NOT NULL, model TEXT NOT NULL, tokens REAL NOT NULL, updated REAL NOT NULL,
  PRIMARY KEY (principal, model));
INSERT INTO spend VALUES ('alice', 'credit', 1, 0.5);
INSERT INTO answered VALUES ('alice', 'credit', 'd1');
INSERT INTO reservations VALUES ('ghost', 'alice', 'credit', 1, 0.5, 1.0, 'd0');
"""


def test_sqlite_file_of_the_earlier_rowid_layout_keeps_working(tmp_path: Path) -> None:
    """Files made before the WITHOUT ROWID layout keep their tables; every statement works on both."""
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(_ROWID_LAYOUT)
    led = SqliteLedger(path)
    lim = Limits(max_queries=3)
    assert led.usage(P, M) == Usage(1, 0.5, 0, 0.0)  # the expired ghost is not counted
    assert led.reserve(P, M, queries=1, rho=0.5, limits=lim, ttl_s=30, digest="d1").free
    led.commit(led.take_and_reserve(P, M, rate=Rate(60, 2), queries=1, rho=0.5, limits=lim, ttl_s=30, digest="d2"))
    held = led.reserve(P, M, queries=1, rho=0.5, limits=lim, ttl_s=30, digest="d3")
    with pytest.raises(BudgetExhausted):
        led.reserve(P, M, queries=1, rho=0.5, limits=lim, ttl_s=30)
    led.commit(held)
    with pytest.raises(ReservationNotActive):
        led.commit(Reservation("ghost", P, M, 1, 0.5, 1.0))
    assert led.usage(P, M) == Usage(3, 1.5, 0, 0.0)


def test_sqlite_commit_of_the_previous_version_still_charges_once(tmp_path: Path) -> None:
    """A process of the previous version commits by inserting into `commits`; on one shared
    file both commits charge exactly once and neither can charge the other's reservation."""
    import sqlite3

    led = SqliteLedger(tmp_path / "shared.db")
    old = sqlite3.connect(tmp_path / "shared.db", isolation_level=None)
    old.create_function("ledger_now", 0, time.time)
    lim = Limits(max_queries=3)
    by_old = led.reserve(P, M, queries=1, rho=0.5, limits=lim, ttl_s=30, digest="d1")
    old.execute("INSERT INTO commits VALUES (?,?,?)", (P, M, by_old.id))
    with pytest.raises(ReservationNotActive):
        led.commit(by_old)
    by_new = led.reserve(P, M, queries=1, rho=0.5, limits=lim, ttl_s=30)
    assert led.commit_and_usage(by_new) == Usage(2, 1.0, 0, 0.0)
    with pytest.raises(sqlite3.IntegrityError, match="reservation_not_active"):
        old.execute("INSERT INTO commits VALUES (?,?,?)", (P, M, by_new.id))
    assert led.reserve(P, M, queries=1, rho=0.5, limits=lim, ttl_s=30, digest="d1").free
    assert old.execute("SELECT COUNT(*) FROM commits").fetchone() == (0,)
    assert led.usage(P, M) == Usage(2, 1.0, 0, 0.0)
    old.close()
    led.close()


@pytest.mark.needs_redis
def test_redis_ledger_survives_a_lost_script_cache_and_a_dropped_connection(redis_url: str) -> None:
    """SCRIPT FLUSH (a restarted or failed-over server) and a killed client connection:
    the next calls still work, and a dropped connection is reported, never retried blindly."""
    admin = redis.Redis.from_url(redis_url)
    admin.flushdb()
    led = RedisLedger(redis_url)
    lim = Limits(max_queries=4)
    led.commit(led.reserve(P, M, queries=1, rho=0.5, limits=lim, ttl_s=30))
    admin.script_flush()
    assert led.commit_and_usage(led.reserve(P, M, queries=1, rho=0.5, limits=lim, ttl_s=30)) == Usage(2, 1.0, 0, 0.0)
    admin.client_kill_filter(_type="normal", skipme=True)  # drops the ledger's connection under it
    with pytest.raises(Unavailable):
        led.usage(P, M)
    assert led.usage(P, M) == Usage(2, 1.0, 0, 0.0)  # a fresh connection on the next call
    led.close()
    admin.close()


_WORKER = textwrap.dedent(
    """
    import sys, time
    from desiderata.policy.ledger import Limits
    from desiderata.server.errors import BudgetExhausted
    kind, where, mode = sys.argv[1:4]
    if kind == "sqlite":
        from desiderata.policy.ledger_sqlite import SqliteLedger
        led = SqliteLedger(where)
    else:
        from desiderata.policy.ledger_redis import RedisLedger
        led = RedisLedger(where)
    if mode == "crash":
        r = led.reserve("alice", "credit", queries=1, rho=0.5, limits=Limits(max_queries=5), ttl_s=1.0)
        print(r.id, r.expires_at, flush=True)
        time.sleep(600)
    print("ready", flush=True)
    sys.stdin.readline()  # the parent releases every worker at once
    try:
        led.commit(led.reserve("alice", "credit", queries=1, rho=0.5,
                               limits=Limits(max_queries=5, max_rho=2.5), ttl_s=30))
        print("ok")
    except BudgetExhausted:
        print("refused")
    """
)


def test_32_processes_race_on_the_last_unit_sqlite(tmp_path: Path) -> None:
    """SQLite is shared by processes through one file (Redis clients are
    separate connections already, covered by the thread race)."""
    backend = ("sqlite", str(tmp_path / "ledger.db"))
    ledger = SqliteLedger(backend[1])
    _spend(ledger, 4, Limits(), rho=0.5)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, *backend, "race"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(32)
    ]
    for p in procs:  # every worker has imported and opened the store
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    out = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert all(p.returncode == 0 for p in procs)
    assert out == ["ok"] + ["refused"] * 31
    u = ledger.usage(P, M)
    assert (u.queries, u.rho, u.reserved_queries) == (5, pytest.approx(2.5), 0)


def test_sigkilled_holder_returns_its_reservation(
    backend: tuple[str, str], ledger: BudgetLedger, tmp_path: Path
) -> None:
    lim = Limits(max_queries=5)
    _spend(ledger, 4, lim)
    proc = subprocess.Popen(
        [sys.executable, "-c", _WORKER, *backend, "crash"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    rid, expires = proc.stdout.readline().split()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    # the dead request still holds the last unit until its ttl runs out
    assert ledger.usage(P, M).reserved_queries == 1
    with pytest.raises(BudgetExhausted):
        ledger.reserve(P, M, queries=1, rho=0.0, limits=lim, ttl_s=30)
    time.sleep(1.1)
    u = ledger.usage(P, M)
    assert (u.queries, u.reserved_queries) == (4, 0)
    ghost = Reservation(rid, P, M, 1, 0.5, float(expires))
    with pytest.raises(ReservationNotActive):
        ledger.commit(ghost)  # a restarted server cannot charge the dead request
    ledger.commit(ledger.reserve(P, M, queries=1, rho=0.0, limits=lim, ttl_s=30))
    u = ledger.usage(P, M)
    assert (u.queries, u.reserved_queries) == (5, 0)
