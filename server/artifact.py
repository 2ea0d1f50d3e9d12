"""Writing and loading model artifacts: ``torch.export`` programs (``.pt2``).

The model repository stores each model as one ``.pt2`` file. This module is
the one place that exports a probability module (with a dynamic batch
dimension, so one program serves single rows and batches) and loads it back
as a callable, differentiable ``torch.nn.Module``, and that hashes artifacts
for the card's ``artifact_sha256``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

__all__ = ["export_probability_module", "load_exported_module", "sha256_file"]


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes.

    Args:
        path: the file to hash.
    """
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_probability_module(module: torch.nn.Module, *, n_columns: int, path: Path) -> None:
    """Exports `module` (float32 ``(n, n_columns)`` → probabilities) to a ``.pt2`` file.

    Args:
        module: eager module in eval mode.
        n_columns: width of the encoded input row.
        path: the ``.pt2`` file to write.
    """
    example = torch.zeros(4, n_columns, dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},), strict=False)
    torch.export.save(program, path)


def load_exported_module(path: Path) -> torch.nn.Module:
    """Loads a ``.pt2`` program as a module (float32 ``(n, n_columns)`` → probabilities).

    Args:
        path: the ``.pt2`` file.
    """
    return torch.export.load(path).module()
