"""Raw SQL on a connection of its own, as another client of a store's database would
run it (conformance suites check that stores hold up against such clients)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def run_sqlite(path: Path, sql: str, *, script: bool = False) -> None:
    """Runs `sql` on a new autocommit connection to the SQLite file `path`.

    Args:
        path: the database file.
        sql: one statement, or several with ``script=True``.
        script: run `sql` as a script (``executescript``).
    """
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        if script:
            conn.executescript(sql)
        else:
            conn.execute(sql)
    finally:
        conn.close()
