"""Requests of the v1 API → domain calls. No logic beyond shape checks.

Request fields that cannot be converted (duplicate or value-less features,
parameters of the wrong family) are reported as field violations, all at
once; value checks against the model card happen in the pipeline. The way
back, domain answers → messages, is `render`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

from desiderata.explainers.base import Kind
from desiderata.explainers.types import (
    AttributionParams,
    CounterfactualParams,
    FeatureConstraint,
    RobustnessParams,
    SampleImportanceParams,
)
from desiderata.policy.model import Consumption
from desiderata.server.errors import FieldViolation, InvalidArgument
from desiderata.server.model_card import FeatureValue
from desiderata.server.served import ExplainCall
from desiderata.v1 import types_pb2 as pb

__all__ = ["KIND_FROM_PROTO", "KIND_TO_PROTO", "explain_batch_calls", "explain_call", "features_from_proto"]

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


def features_from_proto(instance: pb.Instance, prefix: str = "instance") -> dict[str, FeatureValue]:
    """Named feature values; duplicates and value-less features are violations."""
    out: dict[str, FeatureValue] = {}
    problems: list[FieldViolation] = []
    for i, f in enumerate(instance.features):
        name, value = f.name, f.value
        if not name:
            problems.append(FieldViolation(f"{prefix}.features[{i}]", "feature name is empty"))
            continue
        if name in out:
            problems.append(FieldViolation(f"{prefix}.features[{name}]", "feature given more than once"))
            continue
        which = value.WhichOneof("kind")
        if which is None:
            problems.append(FieldViolation(f"{prefix}.features[{name}]", "no value"))
            continue
        out[name] = getattr(value, which)
    if problems:
        raise InvalidArgument(f"{len(problems)} malformed feature(s)", problems)
    return out


LOCALE_TAG = re.compile(r"[A-Za-z]{2,8}(?:[-_][A-Za-z0-9]{1,8}){0,3}")
"""What `ExplainRequest.locale` may be: a BCP 47 language tag (language and up to three subtags)."""


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
    if locale and not LOCALE_TAG.fullmatch(locale):
        problems.append(FieldViolation("locale", "not a language tag such as en or de-DE"))
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


def explain_batch_calls(
    *,
    kind: int,
    purpose: str,
    consumption: int,
    params: pb.ExplanationParams,
    locale: str,
    model: str,
    model_version: str,
    instances: Sequence[pb.Instance],
    decision_ids: Sequence[str] = (),
) -> list[ExplainCall]:
    """The transport-neutral calls of ExplainBatch, one per instance (fields ``instances[i]``)
    or per recorded decision (``decision_ids[i]``)."""
    problems: list[FieldViolation] = []
    if instances and decision_ids:
        problems.append(FieldViolation("decision_ids", "give instances or decision_ids, not both"))
    try:
        base = explain_call(
            kind=kind,
            purpose=purpose,
            consumption=consumption,
            params=params,
            locale=locale,
            model=model,
            model_version=model_version,
            decision_id="-" if decision_ids else "",  # a recorded decision's model is its own
        )
    except InvalidArgument as exc:
        problems.extend(exc.violations)
    if decision_ids and not problems:
        missing = [FieldViolation(f"decision_ids[{i}]", "required") for i, d in enumerate(decision_ids) if not d]
        if missing:
            raise InvalidArgument(f"{len(missing)} invalid field(s)", missing)
        return [dataclasses.replace(base, decision_id=d) for d in decision_ids]
    features: list[dict[str, FeatureValue]] = []
    for i, instance in enumerate(instances):
        try:
            features.append(features_from_proto(instance, prefix=f"instances[{i}]"))
        except InvalidArgument as exc:
            problems.extend(exc.violations)
    if problems:
        raise InvalidArgument(f"{len(problems)} invalid field(s)", problems)
    return [dataclasses.replace(base, features=f) for f in features]


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
                reference_class=a.reference_class,
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
