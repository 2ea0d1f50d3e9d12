"""Proto ⇄ domain conversion for the v1 API. No logic beyond shape checks.

Request fields that cannot be converted (duplicate or value-less features,
parameters of the wrong family) are reported as field violations, all at
once; value checks against the model card happen in the pipeline.
"""

from __future__ import annotations

import math

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from desiderata.explainers.base import Kind
from desiderata.explainers.recourse_narrative import recourse_narrative
from desiderata.explainers.types import (
    AttributionParams,
    AttributionResult,
    Counterfactual,
    CounterfactualParams,
    CounterfactualResult,
    FeatureChange,
    FeatureConstraint,
    RobustnessParams,
    RobustnessResult,
    SampleImportanceParams,
    SampleImportanceResult,
)
from desiderata.policy.guard import Budget
from desiderata.policy.model import Consumption
from desiderata.server.errors import FieldViolation, InvalidArgument
from desiderata.server.model_card import FeatureValue, ModelCard
from desiderata.server.served import ExplainCall, ServedExplanation
from desiderata.v1 import model_service_pb2 as ms
from desiderata.v1 import types_pb2 as pb

__all__ = [
    "budget_to_proto",
    "card_to_proto",
    "explain_call",
    "explanation_to_proto",
    "features_from_proto",
    "prediction_to_proto",
    "timestamp",
    "value_to_proto",
]

KIND_FROM_PROTO = {
    pb.EXPLANATION_KIND_FEATURE_ATTRIBUTION: Kind.FEATURE_ATTRIBUTION,
    pb.EXPLANATION_KIND_COUNTERFACTUAL: Kind.COUNTERFACTUAL,
    pb.EXPLANATION_KIND_SAMPLE_IMPORTANCE: Kind.SAMPLE_IMPORTANCE,
    pb.EXPLANATION_KIND_ROBUSTNESS: Kind.ROBUSTNESS,
}
KIND_TO_PROTO = {v: k for k, v in KIND_FROM_PROTO.items()}
PARAMS_FIELD = {
    Kind.FEATURE_ATTRIBUTION: "attribution",
    Kind.COUNTERFACTUAL: "counterfactual",
    Kind.SAMPLE_IMPORTANCE: "sample_importance",
    Kind.ROBUSTNESS: "robustness",
}
KIND_OF_FIELD = {v: k for k, v in PARAMS_FIELD.items()}
DIRECTIONS = {
    pb.CHANGE_DIRECTION_UNSPECIFIED: "any",
    pb.CHANGE_DIRECTION_ANY: "any",
    pb.CHANGE_DIRECTION_INCREASE_ONLY: "increase",
    pb.CHANGE_DIRECTION_DECREASE_ONLY: "decrease",
}
FEATURE_TYPES = {
    "number": pb.FEATURE_TYPE_NUMBER,
    "integer": pb.FEATURE_TYPE_INTEGER,
    "category": pb.FEATURE_TYPE_CATEGORY,
    "boolean": pb.FEATURE_TYPE_BOOLEAN,
}


def features_from_proto(instance: pb.Instance, prefix: str = "instance") -> dict[str, FeatureValue]:
    """Named feature values; duplicates and value-less features are violations."""
    out: dict[str, FeatureValue] = {}
    problems: list[FieldViolation] = []
    for i, f in enumerate(instance.features):
        path = f"{prefix}.features[{f.name or i}]"
        if not f.name:
            problems.append(FieldViolation(path, "feature name is empty"))
            continue
        if f.name in out:
            problems.append(FieldViolation(path, "feature given more than once"))
            continue
        which = f.value.WhichOneof("kind")
        if which is None:
            problems.append(FieldViolation(path, "no value"))
            continue
        out[f.name] = getattr(f.value, which)
    if problems:
        raise InvalidArgument(f"{len(problems)} malformed feature(s)", problems)
    return out


def value_to_proto(value: FeatureValue) -> pb.FeatureValue:
    if isinstance(value, bool):
        return pb.FeatureValue(boolean=value)
    if isinstance(value, int):
        return pb.FeatureValue(integer=value)
    if isinstance(value, float):
        return pb.FeatureValue(number=value)
    return pb.FeatureValue(category=str(value))


def explain_call(
    *,
    kind: int,
    purpose: str,
    consumption: int,
    params: pb.ExplanationParams,
    locale: str,
    model: str = "",
    model_version: str = "",
    instance: pb.Instance | None = None,
    decision_id: str = "",
) -> ExplainCall:
    """The transport-neutral call of Explain / ExplainDecision / ExplainStream."""
    problems: list[FieldViolation] = []
    which = params.WhichOneof("params")
    if kind == pb.EXPLANATION_KIND_UNSPECIFIED:
        domain_kind = KIND_OF_FIELD[which] if which else Kind.FEATURE_ATTRIBUTION
    elif kind in KIND_FROM_PROTO:
        domain_kind = KIND_FROM_PROTO[pb.ExplanationKind.ValueType(kind)]
    else:
        raise InvalidArgument.single("kind", f"unknown explanation kind {kind}")
    if which is not None and KIND_OF_FIELD[which] is not domain_kind:
        problems.append(FieldViolation(f"params.{which}", f"parameters do not match kind {domain_kind.value}"))
    if not purpose:
        problems.append(FieldViolation("purpose", "required: why the explanation is asked for"))
    if consumption not in (pb.CONSUMPTION_UNSPECIFIED, pb.CONSUMPTION_STATIC, pb.CONSUMPTION_DYNAMIC):
        problems.append(FieldViolation("consumption", "unknown consumption mode"))
    if decision_id == "" and not model:
        problems.append(FieldViolation("model", "required"))
    features = None
    if instance is not None:
        try:
            features = features_from_proto(instance)
        except InvalidArgument as exc:
            problems.extend(exc.violations)
    if problems:
        raise InvalidArgument(f"{len(problems)} invalid field(s)", problems)
    domain_params, target, seed = _params(domain_kind, params)
    return ExplainCall(
        kind=domain_kind,
        purpose=purpose,
        consumption=Consumption.DYNAMIC if consumption == pb.CONSUMPTION_DYNAMIC else Consumption.STATIC,
        params=domain_params,
        model=model,
        model_version=model_version,
        features=features,
        decision_id=decision_id,
        target_label=target,
        locale=locale or "en",
        seed=seed,
    )


def _params(kind: Kind, params: pb.ExplanationParams) -> tuple[object, str, int]:
    if kind is Kind.FEATURE_ATTRIBUTION:
        a = params.attribution
        if a.target_std_error < 0 or not math.isfinite(a.target_std_error):
            raise InvalidArgument.single("params.attribution.target_std_error", "must be ≥ 0 and finite")
        if a.kernel_width < 0 or not math.isfinite(a.kernel_width):
            raise InvalidArgument.single("params.attribution.kernel_width", "must be ≥ 0 and finite")
        return (
            AttributionParams(
                method=a.method,
                steps=a.steps,
                integration_rule=a.integration_rule,
                baseline=a.baseline or "card",
                max_samples=a.max_samples,
                target_std_error=a.target_std_error,
                quality_metrics=tuple(a.quality_metrics),
                agreement_method=a.agreement_method,
                kernel_width=a.kernel_width,
            ),
            a.target_class,
            a.seed,
        )
    if kind is Kind.COUNTERFACTUAL:
        c = params.counterfactual
        constraints = tuple(
            FeatureConstraint(
                feature=k.feature,
                immutable=k.immutable,
                min=k.min if k.HasField("min") else None,
                max=k.max if k.HasField("max") else None,
                direction=DIRECTIONS.get(k.direction, "any"),
            )
            for k in c.constraints
        )
        return (
            CounterfactualParams(method=c.method, count=c.count, constraints=constraints),
            c.desired_class,
            c.seed,
        )
    if kind is Kind.SAMPLE_IMPORTANCE:
        s = params.sample_importance
        return (
            SampleImportanceParams(
                method=s.method,
                top_k=s.top_k,
                exclude_outliers=s.exclude_outliers,
                relative=s.relative,
                parameter_subset=s.parameter_subset,
                page_size=s.page_size,
                page_token=s.page_token,
            ),
            "",
            0,
        )
    r = params.robustness
    return RobustnessParams(norm=r.norm or "l2"), "", r.seed


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


def _attribution(card: ModelCard, r: AttributionResult, served: ServedExplanation) -> pb.FeatureAttribution:
    d = served.disclosure
    labels = {f.name: f.label for f in card.features}
    out = pb.FeatureAttribution(target_class=card.class_names[r.target_class])
    if d.narrative_only:  # sentences, not numbers
        return out
    out.output, out.baseline_output = r.output, r.baseline_output
    finite = np.where(np.isfinite(r.values), r.values, 0.0)
    order = np.argsort(-np.abs(finite), kind="stable")
    shares = d.shares if d.shares else dict(zip(r.players, r.shares.tolist(), strict=True))
    for rank, i in enumerate(order, start=1):
        if not math.isfinite(float(r.values[i])):
            continue
        a = out.attributions.add(
            feature=r.players[i],
            display_name=labels.get(r.players[i], r.players[i]),
            value=float(r.values[i]),
            share=float(shares.get(r.players[i], 0.0)),
            rank=rank,
        )
        if r.std_errors is not None and math.isfinite(float(r.std_errors[i])):
            a.std_error = float(r.std_errors[i])
    return out


def _change(card: ModelCard, c: FeatureChange) -> pb.FeatureChange:
    labels = {f.name: f.label for f in card.features}
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
        out.feature_attribution.CopyFrom(_attribution(card, r, served))
        out.params.attribution.CopyFrom(
            pb.AttributionParams(
                method=ex.method,
                steps=int(p.get("steps", 0)),
                integration_rule=str(p.get("integration_rule", "")),
                baseline=str(p.get("baseline", "")),
                max_samples=int(p.get("max_samples", 0)),
                target_class=card.class_names[r.target_class],
                seed=int(p.get("seed", 0)),
            )
        )
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
    out.disclosure.CopyFrom(
        pb.Disclosure(
            tier=d.tier,
            decision_id=d.decision_id,
            policy_version=d.policy_version,
            reasons=list(d.reasons),
            redacted_features=list(d.redacted_features),
            top_k=d.top_k,
            rounding=d.rounding,
            narrative_only=d.narrative_only,
            noised=d.noised,
            noise_stddev=d.noise_stddev,
            clip_norm=d.clip_norm,
            epsilon_charged=d.epsilon_charged,
            notes=list(d.notes),
        )
    )
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
    if card.training_data is not None:
        t = card.training_data
        out.training_data.CopyFrom(ms.TrainingData(name=t.name, source=t.source, licence=t.licence, rows=t.rows))
    return out
