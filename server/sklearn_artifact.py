"""scikit-learn models saved with skops (``.skops``), served beside torch.export programs.

Why skops and not pickle: loading a pickle runs whatever code the file names,
so a model folder would be a way into the server. skops loads only the types it
trusts by default plus those the model card lists in ``trusted_types``: the
operator runs ``skops.io.get_untrusted_types(file=...)``, reviews what it
prints (tree-based estimators hold ``sklearn.tree._tree.Tree``, for example)
and writes those names into the card. A file holding any other type is refused
at boot, naming the types.

The estimator is wrapped as a module from float32 encoded rows ``(n,
n_columns)`` to class probabilities, so the model handle evaluates it through
the same path as a program (chunks, answer cache, every black-box method). It
has no gradients: its card must say ``differentiable: false``, and white-box
methods are refused with INVALID_ARGUMENT as for any black-box model. The
columns of ``predict_proba`` follow the estimator's ``classes_``; the card's
``class_names`` name them in that order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["SKOPS_SUFFIX", "EstimatorModule", "load_skops_module"]

SKOPS_SUFFIX = ".skops"

EVAL_ROWS = 1 << 14
"""Rows per evaluation chunk: estimators vectorise internally, so chunks only bound memory."""


class EstimatorModule(torch.nn.Module):
    """A fitted estimator as a module: float32 ``(n, n_columns)`` → probabilities ``(n, k)`` float64.

    Args:
        estimator: a fitted classifier with ``predict_proba``.
    """

    def __init__(self, estimator: Any) -> None:
        super().__init__()
        self.estimator = estimator
        self.eval_rows = EVAL_ROWS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        proba = self.estimator.predict_proba(x.detach().numpy())
        return torch.from_numpy(np.asarray(proba, dtype=np.float64))


def load_skops_module(path: Path, trusted: Sequence[str], n_classes: int) -> EstimatorModule:
    """Loads a ``.skops`` classifier, refusing types neither skops nor the card trusts.

    Args:
        path: the ``.skops`` file.
        trusted: the card's ``trusted_types`` (reviewed by the operator).
        n_classes: classes the card names.

    Raises:
        ValueError: skops missing, an untrusted type, no ``predict_proba``, or a class
            count that differs from the card's.
    """
    try:
        import skops.io as sio
    except ImportError as exc:  # an optional part of a custom install
        raise ValueError(f"{path}: serving .skops models needs the skops package ({exc})") from exc
    try:
        untrusted = sorted(sio.get_untrusted_types(file=path))
    except Exception as exc:
        raise ValueError(f"{path}: not a readable skops file: {exc}") from exc
    unreviewed = [t for t in untrusted if t not in set(trusted)]
    if unreviewed:
        raise ValueError(
            f"{path}: holds types that neither skops nor the card trusts: {unreviewed}; "
            "review them and list them in the card's trusted_types to load it"
        )
    try:
        estimator = sio.load(path, trusted=untrusted)
    except Exception as exc:
        raise ValueError(f"{path}: skops could not load it: {exc}") from exc
    if not callable(getattr(estimator, "predict_proba", None)):
        raise ValueError(f"{path}: {type(estimator).__name__} has no predict_proba (a classifier is required)")
    classes = getattr(estimator, "classes_", None)
    if classes is None or len(classes) != n_classes:
        found = "no classes_" if classes is None else f"{len(classes)} classes"
        raise ValueError(f"{path}: the estimator has {found}; the card names {n_classes}")
    return EstimatorModule(estimator)
