"""Fused evaluations give every caller what it would get alone, and do fuse."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from desiderata.server.batch_fusion import FusedEvaluation
from desiderata.server.demo_data import CREDIT_MODEL_DIR
from desiderata.server.model_handle import load_model


def _affine(rows: torch.Tensor, tags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return rows * 2.0 + tags[:, None].to(rows.dtype), rows.sum(1)


def _gated(evaluate, gate: threading.Event, started: threading.Event):  # type: ignore[no-untyped-def]
    """`evaluate` whose first evaluation waits for `gate`, so that other calls queue behind it."""
    first = [True]

    def run(rows: torch.Tensor, tags: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if first[0]:
            first[0] = False
            started.set()
            assert gate.wait(10)
        return evaluate(rows, tags)  # type: ignore[no-any-return]

    return run


def _queue_behind_a_busy_leader(fused, gate, started, calls):  # type: ignore[no-untyped-def]
    """Starts a one-row leader, then `calls` (callables) while it is held; returns the pool and futures."""
    pool = ThreadPoolExecutor(len(calls) + 1)
    leader = pool.submit(fused, torch.zeros(1, 3), torch.zeros(1, dtype=torch.int64))
    assert started.wait(10)
    futures = [pool.submit(c) for c in calls]
    waited = 0
    while len(fused._queue) < len(calls) and waited < 10_000:  # every call queued (at most 10 s)
        time.sleep(0.001)
        waited += 1
    assert len(fused._queue) == len(calls)
    gate.set()
    return pool, leader, futures


def test_calls_queued_behind_a_busy_model_share_one_batch() -> None:
    gate, started = threading.Event(), threading.Event()
    fused = FusedEvaluation(_gated(_affine, gate, started), max_rows=64)
    rng = np.random.default_rng(0)
    inputs = [
        (torch.tensor(rng.normal(size=(n, 3)), dtype=torch.float32), torch.full((n,), i, dtype=torch.int64))
        for i, n in enumerate([1, 5, 2, 7, 3])
    ]
    pool, leader, futures = _queue_behind_a_busy_leader(fused, gate, started, [lambda a=a: fused(*a) for a in inputs])
    leader.result(10)
    for (rows, tags), f in zip(inputs, futures, strict=True):
        out, sums = f.result(10)
        alone, alone_sums = _affine(rows, tags)
        torch.testing.assert_close(out, alone)
        torch.testing.assert_close(sums, alone_sums)
    pool.shutdown()
    assert fused.calls == 6 and fused.batches == 2  # the leader alone, then the five queued together


def test_a_batch_never_exceeds_max_rows_and_big_calls_run_alone() -> None:
    gate, started = threading.Event(), threading.Event()
    sizes: list[int] = []

    def record(rows: torch.Tensor, tags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sizes.append(rows.shape[0])
        return _affine(rows, tags)

    fused = FusedEvaluation(_gated(record, gate, started), max_rows=8)
    calls = [lambda n=n: fused(torch.ones(n, 3), torch.zeros(n, dtype=torch.int64)) for n in (5, 3, 4, 6)]
    pool, leader, futures = _queue_behind_a_busy_leader(fused, gate, started, calls)
    for f, n in zip(futures, (5, 3, 4, 6), strict=True):
        assert f.result(10)[0].shape == (n, 3)
    leader.result(10)
    pool.shutdown()
    assert sizes[0] == 1 and max(sizes) <= 8 and sum(sizes) == 1 + 5 + 3 + 4 + 6
    assert fused(torch.ones(20, 3), torch.zeros(20, dtype=torch.int64))[0].shape == (20, 3)  # above max_rows
    assert sizes[-1] == 20


def test_one_calls_failure_is_not_its_batch_neighbours() -> None:
    gate, started = threading.Event(), threading.Event()

    def picky(rows: torch.Tensor, tags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if bool((tags == 13).any()):
            raise ValueError("tag 13")
        return _affine(rows, tags)

    fused = FusedEvaluation(_gated(picky, gate, started), max_rows=64)
    tags = (1, 13, 2)
    calls = [lambda t=t: fused(torch.ones(2, 3), torch.full((2,), t, dtype=torch.int64)) for t in tags]
    pool, leader, futures = _queue_behind_a_busy_leader(fused, gate, started, calls)
    leader.result(10)
    assert futures[0].result(10)[0][0, 0].item() == 3.0 and futures[2].result(10)[0][0, 0].item() == 4.0
    with pytest.raises(ValueError, match="tag 13"):
        futures[1].result(10)
    pool.shutdown()
    assert fused(torch.ones(1, 3), torch.zeros(1, dtype=torch.int64))[0].shape == (1, 3)  # still serving


def test_served_model_fuses_predictions_and_gradients_without_changing_them() -> None:
    fused, alone = load_model(CREDIT_MODEL_DIR, fuse_rows=1024), load_model(CREDIT_MODEL_DIR)
    rng = np.random.default_rng(1)
    rows = [rng.normal(size=(int(n), 25)) for n in rng.integers(1, 60, size=64)]
    targets = [int(t) for t in rng.integers(0, 2, size=64)]

    def both(i: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        xt = torch.as_tensor(rows[i], dtype=torch.float32)
        return (fused.predict_proba(rows[i]), *fused.target_gradients(xt, targets[i]))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(both, range(64)))
    for i, (probs, grads, outs) in enumerate(results):
        xt = torch.as_tensor(rows[i], dtype=torch.float32)
        ref_grads, ref_outs = alone.target_gradients(xt, targets[i])
        np.testing.assert_allclose(probs, alone.predict_proba(rows[i]), atol=1e-6, rtol=0)
        torch.testing.assert_close(grads, ref_grads, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(outs, ref_outs, atol=1e-6, rtol=0)
    calls, batches = fused.fusion_stats
    assert calls == 2 * 64 + 1  # the loader's probe prediction too
    assert batches <= calls
