"""End-to-end attribution benchmark over gRPC on loopback, peers in process (run on demand).

    python bench/attribution_grpc.py [--rows 200] [--peer-rows 50] [--err-rows 10] [--requests 10000]

Starts the real server in this process on port 0 over a model folder built for
the benchmark (MLPs 10→64→64→1, 30→64→64→1 and 100→256→256→1 with a two-class
sigmoid head, exported with torch.export, a card, and a 100-row reference that
the server summarises into the same 100-row background the peers get), then
measures, p50 over distinct rows, each figure beside its in-process peer:

- Shapley at ≤ 2% relative L1 error (permutation_shapley with a target std
  error) vs shap PermutationExplainer and KernelExplainer(l1_reg=False);
  errors against a 2,000-permutation reference computed independently
  (itself ~0.75% off, which the shown error includes; the default target
  0.022 lands it under 2%), and the share of wall time spent in the model;
- exact Shapley at d = 10 vs shap ExactExplainer;
- Integrated Gradients (50 steps, Gauss–Legendre, zero baseline) vs captum;
- IG calls/s with 16 concurrent clients vs a bare gRPC echo server; beside
  it the floor of this stack (the same RPC answered from a finished
  explanation: SDK, authentication and conversion, no pipeline) in ms and
  calls/s with the echo's p50, and IG calls/s of a second server that fuses
  concurrent model evaluations (`models.fuse_rows`, 4 workers) with its calls
  per fused batch;
- resident memory over `--requests` IG requests (distinct rows and seeds, so
  the answer cache is exercised past its bound).

Peers are timed in process, without any RPC; ours include the round trip,
authentication, policy, privacy admission, audit and disclosure.
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
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np
import structlog
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.attribution_inprocess import mlp, reference_phi
from desiderata.client import AsyncClient
from desiderata.client._requests import Requests
from desiderata.explainers.background import Background, summarize
from desiderata.policy.model import Principal
from desiderata.server.artifact import export_probability_module
from desiderata.server.grpc import convert
from desiderata.server.grpc.app import App, build_server
from desiderata.server.served import ExplainCall, ServedExplanation
from desiderata.v1 import explanation_service_pb2 as es
from desiderata.v1 import types_pb2 as pb
from tests.integration.conftest import settings_for
from tests.unit.explainers.attribution_models import TorchModel

warnings.filterwarnings("ignore")
Row = dict[str, float]
TABLE: list[tuple[str, str, str, str]] = []


def write_model(root: Path, name: str, model: TorchModel, ref_x: np.ndarray) -> None:
    d = ref_x.shape[1]
    folder = root / name
    folder.mkdir(parents=True)
    export_probability_module(model._module, n_columns=d, path=folder / "model.pt2")
    y = model.predict_proba(ref_x).argmax(1).astype(np.int64)
    np.savez_compressed(folder / "reference.npz", x=ref_x, y=y, ids=np.array([f"r{i}" for i in range(len(ref_x))]))
    card = {
        "name": name,
        "version": "1",
        "description": f"benchmark MLP over {d} numeric features",
        "domain": "bench",
        "class_names": ["no", "yes"],
        "positive_class": "yes",
        "features": [{"name": f"x{i}", "type": "number"} for i in range(d)],
        "training_data": {"name": "bench", "rows": len(ref_x), "path": "reference.npz"},
    }
    (folder / "card.yaml").write_text(yaml.safe_dump(card, sort_keys=False))


def row(x: np.ndarray) -> Row:
    return {f"x{i}": float(v) for i, v in enumerate(x)}


def values(ex: object, d: int) -> np.ndarray:
    out = np.zeros(d)
    for a in ex.feature_attribution.attributions:  # type: ignore[attr-defined]
        out[int(a.feature[1:])] = a.value
    return out


def rel_err(phi: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(phi - ref).sum() / np.abs(ref).sum())


def p50_sync(fn: Callable[[np.ndarray], np.ndarray], xs: np.ndarray) -> tuple[float, list[np.ndarray]]:
    fn(xs[0])
    times, outs = [], []
    for x in xs:
        t = time.perf_counter()
        outs.append(fn(x))
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), outs


async def p50_rpc(fn: Callable[[np.ndarray, int], Awaitable[object]], xs: np.ndarray) -> tuple[float, list[object]]:
    await fn(xs[0], 10**6)
    times, outs = [], []
    for i, x in enumerate(xs):
        t = time.perf_counter()
        outs.append(await fn(x, i))
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), outs


def record(what: str, ours: str, peer: str, ratio: str) -> None:
    TABLE.append((what, ours, peer, ratio))
    print(f"  {what:<44s} {ours:>28s} {peer:>36s} {ratio:>8s}", flush=True)


async def echo_server() -> tuple[grpc.aio.Server, str]:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler("bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def closed_loop(call: Callable[[int], Awaitable[object]], clients: int, total: int) -> float:
    """Calls/s of `clients` concurrent callers making `total` calls in all."""
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            await call(i)

    t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return total / (time.perf_counter() - t)


def timed_model(handle: object) -> Callable[[], float]:
    """Times every `predict_proba` call of a served model; returns the reader of the wall
    time during which at least one call was running (calls on the worker, helper and
    chunk threads overlap, and overlapping time is counted once)."""
    intervals: list[tuple[float, float]] = []
    method = handle.predict_proba  # type: ignore[attr-defined]

    def predict_proba(x: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        try:
            return method(x)  # type: ignore[no-any-return]
        finally:
            intervals.append((t, time.perf_counter()))  # list.append is atomic under the GIL

    def covered() -> float:
        total, end = 0.0, float("-inf")
        for a, b in sorted(intervals):
            if b > end:
                total += b - max(a, end)
                end = b
        return total

    handle.predict_proba = predict_proba  # type: ignore[attr-defined]
    return covered


def explain_call(x: np.ndarray, *, model: str, method: str) -> ExplainCall:
    """The pipeline's form of an IG request (50 Gauss–Legendre steps, zero baseline)."""
    params = Requests.attribution_params(
        method=method, target_class="yes", steps=50, integration_rule="gauss_legendre", baseline="zero"
    )
    return convert.explain_call(
        kind=pb.EXPLANATION_KIND_FEATURE_ATTRIBUTION,
        purpose="debugging",
        consumption=pb.CONSUMPTION_STATIC,
        params=params,
        locale="",
        model=model,
        model_version="",
        instance=pb.Instance(features=[pb.Feature(name=k, value=pb.FeatureValue(number=v)) for k, v in row(x).items()]),
    )


async def fused_throughput(root: Path, clients: int, n_calls: int, pool: np.ndarray) -> tuple[float, float]:
    """IG calls/s of a second server whose models fuse concurrent evaluations (fuse_rows 1024,
    4 workers), and the calls per fused batch."""
    settings = settings_for(
        root / "models",
        root / "state-fused",
        models={"fuse_rows": 1024, "precompute": False},
        server={"port": 0, "workers": 4, "max_receive_message_bytes": 64 * 1024},
    )
    app = build_server(settings)
    await app.start()
    handle = app.pipeline.models.resolve("mlp30")
    async with AsyncClient(app.address, api_key="k-eng", timeout_s=60) as client:

        async def call(i: int) -> object:
            params = Requests.attribution_params(
                method="integrated_gradients",
                target_class="yes",
                seed=i,
                steps=50,
                integration_rule="gauss_legendre",
                baseline="zero",
            )
            return await client.explain("mlp30", row(pool[i % len(pool)]), purpose="debugging", params=params)

        await closed_loop(call, clients, 200)
        calls0, batches0 = handle.fusion_stats
        cps = await closed_loop(call, clients, n_calls)
        calls1, batches1 = handle.fusion_stats
    await app.stop(0.5)
    return cps, (calls1 - calls0) / max(batches1 - batches0, 1)


def rss_mb() -> tuple[float, float]:
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return float(status["VmRSS"].split()[0]) / 1024, float(status["VmHWM"].split()[0]) / 1024


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200, help="rows timed over gRPC (p50)")
    ap.add_argument("--shapley-rows", type=int, default=50, help="rows timed for Shapley at 2%% (slow peers)")
    ap.add_argument("--peer-rows", type=int, default=20, help="rows timed for shap Kernel and Exact")
    ap.add_argument("--err-rows", type=int, default=10, help="rows with a 2,000-permutation reference")
    ap.add_argument(
        "--target-se",
        type=float,
        default=0.022,
        help="permutation_shapley target_std_error (0.022: error about 1.85%%, the reference's own ~0.75%% included)",
    )
    ap.add_argument("--requests", type=int, default=10_000, help="IG requests for the memory figure")
    ap.add_argument("--clients", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    logging.disable(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    import shap
    from captum.attr import IntegratedGradients as CaptumIG

    models = {d: mlp(d, 64 if d <= 30 else 256, d) for d in (10, 30, 100)}
    pools = {d: m.reference().x for d, m in models.items()}  # type: ignore[union-attr]
    root = Path(tempfile.mkdtemp(prefix="desiderata-bench-"))
    for d, m in models.items():
        write_model(root / "models", f"mlp{d}", m, pools[d][:100])
    app: App = build_server(settings_for(root / "models", root / "state"))
    await app.start()
    rows_of = {d: pools[d][200 : 200 + max(args.rows, args.requests // 10)] for d in models}
    backgrounds: dict[int, Background] = {}
    for d in models:
        bg = summarize(app.pipeline.models.resolve(f"mlp{d}"), app.pipeline.settings.background_size)
        assert bg.x.shape == (100, d) and np.allclose(bg.weights, 0.01), "server background is not the 100 rows"
        backgrounds[d] = bg
    print(f"\nserver on {app.address}; torch threads 1; {args.rows} rows over gRPC, peers in process\n")
    print(f"  {'figure (p50)':<44s} {'desiderata over gRPC':>28s} {'peer in process':>36s} {'speed-up':>8s}")

    async with AsyncClient(app.address, api_key="k-eng", timeout_s=60) as client:

        def explain(d: int, method: str, **kw: object) -> Callable[[np.ndarray, int], Awaitable[object]]:
            def call(x: np.ndarray, seed: int) -> Awaitable[object]:
                params = Requests.attribution_params(method=method, target_class="yes", seed=seed, **kw)
                return client.explain(f"mlp{d}", row(x), purpose="debugging", params=params)

            return call

        # ---------------------------------------------------------------- Shapley at ≤ 2%, d = 30
        d, model, bg = 30, models[30], backgrounds[30]
        xs = rows_of[d][: args.shapley_rows]
        handle = app.pipeline.models.resolve(f"mlp{d}")
        in_model = timed_model(handle)
        started = time.perf_counter()
        ms, outs = await p50_rpc(explain(d, "permutation_shapley", target_std_error=args.target_se), xs)
        model_share = in_model() / (time.perf_counter() - started)
        del handle.predict_proba  # back to the class's method
        refs = [reference_phi(model, x, bg) for x in xs[: args.err_rows]]
        err = statistics.mean(rel_err(values(o, d), r) for o, r in zip(outs, refs, strict=False))
        evals = statistics.median(o.quality.model_evaluations for o in outs)  # type: ignore[attr-defined]
        compute = statistics.median(o.quality.compute_ms for o in outs)  # type: ignore[attr-defined]
        ours = f"{ms:6.1f} ms @ {100 * err:4.2f}%"
        f1 = lambda z: model.predict_proba(z)[:, 1]  # noqa: E731
        pe = shap.PermutationExplainer(f1, shap.maskers.Independent(bg.x, max_samples=100))
        pe_evals = 80 * (2 * d + 1)
        pms, pouts = p50_sync(lambda x: pe(x[None], max_evals=pe_evals, silent=True).values[0], xs)
        perr = statistics.mean(rel_err(o, r) for o, r in zip(pouts, refs, strict=False))
        record("Shapley ≤2% d=30 vs shap Permutation", ours, f"{pms:6.1f} ms @ {100 * perr:4.2f}%", f"{pms / ms:.2f}×")
        ke = shap.KernelExplainer(f1, bg.x)
        kms, kouts = p50_sync(
            lambda x: ke.shap_values(x[None], nsamples=4000, l1_reg=False, silent=True)[0], xs[: args.peer_rows]
        )
        kerr = statistics.mean(rel_err(o, r) for o, r in zip(kouts, refs, strict=False))
        record(
            "Shapley ≤2% d=30 vs shap Kernel(l1_reg=False)",
            ours,
            f"{kms:6.1f} ms @ {100 * kerr:4.2f}%",
            f"{kms / ms:.2f}×",
        )
        print(
            f"    (ours: median {evals:,.0f} model rows, explainer {compute:.1f} ms of {ms:.1f} ms wall = "
            f"{100 * compute / ms:.0f}%, in the model {100 * model_share:.0f}% of all wall; "
            f"shap Kernel over {min(args.peer_rows, len(xs))} rows)"
        )

        # ---------------------------------------------------------------- exact Shapley, d = 10
        d, model, bg = 10, models[10], backgrounds[10]
        xs = rows_of[d][: args.rows]
        ms, outs = await p50_rpc(explain(d, "exact_shapley"), xs)
        ex = shap.ExactExplainer(
            lambda z: model.predict_proba(z)[:, 1], shap.maskers.Independent(bg.x, max_samples=100)
        )
        pms, pouts = p50_sync(lambda x: ex(x[None]).values[0], xs[: args.peer_rows])
        gap = max(float(np.abs(values(o, d) - p).max()) for o, p in zip(outs, pouts, strict=False))
        record(
            "exact Shapley d=10 vs shap ExactExplainer",
            f"{ms:6.1f} ms",
            f"{pms:6.1f} ms (max |Δ| {gap:.1e})",
            f"{pms / ms:.2f}×",
        )

        # ---------------------------------------------------------------- IG 50 steps, d = 30
        d, model = 30, models[30]
        xs = rows_of[d][: args.rows]
        ig = explain(d, "integrated_gradients", steps=50, integration_rule="gauss_legendre", baseline="zero")
        ms, outs = await p50_rpc(ig, xs)
        cig = CaptumIG(model.torch_module())

        def c_ig(x: np.ndarray) -> np.ndarray:
            xt = torch.tensor(x[None], dtype=torch.float32)
            return cig.attribute(xt, target=1, n_steps=50, method="gausslegendre")[0].detach().double().numpy()

        pms, pouts = p50_sync(c_ig, xs)
        rel = max(rel_err(values(o, d), p) for o, p in zip(outs, pouts, strict=True))
        evals = statistics.median(o.quality.model_evaluations for o in outs)  # type: ignore[attr-defined]
        record(
            "IG 50 steps d=30 vs captum", f"{ms:6.2f} ms", f"{pms:6.2f} ms (max rel Δ {rel:.1e})", f"{pms / ms:.2f}×"
        )
        print(f"    (ours: median {evals:.0f} model rows per answer)")

        # ---------------------------------------------------------------- throughput, 16 clients
        pool = rows_of[d]
        n_calls = max(2000, 10 * args.clients)

        async def ig_call(i: int) -> object:
            return await ig(pool[i % len(pool)], i)

        await closed_loop(ig_call, args.clients, 200)
        ours_cps = await closed_loop(ig_call, args.clients, n_calls)
        server, address = await echo_server()
        payload = es.ExplainRequest(
            model="mlp30",
            purpose="debugging",
            params=Requests.attribution_params(method="integrated_gradients", steps=50),
        ).SerializeToString() + bytes(600)
        async with grpc.aio.insecure_channel(address) as channel:
            echo = channel.unary_unary("/bench.Echo/Echo")

            async def echo_call(i: int) -> object:
                return await echo(payload)

            await closed_loop(echo_call, args.clients, 200)
            echo_cps = await closed_loop(echo_call, args.clients, n_calls)
            echo_ms, _ = await p50_rpc(lambda x, i: echo_call(i), xs)
        await server.stop(None)
        record(
            f"IG calls/s, {args.clients} clients vs bare echo",
            f"{ours_cps:8.0f} /s",
            f"{echo_cps:8.0f} /s",
            f"{100 * ours_cps / echo_cps:.0f}%",
        )
        # The floor of this stack: the same RPC (SDK, auth, conversion both ways) answered from
        # a finished explanation, with no pipeline work; and the bare echo round trip.
        served = await app.pipeline.explain(
            Principal(id="bench", role="ml_engineer"),
            explain_call(xs[0], model="mlp30", method="integrated_gradients"),
            None,
        )

        async def canned(*_: object, **__: object) -> ServedExplanation:
            return served

        app.pipeline.explain = canned  # type: ignore[method-assign]
        floor_ms, _ = await p50_rpc(ig, xs)
        await closed_loop(ig_call, args.clients, 200)
        floor_cps = await closed_loop(ig_call, args.clients, n_calls)
        del app.pipeline.explain
        record(
            "  floor: same RPC, answer precomputed",
            f"{floor_ms:6.2f} ms, {floor_cps:5.0f} /s",
            f"echo {echo_ms:6.2f} ms",
            "",
        )
        fused_cps, per_batch = await fused_throughput(root, args.clients, n_calls, pool)
        record(
            "  IG calls/s, fused evaluations (4 workers)",
            f"{fused_cps:8.0f} /s",
            f"unfused {ours_cps:8.0f} /s",
            f"{per_batch:.2f}/batch",
        )

        # ---------------------------------------------------------------- memory over many requests
        marks: list[tuple[int, float]] = []
        done = 0
        step = max(args.requests // 10, 1)
        while done < args.requests:
            n = min(step, args.requests - done)
            await closed_loop(lambda i, base=done: ig_call(base + i), args.clients, n)
            done += n
            marks.append((done, rss_mb()[0]))
        first_rss, last_rss = marks[0][1], marks[-1][1]
        peak = rss_mb()[1]
        cache = app.pipeline.answers
        record(
            f"RSS over {args.requests:,} IG requests",
            f"{first_rss:.0f} → {last_rss:.0f} MB",
            f"peak {peak:.0f} MB; cache {len(cache)}/{cache.size}",
            f"{(last_rss - first_rss) * 1024 / max(args.requests - marks[0][0], 1):+.2f}KB/req",
        )
    await app.stop(0.5)
    print("\n| figure (p50) | desiderata over gRPC | peer in process | ratio |\n|---|---|---|---|")
    for what, ours, peer, ratio in TABLE:
        print(f"| {what} | {ours.strip()} | {peer.strip()} | {ratio} |")


if __name__ == "__main__":
    asyncio.run(main())
