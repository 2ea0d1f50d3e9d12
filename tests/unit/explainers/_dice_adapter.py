"""DiCE (dice-ml) over the same served model, for comparisons only (tests and bench)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.unit.explainers._cf_models import TorchModel

ACTIONABLE = ["seniority", "home", "time", "job", "expenses", "income", "assets", "debt", "amount", "price"]


class DiceOver:
    """Runs DiCE on `model` and encodes its answers back into our columns."""

    def __init__(self, model: TorchModel, method: str) -> None:
        import dice_ml
        import pandas as pd

        self.model, self.schema = model, model.schema
        self.cols = [s.name for s in self.schema.features]
        self.cont = [s.name for s in self.schema.features if s.type in ("number", "integer")]
        frame = pd.DataFrame([self.schema.decode(r) for r in model.ref.x])  # type: ignore[union-attr]
        frame["records"] = frame["records"].map({True: "yes", False: "no"})
        self.frame = frame
        data = frame.assign(status=model.ref.y)  # type: ignore[union-attr]
        d = dice_ml.Data(dataframe=data, continuous_features=self.cont, outcome_name="status")
        self.dice = dice_ml.Dice(d, dice_ml.Model(model=self, backend="sklearn"), method=method)

    def encode(self, frame: Any) -> np.ndarray:
        rows = [
            self.schema.encode(r | {"records": r["records"] == "yes"} | {c: int(r[c]) for c in self.cont})
            for r in frame[self.cols].to_dict("records")
        ]
        return np.stack(rows) if rows else np.zeros((0, self.schema.n_columns))

    def predict_proba(self, frame: Any) -> np.ndarray:
        return self.model.predict_proba(self.encode(frame))

    def counterfactuals(self, i: int, k: int) -> np.ndarray:
        """DiCE's counterfactuals of reference row i, encoded, ``(m, n_columns)``."""
        query = self.frame.iloc[[i]][self.cols]
        res = self.dice.generate_counterfactuals(
            query, total_CFs=k, desired_class="opposite", features_to_vary=ACTIONABLE, verbose=False
        )
        cfs = res.cf_examples_list[0].final_cfs_df
        return self.encode(cfs) if cfs is not None else np.zeros((0, self.schema.n_columns))
