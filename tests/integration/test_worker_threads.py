"""The server's worker threads run models with the configured torch thread count
(`models.torch_threads`), not OpenMP's one-thread-per-core default (see
`desiderata.explainers.torch_threads`)."""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import pytest
import torch

from tests.integration.conftest import serving, settings_for

try:
    _omp = ctypes.CDLL(None).omp_get_max_threads
except AttributeError:  # a torch build without OpenMP
    pytest.skip("this torch build does not use OpenMP", allow_module_level=True)
_omp.restype = ctypes.c_int


def _default() -> int:
    out: list[int] = []
    thread = threading.Thread(target=lambda: out.append(int(_omp())))
    thread.start()
    thread.join()
    return out[0]


async def test_worker_threads_use_the_configured_count(tiny_repo: Path, tmp_path: Path) -> None:
    configured = _default() + 1  # differs from what a thread gets unless it adopts the setting
    before = torch.get_num_threads()
    try:
        async with serving(settings_for(tiny_repo, tmp_path, models={"torch_threads": configured})) as running:
            pipeline = running.app.pipeline
            seen = {await pipeline.off_loop(lambda: int(_omp()), None) for _ in range(4)}
    finally:
        torch.set_num_threads(before)
    assert seen == {configured}
