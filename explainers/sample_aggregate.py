"""Aggregate sentences about influential training points, for audiences that
may not see individual records.

An end user asking "which past cases mattered?" gets a description of the
group ("The 10 most influential past cases were 70% good, 30% bad; median
income €3,100; median age 35.") rather than anyone's row. Numbers are rounded
to at most three significant figures and carry the card's display names and
units; protected features are left out unless asked for by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from desiderata.server.model_card import FeatureSchema, FeatureSpec, ModelCard

__all__ = ["aggregate_sentence", "format_value"]


def format_value(value: float, spec: FeatureSpec) -> str:
    """A rounded number with the card's unit, e.g. ``€3,100`` or ``36 months``."""
    if value == 0 or not np.isfinite(value):
        text = f"{value:g}"
    else:
        digits = 3 - int(np.floor(np.log10(abs(value)))) - 1
        rounded = round(value, digits)
        text = f"{rounded:,.0f}" if abs(rounded) >= 100 or float(rounded).is_integer() else f"{rounded:g}"
    if not spec.unit:
        return text
    return f"{spec.unit}{text}" if spec.unit_prefix else f"{text} {spec.unit}"


def _default_features(schema: FeatureSchema, limit: int) -> list[FeatureSpec]:
    numeric = [f for f in schema.features if f.type in ("number", "integer") and not f.protected]
    with_unit = [f for f in numeric if f.unit]
    return (with_unit + [f for f in numeric if not f.unit])[:limit]


def aggregate_sentence(
    card: ModelCard,
    schema: FeatureSchema,
    rows: np.ndarray,
    labels: np.ndarray,
    noun: str = "past cases",
    features: Sequence[str] | None = None,
    max_features: int = 2,
) -> str:
    """One sentence describing a group of training points.

    Args:
        card: the model card (class names, positive class).
        schema: its feature schema (display names, units, decoding).
        rows: encoded training rows of the group, ``(m, n_columns)``.
        labels: their class indices, ``(m,)``.
        noun: what the points are called for the audience.
        features: feature names to summarise; None picks up to `max_features`
            non-protected numeric features, those with units first.
        max_features: cap of the default choice.

    Returns:
        The sentence, or "" for an empty group.
    """
    m = len(labels)
    if m == 0:
        return ""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(card.class_names))
    order = np.argsort(-counts, kind="stable")
    if card.positive_class:
        pos = card.class_names.index(card.positive_class)
        order = np.concatenate([[pos], [i for i in order if i != pos]])
    shares = [f"{round(100 * counts[i] / m)}% {card.class_names[i]}" for i in order if counts[i] > 0]
    chosen = (
        [
            schema.by_name[name]
            for name in features
            if name in schema.by_name and schema.by_name[name].type in ("number", "integer")
        ]
        if features is not None
        else _default_features(schema, max_features)
    )
    parts = [f"The {m} most influential {noun} were {', '.join(shares)}"]
    column = {f.name: sl.start for f, sl in zip(schema.features, schema.slices, strict=True)}
    for spec in chosen:
        # The decoded value of a number is its column; of an integer, the column rounded (as `decode`).
        raw = np.asarray(rows, dtype=np.float64)[:, column[spec.name]]
        values = np.array([float(round(float(v))) for v in raw]) if spec.type == "integer" else raw
        parts.append(f"median {spec.label} {format_value(float(np.median(values)), spec)}")
    return "; ".join(parts) + "."
