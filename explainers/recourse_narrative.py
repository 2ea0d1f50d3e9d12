"""Recourse narratives: one plain sentence per counterfactual for the person
the decision is about.

"If your monthly income were €450 higher and your loan term 12 months
shorter, the application would have been approved." Display names and units
come from the model card; the outcome phrase comes from the caller (policy
bundle / locale), falling back to the class name. Only actionable features
are ever suggested: a counterfactual that changes an immutable feature is a
bug upstream, and this module refuses to phrase it rather than hide it.
"""

from __future__ import annotations

from collections.abc import Mapping

from desiderata.explainers.types import Counterfactual, FeatureChange
from desiderata.server.model_card import FeatureSpec, FeatureValue, ModelCard

__all__ = ["describe_change", "recourse_narrative"]

TIME_UNITS = ("months", "month", "years", "year", "weeks", "week", "days", "day")
"""Units whose changes read "longer" / "shorter" rather than "higher" / "lower"."""


def _amount(spec: FeatureSpec, value: float) -> str:
    text = f"{value:,.0f}" if spec.type == "integer" or abs(value) >= 100 else f"{value:,.2f}".rstrip("0").rstrip(".")
    if not spec.unit:
        return text
    return f"{spec.unit}{text}" if spec.unit_prefix else f"{text} {spec.unit}"


def _value(spec: FeatureSpec, value: FeatureValue) -> str:
    if spec.type == "boolean":
        return "yes" if value else "no"
    if spec.type == "category":
        return str(value)
    return _amount(spec, float(value))


def describe_change(spec: FeatureSpec, change: FeatureChange, verb: str = "were") -> str:
    """One clause, e.g. "your monthly income were €450 higher".

    Args:
        spec: the changed feature's card entry.
        change: the change (from and to values).
        verb: the verb after the feature ("" in later clauses: "and your loan term 12 months shorter").

    Raises:
        ValueError: when the feature is immutable (never suggested in recourse).
    """
    if spec.immutable:
        raise ValueError(f"immutable feature {spec.name!r} cannot be suggested in recourse")
    name = f"{spec.label} {verb}".rstrip()
    if spec.type in ("number", "integer"):
        delta = float(change.to_value) - float(change.from_value)
        if spec.unit in TIME_UNITS:
            word = "longer" if delta > 0 else "shorter"
        else:
            word = "higher" if delta > 0 else "lower"
        return f"your {name} {_amount(spec, abs(delta))} {word}"
    if spec.type == "boolean":
        return f"your {name} {_value(spec, change.to_value)}"
    return f"your {name} {_value(spec, change.to_value)} instead of {_value(spec, change.from_value)}"


def recourse_narrative(
    card: ModelCard,
    counterfactual: Counterfactual,
    outcome_phrases: Mapping[str, str] | None = None,
) -> str:
    """One sentence for one counterfactual.

    Args:
        card: the model card (display names, units, class names).
        counterfactual: a valid counterfactual.
        outcome_phrases: class name → what that outcome means for the person,
            e.g. ``{"good": "the application would have been approved"}``.

    Returns:
        The sentence; "" when the counterfactual has no changes.

    Raises:
        ValueError: a change of an unknown or immutable feature.
    """
    specs = {f.name: f for f in card.features}
    clauses: list[str] = []
    for change in counterfactual.changes:
        spec = specs.get(change.feature)
        if spec is None:
            raise ValueError(f"unknown feature {change.feature!r}")
        clauses.append(describe_change(spec, change, "were" if not clauses else ""))
    if not clauses:
        return ""
    cls = card.class_names[int(counterfactual.probabilities.argmax())]
    outcome = (outcome_phrases or {}).get(cls, f"the decision would have been {cls!r}")
    joined = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
    return f"If {joined}, {outcome}."
