"""Issue #7's benchmark end to end over gRPC: top-10 influential points among
10,000 training points on the demo-size MLP, last layer and all parameters,
after precomputation, against naive LiSSA-per-query in the same run (run on demand).

    python bench/influence_grpc.py [--queries 100] [--naive-queries 5] [--rows 10000]

The model folder is built for the run: the demo's architecture and training
recipe (`desiderata.server.demo_model.fit_mlp`, 20 epochs) fitted on a
10,000-row resample, with replacement, of the demo's training split of the
credit data (4,039 rows, 3,231 for training), with small jitter (1% of the
column's standard deviation, clipped to the card's range) on numeric columns
so no two rows are equal; the card is the demo's under another name. Queries
are held-out rows of the demo split, never in the reference.

The real server then starts in this process on port 0 with precomputation on
(both subsets: ``influence.yaml`` lists ``all`` in ``precompute_subsets``),
and the benchmark waits until precomputation is over before timing. Figures:
precomputation wall time (with every index's own build seconds), index size
on disk and in memory, resident memory before and after; then per subset p50
and p90 over `--queries` engineer requests (top-10, rows allowed) over gRPC,
the same queries in process through `explain_samples` on the served handle,
and naive LiSSA-per-query (depth 100, batch 256, then all 10,000 training
gradients dotted with the solve) over `--naive-queries` of them, with the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.influence_bench import naive_lissa_ms
from desiderata.client import AsyncClient
from desiderata.client._requests import Requests
from desiderata.explainers.base import ExplainContext
from desiderata.explainers.influence import explain_samples, get_index
from desiderata.explainers.types import SampleImportanceParams, SampleImportanceResult
from desiderata.server.artifact import export_probability_module, sha256_file
from desiderata.server.demo_data import CREDIT_MODEL_DIR, read_credit_csv
from desiderata.server.demo_model import fit_mlp
from desiderata.server.grpc.app import App, build_server
from desiderata.server.model_card import FeatureSchema, FeatureValue, load_card
from desiderata.server.model_handle import ModelHandle
from desiderata.server.training import stratified_split
from desiderata.v1 import types_pb2 as pb
from tests.integration.conftest import settings_for

warnings.filterwarnings("ignore")
NAME = "credit10k"
SUBSETS = ("last_layer", "all")
SETTINGS = {
    "parameter_subset": "last_layer",
    "precompute_subsets": ["all"],
    "damping": 1e-2,
    "max_exact_params": 256,  # last layer (66) exact; all (1,954) Arnoldi low rank
    "rank": 64,
    "arnoldi_iters": 96,
    "hessian_rows": 2000,
}
"""``influence.yaml`` of the benchmark model (the in-process bench's settings)."""


def build_model_folder(folder: Path, rows: int, seed: int = 0) -> tuple[np.ndarray, float]:
    """Writes card.yaml, model.pt2, reference.npz and influence.yaml; returns held-out rows and training seconds."""
    demo = load_card(CREDIT_MODEL_DIR / "card.yaml")
    schema = FeatureSchema(demo.features)
    data = read_credit_csv()
    train_idx, test_idx = stratified_split(data.labels, test_fraction=0.2, seed=seed)
    x_all = np.stack([schema.encode(r) for r in data.rows])
    rng = np.random.default_rng(seed)
    pick = rng.choice(train_idx, rows, replace=True)
    x = x_all[pick].copy()
    for spec, sl in zip(schema.features, schema.slices, strict=True):
        if spec.type in ("number", "integer"):
            col = x[:, sl.start]
            col += 0.01 * x_all[train_idx, sl.start].std() * rng.standard_normal(rows)
            lo = -np.inf if spec.min is None else spec.min
            hi = np.inf if spec.max is None else spec.max
            x[:, sl.start] = np.clip(col, lo, hi)
    y = data.labels[pick]
    ids = np.array([f"{data.ids[i]}-{k}" for k, i in enumerate(pick)])
    fit = fit_mlp(x, y, seed=seed, epochs=20)
    folder.mkdir(parents=True)
    export_probability_module(fit.module, n_columns=schema.n_columns, path=folder / "model.pt2")
    np.savez_compressed(folder / "reference.npz", x=x, y=y.astype(np.int64), ids=ids)
    assert demo.training_data is not None
    card = demo.model_copy(
        update={
            "name": NAME,
            "artifact_sha256": sha256_file(folder / "model.pt2"),
            "training_data": demo.training_data.model_copy(update={"rows": rows, "path": "reference.npz"}),
        }
    )
    (folder / "card.yaml").write_text(yaml.safe_dump(card.model_dump(mode="json"), sort_keys=False))
    (folder / "influence.yaml").write_text(yaml.safe_dump(SETTINGS))
    return x_all[test_idx], fit.seconds


def rss_mb() -> tuple[float, float]:
    """Resident and peak resident memory of this process, MB."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return float(status["VmRSS"].split()[0]) / 1024, float(status["VmHWM"].split()[0]) / 1024


def pct(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 90))


def naive_lissa(handle: ModelHandle, subset: str, queries: np.ndarray, rng: np.random.Generator) -> list[float]:
    """The naive peer (`influence_bench.naive_lissa_ms`) on the served model's reference (ms per query)."""
    ref = handle.reference()
    assert ref is not None
    rows = rng.choice(len(ref.x), 2000, replace=False)
    damping = float(SETTINGS["damping"])  # type: ignore[arg-type]
    return naive_lissa_ms(handle.module, handle.predict_proba, ref.x, ref.y, subset, damping, rows, queries, rng)


async def over_grpc(app: App, rows: list[dict[str, FeatureValue]], subset: str) -> tuple[list[float], list[Any]]:
    """Engineer requests for the top 10 (subset "" is the floor: gradient × input attribution)."""
    kind, params = (
        pb.EXPLANATION_KIND_SAMPLE_IMPORTANCE,
        pb.ExplanationParams(
            sample_importance=pb.SampleImportanceParams(method="influence", top_k=10, parameter_subset=subset)
        ),
    )
    if not subset:
        kind = pb.EXPLANATION_KIND_FEATURE_ATTRIBUTION
        params = Requests.attribution_params(method="gradient_x_input", target_class="good")
    times, outs = [], []
    async with AsyncClient(app.address, api_key="k-eng", timeout_s=60) as client:

        async def call(row: dict[str, FeatureValue]) -> Any:
            return await client.explain(NAME, row, purpose="debugging", kind=kind, params=params)

        for row in rows[:3]:  # warm-up: channel, first-call paths
            await call(row)
        for row in rows[3:]:
            t = time.perf_counter()
            outs.append(await call(row))
            times.append((time.perf_counter() - t) * 1e3)
    return times, outs


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--naive-queries", type=int, default=5)
    ap.add_argument("--rows", type=int, default=10_000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    root = Path(tempfile.mkdtemp(prefix="desiderata-infl-bench-"))
    held_out, fit_s = build_model_folder(root / "models" / NAME, args.rows)
    print(
        f"model folder {root / 'models' / NAME}: demo architecture (1,954 parameters) fitted in {fit_s:.1f}s on a "
        f"{args.rows:,}-row resample (with replacement, 1% jitter on numeric columns) of the demo's training split"
    )
    rss0, _ = rss_mb()
    app = build_server(settings_for(root / "models", root / "state", models={"precompute": True}))
    started = time.perf_counter()
    await app.start()
    assert app.precompute is not None
    await asyncio.to_thread(app.precompute.wait, 3600)
    pre_s = time.perf_counter() - started
    assert not app.precompute.errors, app.precompute.errors
    rss1, hwm = rss_mb()
    handle = app.pipeline.models.resolve(NAME)
    assert handle.index_dir is not None
    files = sorted(handle.index_dir.glob("*.npz"))
    disk = sum(f.stat().st_size for f in files)
    print(f"\nprecomputation (influence last_layer + all, nearest neighbours): {pre_s:.1f}s wall")
    for method, subset in (("influence", "last_layer"), ("influence", "all"), ("nearest_neighbours", "")):
        idx = get_index(handle, method, subset)
        meta = idx.meta
        held = idx.train.nbytes + idx.self_influence.nbytes + idx.global_mean_abs.nbytes
        held += sum(a.numel() * a.element_size() for a in idx.factors)
        print(
            f"  {method:<18s} {idx.subset:<14s} {float(meta['seconds']):6.1f}s  solver={meta.get('solver', '-')} "
            f"rank={meta.get('rank', meta.get('dim'))} arrays {held / 1e6:.1f} MB"
        )
    print(
        f"  index files on disk {disk / 1e6:.1f} MB ({len(files)} files); RSS {rss0:.0f} → {rss1:.0f} MB "
        f"(+{rss1 - rss0:.0f} MB, peak {hwm:.0f} MB)"
    )
    schema = handle.schema
    rng = np.random.default_rng(1)
    queries = held_out[rng.choice(len(held_out), args.queries + 3, replace=False)]
    rows = [schema.decode(q) for q in queries]
    xs = np.stack([schema.encode(r) for r in rows])  # exactly what the server encodes
    table = []
    for subset in SUBSETS:
        rpc_ms, outs = await over_grpc(app, rows, subset)
        params = SampleImportanceParams(top_k=10, parameter_subset=subset)
        local_ms, same = [], 0
        for x, out in zip(xs[3:], outs, strict=True):
            t = time.perf_counter()
            ex = explain_samples(handle, x, params, ExplainContext(), "influence", include_rows=True)
            local_ms.append((time.perf_counter() - t) * 1e3)
            assert isinstance(ex.result, SampleImportanceResult)
            wire = [s.sample_id for s in out.influential_samples.samples]
            same += wire == [s.sample_id for s in ex.result.samples]
            assert all(s.HasField("row") for s in out.influential_samples.samples)
        naive = naive_lissa(handle, subset, xs[3 : 3 + args.naive_queries], rng)
        (r50, r90), (l50, l90), (n50, _) = pct(rpc_ms), pct(local_ms), pct(naive)
        compute = statistics.median(o.quality.compute_ms for o in outs)
        table.append((subset, r50, r90, l50, l90, n50, n50 / r50, compute, same, len(outs)))
    floor_ms, floor = await over_grpc(app, rows, "")
    f50, f90 = pct(floor_ms)
    f_compute = statistics.median(o.quality.compute_ms for o in floor)
    await app.stop(0.5)
    print(
        f"\ntop-10 of {args.rows:,}, p50/p90 over {args.queries} queries (naive over {args.naive_queries}), "
        "torch threads 1\n"
    )
    print("| subset | over gRPC p50 / p90 | in process p50 / p90 | compute_ms p50 | naive LiSSA p50 | ratio |")
    print("|---|---|---|---|---|---|")
    for subset, r50, r90, l50, l90, n50, ratio, compute, same, n in table:
        print(
            f"| {subset} | {r50:.1f} / {r90:.1f} ms | {l50:.2f} / {l90:.2f} ms | {compute:.2f} ms "
            f"| {n50:,.0f} ms | {ratio:,.0f}× |"
        )
        print(f"    ({same}/{n} answers over gRPC name the same 10 points, in order, as the in-process call)")
    print(
        f"| floor: gradient × input | {f50:.1f} / {f90:.1f} ms | | {f_compute:.2f} ms | | |\n"
        "    (the same rows and caller: the round trip, authentication, policy, admission, audit and disclosure "
        "around an explainer that costs almost nothing)"
    )


if __name__ == "__main__":
    asyncio.run(main())
