"""Our counterfactuals beside DiCE's on the same credit model and inputs:
validity 100%, mean normalized ℓ1 distance and sparsity no worse than DiCE's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from desiderata.explainers.base import ExplainContext
from desiderata.explainers.counterfactual_constraints import build_feasible_set
from desiderata.explainers.counterfactual_genetic import GeneticCounterfactual
from desiderata.explainers.counterfactual_gradient import GradientCounterfactual
from desiderata.explainers.types import CounterfactualParams
from tests.unit.explainers._cf_models import credit_model
from tests.unit.explainers._dice_adapter import DiceOver

torch.set_num_threads(1)
N_INPUTS = 10  # 100 in bench/counterfactual_bench.py; DiCE takes seconds per input


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning", "ignore::UserWarning")
def test_no_worse_than_dice_genetic() -> None:
    model, _ = credit_model()
    ref = model.ref
    rejected = np.flatnonzero(model.predict_proba(ref.x).argmax(1) == 0)  # type: ignore[union-attr]
    inputs = np.random.default_rng(0).choice(rejected, N_INPUTS, replace=False)
    dice = DiceOver(model, "genetic")
    stats: dict[str, list[tuple[float, int, bool]]] = {"dice": [], "gradient": [], "genetic": []}
    for i in inputs:
        x = ref.x[i]  # type: ignore[union-attr]
        fs = build_feasible_set(model.schema, x, (), ref)
        z = dice.counterfactuals(int(i), 3)
        valid = model.predict_proba(z).argmax(1) == 1 if len(z) else np.zeros(0, bool)
        for j in range(len(z)):
            stats["dice"].append(
                (
                    float(fs.distance(z[j : j + 1])[0]),
                    int(fs.changed_features(z[j : j + 1]).sum()),
                    bool(valid[j]),
                )
            )
        for name, method in (("gradient", GradientCounterfactual), ("genetic", GeneticCounterfactual)):
            e = method().explain(model, x, CounterfactualParams(count=3), ExplainContext(seed=int(i)))
            assert e.result.counterfactuals, e.result.reason_none  # type: ignore[union-attr]
            for cf in e.result.counterfactuals:  # type: ignore[union-attr]
                row = model.schema.encode(
                    model.schema.decode(x) | {c.feature: c.to_value for c in cf.changes}
                )
                ok = bool(model.predict_proba(row)[0].argmax() == 1)
                assert abs(float(fs.distance(row[None, :])[0]) - cf.normalized_l1_distance) < 1e-9
                stats[name].append((cf.normalized_l1_distance, cf.features_changed, ok))
    summary = {k: np.array(v, dtype=float).mean(axis=0) for k, v in stats.items()}
    print({k: np.round(v, 4).tolist() for k, v in summary.items()})
    for ours in ("gradient", "genetic"):
        assert summary[ours][2] == 1.0  # validity 100%
        assert summary[ours][0] <= summary["dice"][0]  # mean normalized ℓ1
        assert summary[ours][1] <= summary["dice"][1]  # features changed
