"""Contrastive backgrounds (`AttributionParams.reference_class`): Shapley values against
only the reference rows the model predicts as one class ("compared with applicants who
were approved"), checked against a brute force over those rows selected here; and the
refusals of an unknown class, a class never predicted and a method without a background."""

from __future__ import annotations

import itertools
from math import factorial

import numpy as np
import pytest
import torch

from desiderata.explainers._attribution import AttributionLimits
from desiderata.explainers.background import clear_cache, summarize
from desiderata.explainers.base import ExplainContext
from desiderata.explainers.gradients import GradientXInput
from desiderata.explainers.integrated_gradients import IntegratedGradients
from desiderata.explainers.shapley_exact import ExactShapley
from desiderata.explainers.shapley_permutation import PermutationShapley
from desiderata.explainers.types import AttributionParams, AttributionResult
from desiderata.server.errors import InvalidArgument
from tests.unit.explainers.attribution_models import Identity2, TorchModel, instance, numeric, reference_rows


def _brute_force(model: TorchModel, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Shapley's subset formula over the numeric players, background `rows` equally weighted."""
    d = x.shape[0]

    def v(s: tuple[int, ...]) -> float:
        z = rows.copy()
        z[:, list(s)] = x[list(s)]
        return float(model.predict_proba(z)[:, 1].mean())

    phi = np.zeros(d)
    for i in range(d):
        for k in range(d):
            w = factorial(k) * factorial(d - k - 1) / factorial(d)
            for s in itertools.combinations([j for j in range(d) if j != i], k):
                phi[i] += w * (v(tuple(sorted((*s, i)))) - v(s))
    return phi


def test_shapley_against_the_rows_predicted_as_the_reference_class(numeric_model: TorchModel) -> None:
    clear_cache()
    ref = numeric_model.reference()
    assert ref is not None
    approved = ref.x[numeric_model.predict_proba(ref.x).argmax(axis=1) == 1]
    assert 0 < len(approved) < len(ref.x)
    x = instance(numeric_model, 5)
    # A background as large as the class keeps its rows as they are, so the oracle sees the same ones.
    explainer = ExactShapley(AttributionLimits(background_size=len(approved)))
    params = AttributionParams(target_class=1, reference_class="yes")
    got = explainer.explain(numeric_model, x, params, ExplainContext()).result
    assert isinstance(got, AttributionResult)
    np.testing.assert_allclose(got.values, _brute_force(numeric_model, x, approved), atol=1e-7)
    assert got.baseline_output == pytest.approx(float(numeric_model.predict_proba(approved)[:, 1].mean()))
    everyone = explainer.explain(numeric_model, x, AttributionParams(target_class=1), ExplainContext()).result
    assert isinstance(everyone, AttributionResult)
    assert everyone.baseline_output < got.baseline_output  # the approved are likelier approved
    assert summarize(numeric_model, len(approved), predicted="yes") is summarize(
        numeric_model, len(approved), predicted="yes"
    )  # cached per class


def test_refusals_name_the_field(numeric_model: TorchModel) -> None:
    x = instance(numeric_model, 5)
    # A constant output g = 0.3 > 0: the model predicts "yes" for every row, "no" for none.
    constant = TorchModel(Identity2(torch.zeros(10), 0.3), numeric(10), reference_rows(50, 10, 0, 1))
    cases = [
        (PermutationShapley(), numeric_model, "maybe", "unknown class"),
        (ExactShapley(), constant, "no", "predicts 'no' for no training reference row"),
        (IntegratedGradients(), numeric_model, "yes", "no background"),
        (GradientXInput(), numeric_model, "yes", "no background"),
    ]
    for explainer, model, reference, message in cases:
        with pytest.raises(InvalidArgument) as info:
            explainer.explain(model, x, AttributionParams(target_class=1, reference_class=reference), ExplainContext())
        assert [v.field for v in info.value.violations] == ["params.attribution.reference_class"], explainer.name
        assert message in info.value.violations[0].description, explainer.name
