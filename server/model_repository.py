"""The model repository: a folder of models, loaded and validated at start-up.

Each sub-folder holds a ``card.yaml`` and the artifact it names, a program
saved with ``torch.export`` (``.pt2``) that maps float32 encoded rows to class
probabilities. A broken model stops the boot with a clear message, or is
skipped with a logged error when ``models.skip_broken`` is set. Served models
are `ModelHandle`s: batched, thread-safe prediction for the worker pool, the
differentiable module for white-box explainers, and the training reference.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import structlog
import torch

from desiderata.explainers.base import Reference
from desiderata.server.artifact import load_exported_module
from desiderata.server.chunk_runner import SEQUENTIAL, ChunkRunner
from desiderata.server.errors import ModelNotFound
from desiderata.server.model_card import FeatureSchema, ModelCard, load_card

__all__ = ["BUILTIN_DEMO", "ModelHandle", "ModelRepository", "load_model"]

BUILTIN_DEMO = Path(__file__).resolve().parent / "demo"
"""The embedded demo repository (a credit-risk classifier)."""

log = structlog.get_logger("desiderata.models")


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
    """

    card: ModelCard
    directory: Path
    module: torch.nn.Module
    ref: Reference | None = None
    index_dir: Path | None = None
    runner: ChunkRunner = SEQUENTIAL
    schema: FeatureSchema = field(init=False)

    def __post_init__(self) -> None:
        self.schema = FeatureSchema(self.card.features)

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
    def input_dtype(self) -> type[np.float32]:
        """The program computes in float32: explainers may hand it float32 rows directly."""
        return np.float32

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities of encoded rows, ``(n, n_columns)`` → ``(n, k)`` float64,
        evaluated in chunks of the module's `eval_rows` (see `artifact.eval_rows_for`)."""
        xt = torch.as_tensor(np.atleast_2d(x), dtype=torch.float32)
        step = int(getattr(self.module, "eval_rows", 1 << 15))
        if xt.shape[0] <= step:
            return self._forward(xt)
        return np.concatenate(self.runner.map(self._forward, torch.split(xt, step)))

    def _forward(self, x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():  # thread-local: entered on whichever thread runs the chunk
            return np.asarray(self.module(x).double().numpy())

    def torch_module(self) -> torch.nn.Module | None:
        return self.module if self.card.differentiable else None

    def reference(self) -> Reference | None:
        return self.ref


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _load_reference(directory: Path, card: ModelCard) -> Reference | None:
    if card.training_data is None or not card.training_data.path:
        return None
    path = directory / card.training_data.path
    with np.load(path, allow_pickle=False) as data:
        x = np.asarray(data["x"], dtype=np.float64)
        y = np.asarray(data["y"], dtype=np.int64)
        ids = tuple(str(i) for i in data["ids"]) if "ids" in data else tuple(str(i) for i in range(len(y)))
    n_cols = FeatureSchema(card.features).n_columns
    if x.ndim != 2 or x.shape[1] != n_cols or len(y) != len(x) or len(ids) != len(x):
        raise ValueError(f"{path}: reference shape {x.shape} does not match the card's {n_cols} columns")
    return Reference(x=x, y=y, ids=ids)


def load_model(directory: Path, runner: ChunkRunner = SEQUENTIAL) -> ModelHandle:
    """Loads and checks one model folder; raises ValueError naming what is wrong.

    Args:
        directory: the model folder (card.yaml, artifact, reference).
        runner: where the chunks of large batches are evaluated.
    """
    card = load_card(directory / "card.yaml")
    artifact = directory / card.artifact
    if not artifact.is_file():
        raise ValueError(f"{directory}: artifact {card.artifact} is missing")
    if card.artifact_sha256 and _sha256(artifact) != card.artifact_sha256:
        raise ValueError(f"{artifact}: SHA-256 does not match the card (artifact changed?)")
    try:
        module = load_exported_module(artifact)
    except Exception as exc:
        raise ValueError(f"{artifact}: not a loadable torch.export program: {exc}") from exc
    handle = ModelHandle(
        card=card, directory=directory, module=module, ref=_load_reference(directory, card), runner=runner
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


class ModelRepository:
    """The served models, by name and version.

    Args:
        path: the repository folder (one sub-folder per model).
        skip_broken: log and skip models that fail to load instead of raising.
        runner: where every model evaluates the chunks of its large batches.
    """

    def __init__(self, path: Path, *, skip_broken: bool = False, runner: ChunkRunner = SEQUENTIAL) -> None:
        if not path.is_dir():
            raise ValueError(f"model repository {path} is not a folder")
        self.path = path
        self.runner = runner
        self._models: dict[str, dict[str, ModelHandle]] = {}
        self._latest: dict[str, str] = {}
        for directory in sorted(p for p in path.iterdir() if (p / "card.yaml").is_file()):
            try:
                handle = load_model(directory, runner)
            except ValueError as exc:
                if not skip_broken:
                    raise
                log.error("model_skipped", folder=str(directory), error=str(exc))
                continue
            self._models.setdefault(handle.name, {})[handle.version] = handle
            self._latest[handle.name] = handle.version
            log.info("model_loaded", model=handle.name, version=handle.version)
        if not self._models:
            raise ValueError(f"model repository {path} holds no loadable model")

    def resolve(self, name: str, version: str = "") -> ModelHandle:
        """The model `name` at `version` (empty: the served version); NOT_FOUND otherwise."""
        versions = self._models.get(name)
        if versions is None:
            raise ModelNotFound(f"no model named {name!r}")
        if not version:
            return versions[self._latest[name]]
        if version not in versions:
            raise ModelNotFound(f"model {name!r} has no version {version!r}")
        return versions[version]

    def versions(self, name: str) -> list[str]:
        """Every loaded version of `name` (NOT_FOUND when unknown)."""
        if name not in self._models:
            raise ModelNotFound(f"no model named {name!r}")
        return sorted(self._models[name])

    def handles(self) -> list[ModelHandle]:
        """Every loaded version of every model."""
        return [h for versions in self._models.values() for h in versions.values()]

    def served(self) -> list[ModelHandle]:
        """The served version of each model, by name."""
        return [self._models[n][self._latest[n]] for n in sorted(self._models)]
