"""Disclosure enforcement: cut a raw explanation down to what a tier reveals.

Why: the PDP only decides; the pipeline enforces. After the explainer ran,
`apply_disclosure` applies the tier's `DisclosureProfile`, in this order:
redaction (features removed and listed; ``@protected`` expands to the card's
protected features), top-k by absolute value, rounding to the quantisation
step, then narrative-only (numbers replaced by NaN: "not disclosed"). It
returns the reduced explanation and a `DisclosureApplied` record of what was
withheld, which the lead's converter turns into the Disclosure proto block.

Shares stay honest: `DisclosureApplied.shares` are each kept feature's signed
share of the total absolute attribution of ALL features, redacted and cut
ones included, and `withheld_share` is the share not shown. A reader never
sees a top-3 inflated to 100%.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from desiderata.explainers.types import (
    AttributionResult,
    Counterfactual,
    CounterfactualResult,
    Explanation,
    FeatureChange,
    InfluentialSample,
    Result,
    RobustnessResult,
    SampleImportanceResult,
)
from desiderata.policy.profiles import DisclosureProfile
from desiderata.policy.tier_profiles import PROTECTED_TOKEN
from desiderata.server.model_card import FeatureValue, ModelCard

__all__ = ["DisclosureApplied", "apply_disclosure", "redacted_names"]


@dataclass(frozen=True)
class DisclosureApplied:
    """What a tier withheld from one explanation.

    Args:
        tier: the tier served.
        top_k: attributions kept (0 = all).
        rounding: quantisation step applied (0 = none).
        redacted_features: features removed, in card order.
        narrative_only: numbers were replaced by NaN; show the narrative.
        notes: human-readable notes of what was withheld.
        shares: (feature, signed share of the total over all features), kept
            features only, largest |share| first; rounded like the values.
        withheld_share: share of the total absolute attribution not shown.
    """

    tier: str
    top_k: int
    rounding: float
    redacted_features: tuple[str, ...]
    narrative_only: bool
    notes: tuple[str, ...] = ()
    shares: tuple[tuple[str, float], ...] = ()
    withheld_share: float = 0.0


def redacted_names(profile: DisclosureProfile, card: ModelCard) -> tuple[str, ...]:
    """Feature names a profile redacts for a model, in card order, then the feature groups
    that hold any of them (a group's attribution would reveal its members').

    Args:
        profile: the tier's profile.
        card: the model's card (protected flags, feature groups).
    """
    wanted = set(profile.redacted_features)
    protected = PROTECTED_TOKEN in wanted
    features = tuple(f.name for f in card.features if f.name in wanted or (protected and f.protected))
    groups = tuple(g.name for g in card.feature_groups if g.name in wanted or set(g.features) & set(features))
    return features + groups


def _q(x: float, step: float) -> float:
    if step <= 0 or not math.isfinite(x):
        return x
    return round(round(x / step) * step, 12)


def _qa(a: np.ndarray, step: float) -> np.ndarray:
    return a if step <= 0 else np.round(np.round(a / step) * step, 12)


def _qv(v: FeatureValue, step: float) -> FeatureValue:
    return _q(v, step) if isinstance(v, float) else v


def _attribution(
    r: AttributionResult, p: DisclosureProfile, redacted: set[str]
) -> tuple[AttributionResult, DisclosureApplied]:
    values = np.asarray(r.values, dtype=np.float64)
    total = float(np.abs(values).sum())
    order = [i for i in np.argsort(-np.abs(values), kind="stable") if r.players[i] not in redacted]
    notes: list[str] = []
    removed = [pl for pl in r.players if pl in redacted]
    if removed:
        notes.append(f"{len(removed)} feature(s) redacted by policy")
    if p.top_k and len(order) > p.top_k:
        notes.append(f"only the {p.top_k} largest attributions are shown")
        order = order[: p.top_k]
    shares = [(r.players[i], values[i] / total if total > 0 else 0.0) for i in order]
    withheld = 1.0 - sum(abs(s) for _, s in shares) if total > 0 else 0.0
    kept = np.array([values[i] for i in order], dtype=np.float64)
    std = None if r.std_errors is None else np.array([r.std_errors[i] for i in order], dtype=np.float64)
    out = AttributionResult(
        players=tuple(r.players[i] for i in order),
        values=_qa(kept, p.rounding),
        std_errors=None if std is None else _qa(std, p.rounding),
        target_class=r.target_class,
        output=_q(r.output, p.rounding),
        baseline_output=_q(r.baseline_output, p.rounding),
    )
    if p.rounding:
        notes.append(f"numbers rounded to {p.rounding:g}")
    if p.narrative_only:
        notes.append("numbers withheld: narrative only")
        nan = np.full(len(order), np.nan)
        out = replace(out, values=nan, std_errors=None, output=math.nan, baseline_output=math.nan)
    applied = DisclosureApplied(
        tier=p.tier,
        top_k=p.top_k,
        rounding=p.rounding,
        redacted_features=tuple(removed),
        narrative_only=p.narrative_only,
        notes=tuple(notes),
        shares=tuple((name, _q(float(s), p.rounding)) for name, s in shares),
        withheld_share=_q(max(0.0, withheld), p.rounding),
    )
    return out, applied


def _changes(changes: tuple[FeatureChange, ...], step: float, redacted: set[str]) -> tuple[FeatureChange, ...]:
    return tuple(
        FeatureChange(c.feature, _qv(c.from_value, step), _qv(c.to_value, step))
        for c in changes
        if c.feature not in redacted
    )


def _other(r: Result, p: DisclosureProfile, redacted: set[str], notes: list[str]) -> Result:
    step, hide = p.rounding, p.narrative_only
    if isinstance(r, CounterfactualResult):
        cfs = tuple(
            Counterfactual(
                changes=_changes(c.changes, step, redacted),
                probabilities=np.full_like(c.probabilities, np.nan) if hide else _qa(c.probabilities, step),
                valid=c.valid,
                normalized_l1_distance=_q(c.normalized_l1_distance, step),
                features_changed=c.features_changed,
                plausibility_distance=_q(c.plausibility_distance, step),
                off_manifold=c.off_manifold,
            )
            for c in r.counterfactuals
        )
        return CounterfactualResult(cfs, r.reason_none)
    if isinstance(r, SampleImportanceResult):
        # the explainer's ranking stands: by influence (supporting first), by relative
        # influence when asked, by -distance for neighbours; re-sorting by |influence|
        # put the farthest neighbours and the most opposing points first
        samples = list(r.samples)
        if p.top_k and len(samples) > p.top_k:
            notes.append(f"only the {p.top_k} most influential samples are shown")
            samples = samples[: p.top_k]
        if not p.training_rows and any(s.row is not None for s in samples):
            notes.append("training rows withheld: ids only")
        kept = tuple(
            InfluentialSample(
                s.sample_id, s.label, _q(s.influence, step), _q(s.relative_influence, step),
                _q(s.self_influence, step), s.outlier, s.row if p.training_rows else None,
            )
            for s in samples
        )  # fmt: skip
        return SampleImportanceResult(kept, r.aggregate, r.next_page_token)
    if isinstance(r, RobustnessResult):
        flipped = r.flipped_probabilities
        return RobustnessResult(
            r.found,
            _q(r.distance, step),
            r.norm,
            _changes(r.perturbation, step, redacted),
            None if flipped is None or hide else _qa(flipped, step),
        )
    return r


def apply_disclosure(
    explanation: Explanation, profile: DisclosureProfile, card: ModelCard
) -> tuple[Explanation, DisclosureApplied]:
    """Reduces an explanation to what `profile` reveals.

    Args:
        explanation: the explainer's raw, full-fidelity explanation.
        profile: the disclosure profile of the tier the PDP allowed.
        card: the model's card (protected features for ``@protected``).

    Returns:
        The reduced explanation and the record of what was withheld.
    """
    redacted = set(redacted_names(profile, card))
    r = explanation.result
    if isinstance(r, AttributionResult):
        result, applied = _attribution(r, profile, redacted)
        return replace(explanation, result=result), applied
    notes: list[str] = []
    redacted &= {f.name for f in card.features}  # groups have attributions only
    result2 = _other(r, profile, redacted, notes)
    if redacted and not isinstance(r, SampleImportanceResult):
        notes.append(f"changes to {len(redacted)} redacted feature(s) withheld")
    if profile.rounding:
        notes.append(f"numbers rounded to {profile.rounding:g}")
    applied = DisclosureApplied(
        tier=profile.tier,
        top_k=profile.top_k,
        rounding=profile.rounding,
        redacted_features=tuple(sorted(redacted)) if not isinstance(r, SampleImportanceResult) else (),
        narrative_only=profile.narrative_only,
        notes=tuple(notes),
    )
    return replace(explanation, result=result2), applied
