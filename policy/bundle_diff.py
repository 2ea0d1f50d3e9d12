"""What a policy change changes: every question two bundles answer differently, and
every tier profile that now reveals more or less.

Why: `policy test` checks the cases someone thought to write. A policy owner
reviewing a change also needs the cases nobody wrote: a permit narrowed for one
role that also cut off another, a forbid that no longer matches, a profile that
now shows ten attributions instead of five. This asks both bundles the whole
grid of questions the server can ask for one model (every role and purpose
either bundle knows, both consumption modes, every explanation kind by
submitted instance and by recorded decision, the caller's own decision or
someone else's, and the non-instance actions) and lists every answer that
differs, with the policies that decided each side, then every profile field
that differs. Nothing is evaluated that the server would not evaluate: the
questions go through the same `CedarPDP`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from desiderata.explainers.base import Kind
from desiderata.policy.cedar_pdp import CedarPDP
from desiderata.policy.decision import Decision, PolicyInput
from desiderata.policy.model import Consumption, Principal
from desiderata.policy.policy_bundle import PolicyBundle
from desiderata.server.errors import DesiderataError

__all__ = ["ACTIONS", "Answer", "Change", "ProfileChange", "Question", "decision_changes", "profile_changes"]

ACTIONS = ("global/summary", "global/drift", "audit/read", "decisions/list")
"""The non-instance actions the server decides (besides the explanation kinds)."""


@dataclass(frozen=True)
class Question:
    """One question to the PDP: who asks what, for which purpose.

    Args:
        role: the stakeholder role of the caller.
        purpose: the declared purpose.
        consumption: static or dynamic.
        ask: an explanation kind ("feature_attribution", ...) or one of `ACTIONS`.
        own: the instance is the caller's own recorded decision.
        submitted: the caller supplied the instance (Explain), not a recorded decision.
    """

    role: str
    purpose: str
    consumption: Consumption
    ask: str
    own: bool
    submitted: bool

    def describe(self) -> str:
        """One fixed-width line: role, purpose, consumption, what, instance origin, own."""
        origin = "" if self.ask in ACTIONS else ("submitted" if self.submitted else "recorded")
        cells = ((self.role, 14), (self.purpose, 13), (self.consumption.value, 8), (self.ask, 20), (origin, 10))
        return " ".join(f"{part:<{width}}" for part, width in cells) + (" own" if self.own else "    ")


@dataclass(frozen=True)
class Answer:
    """What one bundle answered: the tier served ("" when denied) and why."""

    tier: str
    reasons: tuple[str, ...]

    def describe(self) -> str:
        return self.tier or "DENY"


@dataclass(frozen=True)
class Change:
    """A question the two bundles answer differently."""

    question: Question
    old: Answer
    new: Answer


@dataclass(frozen=True)
class ProfileChange:
    """One field of one tier's disclosure profile that differs (None: the tier is absent)."""

    tier: str
    field: str
    old: Any
    new: Any


def questions(roles: frozenset[str], purposes: frozenset[str]) -> Iterator[Question]:
    """The grid, in a stable order: roles, purposes, consumption, kinds then actions.

    Only end users ask about their own decisions (no other principal is a subject).
    """
    for role, purpose, consumption in itertools.product(sorted(roles), sorted(purposes), list(Consumption)):
        owns = (False, True) if role == "end_user" else (False,)
        for kind, submitted, own in itertools.product([k.value for k in Kind], (True, False), owns):
            yield Question(role, purpose, consumption, kind, own, submitted)
        for action, own in itertools.product(ACTIONS, owns):
            yield Question(role, purpose, consumption, action, own, False)


def decision_changes(
    old: PolicyBundle,
    new: PolicyBundle,
    model: str,
    model_attributes: Mapping[str, str | bool | int | float],
    principal_attributes: Mapping[str, str],
) -> tuple[list[Change], int]:
    """Every question of the grid the two bundles answer differently.

    Args:
        old, new: the bundle in force and the candidate.
        model: the model's name (the Cedar resource).
        model_attributes: its attributes (domain, dp_trained, ...).
        principal_attributes: attributes of every asking principal (e.g. domain).

    Returns:
        The changes, in grid order, and the number of questions asked.
    """
    pdps = CedarPDP(old), CedarPDP(new)
    changes: list[Change] = []
    asked = 0
    for q in questions(old.roles | new.roles, old.purposes | new.purposes):
        asked += 1
        a, b = (_answer(pdp, q, model, model_attributes, principal_attributes) for pdp in pdps)
        if a.tier != b.tier:
            changes.append(Change(q, a, b))
    return changes, asked


def _answer(
    pdp: CedarPDP,
    q: Question,
    model: str,
    model_attributes: Mapping[str, str | bool | int | float],
    principal_attributes: Mapping[str, str],
) -> Answer:
    subject = "subject" if q.role == "end_user" else ""
    principal = Principal(f"diff-{q.role}", q.role, subject, dict(principal_attributes))
    attrs = dict(model_attributes)
    try:
        if q.ask in ACTIONS:
            decision: Decision = pdp.authorize(principal, q.ask, model, attrs, q.purpose, q.consumption, q.own)
        else:
            request = PolicyInput(principal, model, attrs, Kind(q.ask), q.purpose, q.consumption, q.own, q.submitted)
            decision = pdp.decide(request)
    except DesiderataError as exc:  # a purpose only the other bundle declares
        return Answer("", (f"refused: {exc.message}",))
    return Answer(decision.tier if decision.allowed else "", decision.reasons)


def profile_changes(old: PolicyBundle, new: PolicyBundle) -> list[ProfileChange]:
    """Every field of every tier's profile that differs between the bundles, tiers sorted."""
    out: list[ProfileChange] = []
    for tier in sorted(set(old.profiles) | set(new.profiles)):
        a, b = old.profiles.get(tier), new.profiles.get(tier)
        if a is None or b is None:
            out.append(
                ProfileChange(tier, "(tier)", None if a is None else "present", None if b is None else "present")
            )
            continue
        before, after = _flat(a.model_dump(mode="json")), _flat(b.model_dump(mode="json"))
        for name in sorted(set(before) | set(after)):
            if before.get(name) != after.get(name):
                out.append(ProfileChange(tier, name, before.get(name), after.get(name)))
    return out


def _flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested profile fields as dotted names (``privacy.lifetime_queries``)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out
