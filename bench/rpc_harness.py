"""What the gRPC benchmarks share: benchmark model folders, timing loops, the echo
peer and the server-side probes (model time, fused-evaluation throughput, RSS).

Run nothing by itself; `bench/attribution_grpc.py` drives it.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np
import yaml

from desiderata.client import AsyncClient
from desiderata.client._requests import Requests
from desiderata.policy.model import Principal
from desiderata.server.answer_cache import AnswerCache
from desiderata.server.artifact import export_probability_module
from desiderata.server.grpc import convert
from desiderata.server.grpc.app import App, build_server
from desiderata.server.served import ExplainCall
from desiderata.v1 import types_pb2 as pb
from tests.integration.conftest import settings_for
from tests.unit.explainers.attribution_models import TorchModel

Row = dict[str, float]


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


IG_PARAMS: dict[str, object] = {"steps": 50, "integration_rule": "gauss_legendre", "baseline": "zero"}
"""The benchmark's Integrated Gradients: 50 Gauss–Legendre steps from a zero baseline."""


def explain_call(x: np.ndarray, *, model: str, method: str, seed: int = 0, **kw: object) -> ExplainCall:
    """The pipeline's form of a debugging request for the class "yes" (IG_PARAMS when no `kw`)."""
    extra = kw or (IG_PARAMS if method == "integrated_gradients" else {})
    params = Requests.attribution_params(method=method, target_class="yes", seed=seed, **extra)
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


async def pipeline_p50(app: App, xs: np.ndarray, *, model: str, method: str, **kw: object) -> tuple[float, float]:
    """p50 ms of the server's whole pipeline in process (resolve, policy, admission, the
    explainer, disclosure, ledger and audit; one worker hand-off), no RPC, and p50 of the
    explainer's own `compute_ms` in the same calls: the rows and seeds of `p50_rpc`, so the
    same work, with the answer cache off (the RPC calls filled it)."""
    principal = Principal(id="bench", role="ml_engineer")
    times, computes = [], []
    cache, app.pipeline.answers = app.pipeline.answers, AnswerCache(0, 0.0)
    try:
        for i, x in enumerate(xs):
            call = explain_call(x, model=model, method=method, seed=i, **kw)
            t = time.perf_counter()
            served = await app.pipeline.explain(principal, call, None)
            times.append((time.perf_counter() - t) * 1e3)
            computes.append(served.explanation.quality.compute_ms)
    finally:
        app.pipeline.answers = cache
    return statistics.median(times), statistics.median(computes)


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
