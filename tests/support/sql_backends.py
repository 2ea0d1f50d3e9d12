"""The SQL store suites' choice of backend: the embedded SQLite file or a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

B = TypeVar("B")

SQL_BACKENDS: list[Any] = ["sqlite", pytest.param("postgres", marks=pytest.mark.needs_postgres)]
"""Fixture params: every SQL backend (PostgreSQL tests carry the ``needs_postgres`` mark)."""


def open_backend(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    sqlite: Callable[[Path], Iterator[B]],
    postgres: Callable[[str], Iterator[B]],
) -> Iterator[B]:
    """Yields the backend `request.param` names, built by `sqlite(tmp_path)` or `postgres(dsn)`."""
    if request.param == "sqlite":
        yield from sqlite(tmp_path)
    else:
        yield from postgres(request.getfixturevalue("postgres_dsn"))
