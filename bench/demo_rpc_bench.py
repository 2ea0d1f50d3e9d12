"""Counterfactual, robustness and sample-importance requests over gRPC on the demo model.

    python bench/demo_rpc_bench.py [--n 50]

Starts the real server on port 0 over the built-in demo (credit), waits for
the sample-importance precomputation, then sends one request per rejected
applicant (k = 3 counterfactuals) for each method and reports the p50/p95
round-trip latency, the validity re-checked on the served model, the mean
normalized ℓ1 distance and the mean number of features changed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from desiderata.client import AsyncClient
from desiderata.server.grpc.app import build_server
from desiderata.v1 import types_pb2 as pb
from tests.integration.conftest import settings_for


def _p(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


async def main(n: int) -> None:
    app = build_server(settings_for(None, Path(tempfile.mkdtemp())))
    await app.start()
    assert app.precompute is not None
    t0 = time.perf_counter()
    app.precompute.wait(600)
    print(f"precompute: {time.perf_counter() - t0:.2f} s {app.precompute.progress}")
    handle = app.pipeline.models.resolve("credit")
    ref = handle.reference()
    assert ref is not None
    rejected = np.flatnonzero(handle.predict_proba(ref.x).argmax(1) == 0)
    rows = np.random.default_rng(0).choice(rejected, min(n, len(rejected)), replace=False)
    cases: list[tuple[str, int, pb.ExplanationParams]] = [
        (
            "cf gradient",
            pb.EXPLANATION_KIND_COUNTERFACTUAL,
            pb.ExplanationParams(counterfactual=pb.CounterfactualParams(method="gradient", count=3)),
        ),
        (
            "cf genetic",
            pb.EXPLANATION_KIND_COUNTERFACTUAL,
            pb.ExplanationParams(counterfactual=pb.CounterfactualParams(method="genetic", count=3)),
        ),
        (
            "robustness l2",
            pb.EXPLANATION_KIND_ROBUSTNESS,
            pb.ExplanationParams(robustness=pb.RobustnessParams(norm="l2")),
        ),
        (
            "robustness l0",
            pb.EXPLANATION_KIND_ROBUSTNESS,
            pb.ExplanationParams(robustness=pb.RobustnessParams(norm="l0")),
        ),
        (
            "influence top10",
            pb.EXPLANATION_KIND_SAMPLE_IMPORTANCE,
            pb.ExplanationParams(sample_importance=pb.SampleImportanceParams(method="influence", top_k=10)),
        ),
        (
            "neighbours top10",
            pb.EXPLANATION_KIND_SAMPLE_IMPORTANCE,
            pb.ExplanationParams(sample_importance=pb.SampleImportanceParams(method="nearest_neighbours", top_k=10)),
        ),
    ]
    async with AsyncClient(app.address, api_key="k-eng") as client:
        for name, kind, params in cases:
            ms: list[float] = []
            valid: list[bool] = []
            dist: list[float] = []
            changed: list[int] = []
            none = 0
            for i in rows:
                inst = handle.schema.decode(ref.x[i])
                t = time.perf_counter()
                ex: Any = await client.explain("credit", inst, purpose="debugging", kind=kind, params=params)
                ms.append((time.perf_counter() - t) * 1e3)
                if kind == pb.EXPLANATION_KIND_COUNTERFACTUAL:
                    none += not ex.counterfactuals.counterfactuals
                    for cf in ex.counterfactuals.counterfactuals:
                        after = dict(inst)
                        for c in cf.changes:
                            after[c.feature] = getattr(c.to_value, c.to_value.WhichOneof("kind"))
                        p = handle.predict_proba(handle.schema.encode(after)[None, :])[0]
                        valid.append(bool(p.argmax() == 1))
                        dist.append(cf.normalized_l1_distance)
                        changed.append(cf.features_changed)
                elif kind == pb.EXPLANATION_KIND_ROBUSTNESS:
                    valid.append(ex.robustness.found and ex.robustness.flipped_prediction.label == "good")
                    dist.append(ex.robustness.distance)
            line = f"{name:18s} p50 {_p(ms, 50):7.1f} ms  p95 {_p(ms, 95):7.1f} ms"
            if valid:
                line += f"  validity {np.mean(valid):.3f} ({len(valid)})  mean distance {statistics.mean(dist):.4f}"
            if changed:
                line += f"  features changed {statistics.mean(changed):.2f}  none {none}"
            print(line)
    await app.stop(0.5)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=50)
    asyncio.run(main(parser.parse_args().n))
