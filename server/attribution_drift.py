"""Attribution drift: do the model's recent decisions rest on the same features,
in the same way, as its training data did?

A global view (DESIGN.md) built from local explanations: the recorded decisions
of one model version (`DecisionStore.recent`) and a seeded sample of its
training reference are explained the same way (`global_views.local_attributions`),
towards the same class, and compared feature by feature.

- Per feature, a two-sample Kolmogorov–Smirnov test of the signed attributions
  (scipy's `ks_2samp`). A feature is flagged when its p-value, Bonferroni-adjusted
  over the d features, is below `ALPHA`: under no drift, the chance that any
  feature is flagged is at most `ALPHA`.
- Overall, the total-variation distance between the two importance profiles
  (each feature's share of the summed mean |attribution|), beside the distance
  that random splits of the pooled rows into the same two sizes exceed with
  probability `ALPHA` (a permutation test over `PERMUTATIONS` splits).

Only aggregates leave the server, and only over at least `MIN_DECISIONS`
decisions, so that no single subject's explanation can be read off them.
Attributions are cached row by row (`global_views.RowAttributions`; decisions
by their id: they are append-only), so a repeated query explains only what was
recorded since, and a query that reaches its deadline leaves its work to the next.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from scipy.stats import ks_2samp

from desiderata.explainers.base import ExplainableModel, ExplainContext
from desiderata.server.decision_store import DecisionRecord
from desiderata.server.errors import FailedPrecondition, InvalidArgument
from desiderata.server.global_views import RowAttributions, attribution_method, reference_sample

__all__ = [
    "ALPHA",
    "DEFAULT_DECISIONS",
    "MAX_DECISIONS",
    "MIN_DECISIONS",
    "AttributionDrift",
    "DriftMonitor",
    "FeatureDrift",
    "check_window",
    "compare",
    "drift_target",
]

ALPHA = 0.05
MIN_DECISIONS = 20
DEFAULT_DECISIONS = 500
MAX_DECISIONS = 5000
REFERENCE_ROWS = 500
PERMUTATIONS = 1000
NEGLIGIBLE = 1e-6
"""Attributions below this fraction of a reference row's mean total |attribution| count as zero:
float32 evaluation leaves ~1e-8 on features without influence, and a test of that noise is not drift."""


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's attributions, training reference against recent decisions.

    Args:
        feature: feature name.
        reference_mean_abs: mean |attribution| over the reference sample.
        recent_mean_abs: mean |attribution| over the recent decisions.
        ks_statistic: two-sample Kolmogorov–Smirnov statistic of the signed attributions, in [0, 1].
        p_value: its p-value, not adjusted.
        drifted: p_value × d < `ALPHA` (Bonferroni over the d features).
    """

    feature: str
    reference_mean_abs: float
    recent_mean_abs: float
    ks_statistic: float
    p_value: float
    drifted: bool


@dataclass(frozen=True)
class AttributionDrift:
    """The comparison of a model version's recent decisions with its training reference.

    Args:
        share_distance: total-variation distance between the importance shares, in [0, 1].
        share_threshold: the distance random splits of the pooled rows exceed with probability `ALPHA`.
        drifted: some feature is flagged.
        first_decision_at, last_decision_at: the oldest and newest decision compared.
    """

    model: str
    model_version: str
    method: str
    target_class: str
    reference_rows: int
    decisions: int
    first_decision_at: datetime
    last_decision_at: datetime
    share_distance: float
    share_threshold: float
    drifted: bool
    features: tuple[FeatureDrift, ...]


def drift_target(model: ExplainableModel) -> int:
    """The class whose attributions are compared: the card's positive class, else the last class."""
    card = model.card
    if card.positive_class and card.positive_class in card.class_names:
        return card.class_names.index(card.positive_class)
    return len(card.class_names) - 1


def compare(reference: np.ndarray, recent: np.ndarray, names: list[str]) -> tuple[float, float, list[FeatureDrift]]:
    """Tests and distances between two attribution samples, ``(n_ref, d)`` and ``(n, d)``.

    Returns:
        (share distance, its permutation threshold at `ALPHA`, one `FeatureDrift` per feature).
    """
    d = reference.shape[1]
    floor = NEGLIGIBLE * float(np.abs(reference).sum(axis=1).mean())
    reference = np.where(np.abs(reference) < floor, 0.0, reference)
    recent = np.where(np.abs(recent) < floor, 0.0, recent)
    features = []
    for i, name in enumerate(names):
        test = ks_2samp(reference[:, i], recent[:, i])
        p = float(test.pvalue)
        features.append(
            FeatureDrift(
                feature=name,
                reference_mean_abs=float(np.abs(reference[:, i]).mean()),
                recent_mean_abs=float(np.abs(recent[:, i]).mean()),
                ks_statistic=float(test.statistic),
                p_value=p,
                drifted=p * d < ALPHA,
            )
        )
    distance = float(_tv(np.abs(reference).mean(axis=0), np.abs(recent).mean(axis=0)))
    return distance, _permutation_threshold(np.abs(np.concatenate([reference, recent])), len(recent)), features


def _tv(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Total-variation distance between importance profiles (mean |attribution|s), along the last axis."""
    return np.asarray(0.5 * np.abs(_normalized(a) - _normalized(b)).sum(axis=-1))


def _normalized(m: np.ndarray) -> np.ndarray:
    total = m.sum(axis=-1, keepdims=True)
    return np.asarray(np.divide(m, total, out=np.full_like(m, 1.0 / m.shape[-1]), where=total > 0))


def _permutation_threshold(pooled: np.ndarray, n: int) -> float:
    """The 1 − `ALPHA` quantile of the share distance between random splits of the pooled
    |attributions| ``(N, d)`` into n rows and the rest: its exact null distribution when
    nothing drifted (the rows are then exchangeable), to `PERMUTATIONS` draws."""
    rng = np.random.default_rng(0)
    total_n, d = pooled.shape
    m = min(n, total_n - n)  # draw the smaller side; the other is what is left
    total = pooled.sum(axis=0)
    per = max(1, 2_000_000 // max(1, m * d))  # permutations per block: about 16 MB of gathered rows
    out = []
    for start in range(0, PERMUTATIONS, per):
        k = min(per, PERMUTATIONS - start)
        picks = rng.random((k, total_n)).argpartition(m, axis=1)[:, :m]
        drawn = pooled[picks].sum(axis=1)  # (k, d)
        out.append(_tv(drawn / m, (total - drawn) / (total_n - m)))
    return float(np.quantile(np.concatenate(out), 1 - ALPHA))


class DriftMonitor:
    """Explains reference rows and recorded decisions (each row's attributions kept) and
    compares them.

    Args:
        reference_rows: training-reference rows sampled (seeded).
        rows: where each row's attributions are kept (shared with `GlobalSummaries`).
    """

    def __init__(self, reference_rows: int = REFERENCE_ROWS, rows: RowAttributions | None = None) -> None:
        self.reference_rows = reference_rows
        self.rows = rows or RowAttributions()

    def drift(self, model: ExplainableModel, records: list[DecisionRecord], ctx: ExplainContext) -> AttributionDrift:
        """Compares `records` (recent decisions of `model`'s version) with the training reference.

        Attributions are kept as they are computed: a call that reaches its deadline leaves
        its work to the next one.

        Raises:
            FailedPrecondition: fewer than `MIN_DECISIONS` records, or no training reference.
        """
        if len(records) < MIN_DECISIONS:
            raise FailedPrecondition(
                f"attribution drift needs at least {MIN_DECISIONS} recorded decisions of model "
                f"{model.card.name!r} version {model.card.version!r}; there are {len(records)}"
            )
        target = drift_target(model)
        rows = reference_sample(model, self.reference_rows)
        tag = f"{model.card.name}\0{model.card.version}\0reference\0"
        keys = [f"{tag}{i}" for i in range(len(rows))]
        reference = self.rows.get(model, keys, rows.__getitem__, np.full(len(rows), target), ctx)
        # Decisions are keyed by their id (append-only, never reused): an id's attributions never change.
        recent = self.rows.get(
            model,
            [r.decision_id for r in records],
            lambda i: model.schema.encode(records[i].features),
            np.full(len(records), target),
            ctx,
        )
        distance, threshold, features = compare(reference, recent, model.schema.players)
        times = [r.created_at for r in records]
        return AttributionDrift(
            model=model.card.name,
            model_version=model.card.version,
            method=attribution_method(model),
            target_class=model.card.class_names[target],
            reference_rows=len(rows),
            decisions=len(records),
            first_decision_at=min(times),
            last_decision_at=max(times),
            share_distance=distance,
            share_threshold=threshold,
            drifted=any(f.drifted for f in features),
            features=tuple(features),
        )


def check_window(max_decisions: int) -> int:
    """Decisions compared for a request's `max_decisions` (0 = `DEFAULT_DECISIONS`)."""
    if max_decisions < 0 or max_decisions > MAX_DECISIONS:
        raise InvalidArgument.single("max_decisions", f"at most {MAX_DECISIONS}")
    return max_decisions or DEFAULT_DECISIONS
