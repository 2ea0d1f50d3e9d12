"""Small models implementing ExplainableModel for the attribution tests (helpers + fixtures).

`TorchModel` wraps a torch module mapping encoded rows to class probabilities,
with a ModelCard built in code; `mlp_model` has 9 numeric features and one
3-level category (10 players, 12 encoded columns) so that one-hot groups
are exercised; `linear_model` has a closed-form Shapley value.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from desiderata.explainers.background import Background
from desiderata.explainers.base import Reference
from desiderata.server.model_card import FeatureGroup, FeatureSchema, FeatureSpec, ModelCard

torch.set_num_threads(1)


class TorchModel:
    """An ExplainableModel over a float32 torch module producing probabilities."""

    def __init__(
        self,
        module: torch.nn.Module,
        features: list[FeatureSpec],
        reference_x: np.ndarray,
        name: str = "test",
        differentiable: bool = True,
        groups: list[FeatureGroup] | None = None,
    ) -> None:
        self._module = module.eval()
        self._card = ModelCard(
            name=name,
            version="1",
            features=features,
            feature_groups=groups or [],
            class_names=["no", "yes"],
            differentiable=differentiable,
        )
        self._schema = FeatureSchema(features, self._card.feature_groups)
        self._ref = Reference(
            x=reference_x,
            y=np.zeros(len(reference_x), dtype=np.int64),
            ids=tuple(map(str, range(len(reference_x)))),
        )
        self._differentiable = differentiable

    @property
    def card(self) -> ModelCard:
        return self._card

    @property
    def schema(self) -> FeatureSchema:
        return self._schema

    @property
    def n_classes(self) -> int:
        return 2

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self._module(torch.as_tensor(x, dtype=torch.float32)).double().numpy()

    def torch_module(self) -> torch.nn.Module | None:
        return self._module if self._differentiable else None

    def reference(self) -> Reference | None:
        return self._ref


class Softmax2(torch.nn.Module):
    """Two-class probabilities from a network with one logit."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.net(x))
        return torch.cat([1 - p, p], dim=1)


class Identity2(torch.nn.Module):
    """Two 'class' outputs (−g, g) of a linear g, so class 1 is exactly linear."""

    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = x @ self.w[:, None] + self.b
        return torch.cat([-g, g], dim=1)


def numeric(n: int) -> list[FeatureSpec]:
    return [FeatureSpec(name=f"x{i}", type="number") for i in range(n)]


def make_mlp(d_in: int, hidden: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(d_in, hidden),
        torch.nn.Tanh(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.Tanh(),
        torch.nn.Linear(hidden, 1),
    )
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.5)
    return Softmax2(net)


def reference_rows(n: int, n_numeric: int, categories: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    num = rng.normal(size=(n, n_numeric))
    if not categories:
        return num
    onehot = np.eye(categories)[rng.integers(categories, size=n)]
    return np.concatenate([num, onehot], axis=1)


@pytest.fixture(scope="session")
def mlp_model() -> TorchModel:
    """9 numbers + one 3-level category = 10 players over 12 columns."""
    feats = [*numeric(9), FeatureSpec(name="colour", type="category", categories=["r", "g", "b"])]
    return TorchModel(make_mlp(12, 16, 0), feats, reference_rows(300, 9, 3, 1), name="mlp")


@pytest.fixture(scope="session")
def numeric_model() -> TorchModel:
    """10 numeric players (for peers that do not know groups)."""
    return TorchModel(make_mlp(10, 16, 2), numeric(10), reference_rows(300, 10, 0, 3), name="num")


@pytest.fixture(scope="session")
def linear_model() -> tuple[TorchModel, np.ndarray]:
    """A linear class-1 output g(x) = w·x + b over 6 numbers; returns (model, w)."""
    w = np.array([1.0, -2.0, 0.5, 3.0, 0.0, -1.0])
    module = Identity2(torch.tensor(w, dtype=torch.float32), 0.3)
    return TorchModel(module, numeric(6), reference_rows(200, 6, 0, 4), name="lin"), w


@pytest.fixture(scope="session")
def small_background() -> Callable[[TorchModel, int, int], Background]:
    def make(model: TorchModel, size: int, seed: int) -> Background:
        ref = model.reference()
        assert ref is not None
        rng = np.random.default_rng(seed)
        idx = rng.choice(ref.x.shape[0], size=size, replace=False)
        return Background.of(ref.x[idx], rng.uniform(0.5, 1.5, size=size))

    return make


def instance(model: TorchModel, seed: int) -> np.ndarray:
    ref = model.reference()
    assert ref is not None
    return np.asarray(ref.x[np.random.default_rng(seed).integers(ref.x.shape[0])]) + 0.0
