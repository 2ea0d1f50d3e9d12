"""Gradient methods against captum and closed forms; LIME's closed form on a linear model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from desiderata.explainers.base import ExplainContext
from desiderata.explainers.gradients import ExpectedGradients, GradientXInput, SmoothGrad, smoothgrad_noise
from desiderata.explainers.integrated_gradients import IntegratedGradients
from desiderata.explainers.lime import Lime
from desiderata.explainers.types import AttributionParams, AttributionResult, Explanation
from desiderata.server.errors import InvalidArgument
from tests.unit.explainers.attribution_models import TorchModel, instance, make_mlp, numeric

captum_attr = pytest.importorskip("captum.attr")


def _values(e: Explanation) -> np.ndarray:
    assert isinstance(e.result, AttributionResult)
    return e.result.values


def test_gradient_x_input_matches_captum(numeric_model: TorchModel) -> None:
    x = instance(numeric_model, 1)
    got = _values(
        GradientXInput().explain(numeric_model, x, AttributionParams(target_class=1), ExplainContext())
    )
    module = numeric_model.torch_module()
    assert module is not None
    theirs = captum_attr.InputXGradient(module).attribute(
        torch.tensor(x[None], dtype=torch.float32).requires_grad_(), target=1
    )
    np.testing.assert_allclose(got, theirs[0].detach().double().numpy(), atol=1e-7)


def test_smoothgrad_matches_captum_on_the_same_noise(mlp_model: TorchModel) -> None:
    x = instance(mlp_model, 2)
    e = SmoothGrad().explain(
        mlp_model, x, AttributionParams(target_class=0, max_samples=40), ExplainContext(seed=3)
    )
    noisy = x[None] + smoothgrad_noise(mlp_model, 40, np.random.default_rng(3))
    module = mlp_model.torch_module()
    assert module is not None
    cols = captum_attr.InputXGradient(module).attribute(
        torch.tensor(noisy, dtype=torch.float32).requires_grad_(), target=0
    )
    cols = cols.detach().double().numpy().mean(axis=0)
    want = np.array([cols[g].sum() for g in mlp_model.schema.groups])
    np.testing.assert_allclose(_values(e), want, atol=1e-7)
    assert isinstance(e.result, AttributionResult) and e.result.std_errors is not None


def test_expected_gradients_matches_captum_ig_averaged(mlp_model: TorchModel, small_background) -> None:
    bg = small_background(mlp_model, 8, 5)
    x = instance(mlp_model, 6)
    params = AttributionParams(target_class=1, steps=32)
    e = ExpectedGradients().explain_with_background(mlp_model, x, params, ExplainContext(), bg)
    module = mlp_model.torch_module()
    assert module is not None
    ig = captum_attr.IntegratedGradients(module)
    xt = torch.tensor(x[None], dtype=torch.float32)
    cols = np.zeros_like(x)
    for row, w in zip(bg.x, bg.weights, strict=True):
        a = ig.attribute(xt, baselines=torch.tensor(row[None], dtype=torch.float32), target=1, n_steps=32)
        cols += w * a[0].detach().double().numpy()
    want = np.array([cols[g].sum() for g in mlp_model.schema.groups])
    np.testing.assert_allclose(_values(e), want, atol=1e-4 * np.abs(want).sum())
    assert e.quality.relative_completeness_gap is not None and e.quality.relative_completeness_gap < 1e-3


def test_linear_closed_forms(linear_model: tuple[TorchModel, np.ndarray], small_background) -> None:
    model, w = linear_model
    bg = small_background(model, 30, 7)
    x = instance(model, 8)
    p = AttributionParams(target_class=1)
    eg = _values(ExpectedGradients().explain_with_background(model, x, p, ExplainContext(), bg))
    np.testing.assert_allclose(eg, w * (x - bg.mean), atol=1e-5)
    ref = model.reference()
    assert ref is not None
    ig = IntegratedGradients().explain(
        model, x, AttributionParams(target_class=1, baseline="mean"), ExplainContext()
    )
    np.testing.assert_allclose(_values(ig), w * (x - ref.x.mean(axis=0)), atol=1e-5)
    gxi = _values(GradientXInput().explain(model, x, p, ExplainContext()))
    np.testing.assert_allclose(gxi, w * x, atol=1e-5)
    for width in (0.5, 3.0):
        lime = Lime().explain_with_background(
            model,
            x,
            AttributionParams(target_class=1, kernel_width=width, max_samples=300 * 30),
            ExplainContext(seed=1),
            bg,
        )
        np.testing.assert_allclose(_values(lime), w * (x - bg.mean), atol=1e-5)


def test_lime_kernel_width_matters_on_a_nonlinear_model(mlp_model: TorchModel, small_background) -> None:
    bg = small_background(mlp_model, 10, 9)
    x = instance(mlp_model, 9)
    narrow, wide = (
        _values(
            Lime().explain_with_background(
                mlp_model, x, AttributionParams(target_class=1, kernel_width=w), ExplainContext(seed=2), bg
            )
        )
        for w in (0.3, 30.0)
    )
    assert np.abs(narrow - wide).sum() > 1e-4 * np.abs(wide).sum()


def test_gradient_methods_refuse_black_box_models() -> None:
    model = TorchModel(make_mlp(3, 4, 0), numeric(3), np.zeros((5, 3)), differentiable=False)
    for method in (GradientXInput, SmoothGrad, IntegratedGradients):
        with pytest.raises(InvalidArgument) as err:
            method().explain(model, np.zeros(3), AttributionParams(), ExplainContext())
        assert err.value.violations[0].field == "params.attribution.method"
