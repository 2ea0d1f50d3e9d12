"""Counterfactual and robustness benchmark on the demo credit model beside DiCE (run on demand).

    python bench/counterfactual_bench.py [--n 100] [--dice-gradient-n 10] [--dice-genetic-n 100]

Issue #6's benchmark and oracle. Starts the real server in this process on
port 0 over the built-in demo folder (server/demo/credit: model.pt2, card,
reference) and sends, as an ML engineer debugging (nothing is redacted or
rounded), one request per input — k = 3 counterfactuals, our gradient and
genetic methods — for the same n rejected applicants of the reference (seed
0), then one minimal-ℓ2 and one minimal-ℓ0 robustness request per input.

DiCE runs in process on the same inputs and the same model: its gradient
method through the PYT backend (the demo's ``model.pt2`` loaded with
``torch.export.load(...).module()`` behind DiCE's ohe-min-max encoding) and
its genetic method through the sklearn-style backend (the served model's
`predict_proba`); both vary only the card's mutable features and use the
card's ranges as ``permitted_range``, and DiCE's post-hoc sparsity step in
its binary-search form (``--dice-sparsity``): DiCE's docs recommend it for
wide ranges, and the default linear search walks assets (0–400 000) in steps
of 1 through a pandas re-encoding per step — over six minutes per input here.
DiCE's gradient method still takes tens of seconds per input (at least 500
Adam steps, Python-level model calls per counterfactual per step), so it runs
on the first ``--dice-gradient-n`` inputs only; each speed-up is the ratio of
p50s over the same inputs, and the ℓ1 / sparsity beside it too.

All quality figures are measured here in the same way for everybody, on the
served model: an answer is valid when the model predicts the desired class
("good") for the instance with only the answer's changes; the distance is
our normalized ℓ1 (per feature |Δ| in MAD units over the training
reference, a category switch counting 1, averaged over the 13 features);
sparsity is the number of features changed. Ours are timed over gRPC (round
trip, authentication, policy, privacy admission, audit, disclosure); DiCE's
in process, without any RPC.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from desiderata.client import AsyncClient
from desiderata.explainers.counterfactual_constraints import build_feasible_set
from desiderata.server.grpc.app import build_server
from desiderata.server.model_handle import ModelHandle
from desiderata.v1 import types_pb2 as pb
from tests.integration.conftest import settings_for
from tests.unit.explainers._dice_adapter import DiceOver

K = 3
GOOD = 1


@dataclass
class Row:
    """One method's figures over its inputs."""

    name: str
    ms: dict[int, float] = field(default_factory=dict)
    returned: int = 0
    valid: int = 0
    l1: list[float] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)
    per_input: dict[int, list[tuple[float, int]]] = field(default_factory=dict)

    def add(self, handle: ModelHandle, i: int, ms: float, z: np.ndarray) -> None:
        """Records input i's answer: encoded counterfactuals z ``(m, n_columns)``."""
        ref = handle.reference()
        assert ref is not None
        self.ms[i] = ms
        if len(z) == 0:
            return
        fs = build_feasible_set(handle.schema, ref.x[i], (), ref)
        ok = handle.predict_proba(z).argmax(axis=1) == GOOD
        self.returned += len(z)
        self.valid += int(ok.sum())
        self.l1 += [float(v) for v in fs.distance(z)]
        self.changed += [int(v) for v in fs.changed_features(z).sum(axis=1)]
        self.per_input[i] = list(zip(self.l1[-len(z) :], self.changed[-len(z) :], strict=True))

    def mean_l1(self, inputs: list[int]) -> float:
        values = [v for i in inputs for v, _ in self.per_input.get(i, [])]
        return statistics.mean(values) if values else float("nan")

    def mean_changed(self, inputs: list[int]) -> float:
        values = [c for i in inputs for _, c in self.per_input.get(i, [])]
        return statistics.mean(values) if values else float("nan")

    def p50(self, inputs: list[int] | None = None) -> float:
        keys = self.ms if inputs is None else [i for i in inputs if i in self.ms]
        return statistics.median(self.ms[i] for i in keys) if keys else float("nan")

    def line(self) -> str:
        n = len(self.ms)
        validity = 100 * self.valid / self.returned if self.returned else float("nan")
        found = 100 * self.returned / (K * n) if n else float("nan")
        l1 = statistics.mean(self.l1) if self.l1 else float("nan")
        changed = statistics.mean(self.changed) if self.changed else float("nan")
        return f"| {self.name} | {n} | {self.p50():.1f} | {validity:.1f}% | {found:.0f}% | {l1:.4f} | {changed:.2f} |"


def _apply(handle: ModelHandle, instance: dict[str, Any], cf: Any) -> np.ndarray:
    after = dict(instance)
    for c in cf.changes:
        after[c.feature] = getattr(c.to_value, c.to_value.WhichOneof("kind"))
    return handle.schema.encode(after)


async def ours(client: AsyncClient, handle: ModelHandle, inputs: list[int], method: str) -> tuple[Row, list[float]]:
    """Our method over gRPC; also returns the explainer's own compute_ms per request."""
    ref = handle.reference()
    assert ref is not None
    row, compute = Row(f"ours {method} (gRPC)"), []
    for seed, i in enumerate(inputs):
        instance = handle.schema.decode(ref.x[i])
        params = pb.ExplanationParams(counterfactual=pb.CounterfactualParams(method=method, count=K, seed=seed))
        t = time.perf_counter()
        ex: Any = await client.explain(
            "credit", instance, purpose="debugging", kind=pb.EXPLANATION_KIND_COUNTERFACTUAL, params=params
        )
        ms = (time.perf_counter() - t) * 1e3
        cfs = ex.counterfactuals.counterfactuals
        z = np.stack([_apply(handle, instance, cf) for cf in cfs]) if cfs else np.zeros((0, ref.x.shape[1]))
        row.add(handle, i, ms, z)
        compute.append(ex.quality.compute_ms)
    return row, compute


async def robustness(client: AsyncClient, handle: ModelHandle, inputs: list[int], norm: str) -> str:
    ref = handle.reference()
    assert ref is not None
    ms, dist, found = [], [], 0
    for i in inputs:
        params = pb.ExplanationParams(robustness=pb.RobustnessParams(norm=norm))
        t = time.perf_counter()
        ex: Any = await client.explain(
            "credit",
            handle.schema.decode(ref.x[i]),
            purpose="debugging",
            kind=pb.EXPLANATION_KIND_ROBUSTNESS,
            params=params,
        )
        ms.append((time.perf_counter() - t) * 1e3)
        if ex.robustness.found:
            found += 1
            dist.append(ex.robustness.distance)
    p95 = float(np.percentile(ms, 95))
    mean = statistics.mean(dist) if dist else float("nan")
    unit = "MAD units" if norm == "l2" else "features"
    return (
        f"| robustness {norm} (gRPC) | {len(inputs)} | {statistics.median(ms):.1f} | p95 {p95:.1f} ms | "
        f"found {100 * found / len(inputs):.0f}% | mean {mean:.3f} {unit} |"
    )


def dice(handle: ModelHandle, inputs: list[int], method: str, module: torch.nn.Module | None, sparsity: str) -> Row:
    over = DiceOver(handle, method, module=module, card_ranges=True)
    row = Row(f"DiCE {method} (in process)")
    for i in inputs:
        t = time.perf_counter()
        z = over.counterfactuals(i, K, posthoc_sparsity_algorithm=sparsity)
        row.add(handle, i, (time.perf_counter() - t) * 1e3, z)
        print(f"    DiCE {method} input {len(row.ms)}/{len(inputs)}: {row.ms[i]:.0f} ms", file=sys.stderr, flush=True)
    return row


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100, help="inputs for our methods, robustness and DiCE genetic")
    ap.add_argument("--dice-genetic-n", type=int, default=100, help="inputs for DiCE's genetic method (first of n)")
    ap.add_argument("--dice-gradient-n", type=int, default=5, help="inputs for DiCE's gradient method (first of n)")
    ap.add_argument(
        "--dice-sparsity",
        choices=("binary", "linear"),
        default="binary",
        help="DiCE's posthoc_sparsity_algorithm (its default, linear, takes minutes per input on the card's ranges)",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))

    app = build_server(settings_for(None, Path(tempfile.mkdtemp(prefix="desiderata-cf-bench-"))))
    await app.start()
    handle = app.pipeline.models.resolve("credit")
    ref = handle.reference()
    assert ref is not None
    rejected = np.flatnonzero(handle.predict_proba(ref.x).argmax(1) == 0)
    picked = np.random.default_rng(0).choice(rejected, min(args.n + 1, len(rejected)), replace=False)
    warm, inputs = int(picked[0]), [int(i) for i in picked[1:]]
    print(f"demo credit model, {len(inputs)} rejected applicants, k = {K}, torch threads 1\n")
    rows: list[Row] = []
    async with AsyncClient(app.address, api_key="k-eng", timeout_s=120) as client:
        for method in ("gradient", "genetic"):
            await ours(client, handle, [warm], method)  # first call: worker pool, caches
            row, compute = await ours(client, handle, inputs, method)
            rows.append(row)
            print(f"  {row.name}: p50 {row.p50():.1f} ms (explainer compute_ms p50 {statistics.median(compute):.1f})")
        for norm in ("l2", "l0"):
            await robustness(client, handle, [warm], norm)
        robust = [await robustness(client, handle, inputs, norm) for norm in ("l2", "l0")]
    await app.stop(0.5)

    module = torch.export.load(handle.directory / handle.card.artifact).module()
    dice_rows = {
        "genetic": dice(handle, inputs[: args.dice_genetic_n], "genetic", None, args.dice_sparsity),
        "gradient": dice(handle, inputs[: args.dice_gradient_n], "gradient", module, args.dice_sparsity),
    }
    rows += dice_rows.values()

    print("\n| method | inputs | p50 ms | validity (of returned) | returned (of k·n) | mean normalized ℓ1 | changed |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(row.line())
    print("\n| ours vs DiCE, same inputs | inputs | DiCE p50 ms | ours p50 ms | speed-up | ℓ1 ours / DiCE | changed |")
    print("|---|---|---|---|---|---|---|")
    for peer in dice_rows.values():
        same = list(peer.ms)
        for mine in rows[:2]:
            ratio = peer.p50() / mine.p50(same)
            print(
                f"| {mine.name} vs {peer.name} | {len(same)} | {peer.p50():.1f} | {mine.p50(same):.1f} | "
                f"{ratio:.1f}× | {mine.mean_l1(same):.4f} / {peer.mean_l1(same):.4f} | "
                f"{mine.mean_changed(same):.2f} / {peer.mean_changed(same):.2f} |"
            )
    print("\n| robustness | inputs | p50 ms | p95 | found | distance |\n|---|---|---|---|---|---|")
    for line in robust:
        print(line)
    print(
        "\nvalidity re-checked on the served model (argmax = 'good' with only the answer's changes); ℓ1 in MAD units "
        "per feature (category switch = 1) averaged over 13 features, the same function for every method; "
        f"DiCE gradient on the first {len(dice_rows['gradient'].ms)} inputs only (--dice-gradient-n); "
        f"DiCE post-hoc sparsity: {args.dice_sparsity}."
    )


if __name__ == "__main__":
    asyncio.run(main())
