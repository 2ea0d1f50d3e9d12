"""Disclosure profiles: how much of an explanation each fidelity tier reveals.

A profile is data (YAML, validated here); the pipeline enforces it after the
explainer ran (`desiderata.policy.disclosure`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from desiderata.policy.privacy_params import PrivacyParams

__all__ = ["CounterfactualLimits", "DisclosureProfile"]


class CounterfactualLimits(BaseModel):
    """Constraints a tier puts on counterfactuals."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    respect_immutable: bool = True
    """Never suggest changing a feature the card marks immutable."""
    max_features_changed: int | None = Field(default=None, ge=1)
    """At most this many features changed per counterfactual."""
    max_counterfactuals: int | None = Field(default=None, ge=1)
    """At most this many counterfactuals returned."""


class DisclosureProfile(BaseModel):
    """How much one tier reveals."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tier: str
    """Tier name, "<kind>/<fidelity>", e.g. "feature_attribution/summary"."""
    methods: tuple[str, ...] = ()
    """Methods allowed at this tier; empty allows every registered method of the kind."""
    top_k: int = Field(default=0, ge=0)
    """Keep only the k largest attributions (0 keeps all)."""
    rounding: float = Field(default=0.0, ge=0.0)
    """Quantisation step applied to returned numbers (0 = none)."""
    narrative_only: bool = False
    """Return sentences, not numbers."""
    redacted_features: tuple[str, ...] = ()
    """Features whose attribution or value is withheld; a feature group (model card) is
    withheld when named here or when it holds a withheld feature."""
    may_submit_instances: bool = True
    """Whether the principal may explain arbitrary instances (Explain) rather
    than only recorded decisions (ExplainDecision)."""
    training_rows: bool = False
    """Whether raw training rows may be shown (sample importance, counterfactuals)."""
    privacy: PrivacyParams = PrivacyParams()
    """Noise, budgets, rate limits and the extraction monitor (enforced by the privacy guards)."""
    counterfactual: CounterfactualLimits | None = None
    """Counterfactual constraints of this tier."""
