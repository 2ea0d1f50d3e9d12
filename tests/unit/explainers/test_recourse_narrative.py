"""Recourse narratives read as the issue's example and never suggest an immutable feature."""

from __future__ import annotations

import numpy as np
import pytest

from desiderata.explainers.recourse_narrative import recourse_narrative
from desiderata.explainers.types import Counterfactual, FeatureChange
from desiderata.server.model_card import ModelCard
from tests.unit.explainers._cf_models import MIXED_SPECS

CARD = ModelCard(
    name="c", version="1", features=MIXED_SPECS, class_names=["bad", "good"], positive_class="good"
)


def _cf(*changes: FeatureChange) -> Counterfactual:
    return Counterfactual(changes, np.array([0.3, 0.7]), True, 0.1, len(changes), 0.1, False)


def test_sentence_uses_display_names_units_and_outcome() -> None:
    cf = _cf(FeatureChange("income", 1200.0, 1650.0), FeatureChange("months", 36, 24))
    text = recourse_narrative(CARD, cf, {"good": "the application would have been approved"})
    assert text == (
        "If your monthly income were €450 higher and your loan term 12 months shorter, "
        "the application would have been approved."
    )


def test_categories_and_fallback_outcome() -> None:
    text = recourse_narrative(CARD, _cf(FeatureChange("home", "rent", "owner")))
    assert text == "If your housing were owner instead of rent, the decision would have been 'good'."


def test_immutable_feature_is_refused() -> None:
    with pytest.raises(ValueError, match="immutable"):
        recourse_narrative(CARD, _cf(FeatureChange("age", 30, 40)))
