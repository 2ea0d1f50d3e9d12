"""The values that cross between the pipeline and a transport: the call as the
pipeline understands it, and the explanation as served (after policy)."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from desiderata.explainers.base import Kind
from desiderata.explainers.types import Explanation
from desiderata.policy.decision import Decision
from desiderata.policy.guard import Budget
from desiderata.policy.model import Consumption
from desiderata.server.decision_store import DecisionRecord, utcnow
from desiderata.server.model_card import FeatureValue
from desiderata.server.model_handle import ModelHandle
from desiderata.server.serving import Disclosed

__all__ = [
    "REPRODUCTION_TOLERANCE",
    "DisclosureInfo",
    "ExplainCall",
    "KindCapability",
    "ServedExplanation",
    "reproduction_gap",
    "served_explanation",
]

REPRODUCTION_TOLERANCE = 1e-4
"""Largest difference between a decision's recorded probabilities and the loaded model's on its
recorded features that still counts as the same model (float32 kernels may differ in the last
digits across CPUs; any retraining moves probabilities far more)."""


@dataclass(frozen=True)
class ExplainCall:
    """One explanation request, transport-neutral.

    Args:
        kind: the family asked for.
        purpose: declared purpose (checked against the policy's purposes).
        consumption: static or dynamic.
        params: the family's typed parameters.
        model, model_version: the model (Explain); ignored for recorded decisions.
        features: the instance by feature name (Explain), or None.
        decision_id: the recorded decision to explain (ExplainDecision), or "".
        target_label: class to explain / aim for, by label ("" = default).
        locale: narrative locale.
        seed: seed of sampling methods.
    """

    kind: Kind
    purpose: str
    consumption: Consumption
    params: Any
    model: str = ""
    model_version: str = ""
    features: dict[str, FeatureValue] | None = None
    decision_id: str = ""
    target_label: str = ""
    locale: str = "en"
    seed: int = 0


@dataclass(frozen=True)
class DisclosureInfo:
    """What the policy served and withheld (the Disclosure proto)."""

    tier: str
    decision_id: str
    policy_version: str
    reasons: tuple[str, ...]
    redacted_features: tuple[str, ...] = ()
    top_k: int = 0
    rounding: float = 0.0
    narrative_only: bool = False
    noised: bool = False
    noise_stddev: float = 0.0
    clip_norm: float = 0.0
    epsilon_charged: float = 0.0
    budget: Budget | None = None
    notes: tuple[str, ...] = ()
    shares: dict[str, float] | None = None
    """Signed share of each shown feature in the total over ALL features (honest under top-k)."""


@dataclass(frozen=True)
class ServedExplanation:
    """An explanation as served: the explainer's answer after disclosure."""

    explanation_id: str
    model: ModelHandle
    probabilities: np.ndarray
    explanation: Explanation
    disclosure: DisclosureInfo
    created_at: datetime
    narrative: tuple[str, ...] = ()
    recorded_decision_id: str = ""


@dataclass(frozen=True)
class KindCapability:
    kind: Kind
    tier: str
    methods: tuple[str, ...]
    may_submit_instances: bool
    narrative_only: bool
    top_k: int


def served_explanation(
    handle: ModelHandle,
    probs: np.ndarray,
    raw: Explanation,
    shown: Disclosed,
    decision: Decision,
    budget: Budget | None,
    charge: float,
    record: DecisionRecord | None,
) -> ServedExplanation:
    """Assembles the served explanation from the disclosed one and the decision.

    Args:
        probs: the loaded model's class probabilities of the explained instance, ``(k,)``.
        record: the recorded decision explained (ExplainDecision), or None. When the loaded
            model no longer gives its recorded probabilities (a version's files changed across
            a restart, or replicas load different files under one version), the answer says so
            in its quality warnings and the event ``decision_not_reproduced`` is logged.
    """
    profile = decision.profile
    explanation = shown.explanation
    if record is not None:
        explanation = _check_reproduced(record, probs, explanation)
    info = DisclosureInfo(
        tier=decision.tier,
        decision_id=decision.decision_id,
        policy_version=decision.policy_version,
        reasons=decision.reasons,
        redacted_features=shown.redacted,
        top_k=profile.top_k if profile else 0,
        rounding=profile.rounding if profile else 0.0,
        narrative_only=profile.narrative_only if profile else False,
        noised=shown.noised,
        noise_stddev=shown.noise_stddev,
        clip_norm=shown.clip_norm,
        epsilon_charged=charge,
        budget=budget,
        notes=shown.notes,
        shares=shown.shares or None,
    )
    return ServedExplanation(
        explanation_id="exp_" + uuid.uuid4().hex,
        model=handle,
        probabilities=probs,
        explanation=explanation,
        disclosure=info,
        created_at=utcnow(),
        narrative=shown.narrative,
        recorded_decision_id=record.decision_id if record is not None else "",
    )


def reproduction_gap(record: DecisionRecord, probs: np.ndarray) -> float:
    """Largest difference between a decision's recorded probabilities and the loaded model's
    probabilities ``(k,)`` for its features; infinite when the class counts differ."""
    recorded = np.asarray(record.probabilities, dtype=float)
    return float(np.max(np.abs(recorded - probs))) if recorded.shape == probs.shape else float("inf")


def _check_reproduced(record: DecisionRecord, probs: np.ndarray, explanation: Explanation) -> Explanation:
    """The explanation with a quality warning when the loaded model does not reproduce the decision
    (the pipeline logs and counts that once per request)."""
    gap = reproduction_gap(record, probs)
    if gap <= REPRODUCTION_TOLERANCE:
        return explanation
    warning = (
        f"the model loaded as {record.model}/{record.model_version} does not reproduce this decision "
        f"(its probabilities differ from the recorded ones by up to {gap:.3g}): this explains the model "
        "as loaded now, not the one that decided"
    )
    quality = dataclasses.replace(explanation.quality, warnings=(*explanation.quality.warnings, warning))
    return dataclasses.replace(explanation, quality=quality)
