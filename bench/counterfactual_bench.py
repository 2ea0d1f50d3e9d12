"""Counterfactual and robustness benchmark beside DiCE (run on demand).

    python bench/counterfactual_bench.py [--n 100]

Times one request (k = 3) per input, p50 over n rejected applicants of the
credit model (the test stand-in trained on modeldata::credit_data until the
demo artifact is wired), for our gradient and genetic methods and DiCE's
gradient-free genetic and random methods, with validity, mean normalized ℓ1
distance and features changed measured the same way for all; then the
minimal-ℓ2 robustness search p50.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from desiderata.explainers.base import ExplainContext
from desiderata.explainers.counterfactual_constraints import build_feasible_set
from desiderata.explainers.counterfactual_genetic import GeneticCounterfactual
from desiderata.explainers.counterfactual_gradient import GradientCounterfactual
from desiderata.explainers.robustness import RobustnessL2
from desiderata.explainers.types import CounterfactualParams, RobustnessParams
from tests.unit.explainers._cf_models import credit_model
from tests.unit.explainers._dice_adapter import DiceOver


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    model, _ = credit_model()
    ref = model.ref
    assert ref is not None
    rejected = np.flatnonzero(model.predict_proba(ref.x).argmax(1) == 0)
    inputs = np.random.default_rng(0).choice(rejected, min(args.n, len(rejected)), replace=False)
    rows: dict[str, list[tuple[float, float, int, bool]]] = {}
    dice = {m: DiceOver(model, m) for m in ("genetic", "random")}
    for i in inputs:
        x = ref.x[i]
        fs = build_feasible_set(model.schema, x, (), ref)
        for name, method in (
            ("ours_gradient", GradientCounterfactual),
            ("ours_genetic", GeneticCounterfactual),
        ):
            t = time.perf_counter()
            e = method().explain(model, x, CounterfactualParams(count=3), ExplainContext(seed=int(i)))
            ms = (time.perf_counter() - t) * 1e3
            for cf in e.result.counterfactuals:  # type: ignore[union-attr]
                rows.setdefault(name, []).append(
                    (ms, cf.normalized_l1_distance, cf.features_changed, cf.valid)
                )
        for name, d in dice.items():
            t = time.perf_counter()
            z = d.counterfactuals(int(i), 3)
            ms = (time.perf_counter() - t) * 1e3
            valid = model.predict_proba(z).argmax(1) == 1 if len(z) else []
            for j in range(len(z)):
                row = z[j : j + 1]
                rows.setdefault(f"dice_{name}", []).append(
                    (ms, float(fs.distance(row)[0]), int(fs.changed_features(row).sum()), bool(valid[j]))
                )
    print(f"n={len(inputs)} inputs, k=3")
    print(f"{'method':16s} {'p50 ms':>8s} {'validity':>9s} {'mean L1':>8s} {'changed':>8s} {'cfs':>5s}")
    for name, r in rows.items():
        a = np.array(r, dtype=float)
        print(
            f"{name:16s} {np.median(a[:, 0]):8.1f} {a[:, 3].mean():9.3f} "
            f"{a[:, 1].mean():8.4f} {a[:, 2].mean():8.2f} {len(a):5d}"
        )
    times = []
    for i in inputs:
        t = time.perf_counter()
        RobustnessL2().explain(model, ref.x[i], RobustnessParams(), ExplainContext())
        times.append((time.perf_counter() - t) * 1e3)
    print(f"robustness_l2 p50 {np.median(times):.1f} ms")


if __name__ == "__main__":
    main()
