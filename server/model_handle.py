"""One served model version: its loaded program, card and training reference.

A model folder holds a ``card.yaml`` and the artifact it names, a program
saved with ``torch.export`` (``.pt2``) that maps float32 encoded rows to class
probabilities, or a scikit-learn classifier saved with skops (``.skops``,
black-box; see `sklearn_artifact`). `load_model` loads and checks one
folder, raising ValueError naming what is wrong; the repository that holds
the folders is `desiderata.server.model_repository`. A `ModelHandle` gives
batched, thread-safe prediction for the worker pool, the differentiable
module for white-box explainers, and the training reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from desiderata.explainers.base import Reference
from desiderata.server.artifact import load_exported_module, sha256_file
from desiderata.server.batch_fusion import FusedEvaluation
from desiderata.server.chunk_runner import SEQUENTIAL, ChunkRunner
from desiderata.server.model_card import FeatureSchema, ModelCard, load_card
from desiderata.server.sklearn_artifact import SKOPS_SUFFIX, load_skops_module

__all__ = ["ModelHandle", "load_model"]

_NO_TAGS = torch.empty(0, dtype=torch.int64)


@dataclass
class ModelHandle:
    """One loaded model version; satisfies `ExplainableModel`.

    Args:
        card: the validated model card.
        directory: the model's folder.
        module: the loaded program, float32 ``(n, n_columns)`` → probabilities ``(n, k)``.
        ref: training reference (encoded rows, labels, ids) or None.
        index_dir: where precomputed sample-importance indexes persist (set by
            `desiderata.server.precompute`); None means ``<directory>/.influence``.
        runner: spreads the chunks of a large batch over threads (the server's is
            shared by every model; a model loaded alone evaluates on the caller).
        fuse_rows: most rows of a batch fused from concurrent small calls (predictions
            and input gradients, see `batch_fusion`); 0 evaluates every call alone.
    """

    card: ModelCard
    directory: Path
    module: torch.nn.Module
    ref: Reference | None = None
    index_dir: Path | None = None
    runner: ChunkRunner = SEQUENTIAL
    fuse_rows: int = 0
    schema: FeatureSchema = field(init=False)
    _fused_proba: FusedEvaluation | None = field(init=False, default=None, repr=False)
    _fused_grads: FusedEvaluation | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.schema = FeatureSchema(self.card.features, self.card.feature_groups)
        if self.fuse_rows > 0:
            limit = min(self.fuse_rows, self.eval_rows)
            self._fused_proba = FusedEvaluation(self._proba_rows, limit)
            if self.card.differentiable:
                self._fused_grads = FusedEvaluation(self._gradient_rows, limit)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def model_dir(self) -> Path:
        """The model folder (``influence.yaml`` and TracIn checkpoints are read from it)."""
        return self.directory

    @property
    def n_classes(self) -> int:
        return len(self.card.class_names)

    @property
    def eval_rows(self) -> int:
        """Rows per model call that keep a chunk's activations in cache (see `artifact.eval_rows_for`)."""
        return int(getattr(self.module, "eval_rows", 1 << 15))

    @property
    def input_dtype(self) -> type[np.float32]:
        """The program computes in float32: explainers may hand it float32 rows directly."""
        return np.float32

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities of encoded rows, ``(n, n_columns)`` → ``(n, k)`` float64,
        evaluated in chunks of the module's `eval_rows` (see `artifact.eval_rows_for`)."""
        xt = torch.as_tensor(np.atleast_2d(x), dtype=torch.float32)
        if self._fused_proba is not None and xt.shape[0] <= self._fused_proba.max_rows:
            return np.asarray(self._fused_proba(xt, _NO_TAGS)[0].numpy())
        step = self.eval_rows
        if xt.shape[0] <= step:
            return self._forward(xt)
        return np.concatenate(self.runner.map(self._forward, torch.split(xt, step)))

    def _forward(self, x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():  # thread-local: entered on whichever thread runs the chunk
            return np.asarray(self.module(x).double().numpy())

    def _proba_rows(self, x: torch.Tensor, _tags: torch.Tensor) -> tuple[torch.Tensor]:
        with torch.no_grad():  # not inference mode: its tensors may not be split outside it
            return (self.module(x).double(),)

    def target_gradients(self, rows: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients of the target class's output at each row, and those outputs.

        Small calls are fused with concurrent ones (see `batch_fusion`).

        Args:
            rows: float32 encoded rows, shape ``(n, n_columns)``.
            target: class index.

        Returns:
            ``(gradients (n, n_columns), outputs (n,))``, float32, detached.
        """
        tags = torch.full((rows.shape[0],), target, dtype=torch.int64)
        if self._fused_grads is None:
            return self._gradient_rows(rows, tags)
        grads, outs = self._fused_grads(rows, tags)
        return grads, outs

    def _gradient_rows(self, rows: torch.Tensor, tags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = rows.detach().requires_grad_(True)
        with torch.enable_grad():
            out = self.module(x).gather(1, tags[:, None])[:, 0]
            (g,) = torch.autograd.grad(out.sum(), x)
        return g, out.detach()

    @property
    def fusion_stats(self) -> tuple[int, int]:
        """(calls, batches) evaluated through fusion so far, predictions and gradients."""
        fused = [f for f in (self._fused_proba, self._fused_grads) if f is not None]
        return sum(f.calls for f in fused), sum(f.batches for f in fused)

    def torch_module(self) -> torch.nn.Module | None:
        return self.module if self.card.differentiable else None

    def reference(self) -> Reference | None:
        return self.ref


def _load_reference(directory: Path, card: ModelCard) -> Reference | None:
    if card.training_data is None or not card.training_data.path:
        return None
    path = directory / card.training_data.path
    try:
        with np.load(path, allow_pickle=False) as data:
            x = np.asarray(data["x"], dtype=np.float64)
            y = np.asarray(data["y"], dtype=np.int64)
            ids = tuple(str(i) for i in data["ids"]) if "ids" in data else tuple(str(i) for i in range(len(y)))
    except Exception as exc:  # missing file, not an .npz, no "x"/"y", pickled or non-numeric arrays
        raise ValueError(f"{path}: not a training reference (.npz with arrays x, y and optional ids): {exc}") from exc
    n_cols = FeatureSchema(card.features).n_columns
    if x.ndim != 2 or x.shape[1] != n_cols or len(y) != len(x) or len(ids) != len(x):
        raise ValueError(f"{path}: reference shape {x.shape} does not match the card's {n_cols} columns")
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: the reference has NaN or infinite values (backgrounds and neighbours need rows)")
    if len(y) and (y.min() < 0 or y.max() >= len(card.class_names)):
        raise ValueError(f"{path}: labels y must be class indices 0..{len(card.class_names) - 1}")
    return Reference(x=x, y=y, ids=ids)


def _load_program(artifact: Path, card: ModelCard) -> torch.nn.Module:
    """The artifact as a module from float32 encoded rows to probabilities."""
    if artifact.suffix == SKOPS_SUFFIX:
        return load_skops_module(artifact, card.trusted_types, len(card.class_names))
    try:
        return load_exported_module(artifact)
    except Exception as exc:
        raise ValueError(f"{artifact}: not a loadable torch.export program: {exc}") from exc


def load_model(directory: Path, runner: ChunkRunner = SEQUENTIAL, fuse_rows: int = 0) -> ModelHandle:
    """Loads and checks one model folder; raises ValueError naming what is wrong.

    Args:
        directory: the model folder (card.yaml, artifact, reference).
        runner: where the chunks of large batches are evaluated.
        fuse_rows: `ModelHandle.fuse_rows` (0: no fusion of concurrent calls).
    """
    card = load_card(directory / "card.yaml")
    artifact = directory / card.artifact
    if not artifact.is_file():
        raise ValueError(f"{directory}: artifact {card.artifact} is missing")
    if card.artifact_sha256 and sha256_file(artifact) != card.artifact_sha256:
        raise ValueError(f"{artifact}: SHA-256 does not match the card (artifact changed?)")
    module = _load_program(artifact, card)
    handle = ModelHandle(
        card=card,
        directory=directory,
        module=module,
        ref=_load_reference(directory, card),
        runner=runner,
        fuse_rows=fuse_rows,
    )
    probe = np.zeros((2, handle.schema.n_columns))
    try:
        out = handle.predict_proba(probe)
    except Exception as exc:
        raise ValueError(
            f"{artifact}: evaluation on the card's {handle.schema.n_columns} columns failed: {exc}"
        ) from exc
    if out.shape != (2, handle.n_classes) or not np.allclose(out.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError(f"{artifact}: output {out.shape} is not probabilities over {handle.n_classes} classes")
    return handle
