"""Domain answers → messages of the v1 API (the way in is `convert`).

What reaches the wire is what the disclosure step left: attributions in rank
order with their shares, counterfactuals with their changes and the recourse
sentence, influential samples, robustness, the budget block. No logic beyond
shaping; non-finite numbers never reach a message.
"""

from __future__ import annotations

import math

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from desiderata.explainers.recourse_narrative import recourse_narrative
from desiderata.explainers.types import (
    AttributionResult,
    Counterfactual,
    CounterfactualResult,
    FeatureChange,
    RobustnessResult,
    SampleImportanceResult,
)
from desiderata.policy.guard import Budget
from desiderata.server.grpc.convert import KIND_TO_PROTO
from desiderata.server.model_card import FeatureValue, ModelCard
from desiderata.server.served import ServedExplanation
from desiderata.v1 import model_service_pb2 as ms
from desiderata.v1 import types_pb2 as pb

__all__ = [
    "budget_to_proto",
    "card_to_proto",
    "explanation_to_proto",
    "prediction_to_proto",
    "timestamp",
    "value_to_proto",
]

FEATURE_TYPES = {
    "number": pb.FEATURE_TYPE_NUMBER,
    "integer": pb.FEATURE_TYPE_INTEGER,
    "category": pb.FEATURE_TYPE_CATEGORY,
    "boolean": pb.FEATURE_TYPE_BOOLEAN,
}


def value_to_proto(value: FeatureValue) -> pb.FeatureValue:
    if isinstance(value, bool):
        return pb.FeatureValue(boolean=value)
    if isinstance(value, int):
        return pb.FeatureValue(integer=value)
    if isinstance(value, float):
        return pb.FeatureValue(number=value)
    return pb.FeatureValue(category=str(value))


def timestamp(dt: object) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt)  # type: ignore[arg-type]
    return ts


def prediction_to_proto(card: ModelCard, probs: np.ndarray) -> pb.Prediction:
    idx = int(np.argmax(probs))
    return pb.Prediction(
        label=card.class_names[idx],
        class_index=idx,
        probabilities=[
            pb.ClassProbability(label=c, probability=float(p)) for c, p in zip(card.class_names, probs, strict=True)
        ],
    )


def _attribution(card: ModelCard, r: AttributionResult, served: ServedExplanation, out: pb.FeatureAttribution) -> None:
    """Writes the attributions into `out`, the response's own field: building a message and
    copying it in cost a third of the whole rendering (30 features)."""
    d = served.disclosure
    out.target_class = card.class_names[r.target_class]
    if d.narrative_only:  # sentences, not numbers
        return
    labels = card.labels
    out.output, out.baseline_output = r.output, r.baseline_output
    finite = np.where(np.isfinite(r.values), r.values, 0.0)
    order: list[int] = np.argsort(-np.abs(finite), kind="stable").tolist()
    shares = d.shares if d.shares else dict(zip(r.players, r.shares.tolist(), strict=True))
    values: list[float] = r.values.tolist()  # Python floats once, not one numpy scalar per field
    errors: list[float] | None = None if r.std_errors is None else r.std_errors.tolist()
    add = out.attributions.add
    for rank, i in enumerate(order, start=1):
        value = values[i]
        if not math.isfinite(value):
            continue
        name = r.players[i]
        a = add(
            feature=name,
            display_name=labels.get(name, name),
            value=value,
            share=float(shares.get(name, 0.0)),
            rank=rank,
        )
        if errors is not None and math.isfinite(errors[i]):
            a.std_error = errors[i]


def _change(card: ModelCard, c: FeatureChange) -> pb.FeatureChange:
    labels = card.labels
    return pb.FeatureChange(
        feature=c.feature,
        display_name=labels.get(c.feature, c.feature),
        from_value=value_to_proto(c.from_value),
        to_value=value_to_proto(c.to_value),
    )


def _counterfactuals(card: ModelCard, r: CounterfactualResult) -> pb.Counterfactuals:
    out = pb.Counterfactuals(reason_none=r.reason_none)
    for cf in r.counterfactuals:
        out.counterfactuals.add(
            changes=[_change(card, c) for c in cf.changes],
            prediction=prediction_to_proto(card, cf.probabilities),
            valid=cf.valid,
            normalized_l1_distance=_finite(cf.normalized_l1_distance),
            features_changed=cf.features_changed,
            plausibility_distance=_finite(cf.plausibility_distance),
            off_manifold=cf.off_manifold,
            narrative=_recourse(card, cf),
        )
    return out


def _recourse(card: ModelCard, cf: Counterfactual) -> str:
    try:
        return recourse_narrative(card, cf)
    except ValueError:  # a change the narrative may not voice (e.g. an immutable feature)
        return ""


def _samples(r: SampleImportanceResult) -> pb.InfluentialSamples:
    out = pb.InfluentialSamples(aggregate=r.aggregate, next_page_token=r.next_page_token)
    for s in r.samples:
        item = out.samples.add(
            sample_id=s.sample_id,
            label=s.label,
            influence=_finite(s.influence),
            relative_influence=_finite(s.relative_influence),
            self_influence=_finite(s.self_influence),
            outlier=s.outlier,
        )
        if s.row is not None:
            item.row.features.extend(pb.Feature(name=k, value=value_to_proto(v)) for k, v in s.row.items())
    return out


def _robustness(card: ModelCard, r: RobustnessResult) -> pb.Robustness:
    out = pb.Robustness(
        distance=_finite(r.distance),
        norm=r.norm,
        found=r.found,
        perturbation=[_change(card, c) for c in r.perturbation],
    )
    if r.flipped_probabilities is not None:
        out.flipped_prediction.CopyFrom(prediction_to_proto(card, r.flipped_probabilities))
    return out


def _finite(x: float) -> float:
    return float(x) if math.isfinite(float(x)) else 0.0


def explanation_to_proto(served: ServedExplanation) -> pb.Explanation:
    """The wire form of a served explanation."""
    card = served.model.card
    ex = served.explanation
    d = served.disclosure
    out = pb.Explanation(
        explanation_id=served.explanation_id,
        model=card.name,
        model_version=card.version,
        kind=KIND_TO_PROTO[ex.kind],
        method=ex.method,
        method_version=ex.method_version,
        prediction=prediction_to_proto(card, served.probabilities),
        narrative=list(served.narrative),
        created_at=timestamp(served.created_at),
        recorded_decision_id=served.recorded_decision_id,
    )
    p = ex.parameters
    r = ex.result
    if isinstance(r, AttributionResult):
        _attribution(card, r, served, out.feature_attribution)
        params = out.params.attribution
        params.method = ex.method
        params.steps = int(p.get("steps", 0))
        params.integration_rule = str(p.get("integration_rule", ""))
        params.baseline = str(p.get("baseline", ""))
        params.max_samples = int(p.get("max_samples", 0))
        params.target_class = card.class_names[r.target_class]
        params.seed = int(p.get("seed", 0))
        params.reference_class = str(p.get("reference_class", ""))
    elif isinstance(r, CounterfactualResult):
        out.counterfactuals.CopyFrom(_counterfactuals(card, r))
        out.params.counterfactual.method = ex.method
    elif isinstance(r, SampleImportanceResult):
        out.influential_samples.CopyFrom(_samples(r))
        out.params.sample_importance.method = ex.method
    else:
        out.robustness.CopyFrom(_robustness(card, r))
        out.params.robustness.norm = r.norm
    q = ex.quality
    quality = out.quality
    for name in (
        "completeness_gap",
        "relative_completeness_gap",
        "relative_std_error",
        "max_sensitivity",
        "infidelity",
        "rank_agreement",
    ):
        value = getattr(q, name)
        if value is not None and math.isfinite(float(value)):
            setattr(quality, name, float(value))
    quality.agreement_method = q.agreement_method
    quality.model_evaluations = q.model_evaluations
    quality.compute_ms = q.compute_ms
    quality.converged = q.converged
    quality.warnings.extend(q.warnings)
    disclosure = out.disclosure
    disclosure.tier, disclosure.decision_id, disclosure.policy_version = d.tier, d.decision_id, d.policy_version
    disclosure.reasons.extend(d.reasons)
    disclosure.redacted_features.extend(d.redacted_features)
    disclosure.top_k, disclosure.rounding, disclosure.narrative_only = d.top_k, d.rounding, d.narrative_only
    disclosure.noised, disclosure.noise_stddev, disclosure.clip_norm = d.noised, d.noise_stddev, d.clip_norm
    disclosure.epsilon_charged = d.epsilon_charged
    disclosure.notes.extend(d.notes)
    if d.budget is not None:
        out.disclosure.budget.CopyFrom(budget_to_proto(d.budget))
    return out


def budget_to_proto(b: Budget) -> pb.Budget:
    out = pb.Budget()
    if b.privacy.epsilon_limit is not None or b.privacy.rho > 0:
        out.epsilon_spent = b.privacy.epsilon
    if b.privacy.epsilon_remaining is not None:
        out.epsilon_remaining = b.privacy.epsilon_remaining
    if b.queries_remaining is not None:
        out.queries_remaining = b.queries_remaining
    elif b.answers_remaining is not None:
        out.queries_remaining = b.answers_remaining
    return out


def card_to_proto(card: ModelCard) -> ms.ModelCard:
    out = ms.ModelCard(
        name=card.name,
        version=card.version,
        task=card.task,
        description=card.description,
        domain=card.domain,
        class_names=card.class_names,
        positive_class=card.positive_class,
        differentiable=card.differentiable,
        artifact_sha256=card.artifact_sha256,
        privacy=ms.PrivacyFacts(
            dp_trained=card.privacy.dp_trained, epsilon=card.privacy.epsilon, delta=card.privacy.delta
        ),
    )
    for f in card.features:
        spec = out.features.add(
            name=f.name,
            display_name=f.label,
            type=FEATURE_TYPES[f.type],
            unit=f.unit,
            categories=f.categories,
            immutable=f.immutable,
            protected=f.protected,
            description=f.description,
        )
        if f.min is not None:
            spec.min = f.min
        if f.max is not None:
            spec.max = f.max
    for g in card.feature_groups:
        out.feature_groups.add(name=g.name, display_name=g.label, features=g.features, description=g.description)
    if card.training_data is not None:
        t = card.training_data
        out.training_data.CopyFrom(ms.TrainingData(name=t.name, source=t.source, licence=t.licence, rows=t.rows))
    return out
