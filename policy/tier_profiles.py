"""The fidelity tiers of every explanation kind and the YAML form of a tier's
disclosure profile, with the privacy and counterfactual blocks that the frozen
`DisclosureProfile` contract does not carry yet.

Why a separate module: `desiderata.policy.profiles.DisclosureProfile` is a
committed contract (what the pipeline enforces). Policy owners write
``profiles.yaml`` in a stricter form (`TierProfileSpec`): a value that is set
must be meaningful (``top_k: 0`` or negative noise is refused at load, not
silently read as "all"). Each spec converts to a `DisclosureProfile` plus the
reserved `PrivacyParams` (enforced by the privacy-guard issue) and
`CounterfactualLimits`.

Tiers are ordered from most to least revealing; the PDP serves the first
allowed one.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from desiderata.explainers.base import Kind
from desiderata.policy.privacy_params import PrivacyParams
from desiderata.policy.profiles import CounterfactualLimits, DisclosureProfile

__all__ = [
    "GLOBAL_ACTIONS",
    "KIND_TIERS",
    "OPTIONAL_ACTIONS",
    "PROTECTED_TOKEN",
    "CounterfactualLimits",
    "PrivacyParams",
    "TierProfileSpec",
    "all_tiers",
]

KIND_TIERS: dict[Kind, tuple[str, ...]] = {
    Kind.FEATURE_ATTRIBUTION: (
        "feature_attribution/full",
        "feature_attribution/summary",
        "feature_attribution/narrative",
    ),
    Kind.COUNTERFACTUAL: ("counterfactual/full", "counterfactual/recourse"),
    Kind.SAMPLE_IMPORTANCE: (
        "sample_importance/full",
        "sample_importance/ids",
        "sample_importance/aggregate",
    ),
    Kind.ROBUSTNESS: ("robustness/full",),
}
"""Candidate tiers of each kind, most revealing first."""

OPTIONAL_ACTIONS: tuple[str, ...] = ("decisions/list",)
"""Actions added after bundles were written: a schema may leave them out (then they are
denied: the request fails validation, and errors deny)."""

GLOBAL_ACTIONS: tuple[str, ...] = ("global/summary", "global/drift", "audit/read", *OPTIONAL_ACTIONS)
"""Actions that are not an explanation of one instance. ``global/drift`` is apart from
``global/summary``: drift aggregates the newest recorded decisions, and windows that
differ by one decision can be differenced, so it goes to roles trusted with decisions.
``decisions/list`` lists the decisions recorded about one subject (ListDecisions)."""

PROTECTED_TOKEN = "@protected"
"""In ``redacted_features``: every feature the model card marks protected."""


def all_tiers() -> tuple[str, ...]:
    """Every action name a schema may declare, kinds' tiers first; all but `OPTIONAL_ACTIONS` must be."""
    return tuple(t for tiers in KIND_TIERS.values() for t in tiers) + GLOBAL_ACTIONS


class TierProfileSpec(BaseModel):
    """One entry of ``profiles.yaml`` (the key is the tier)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    methods: tuple[str, ...] = ()
    """Methods allowed; empty allows every registered method of the kind."""
    top_k: int | None = Field(default=None, ge=1)
    """Keep the k largest attributions; omit to keep all (0 is refused)."""
    rounding: float | None = Field(default=None, gt=0.0)
    """Quantisation step; omit for none."""
    narrative_only: bool = False
    """Sentences, not numbers."""
    redacted_features: tuple[str, ...] = ()
    """Feature names, or ``@protected`` for the card's protected features."""
    may_submit_instances: bool = True
    """Whether arbitrary instances may be explained (Explain)."""
    training_rows: bool = False
    """Whether raw training rows may be shown."""
    counterfactual: CounterfactualLimits | None = None
    """Counterfactual constraints (counterfactual tiers only)."""
    privacy: PrivacyParams = PrivacyParams()
    """Noise, budgets, rates and the extraction monitor of this tier (enforced by the privacy guards)."""

    def to_profile(self, tier: str) -> DisclosureProfile:
        """The committed contract's view of this tier.

        Args:
            tier: the tier name this spec is keyed by.
        """
        return DisclosureProfile(
            tier=tier,
            methods=self.methods,
            top_k=self.top_k or 0,
            rounding=self.rounding or 0.0,
            narrative_only=self.narrative_only,
            redacted_features=self.redacted_features,
            may_submit_instances=self.may_submit_instances,
            training_rows=self.training_rows,
            privacy=self.privacy,
            counterfactual=self.counterfactual,
        )
