"""The transport-neutral core: resolve → decide → admit → explain → disclose → record.

The gRPC servicers only convert messages and call this class; everything a
request goes through, in order, is here. Heavy work (model evaluation,
explainers) runs on a worker pool off the event loop, bounded by the
request's deadline; cancellation stops the work between batches.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import numpy as np
import structlog

from desiderata.explainers import registry
from desiderata.explainers.base import ExplainContext, Kind
from desiderata.explainers.types import AttributionParams, CounterfactualParams, Explanation
from desiderata.policy.decision import Decision, PolicyDecisionPoint, PolicyInput
from desiderata.policy.model import Consumption, Principal
from desiderata.server.config import ExplainSettings
from desiderata.server.decision_store import DecisionRecord, DecisionStore, new_record_id, utcnow
from desiderata.server.errors import (
    DeadlineExceeded,
    DesiderataError,
    FieldViolation,
    InternalError,
    InvalidArgument,
    NotImplementedYet,
    PermissionDenied,
    UnknownPurpose,
)
from desiderata.server.model_card import FeatureValue
from desiderata.server.model_repository import ModelHandle, ModelRepository

__all__ = ["DisclosureInfo", "ExplainCall", "KindCapability", "Pipeline", "ServedExplanation"]

log = structlog.get_logger("desiderata.pipeline")
T = TypeVar("T")

PREDICT_ROLES = frozenset({"ml_engineer", "domain_expert"})
"""Roles that may score instances through Predict (services acting for the business)."""


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
    notes: tuple[str, ...] = ()


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


@dataclass
class Pipeline:
    """The request path shared by every transport.

    Args:
        models: the model repository.
        decisions: the decision store.
        pdp: the policy decision point.
        settings: explainer limits.
        workers: threads for model evaluation and explainers.
    """

    models: ModelRepository
    decisions: DecisionStore
    pdp: PolicyDecisionPoint
    settings: ExplainSettings = field(default_factory=ExplainSettings)
    workers: int = 2
    _pool: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="desiderata-worker")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.decisions.close()

    async def _off_loop(self, fn: Callable[[], T], deadline: float | None, cancel: threading.Event | None = None) -> T:
        """Runs `fn` on the worker pool, bounded by `deadline` (monotonic)."""
        future = asyncio.get_running_loop().run_in_executor(self._pool, fn)
        timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            if cancel is not None:
                cancel.set()
            raise DeadlineExceeded("the deadline passed before the work was complete") from None
        except asyncio.CancelledError:
            if cancel is not None:
                cancel.set()
            raise

    # ------------------------------------------------------------ predictions

    async def predict(
        self,
        principal: Principal,
        model: str,
        version: str,
        features: dict[str, FeatureValue],
        subject_id: str,
        deadline: float | None,
    ) -> tuple[DecisionRecord, ModelHandle]:
        """Scores an instance for a subject and records the decision."""
        if principal.role not in PREDICT_ROLES:
            raise PermissionDenied(f"role {principal.role!r} may not record predictions")
        if not subject_id:
            raise InvalidArgument.single("subject_id", "required: whom the decision is about")
        handle = self.models.resolve(model, version)
        handle.schema.validate(features)
        x = handle.schema.encode(features)
        probs = await self._off_loop(lambda: handle.predict_proba(x[None, :])[0], deadline)
        rec = DecisionRecord(
            decision_id=new_record_id(),
            subject_id=subject_id,
            principal_id=principal.id,
            model=handle.name,
            model_version=handle.version,
            features=dict(features),
            probabilities=tuple(float(p) for p in probs),
            created_at=utcnow(),
        )
        await self._off_loop(lambda: self.decisions.record(rec), deadline)
        log.info(
            "decision_recorded",
            decision_id=rec.decision_id,
            model=handle.name,
            model_version=handle.version,
            principal=principal.id,
        )
        return rec, handle

    # ----------------------------------------------------------- explanations

    def _check_purpose(self, purpose: str) -> None:
        known = self.pdp.known_purposes()
        if purpose not in known:
            raise UnknownPurpose(
                f"unknown purpose {purpose!r}",
                [FieldViolation("purpose", f"must be one of {sorted(known)}")],
            )

    def _decide(self, principal: Principal, handle: ModelHandle, call: ExplainCall, own: bool) -> Decision:
        card = handle.card
        attrs: dict[str, str | bool | int | float] = {
            "domain": card.domain,
            "dp_trained": card.privacy.dp_trained,
            "name": card.name,
        }
        request = PolicyInput(
            principal=principal,
            model=handle.name,
            model_attributes=attrs,
            kind=call.kind,
            purpose=call.purpose,
            consumption=call.consumption,
            own_decision=own,
            submitted_instance=call.features is not None,
        )
        decision = self.pdp.decide(request)
        log.info(
            "policy_decision",
            decision_id=decision.decision_id,
            principal=principal.id,
            role=principal.role,
            model=handle.name,
            model_version=handle.version,
            kind=call.kind.value,
            purpose=call.purpose,
            consumption=call.consumption.value,
            allowed=decision.allowed,
            tier=decision.tier,
            reasons=list(decision.reasons),
            policy_version=decision.policy_version,
        )
        if not decision.allowed or decision.profile is None:
            raise PermissionDenied(
                f"policy denies {call.kind.value} explanations to role {principal.role!r} for purpose {call.purpose!r}",
                decision_id=decision.decision_id,
                reasons=decision.reasons,
            )
        if call.features is not None and not decision.profile.may_submit_instances:
            raise PermissionDenied(
                "this principal may only explain recorded decisions (ExplainDecision)",
                decision_id=decision.decision_id,
                reasons=decision.reasons,
            )
        return decision

    def _resolve_params(self, handle: ModelHandle, call: ExplainCall, decision: Decision) -> tuple[str, Any]:
        """The method to run and its parameters with class labels mapped to indices."""
        params = call.params
        target: int | None = None
        if call.target_label:
            if call.target_label not in handle.card.class_names:
                field_name = "target_class" if call.kind is Kind.FEATURE_ATTRIBUTION else "desired_class"
                raise InvalidArgument.single(
                    f"params.{call.kind.value}.{field_name}",
                    f"unknown class; one of {handle.card.class_names}",
                )
            target = handle.card.class_names.index(call.target_label)
        if isinstance(params, AttributionParams):
            params = dataclasses.replace(params, target_class=target)
            if params.steps > self.settings.max_steps:
                raise InvalidArgument.single("params.attribution.steps", f"at most {self.settings.max_steps}")
            if params.max_samples > self.settings.max_samples:
                raise InvalidArgument.single("params.attribution.max_samples", f"at most {self.settings.max_samples}")
        elif isinstance(params, CounterfactualParams):
            params = dataclasses.replace(params, desired_class=target)
        profile = decision.profile
        if profile is None:
            raise InternalError("an allowed decision without a profile")
        method = getattr(params, "method", "") or (profile.methods[0] if profile.methods else "")
        method = method or registry.default_method(call.kind) or ""
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

    async def explain(
        self,
        principal: Principal,
        call: ExplainCall,
        deadline: float | None,
        progress: Callable[[ServedExplanation], None] | None = None,
    ) -> ServedExplanation:
        """Explains a submitted instance or a recorded decision for `principal`."""
        record: DecisionRecord | None = None
        if call.decision_id:
            record = await self._off_loop(lambda: self.decisions.get(call.decision_id), deadline)
            own = bool(principal.subject_id) and principal.subject_id == record.subject_id
            if principal.role == "end_user" and not own:
                log.info(
                    "policy_decision",
                    principal=principal.id,
                    role=principal.role,
                    allowed=False,
                    reasons=["builtin.end_user_own_decisions_only"],
                    recorded_decision_id=call.decision_id,
                )
                raise PermissionDenied("end users may only explain their own decisions")
            handle = self.models.resolve(record.model, record.model_version)
            features = record.features
        else:
            own = False
            handle = self.models.resolve(call.model, call.model_version)
            if call.features is None:
                raise InvalidArgument.single("instance", "required")
            handle.schema.validate(call.features)
            features = call.features
        self._check_purpose(call.purpose)
        decision = self._decide(principal, handle, call, own)
        method, params = self._resolve_params(handle, call, decision)
        explainer = registry.get(method)()
        x = handle.schema.encode(features)
        profile = decision.profile
        if profile is None:
            raise InternalError("an allowed decision without a profile")
        disclosure = DisclosureInfo(
            tier=decision.tier,
            decision_id=decision.decision_id,
            policy_version=decision.policy_version,
            reasons=decision.reasons,
            redacted_features=profile.redacted_features,
            top_k=profile.top_k,
            rounding=profile.rounding,
            narrative_only=profile.narrative_only,
        )
        probs = await self._off_loop(lambda: handle.predict_proba(x[None, :])[0], deadline)

        def serve(explanation: Explanation) -> ServedExplanation:
            return ServedExplanation(
                explanation_id="exp_" + uuid.uuid4().hex,
                model=handle,
                probabilities=probs,
                explanation=explanation,
                disclosure=disclosure,
                created_at=utcnow(),
                recorded_decision_id=record.decision_id if record else "",
            )

        cancel = threading.Event()
        ctx = ExplainContext(
            seed=call.seed,
            deadline=deadline,
            cancel=cancel,
            progress=None if progress is None else (lambda ex: progress(serve(ex))),
        )

        def work() -> Explanation:
            try:
                return explainer.explain(handle, x, params, ctx)
            except DesiderataError:
                raise
            except Exception as exc:
                log.exception("explainer_failed", method=method, model=handle.name)
                raise InternalError("explainer failed") from exc

        explanation = await self._off_loop(work, deadline, cancel)
        log.info(
            "explanation_served",
            decision_id=decision.decision_id,
            method=method,
            model=handle.name,
            compute_ms=round(explanation.quality.compute_ms, 3),
        )
        return serve(explanation)

    def capabilities(
        self, principal: Principal, model: str, version: str, purpose: str, consumption: Consumption
    ) -> tuple[ModelHandle, list[KindCapability], str]:
        """What `principal` may ask of a model, from the same decision point."""
        handle = self.models.resolve(model, version)
        self._check_purpose(purpose)
        out: list[KindCapability] = []
        version_seen = self.pdp.version
        for kind in Kind:
            available = [
                m
                for m in registry.names(kind)
                if handle.card.differentiable or not registry.get(m).capabilities.white_box
            ]
            if not available:
                continue
            call = ExplainCall(kind=kind, purpose=purpose, consumption=consumption, params=None, features={})
            try:
                decision = self._decide(principal, handle, call, own=False)
                submit = True
            except PermissionDenied:
                try:
                    decision = self._decide(principal, handle, dataclasses.replace(call, features=None), True)
                    submit = False
                except PermissionDenied:
                    continue
            profile = decision.profile
            if profile is None:
                continue
            methods = tuple(m for m in available if not profile.methods or m in profile.methods)
            out.append(KindCapability(kind, decision.tier, methods, submit, profile.narrative_only, profile.top_k))
            version_seen = decision.policy_version
        return handle, out, version_seen
