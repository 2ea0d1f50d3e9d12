"""Every long attribution method stops between model passes once its request is cancelled.

The model below cancels the request during the first pass of the method's main work (the
first evaluation of more rows than the instance and the 100-row background) and counts
the rows it is asked for afterwards. Each method gets a budget of many passes, so one
that only looked at its context before its main work (as SmoothGrad and expected
gradients once did) would go on evaluating; one that checks between passes evaluates
nothing more and raises `Cancelled`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from desiderata.explainers.background import Background
from desiderata.explainers.base import Cancelled, ExplainContext, target_gradients
from desiderata.explainers.gradients import MAX_ROWS_PER_PASS, ExpectedGradients, SmoothGrad
from desiderata.explainers.kernel_shap import KernelShap
from desiderata.explainers.lime import Lime
from desiderata.explainers.shapley_exact import ExactShapley
from desiderata.explainers.shapley_permutation import PermutationShapley
from desiderata.explainers.types import AttributionParams
from tests.unit.explainers.attribution_models import TorchModel, instance


class CancelsOnFirstPass:
    """Delegates to a model; sets `ctx.cancel` during its first evaluation of more than
    `FIRST_PASS_ROWS` rows, then counts the rows of every evaluation after it."""

    def __init__(self, inner: TorchModel, ctx: ExplainContext) -> None:
        self.inner, self.ctx = inner, ctx
        self.rows_after_cancel = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _seen(self, rows: int) -> None:
        if self.ctx.cancel.is_set():
            self.rows_after_cancel += rows
        elif rows >= FIRST_PASS_ROWS:
            self.ctx.cancel.set()

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        self._seen(np.atleast_2d(x).shape[0])
        return self.inner.predict_proba(x)

    def target_gradients(self, rows: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._seen(rows.shape[0])
        return target_gradients(self.inner, rows, target)


FIRST_PASS_ROWS = 102
CASES = {
    "permutation_shapley": (PermutationShapley, {"target_std_error": 1e-9, "max_samples": 4_000_000}),
    "kernel_shap": (KernelShap, {"max_samples": 1_000_000}),
    "lime": (Lime, {"max_samples": 1_000_000}),
    "exact_shapley": (ExactShapley, {}),
    "smoothgrad": (SmoothGrad, {"max_samples": 8 * MAX_ROWS_PER_PASS}),
    "expected_gradients": (ExpectedGradients, {"steps": 4096}),  # 100 rows x 4,096 steps: 25 passes
}


@pytest.mark.parametrize("method", sorted(CASES))
def test_a_cancelled_request_stops_between_passes(mlp_model: TorchModel, method: str) -> None:
    cls, params = CASES[method]
    ctx = ExplainContext(seed=1)
    model = CancelsOnFirstPass(mlp_model, ctx)
    ref = mlp_model.reference()
    assert ref is not None
    background = Background.of(ref.x[:100])
    with pytest.raises(Cancelled):
        cls().explain_with_background(
            model, instance(mlp_model, 0), AttributionParams(target_class=1, **params), ctx, background
        )
    assert ctx.cancel.is_set() and model.rows_after_cancel == 0
