"""What the model repository reads of its folder: which sub-folders hold models, whether they changed.

The repository is rescanned while the server runs (`ModelRepository.refresh`),
so it needs three cheap, exact answers about the files on disk:

- which sub-folders are model folders (they hold a ``card.yaml``);
- a *signature* per folder (every file's path, size and modification time),
  compared between scans to notice a change without reading any model;
- a *digest* per folder (SHA-256 over every file's path and bytes), read only
  when the signature changed, to tell a new version from the same bytes
  touched and to keep versions immutable.

Hidden files and folders (names starting with ``.``) are skipped in both:
the server writes its sample-importance indexes into ``<model>/.influence/``
(`desiderata.server.precompute`), and editors and copy tools leave hidden
temporaries. Versions are ordered by `version_key`, numbers numerically
("2" before "10", "1.9" before "1.10").
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

__all__ = ["Signature", "folder_digest", "folder_signature", "model_folders", "version_key"]

Signature = tuple[tuple[str, int, int], ...]
"""Sorted ``(relative path, size in bytes, mtime in ns)`` of a folder's visible files."""

_TOKENS = re.compile(r"\d+|\D+")


def model_folders(root: Path) -> list[Path]:
    """The sub-folders of `root` that hold a ``card.yaml``, sorted by name (hidden ones skipped).

    Raises:
        OSError: when `root` cannot be listed.
    """
    return sorted(p for p in root.iterdir() if not p.name.startswith(".") and (p / "card.yaml").is_file())


def _files(folder: Path) -> Iterator[Path]:
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        yield path


def folder_signature(folder: Path) -> Signature:
    """Every visible file's relative path, size and modification time, sorted.

    Args:
        folder: a model folder.

    Raises:
        OSError: when a file vanishes while the folder is read (a copy in progress).
    """
    out = []
    for path in _files(folder):
        st = path.stat()
        out.append((path.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns))
    return tuple(out)


def folder_digest(folder: Path) -> str:
    """Hex SHA-256 over every visible file's relative path and bytes.

    Args:
        folder: a model folder.

    Raises:
        OSError: when a file cannot be read.
    """
    digest = hashlib.sha256()
    for path in _files(folder):
        name = path.relative_to(folder).as_posix().encode()
        digest.update(len(name).to_bytes(8, "big") + name)
        digest.update(path.stat().st_size.to_bytes(8, "big"))
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def version_key(version: str) -> tuple[tuple[tuple[int, int, str], ...], str]:
    """Sort key of a version string: digit runs compare as numbers, other runs as text.

    Args:
        version: a card's version ("1", "2024-06-01", "1.10.0-rc1").

    Returns:
        A key under which "2" < "10" and "1.9" < "1.10"; versions equal as
        numbers ("01", "1") are ordered by their text, so the order is total.
    """
    parts = tuple((0, int(tok), "") if tok.isdigit() else (1, 0, tok) for tok in _TOKENS.findall(version))
    return parts, version
