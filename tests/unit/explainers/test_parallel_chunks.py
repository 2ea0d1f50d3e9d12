"""Sampling and coalition methods give the same answer whether a served model's chunks run on
the caller alone or spread over helper threads (chunks are independent and joined in order)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from desiderata.explainers._attribution import AttributionExplainer, AttributionLimits
from desiderata.explainers.background import summarize
from desiderata.explainers.base import ExplainContext
from desiderata.explainers.kernel_shap import KernelShap
from desiderata.explainers.lime import Lime
from desiderata.explainers.shapley_exact import ExactShapley
from desiderata.explainers.shapley_permutation import PermutationShapley
from desiderata.explainers.types import AttributionParams, AttributionResult
from desiderata.server.chunk_runner import SEQUENTIAL, ChunkRunner
from desiderata.server.model_handle import ModelHandle, load_model
from tests.support.tiny_model import INSTANCE

# 256-row batches: exact Shapley's 16 coalitions × 100 background rows become 8 chunks,
# and permutation walks of 3 steps become chunks of 42 pairs.
LIMITS = AttributionLimits(batch_rows=256)


def _record_threads(handle: ModelHandle, threads: set[str]) -> None:
    predict = handle.predict_proba

    def slow_predict(rows: np.ndarray) -> np.ndarray:
        threads.add(threading.current_thread().name)
        time.sleep(0.002)  # the caller cannot drain every chunk before a helper starts
        return predict(rows)

    handle.predict_proba = slow_predict  # type: ignore[method-assign]


@pytest.mark.parametrize(
    ("method", "params"),
    [
        (ExactShapley, AttributionParams(target_class=1)),
        (PermutationShapley, AttributionParams(target_class=1, target_std_error=0.01)),
        (KernelShap, AttributionParams(target_class=1, max_samples=40_000)),
        (Lime, AttributionParams(target_class=1, max_samples=2_000)),
        (ExactShapley, AttributionParams(target_class=1, quality_metrics=["infidelity"])),
    ],
)
def test_helper_threads_change_nothing(
    tiny_repo: Path, method: type[AttributionExplainer], params: AttributionParams
) -> None:
    runner = ChunkRunner(2)
    threads: set[str] = set()
    try:
        answers = []
        for r in (SEQUENTIAL, runner):
            handle = load_model(tiny_repo / "tiny", runner=r)
            if r is runner:
                _record_threads(handle, threads)
            x = handle.schema.encode(INSTANCE)
            bg = summarize(handle, LIMITS.background_size)
            e = method(LIMITS).explain_with_background(handle, x, params, ExplainContext(seed=5), bg)
            assert isinstance(e.result, AttributionResult)
            answers.append((e.result.values, e.quality.model_evaluations, e.quality.infidelity))
        (seq, seq_rows, seq_inf), (par, par_rows, par_inf) = answers
        assert np.array_equal(seq, par) and seq_rows == par_rows and seq_inf == par_inf
        assert seq_rows > 4 * LIMITS.batch_rows  # several chunks did run
        assert any(t.startswith("desiderata-chunks") for t in threads), threads
    finally:
        runner.shutdown()
