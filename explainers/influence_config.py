"""Per-model settings of sample importance, read from ``influence.yaml`` beside
the model card.

The model card schema is fixed, yet influence methods need facts the card does
not carry: the parameter subset to differentiate, the damping of the Hessian,
the low-rank size and, for TracIn, the training checkpoints with their
learning rates. They live in an optional ``influence.yaml`` next to
``card.yaml``; a model folder without one gets the defaults below (and TracIn
is then unavailable: it needs checkpoints).
"""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CONFIG_FILE", "Checkpoint", "InfluenceConfig", "load_influence_config"]

CONFIG_FILE = "influence.yaml"


class Checkpoint(BaseModel):
    """One saved training checkpoint (TracIn)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    """A ``torch.save``'d state dict (parameter name → tensor), relative to the model folder."""
    learning_rate: float = Field(gt=0)
    """Learning rate in force during the interval the checkpoint stands for."""


class InfluenceConfig(BaseModel):
    """Sample-importance settings of one model version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    parameter_subset: Literal["last_layer", "all"] = "last_layer"
    """Default parameter subset when a request leaves it empty."""
    damping: float = Field(default=1e-3, gt=0)
    """δ added to the Hessian (equals the L2 weight when training used weight decay λ‖θ‖²/2)."""
    solver: Literal["auto", "exact", "arnoldi"] = "auto"
    """Inverse-Hessian factor: "exact" eigendecomposition, "arnoldi" low rank, "auto" by size."""
    max_exact_params: int = Field(default=2048, gt=0)
    """Largest subset "auto" inverts exactly; above it Arnoldi is used."""
    rank: int = Field(default=64, gt=0)
    """Eigenpairs kept by Arnoldi."""
    arnoldi_iters: int = Field(default=128, gt=0)
    """Krylov dimension of Arnoldi."""
    hessian_rows: int = Field(default=0, ge=0)
    """Training rows (a seeded sample) used for the Hessian; 0 = all."""
    chunk_rows: int = Field(default=1024, gt=0)
    """Rows per gradient chunk: bounds the memory of precomputation."""
    outlier_mad_k: float = Field(default=3.5, gt=0)
    """A point is an outlier when the cube root of its score exceeds median + k · 1.4826 · MAD (of the roots)."""
    global_queries: int = Field(default=256, gt=0)
    """Reference rows (a seeded sample) over which each point's mean |influence| is taken."""
    tracin_max_dim: int = Field(default=4096, gt=0)
    """Above this many gradient coordinates per checkpoint TracIn uses a seeded random projection."""
    neighbours_k: int = Field(default=10, gt=0)
    """Neighbours whose mean distance is the nearest-neighbour outlier score."""
    seed: int = 0
    """Seed of every sample and projection drawn during precomputation."""
    checkpoints: list[Checkpoint] = Field(default_factory=list)
    """TracIn checkpoints in training order; empty disables TracIn."""
    precompute_subsets: list[Literal["last_layer", "all"]] = Field(default_factory=list)
    """Parameter subsets whose influence indexes are built at load besides `parameter_subset`."""

    def digest(self) -> str:
        """A short hash of the settings that change a precomputed index.

        Which subsets are built at load changes no index, so it is left out
        (and indexes persisted before that setting existed stay valid).
        """
        raw = json.dumps(self.model_dump(mode="json", exclude={"precompute_subsets"}), sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()[:12]


_LOADED: dict[Path, tuple[tuple[int, int, int], InfluenceConfig]] = {}
"""Parsed files by path, with the (mtime, size, inode) they were parsed at: every query reads the settings."""


def load_influence_config(model_dir: Path | None) -> InfluenceConfig:
    """The folder's ``influence.yaml``, or the defaults when there is none.

    Raises:
        ValueError: the file exists but is invalid (naming the file).
    """
    if model_dir is None:
        return _DEFAULT
    path = model_dir / CONFIG_FILE
    try:
        st = path.stat()
    except OSError:
        return _DEFAULT
    if not stat.S_ISREG(st.st_mode):
        return _DEFAULT
    stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
    found = _LOADED.get(path)
    if found is not None and found[0] == stamp:
        return found[1]
    try:
        cfg = InfluenceConfig.model_validate(yaml.safe_load(path.read_text()) or {})
    except Exception as exc:
        raise ValueError(f"{path}: invalid influence settings: {exc}") from exc
    _LOADED[path] = (stamp, cfg)
    return cfg


_DEFAULT = InfluenceConfig()
