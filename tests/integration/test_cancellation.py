"""A caller that goes away stops the work done for it (issue 3, throughput: "cancellation
stops its work"): the model stops being evaluated for that call within moments, its
worker is free for the next caller, and nothing is served or charged for it.

The server runs one worker, and the cancelled call asks for far more work (up to 50
million model rows at an unreachable target error) than the test waits for, so a call
whose work went on would keep the row counter moving and hold the only worker.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from desiderata.client import AsyncClient, Client, DesiderataRpcError
from desiderata.client._requests import Requests
from desiderata.server.demo_data import read_credit_csv
from desiderata.server.grpc.app import build_server
from desiderata.server.model_handle import ModelHandle
from tests.integration.conftest import Running, serving, settings_for

CREDIT = read_credit_csv().rows[0]
ENDLESS = {"method": "permutation_shapley", "target_std_error": 1e-9, "max_samples": 50_000_000}


class RowCounter:
    """Counts the rows a served model evaluates, whatever thread evaluates them."""

    def __init__(self, handle: ModelHandle) -> None:
        self.rows = 0
        self._lock = threading.Lock()
        inner: Callable[[np.ndarray], np.ndarray] = handle.predict_proba

        def counted(x: np.ndarray) -> np.ndarray:
            out = inner(x)
            with self._lock:
                self.rows += int(np.atleast_2d(x).shape[0])
            return out

        handle.predict_proba = counted  # type: ignore[method-assign]

    async def until_started(self, rows: int = 5_000, timeout_s: float = 20.0) -> int:
        """Waits until the explainer is sampling (`rows` more rows than now were evaluated)."""
        start = self.rows
        limit = time.monotonic() + timeout_s
        while self.rows < start + rows:
            assert time.monotonic() < limit, "the long call never reached the model"
            await asyncio.sleep(0.01)
        return self.rows

    async def until_still(self, window_s: float = 0.3, timeout_s: float = 5.0) -> int:
        """The count once it has not moved for `window_s`; fails if it keeps moving."""
        limit = time.monotonic() + timeout_s
        last = self.rows
        while True:
            await asyncio.sleep(window_s)
            if self.rows == last:
                return last
            assert time.monotonic() < limit, f"model rows still growing {timeout_s} s after the caller left"
            last = self.rows


@pytest.fixture
async def one_worker(tmp_path: Path) -> AsyncIterator[Running]:
    settings = settings_for(
        None,
        tmp_path,
        server={"port": 0, "workers": 1},
        explain={"max_samples": 50_000_000},
    )
    async with serving(settings) as running:
        yield running


def _audited(running: Running) -> int:
    return sum(1 for _ in running.app.pipeline.audit.iter_all())


async def _next_call_is_served(running: Running, client: AsyncClient, counter: RowCounter) -> None:
    """After the caller left: the rows stop, nothing was audited as served, and the only
    worker answers the next call with exactly that call's rows."""
    stopped = await counter.until_still()
    assert _audited(running) == 0
    ex = await client.explain(
        "credit",
        CREDIT,
        purpose="debugging",
        timeout_s=10,
        params=Requests.attribution_params(method="permutation_shapley", seed=1, max_samples=20_000),
    )
    assert len(ex.feature_attribution.attributions) == len(CREDIT)
    assert _audited(running) == 1
    served = await counter.until_still()
    # The new call's rows, and the pipeline's and the explainer's predictions of the instance:
    # nothing was added for the call that left.
    assert ex.quality.model_evaluations <= served - stopped <= ex.quality.model_evaluations + 2


async def test_a_cancelled_explain_stops_evaluating_and_frees_its_worker(one_worker: Running) -> None:
    counter = RowCounter(one_worker.app.pipeline.models.resolve("credit"))
    async with AsyncClient(one_worker.address, api_key="k-eng", timeout_s=120) as client:
        call = asyncio.ensure_future(
            client.explain("credit", CREDIT, purpose="debugging", params=Requests.attribution_params(seed=3, **ENDLESS))
        )
        await counter.until_started()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await _next_call_is_served(one_worker, client, counter)


async def test_a_stream_the_caller_leaves_stops_evaluating(one_worker: Running) -> None:
    counter = RowCounter(one_worker.app.pipeline.models.resolve("credit"))
    async with AsyncClient(one_worker.address, api_key="k-eng", timeout_s=120) as client:
        stream = client.explain_stream(
            "credit", CREDIT, purpose="debugging", params=Requests.attribution_params(seed=4, **ENDLESS)
        )
        first = await anext(aiter(stream))
        assert not first.final and first.explanation.quality.relative_std_error > 1e-9
        await stream.aclose()  # type: ignore[attr-defined]
        await _next_call_is_served(one_worker, client, counter)


async def test_breaking_out_of_the_sync_clients_stream_stops_evaluating(one_worker: Running) -> None:
    counter = RowCounter(one_worker.app.pipeline.models.resolve("credit"))
    # Kept open until the end: closing the channel would cancel the call whatever the stream did.
    sync_client = Client(one_worker.address, api_key="k-eng", timeout_s=120)

    def read_one() -> None:  # the blocking client runs on a thread: the server shares this event loop
        params = Requests.attribution_params(seed=5, **ENDLESS)
        for response in sync_client.explain_stream("credit", CREDIT, purpose="debugging", params=params):
            assert not response.final
            break

    try:
        await asyncio.to_thread(read_one)
        async with AsyncClient(one_worker.address, api_key="k-eng", timeout_s=120) as client:
            await _next_call_is_served(one_worker, client, counter)
    finally:
        sync_client.close()


async def test_stopping_the_server_ends_the_work_of_calls_still_running(tmp_path: Path) -> None:
    """`App.stop` returns once the workers are joined: it must cancel their work first, or a
    stop would wait for every running explanation to run to its end (here 50 million rows)."""
    app = build_server(
        settings_for(None, tmp_path, server={"port": 0, "workers": 1}, explain={"max_samples": 50_000_000})
    )
    await app.start()
    counter = RowCounter(app.pipeline.models.resolve("credit"))
    async with AsyncClient(app.address, api_key="k-eng", timeout_s=120) as client:
        call = asyncio.ensure_future(
            client.explain("credit", CREDIT, purpose="debugging", params=Requests.attribution_params(seed=6, **ENDLESS))
        )
        await counter.until_started()
        await app.stop(0.1)
        with pytest.raises(DesiderataRpcError) as info:
            await call
    assert info.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert counter.rows < 10_000_000, f"{counter.rows:,} rows: the stop waited for the work to finish"
