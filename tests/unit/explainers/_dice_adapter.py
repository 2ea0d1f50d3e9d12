"""DiCE (dice-ml) over the same served model, for comparisons only (tests and bench).

DiCE sees the model's features as a data frame (booleans as "yes"/"no"
categories). Its model-agnostic methods (genetic, random) call
`DiceOver.predict_proba` through the sklearn backend; its gradient method
needs a torch module over DiCE's own encoding (one-hot categories, continuous
features min-max scaled over the training frame), which `DiceInput` maps
linearly onto our encoded columns in front of the served module.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from desiderata.explainers.base import ExplainableModel
from desiderata.server.model_card import FeatureSchema


class DiceInput(torch.nn.Module):
    """DiCE's ohe-min-max row(s) → our encoded columns → probability of class 1.

    Built lazily on the first call, when DiCE has fixed its encoded column
    names. A 1-D input (DiCE's gradient loop) returns shape ``(1,)``, a batch
    ``(n, 1)``.

    Args:
        module: the served module (float32 ``(n, n_columns)`` → probabilities).
        schema: our feature schema.
        data: the ``dice_ml.Data`` the explainer was built on.
    """

    def __init__(self, module: torch.nn.Module, schema: FeatureSchema, data: Any) -> None:
        super().__init__()
        self.module, self.schema, self.data = module, schema, data
        self.weight: torch.Tensor | None = None
        self.bias = torch.zeros(schema.n_columns)

    def _build(self) -> None:
        names = list(self.data.ohe_encoded_feature_names)
        weight = torch.zeros(len(names), self.schema.n_columns)
        frame = self.data.data_df
        for spec, sl in zip(self.schema.features, self.schema.slices, strict=True):
            if spec.type in ("number", "integer"):
                lo, hi = float(frame[spec.name].min()), float(frame[spec.name].max())
                weight[names.index(spec.name), sl.start] = hi - lo
                self.bias[sl.start] = lo
            elif spec.type == "boolean":
                weight[names.index(f"{spec.name}_yes"), sl.start] = 1.0
            else:
                for c, level in enumerate(spec.categories):
                    if f"{spec.name}_{level}" in names:  # a level absent from the data has no column
                        weight[names.index(f"{spec.name}_{level}"), sl.start + c] = 1.0
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            self._build()
        assert self.weight is not None
        row = x.float()[None, :] if x.dim() == 1 else x.float()
        out: torch.Tensor = self.module(row @ self.weight + self.bias)[:, 1:]
        return out[0] if x.dim() == 1 else out


class DiceOver:
    """Runs DiCE on `model` and encodes its answers back into our columns.

    Args:
        model: the served model (with a training reference).
        method: DiCE's method: "genetic", "random" or "gradient".
        module: for "gradient", a torch module of the model (float32 rows →
            probabilities); defaults to ``model.torch_module()``.
        card_ranges: give DiCE the card's ranges as `permitted_range` (the
            ranges our searches work in); otherwise DiCE uses the data's.
    """

    def __init__(
        self, model: ExplainableModel, method: str, module: torch.nn.Module | None = None, card_ranges: bool = False
    ) -> None:
        import dice_ml
        import pandas as pd

        ref = model.reference()
        if ref is None:
            raise ValueError("DiCE needs the training reference")
        self.model, self.schema = model, model.schema
        self.cols = [s.name for s in self.schema.features]
        self.cont = [s.name for s in self.schema.features if s.type in ("number", "integer")]
        self.ints = {s.name for s in self.schema.features if s.type == "integer"}
        self.bools = [s.name for s in self.schema.features if s.type == "boolean"]
        self.vary = [s.name for s in self.schema.features if not s.immutable]
        frame = pd.DataFrame([self.schema.decode(r) for r in ref.x])
        for b in self.bools:
            frame[b] = frame[b].map({True: "yes", False: "no"})
        self.frame = frame
        self.permitted: dict[str, list[float]] | None = None
        if card_ranges:
            self.permitted = {}
            for s in self.schema.features:
                if s.name in self.cont and s.min is not None and s.max is not None:
                    self.permitted[s.name] = [float(s.min), float(s.max)]
        data = dice_ml.Data(dataframe=frame.assign(status=ref.y), continuous_features=self.cont, outcome_name="status")
        if method == "gradient":
            module = module if module is not None else model.torch_module()
            if module is None:
                raise ValueError("DiCE's gradient method needs a torch module")
            self.torch_input = DiceInput(module, self.schema, data)
            backend = dice_ml.Model(model=self.torch_input, backend="PYT", func="ohe-min-max")
        else:
            backend = dice_ml.Model(model=self, backend="sklearn")
        self.dice = dice_ml.Dice(data, backend, method=method)

    def encode(self, frame: Any) -> np.ndarray:
        rows = []
        for r in frame[self.cols].to_dict("records"):
            values = dict(r)
            for b in self.bools:
                values[b] = r[b] == "yes"
            for c in self.cont:
                values[c] = round(float(r[c])) if c in self.ints else float(r[c])
            rows.append(self.schema.encode(values))
        return np.stack(rows) if rows else np.zeros((0, self.schema.n_columns))

    def predict_proba(self, frame: Any) -> np.ndarray:
        return self.model.predict_proba(self.encode(frame))

    def counterfactuals(self, i: int, k: int, **options: Any) -> np.ndarray:
        """DiCE's counterfactuals of reference row i, encoded, ``(m, n_columns)``.

        Args:
            i: reference row.
            k: counterfactuals wanted.
            options: passed to ``generate_counterfactuals`` (e.g. posthoc_sparsity_algorithm).
        """
        query = self.frame.iloc[[i]][self.cols]
        extra: dict[str, Any] = {"permitted_range": self.permitted} if self.permitted else {}
        extra.update(options)
        res = self.dice.generate_counterfactuals(
            query, total_CFs=k, desired_class="opposite", features_to_vary=self.vary, verbose=False, **extra
        )
        cfs = res.cf_examples_list[0].final_cfs_df
        return self.encode(cfs) if cfs is not None and len(cfs) else np.zeros((0, self.schema.n_columns))
