"""Per-query latency of served influence (precomputed index) against naive
LiSSA-per-query, top-10 among 10,000 training points, demo-size MLP.

In process (no gRPC), on an MLP of the test fixtures (tanh, 64 hidden units);
run on demand:
    python bench/influence_bench.py [--queries 100] [--naive-queries 5]

The issue's figure end to end over gRPC, on the demo's architecture, is
`bench/influence_grpc.py`.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from collections.abc import Callable

from desiderata.explainers._ihvp import lissa, top_eigenvalue
from desiderata.explainers._loss_grads import LossGrad
from desiderata.explainers.base import ExplainContext
from desiderata.explainers.influence import explain_samples, get_index
from desiderata.explainers.influence_config import InfluenceConfig
from desiderata.explainers.types import SampleImportanceParams
from tests.unit.explainers._credit import FakeModel, credit, mlp, reference, train_full_batch


def naive_lissa_ms(
    module: torch.nn.Module,
    predict_proba: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    subset: str,
    damping: float,
    hessian_rows: np.ndarray,
    queries: np.ndarray,
    rng: np.random.Generator,
) -> list[float]:
    """The peer: per query a LiSSA solve, then every training gradient dotted with it, top 10.

    Args:
        module: the model's torch module; predict_proba: its class probabilities.
        x: training rows ``(n, n_columns)``; y: their labels ``(n,)``.
        subset: parameters ("last_layer" or "all").
        damping: λ added to the Hessian.
        hessian_rows: row indices the LiSSA scale (top eigenvalue) is estimated on.
        queries: instances ``(q, n_columns)``.
        rng: LiSSA's sampling.

    Returns:
        milliseconds per query.
    """
    g = LossGrad(module, subset)
    top = top_eigenvalue(lambda v: g.hvp(v, x[hessian_rows], y[hessian_rows]), g.p, rng, iters=10)
    scale = 1.5 * (top + damping)
    out = []
    for q in queries:
        t = time.perf_counter()
        pred = int(np.argmax(predict_proba(q[None])[0]))
        s = lissa(
            lambda v, r: g.hvp(v, x[r], y[r]),
            g.grads(q[None], np.array([pred]))[0],
            len(x),
            damping,
            scale,
            rng,
            depth=100,
            repeats=1,
            batch_size=256,
        )
        scores = np.concatenate([(c @ s).numpy() for _, c in g.iter_grads(x, y, 2048)])
        np.argsort(-scores)[:10]
        out.append((time.perf_counter() - t) * 1e3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--naive-queries", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = credit()
    rng = np.random.default_rng(0)
    rows = rng.choice(len(data.x), 10_000, replace=True)
    x = data.x[rows] + 0.01 * rng.standard_normal((10_000, data.x.shape[1]))
    y = data.y[rows]
    module = mlp(x.shape[1], hidden=64, seed=0)
    train_full_batch(module, x[:4000], y[:4000], l2=1e-3, steps=50)
    model = FakeModel(module, reference(x, y), data.card)
    queries = data.x[rng.choice(len(data.x), args.queries)]
    for subset in ("last_layer", "all"):
        cfg = InfluenceConfig(parameter_subset=subset, damping=1e-2, rank=64, arnoldi_iters=96, hessian_rows=2000)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        index = get_index(model, "influence", subset, cfg=cfg)
        build = time.perf_counter() - t
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        params = SampleImportanceParams(top_k=10, parameter_subset=subset)
        lat = []
        for q in queries:
            t = time.perf_counter()
            explain_samples(model, q, params, ExplainContext(), "influence")
            lat.append((time.perf_counter() - t) * 1e3)
        naive = naive_lissa_ms(
            module, model.predict_proba, x, y, subset, 1e-2, np.arange(2000), queries[: args.naive_queries], rng
        )
        p50, n50 = float(np.median(lat)), float(np.median(naive))
        print(
            f"{subset}: p={LossGrad(module, subset).p} solver={index.meta.get('solver')} rank={index.meta.get('rank')} "
            f"precompute={build:.1f}s index={index.meta.get('bytes', 0)}B "
            f"maxrss+={(rss1 - rss0) / 1e3:.0f}MB | served p50={p50:.2f}ms "
            f"p90={np.percentile(lat, 90):.2f}ms "
            f"| naive LiSSA p50={n50:.0f}ms | ratio={n50 / p50:.0f}x"
        )


if __name__ == "__main__":
    main()
