"""Which method serves a request: the caller's choice, the tier's default, or the
family's default, checked against the tier's allowed methods and the server's
limits, with class labels mapped to indices of the model card."""

from __future__ import annotations

import dataclasses
from typing import Any

from desiderata.explainers import registry
from desiderata.explainers.base import Kind
from desiderata.explainers.types import AttributionParams, CounterfactualParams
from desiderata.policy.decision import Decision
from desiderata.server.config import ExplainSettings
from desiderata.server.errors import InternalError, InvalidArgument, NotImplementedYet, PermissionDenied
from desiderata.server.model_handle import ModelHandle
from desiderata.server.served import ExplainCall

__all__ = ["METHOD_ALIASES", "resolve_method"]


def resolve_method(
    handle: ModelHandle, call: ExplainCall, decision: Decision, settings: ExplainSettings
) -> tuple[str, Any]:
    """The method to run and its parameters with class labels mapped to indices."""
    params = call.params
    target: int | None = None
    if call.target_label:
        if call.target_label not in handle.card.class_names:
            name = "target_class" if call.kind is Kind.FEATURE_ATTRIBUTION else "desired_class"
            raise InvalidArgument.single(
                f"params.{call.kind.value}.{name}", f"unknown class; one of {handle.card.class_names}"
            )
        target = handle.card.class_names.index(call.target_label)
    if isinstance(params, AttributionParams):
        params = dataclasses.replace(params, target_class=target)
        if params.steps > settings.max_steps:
            raise InvalidArgument.single("params.attribution.steps", f"at most {settings.max_steps}")
    elif isinstance(params, CounterfactualParams):
        params = dataclasses.replace(params, desired_class=target)
    profile = decision.profile
    if profile is None:
        raise InternalError("an allowed decision without a profile")
    method = getattr(params, "method", "") or getattr(params, "norm", "")
    method = method or (profile.methods[0] if profile.methods else "")
    method = METHOD_ALIASES.get((call.kind, method), method)
    if not method:
        method = registry.default_method(call.kind) or ""
        if method and handle.torch_module() is None and registry.get(method).capabilities.white_box:
            # A black-box model gets the family's black-box default rather than an error.
            method = BLACK_BOX_DEFAULTS.get(call.kind, "")
    if not method:
        raise NotImplementedYet(f"no {call.kind.value} method is available on this server yet")
    cls = registry.get(method, f"params.{call.kind.value}.method")
    if cls.capabilities.kind is not call.kind:
        raise InvalidArgument.single(
            f"params.{call.kind.value}.method", f"{method!r} is a {cls.capabilities.kind.value} method"
        )
    if profile.methods and method not in profile.methods:
        raise PermissionDenied(
            f"method {method!r} is not allowed at tier {decision.tier!r}",
            decision_id=decision.decision_id,
            reasons=decision.reasons,
        )
    return method, params


METHOD_ALIASES = {
    (Kind.COUNTERFACTUAL, "gradient"): "counterfactual_gradient",
    (Kind.COUNTERFACTUAL, "genetic"): "counterfactual_genetic",
    (Kind.ROBUSTNESS, "l2"): "robustness_l2",
    (Kind.ROBUSTNESS, "l0"): "robustness_l0",
    (Kind.SAMPLE_IMPORTANCE, "nearest_neighbors"): "nearest_neighbours",
}
"""Short wire names of methods."""

BLACK_BOX_DEFAULTS = {
    Kind.FEATURE_ATTRIBUTION: "permutation_shapley",
    Kind.COUNTERFACTUAL: "counterfactual_genetic",
    Kind.SAMPLE_IMPORTANCE: "nearest_neighbours",
}
"""Default methods for models without gradients (robustness needs gradients)."""
