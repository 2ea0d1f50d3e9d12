"""Steps of the pipeline between the explainer and the wire: building the
method for the caller's tier, output noise, disclosure and narrative.

Kept apart from `pipeline.py` so the order of the request path stays readable
there, and so streaming refinements go through exactly the same disclosure as
final answers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from desiderata.explainers._attribution import AttributionExplainer, AttributionLimits
from desiderata.explainers.base import Explainer
from desiderata.explainers.counterfactual_base import CounterfactualSearch
from desiderata.explainers.counterfactual_common import CounterfactualOptions
from desiderata.explainers.influence import _SampleImportance
from desiderata.explainers.types import AttributionResult, Explanation
from desiderata.policy.disclosure import apply_disclosure
from desiderata.policy.guard import Admission, PrivacyGuard
from desiderata.policy.narrative import render_narrative
from desiderata.policy.profiles import DisclosureProfile
from desiderata.server.config import ExplainSettings
from desiderata.server.model_card import ModelCard

__all__ = ["Disclosed", "build_explainer", "disclose", "params_dict"]


def build_explainer(cls: type[Explainer], profile: DisclosureProfile, settings: ExplainSettings) -> Explainer:
    """An instance of `cls` configured for the caller's tier and the server limits."""
    if issubclass(cls, AttributionExplainer):
        limits = AttributionLimits(
            max_exact_players=settings.max_exact_players,
            max_samples=settings.max_samples,
            background_size=settings.background_size,
        )
        return cls(limits)
    if issubclass(cls, CounterfactualSearch):
        return cls(CounterfactualOptions(allow_training_rows=profile.training_rows))
    if issubclass(cls, _SampleImportance):
        return cls(include_rows=profile.training_rows)
    return cls()


def params_dict(params: Any) -> dict[str, Any]:
    """The request parameters as a plain mapping (part of the noise key)."""
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        plain = _plain(params)
        return {k: v for k, v in plain.items() if not isinstance(v, float) or math.isfinite(v)}
    return {}


def _plain(value: Any) -> Any:
    """`dataclasses.asdict` without its deep copies of leaf values (parameters are immutable
    scalars, strings and containers of them); 0.5 ms → 0.05 ms per request."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True)
class Disclosed:
    """An explanation after noise and disclosure, with what was applied."""

    explanation: Explanation
    narrative: tuple[str, ...]
    shares: dict[str, float]
    withheld_share: float
    notes: tuple[str, ...]
    redacted: tuple[str, ...]
    noised: bool
    noise_stddev: float
    clip_norm: float


def disclose(
    explanation: Explanation,
    profile: DisclosureProfile,
    card: ModelCard,
    locale: str,
    guard: PrivacyGuard | None = None,
    admission: Admission | None = None,
) -> Disclosed:
    """Noise (attributions of noisy tiers), then the tier's disclosure, then the narrative."""
    noised, stddev, clip = False, 0.0, 0.0
    result = explanation.result
    if isinstance(result, AttributionResult) and guard is not None and admission is not None:
        values, info = guard.noise(admission, result.values)
        if info.noise_std > 0:
            noised, stddev, clip = True, info.noise_std, info.clip_norm
            explanation = dataclasses.replace(explanation, result=dataclasses.replace(result, values=values))
    shown, applied = apply_disclosure(explanation, profile, card)
    narrative: tuple[str, ...] = ()
    if isinstance(shown.result, AttributionResult):
        narrative = render_narrative(shown, applied, card, locale)
    notes = list(applied.notes)
    if noised:
        notes.append(f"attributions clipped to L2 norm {clip:g} and noised (stddev {stddev:.3g})")
    return Disclosed(
        explanation=shown,
        narrative=narrative,
        shares=dict(applied.shares),
        withheld_share=applied.withheld_share,
        notes=tuple(notes),
        redacted=applied.redacted_features,
        noised=noised,
        noise_stddev=stddev,
        clip_norm=clip,
    )
