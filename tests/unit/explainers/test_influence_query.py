"""The fast paths of a served sample-importance query give the numbers of the
slow ones: top-k by partition equals a stable full sort, a single-row gradient
by plain autograd equals the vmapped per-sample gradient, and the torch
product of `SampleIndex.scores` equals numpy's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from desiderata.explainers import _loss_grads
from desiderata.explainers._loss_grads import LossGrad
from desiderata.explainers.influence import top_indices
from desiderata.explainers.influence_index import SampleIndex
from tests.unit.explainers._credit import mlp


def _stable(key: np.ndarray, k: int, candidates: np.ndarray | None) -> np.ndarray:
    pool = np.arange(len(key)) if candidates is None else candidates
    return pool[np.argsort(-key[pool], kind="stable")][:k]


def test_top_indices_equal_a_stable_sort_with_ties_nans_and_candidates() -> None:
    rng = np.random.default_rng(1)
    for trial in range(2000):
        n = int(rng.integers(1, 60))
        key = rng.integers(-4, 4, n).astype(float) if trial % 2 else rng.standard_normal(n)
        if trial % 7 == 0:
            key[rng.integers(0, n)] = np.nan
        candidates = None if trial % 3 else np.flatnonzero(rng.random(n) < 0.7)
        k = int(rng.integers(0, 70))
        assert np.array_equal(top_indices(key, k, candidates), _stable(key, k, candidates)), trial


@pytest.mark.parametrize("subset", ["last_layer", "all"])
def test_single_row_gradient_equals_the_vmapped_one(subset: str) -> None:
    torch.manual_seed(0)
    g = LossGrad(mlp(6, hidden=5, seed=2), subset)
    x = np.random.default_rng(0).standard_normal((4, 6))
    y = np.array([0, 1, 1, 0])
    batch = g.grads(x, y)
    for i in range(len(x)):
        with torch.no_grad():  # a caller's no_grad block must not break the query gradient
            one = g.grads(x[i : i + 1], y[i : i + 1])
        assert one.shape == (1, g.p)
        torch.testing.assert_close(one[0], batch[i], rtol=1e-12, atol=1e-14)


def test_scores_match_numpy() -> None:
    rng = np.random.default_rng(0)
    train = rng.standard_normal((500, 12)).astype(np.float32)
    q = rng.standard_normal((3, 12))
    n = len(train)
    for method in ("influence", "nearest_neighbours"):
        idx = SampleIndex(method, "all", train, np.zeros(n), np.ones(n), 0.0, {})
        dots = q.astype(np.float32).astype(np.float64) @ train.T.astype(np.float64)
        expected = dots
        if method == "nearest_neighbours":
            d2 = (q**2).sum(1)[:, None] - 2.0 * dots + (train.astype(np.float64) ** 2).sum(1)[None, :]
            expected = -np.sqrt(np.maximum(d2, 0.0))
        np.testing.assert_allclose(idx.scores(q), expected, rtol=1e-5, atol=1e-5)


def test_single_row_gradient_of_a_module_that_cannot_be_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(_obj: object, _memo: object = None) -> object:
        raise TypeError("not copyable")

    g = LossGrad(mlp(6, hidden=5, seed=2), "all")
    monkeypatch.setattr(_loss_grads.copy, "deepcopy", refuse)
    x = np.random.default_rng(0).standard_normal((2, 6))
    y = np.array([1, 0])
    torch.testing.assert_close(g.grads(x[:1], y[:1])[0], g.grads(x, y)[0], rtol=1e-12, atol=1e-14)
    assert g._copy is None
