"""Quality metrics (with hand-checked and closed-form cases), background summaries,
registry refusals."""

from __future__ import annotations

import numpy as np
import pytest

from desiderata.explainers import registry
from desiderata.explainers.background import Background, clear_cache, summarize, weighted_kmeans
from desiderata.explainers.base import ExplainContext
from desiderata.explainers.quality import feature_agreement, rank_agreement
from desiderata.explainers.shapley_exact import ExactShapley
from desiderata.explainers.types import AttributionParams, AttributionResult
from desiderata.server.errors import InvalidArgument
from tests.unit.explainers.attribution_models import TorchModel, instance


def test_rank_and_feature_agreement_by_hand() -> None:
    a = np.array([0.5, -0.4, 0.3, 0.01, 0.0])
    b = np.array([-0.6, 0.35, 0.45, 0.0, 0.02])  # top-3 by |.|: 0, 2, 1 versus 0, 1, 2
    assert rank_agreement(a, b, 3) == pytest.approx(1 / 3)
    assert feature_agreement(a, b, 3) == 1.0
    assert rank_agreement(a, a, 5) == 1.0


def test_infidelity_zero_for_exact_shapley_on_an_additive_game(
    linear_model: tuple[TorchModel, np.ndarray], small_background
) -> None:
    model, _ = linear_model
    bg = small_background(model, 10, 0)
    x = instance(model, 1)
    params = AttributionParams(target_class=1, quality_metrics=("infidelity", "max_sensitivity"))
    e = ExactShapley().explain_with_background(model, x, params, ExplainContext(), bg)
    assert e.quality.infidelity is not None and e.quality.infidelity < 1e-10
    # φ = w ⊙ (x − E b) moves by at most w ⊙ δ with |δ| ≤ 2% of a column's std.
    ref = model.reference()
    assert ref is not None and isinstance(e.result, AttributionResult)
    _, w = linear_model
    bound = np.linalg.norm(w * 0.02 * ref.x.std(axis=0)) / np.linalg.norm(e.result.values)
    assert e.quality.max_sensitivity is not None and 0 < e.quality.max_sensitivity <= bound + 1e-6


def test_infidelity_positive_on_an_interacting_model_and_rank_agreement(
    mlp_model: TorchModel, small_background
) -> None:
    bg = small_background(mlp_model, 8, 1)
    x = instance(mlp_model, 2)
    params = AttributionParams(
        target_class=1, quality_metrics=("infidelity", "rank_agreement"), agreement_method="kernel_shap"
    )
    e = ExactShapley().explain_with_background(mlp_model, x, params, ExplainContext(), bg)
    assert e.quality.infidelity is not None and e.quality.infidelity > 0
    assert e.quality.agreement_method == "kernel_shap"
    assert e.quality.rank_agreement is not None and 0.0 <= e.quality.rank_agreement <= 1.0


def test_weighted_kmeans_returns_member_rows_with_weights() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (70, 2)), rng.normal(5, 0.1, (30, 2))])
    rows, weights = weighted_kmeans(x, 2, np.random.default_rng(1))
    assert rows.shape == (2, 2) and weights.sum() == pytest.approx(1.0)
    assert all(any(np.array_equal(r, m) for m in x) for r in rows)
    assert sorted(np.round(weights, 2).tolist()) == [0.3, 0.7]
    np.testing.assert_allclose(weights @ rows, x.mean(axis=0), atol=0.1)


def test_summary_is_cached_per_model_version_and_size(mlp_model: TorchModel) -> None:
    clear_cache()
    a = summarize(mlp_model, 12)
    assert summarize(mlp_model, 12) is a and summarize(mlp_model, 13) is not a
    assert a.x.shape[1] == mlp_model.schema.n_columns
    assert set(np.round(a.x[:, -3:].sum(axis=1), 9)) == {1.0}  # one-hot groups stay one-hot


def test_background_weights_are_validated() -> None:
    with pytest.raises(InvalidArgument):
        Background.of(np.zeros((3, 2)), np.array([1.0, -1.0, 1.0]))


def test_unknown_method_is_refused() -> None:
    with pytest.raises(InvalidArgument) as err:
        registry.get("shapley_magic")
    assert err.value.violations[0].field == "params.method"


def test_unknown_quality_metric_is_refused(mlp_model: TorchModel, small_background) -> None:
    with pytest.raises(InvalidArgument) as err:
        ExactShapley().explain_with_background(
            mlp_model,
            instance(mlp_model, 0),
            AttributionParams(quality_metrics=("vibes",)),
            ExplainContext(),
            small_background(mlp_model, 4, 0),
        )
    assert err.value.violations[0].field == "params.attribution.quality_metrics"
