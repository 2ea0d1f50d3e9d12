"""The policy decision point's contract: what it is asked, what it answers.

The PDP only decides; the pipeline enforces. Every decision has an id and the
ids of the policies that produced it, and no decision means deny.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Protocol

from desiderata.explainers.base import Kind
from desiderata.policy.model import Consumption, Principal
from desiderata.policy.profiles import DisclosureProfile

__all__ = [
    "Decision",
    "PolicyDecisionPoint",
    "PolicyInput",
    "new_decision_id",
]


def new_decision_id() -> str:
    return "dec_" + uuid.uuid4().hex


@dataclass(frozen=True)
class PolicyInput:
    """One question to the PDP.

    Args:
        principal: the authenticated caller.
        model: model name.
        model_attributes: attributes of the model from its card (domain,
            dp_trained, ...), used as Cedar resource attributes.
        kind: the explanation family asked for.
        purpose: declared purpose.
        consumption: static or dynamic.
        own_decision: whether the instance is the caller's own recorded decision.
        submitted_instance: whether the caller supplied the instance (Explain)
            rather than naming a recorded decision (ExplainDecision).
    """

    principal: Principal
    model: str
    model_attributes: dict[str, str | bool | int | float]
    kind: Kind
    purpose: str
    consumption: Consumption
    own_decision: bool = False
    submitted_instance: bool = True


@dataclass(frozen=True)
class Decision:
    """The PDP's answer.

    Args:
        decision_id: unique id, returned to the caller and audited.
        allowed: whether any tier is allowed.
        tier: the highest allowed tier, e.g. "feature_attribution/full" ("" if denied).
        profile: the disclosure profile of that tier (None if denied).
        reasons: ids of the policies that decided.
        policy_version: hash of the policy bundle in force.
    """

    decision_id: str
    allowed: bool
    tier: str
    profile: DisclosureProfile | None
    reasons: tuple[str, ...]
    policy_version: str
    errors: tuple[str, ...] = field(default=())


class PolicyDecisionPoint(Protocol):
    """Decides which tier of an explanation a principal may see."""

    @property
    def version(self) -> str: ...

    def decide(self, request: PolicyInput) -> Decision: ...

    def known_purposes(self) -> frozenset[str]: ...
