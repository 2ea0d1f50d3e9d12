"""Background data for interventional attributions, summarised once per model version.

Shapley-family methods, expected gradients and LIME replace "absent" players
by values drawn from a background distribution. Evaluating the model over the
whole training reference for every coalition is wasteful, so the reference is
summarised into ``size`` weighted rows by k-means (Lloyd's algorithm with
k-means++ seeding, seeded) and each centroid is snapped to its nearest member
row (a medoid-like choice): background rows are then real rows, so one-hot
groups stay one-hot and no off-manifold point is invented. A row's weight is
the share of the reference in its cluster. Summaries are cached per
(model name, version, size, reference class): a caller may ask for a
contrastive background, the rows the model predicts as one class.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from desiderata.explainers.base import ExplainableModel
from desiderata.server.errors import FailedPrecondition, InvalidArgument

__all__ = ["Background", "clear_cache", "summarize", "weighted_kmeans"]

_CACHE_CAPACITY = 64
_cache: OrderedDict[tuple[str, str, int, str], Background] = OrderedDict()
_lock = threading.Lock()


@dataclass(frozen=True)
class Background:
    """Weighted background rows.

    Args:
        x: encoded rows, shape ``(b, n_columns)``, float64.
        weights: non-negative weights summing to 1, shape ``(b,)``.
    """

    x: np.ndarray
    weights: np.ndarray

    @staticmethod
    def of(x: np.ndarray, weights: np.ndarray | None = None) -> Background:
        """Validates and normalises a background.

        Args:
            x: rows, shape ``(b, n_columns)``.
            weights: shape ``(b,)``, non-negative, not all zero; None = uniform.
        """
        rows = np.asarray(x, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[0] == 0:
            raise InvalidArgument.single("background", "needs a non-empty 2-D array of rows")
        if not np.all(np.isfinite(rows)):
            raise InvalidArgument.single("background", "rows must be finite")
        w = np.ones(rows.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (rows.shape[0],) or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
            raise InvalidArgument.single("background.weights", "one finite non-negative weight per row, not all zero")
        return Background(rows, w / w.sum())

    @property
    def mean(self) -> np.ndarray:
        """Weighted mean row, shape ``(n_columns,)``."""
        return np.asarray(self.weights @ self.x)


def weighted_kmeans(
    x: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 30
) -> tuple[np.ndarray, np.ndarray]:
    """Summarises rows into k real rows with weights (k-means, snapped to members).

    Args:
        x: rows, shape ``(n, n_columns)``.
        k: number of summary rows, ``1 ≤ k``; when ``k ≥ n`` the rows are returned.
        rng: seeded generator (k-means++ seeding).
        iterations: Lloyd iterations at most.

    Returns:
        ``(rows, weights)`` of shapes ``(k', n_columns)`` and ``(k',)``, weights
        summing to 1 (``k' ≤ k`` when clusters come out empty).
    """
    n = x.shape[0]
    if k >= n:
        return x.copy(), np.full(n, 1.0 / n)
    # Scale columns so that no unit dominates the distance.
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    z = x / scale
    centers = np.empty((k, z.shape[1]))
    centers[0] = z[rng.integers(n)]
    d2 = ((z - centers[0]) ** 2).sum(axis=1)
    for j in range(1, k):
        total = d2.sum()
        idx = int(rng.choice(n, p=d2 / total)) if total > 0 else int(rng.integers(n))
        centers[j] = z[idx]
        d2 = np.minimum(d2, ((z - centers[j]) ** 2).sum(axis=1))
    labels = np.zeros(n, dtype=np.int64)
    for it in range(iterations):
        dist = (z**2).sum(1)[:, None] - 2 * z @ centers.T + (centers**2).sum(1)[None, :]
        new = dist.argmin(axis=1)
        if it > 0 and np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = labels == j
            if members.any():
                centers[j] = z[members].mean(axis=0)
    rows, weights = [], []
    for j in range(k):
        members = np.flatnonzero(labels == j)
        if members.size == 0:
            continue
        nearest = members[((z[members] - centers[j]) ** 2).sum(axis=1).argmin()]
        rows.append(x[nearest])
        weights.append(members.size / n)
    return np.stack(rows), np.asarray(weights)


def summarize(model: ExplainableModel, size: int, seed: int = 0, predicted: str = "") -> Background:
    """The model's background of at most ``size`` weighted rows, cached per version.

    Args:
        model: the served model; its training reference is summarised.
        size: number of background rows, ≥ 1.
        seed: seed of the k-means seeding (fixed per server, not per request,
            so that every caller sees the same background).
        predicted: a class label: only the reference rows the model predicts as
            that class are summarised (a contrastive background); "" uses all.

    Raises:
        FailedPrecondition: the model has no training reference.
        InvalidArgument: `predicted` is not a class, or the model predicts it for no reference row.
    """
    if size < 1:
        raise InvalidArgument.single("background.size", "must be at least 1")
    classes = model.card.class_names
    if predicted and predicted not in classes:
        raise InvalidArgument.single("params.attribution.reference_class", f"unknown class; one of {classes}")
    key = (model.card.name, model.card.version, size, predicted)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    ref = model.reference()
    if ref is None:
        raise FailedPrecondition("this method needs a training reference in the model card")
    if ref.x.ndim != 2 or ref.x.shape[1] != model.schema.n_columns:
        raise FailedPrecondition("the training reference does not match the model's feature schema")
    x = np.asarray(ref.x, dtype=np.float64)
    if predicted:
        x = x[model.predict_proba(x).argmax(axis=1) == classes.index(predicted)]
        if not len(x):
            raise InvalidArgument.single(
                "params.attribution.reference_class", f"the model predicts {predicted!r} for no training reference row"
            )
    rows, weights = weighted_kmeans(x, size, np.random.default_rng(seed))
    bg = Background.of(rows, weights)
    with _lock:
        _cache[key] = bg
        while len(_cache) > _CACHE_CAPACITY:
            _cache.popitem(last=False)
    return bg


def clear_cache() -> None:
    """Drops every cached summary (a model version was unloaded, or in tests)."""
    with _lock:
        _cache.clear()
