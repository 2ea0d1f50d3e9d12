"""Disclosure enforcement and narratives on a card shaped like the demo credit model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from desiderata.explainers.base import Kind
from desiderata.explainers.types import (
    AttributionResult,
    Counterfactual,
    CounterfactualResult,
    Explanation,
    FeatureChange,
    InfluentialSample,
    SampleImportanceResult,
)
from desiderata.policy.disclosure import apply_disclosure, redacted_names
from desiderata.policy.narrative import _shipped_locales, _templates, load_locale, render_narrative
from desiderata.policy.profiles import DisclosureProfile
from desiderata.policy.store import default_bundle_dir, load_bundle
from desiderata.server.model_card import FeatureSpec, ModelCard

NAMES = ["seniority", "home", "time", "age", "marital", "records", "job", "expenses", "income", "assets",
         "debt", "amount", "price"]  # fmt: skip
CARD = ModelCard(
    name="credit",
    version="1",
    domain="credit",
    features=[
        FeatureSpec(
            name=n,
            type="number",
            display_name="monthly income" if n == "income" else n,
            protected=n in ("age", "marital"),
            immutable=n in ("age", "marital", "records"),
        )
        for n in NAMES
    ],
    class_names=["bad", "good"],
    positive_class="good",
)
# age is the largest attribution: redaction must remove it, not just hide its rank.
VALUES = np.array([0.05, 0.0, 0.01, -0.30, 0.02, -0.12, 0.03, -0.04, 0.21, 0.08, -0.06, -0.02, 0.06])


def _attr(values: np.ndarray = VALUES, target: int = 1) -> Explanation:
    r = AttributionResult(tuple(NAMES), values, values * 0.1, target, 0.734567, 0.5)
    return Explanation(Kind.FEATURE_ATTRIBUTION, "kernel_shap", "1", {}, r)


@pytest.fixture(scope="module")
def profiles() -> dict[str, DisclosureProfile]:
    return load_bundle(default_bundle_dir()).profiles


def test_full_tier_changes_nothing(profiles: dict[str, DisclosureProfile]) -> None:
    out, applied = apply_disclosure(_attr(), profiles["feature_attribution/full"], CARD)
    r = out.result
    assert isinstance(r, AttributionResult)
    assert sorted(r.players) == sorted(NAMES) and r.output == 0.734567
    assert applied.redacted_features == () and applied.withheld_share == pytest.approx(0.0, abs=1e-12)
    assert sum(abs(s) for _, s in applied.shares) == pytest.approx(1.0)


def test_summary_tier_redacts_keeps_top5_and_rounds(profiles: dict[str, DisclosureProfile]) -> None:
    out, applied = apply_disclosure(_attr(), profiles["feature_attribution/summary"], CARD)
    r = out.result
    assert isinstance(r, AttributionResult)
    assert applied.redacted_features == ("age", "marital")
    assert r.players == ("income", "records", "assets", "debt", "price")  # largest |value| first, stable
    assert "age" not in r.players and "marital" not in r.players
    np.testing.assert_allclose(r.values, [0.21, -0.12, 0.08, -0.06, 0.06])
    assert r.output == 0.73 and r.std_errors is not None and r.std_errors[0] == 0.02
    total = float(np.abs(VALUES).sum())  # 1.0: shares relative to ALL features
    assert dict(applied.shares)["income"] == round(0.21 / total, 2)
    assert applied.withheld_share == pytest.approx(round(1 - 0.53 / total, 2))
    assert any("redacted" in n for n in applied.notes) and any("5 largest" in n for n in applied.notes)


def test_narrative_tier_strips_numbers_but_keeps_honest_shares(
    profiles: dict[str, DisclosureProfile],
) -> None:
    out, applied = apply_disclosure(_attr(), profiles["feature_attribution/narrative"], CARD)
    r = out.result
    assert isinstance(r, AttributionResult)
    assert r.players == ("income", "records", "assets")
    assert np.isnan(r.values).all() and math.isnan(r.output) and r.std_errors is None
    assert applied.narrative_only and applied.top_k == 3
    sentences = render_narrative(out, applied, CARD)
    assert sentences == (
        "Your monthly income counted most (21%), towards approval.",
        "Your records counted 12%, against approval.",
        "Your assets counted 8%, towards approval.",
        "Other factors together counted 59%.",
    )


def test_a_contrastive_narrative_says_what_it_compares_with(profiles: dict[str, DisclosureProfile]) -> None:
    ex = _attr()
    contrastive = Explanation(ex.kind, ex.method, ex.method_version, {"reference_class": "good"}, ex.result)
    narrative = profiles["feature_attribution/narrative"]
    sentences = render_narrative(*apply_disclosure(contrastive, narrative, CARD), CARD)
    assert sentences[0] == "Compared with the cases that led to approval:"
    assert sentences[1:] == render_narrative(*apply_disclosure(ex, narrative, CARD), CARD)


def test_direction_follows_the_positive_class_when_explaining_bad() -> None:
    profile = DisclosureProfile(tier="feature_attribution/narrative", top_k=1)
    out, applied = apply_disclosure(_attr(target=0), profile, CARD)
    # explaining P(bad): a negative attribution to "bad" pushes towards approval
    assert render_narrative(out, applied, CARD)[0] == "Your age counted most (30%), towards approval."


def test_unknown_locale_falls_back_to_english() -> None:
    assert load_locale("xx-YY") == load_locale("en")
    assert load_locale("../../etc") == load_locale("en")
    assert load_locale("x" * 5000) == load_locale("en")  # never a file name (ENAMETOOLONG)
    for i in range(500):  # caller-chosen tags are not cached one by one
        load_locale(f"zz-Q{i}")
    assert _templates.cache_info().currsize <= len(_shipped_locales())


def test_redaction_by_name_and_counterfactual_changes() -> None:
    profile = DisclosureProfile(tier="counterfactual/recourse", rounding=0.5, redacted_features=("@protected", "debt"))
    assert redacted_names(profile, CARD) == ("age", "marital", "debt")
    cf = Counterfactual(
        (
            FeatureChange("income", 1000.2, 1400.7),
            FeatureChange("debt", 10.0, 0.0),
            FeatureChange("age", 30, 40),
        ),
        np.array([0.4, 0.6]), True, 0.12345, 3, 0.5, False,
    )  # fmt: skip
    ex = Explanation(Kind.COUNTERFACTUAL, "wachter", "1", {}, CounterfactualResult((cf,)))
    out, applied = apply_disclosure(ex, profile, CARD)
    assert isinstance(out.result, CounterfactualResult)
    (only,) = out.result.counterfactuals
    assert only.changes == (FeatureChange("income", 1000.0, 1400.5),)
    assert only.normalized_l1_distance == 0.0 and applied.redacted_features == ("age", "debt", "marital")


def test_sample_rows_withheld_and_top_k() -> None:
    samples = tuple(
        InfluentialSample(f"row{i}", "good", float(i), 0.1 * i, 1.0, False, {"income": 1.0}) for i in (4, 3, 2, 1, 0)
    )  # ranked by the explainer
    ex = Explanation(Kind.SAMPLE_IMPORTANCE, "tracin", "1", {}, SampleImportanceResult(samples))
    out, applied = apply_disclosure(ex, DisclosureProfile(tier="sample_importance/ids", top_k=2), CARD)
    assert isinstance(out.result, SampleImportanceResult)
    assert [s.sample_id for s in out.result.samples] == ["row4", "row3"]
    assert all(s.row is None for s in out.result.samples)
    assert any("rows withheld" in n for n in applied.notes)
    # the explainer's ranking is kept: nearest neighbours (influence = -distance) stay nearest first
    near = tuple(InfluentialSample(f"n{i}", "good", -float(i), 0.0, 1.0, False) for i in range(4))
    ex = Explanation(Kind.SAMPLE_IMPORTANCE, "nearest_neighbours", "1", {}, SampleImportanceResult(near))
    out, _ = apply_disclosure(ex, DisclosureProfile(tier="sample_importance/ids", top_k=2), CARD)
    assert isinstance(out.result, SampleImportanceResult)
    assert [s.sample_id for s in out.result.samples] == ["n0", "n1"]
