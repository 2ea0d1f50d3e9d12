"""Pipeline operations beyond single explanations, each decided by the same
policy and audited: global summaries (``global/summary``), attribution drift
(``global/drift``), the audit log (``audit/read``) and feedback on explanations
(dynamic consumption); and what a caller may ask of a model (its capabilities).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from desiderata.explainers import registry
from desiderata.explainers.base import ExplainContext, Kind
from desiderata.policy.audit import AuditFilter, AuditPage, VerifyResult
from desiderata.policy.decision import Decision, PolicyInput
from desiderata.policy.feedback import Feedback, Verdict
from desiderata.policy.guard import Budget
from desiderata.policy.model import Consumption, Principal
from desiderata.server.attribution_drift import AttributionDrift, DriftMonitor, check_window
from desiderata.server.decision_audit import audit_decision, model_attributes
from desiderata.server.errors import InvalidArgument, PermissionDenied
from desiderata.server.global_views import GlobalSummaries, GlobalSummary, RowAttributions
from desiderata.server.model_handle import ModelHandle
from desiderata.server.pipeline import Pipeline
from desiderata.server.served import KindCapability

__all__ = ["FeedbackRequest", "PolicyServices"]

T = TypeVar("T")


@dataclass(frozen=True)
class FeedbackRequest:
    model: str
    decision_id: str
    explanation_id: str
    verdict: Verdict
    should_matter: tuple[str, ...]
    should_not_matter: tuple[str, ...]
    text: str
    purpose: str


class PolicyServices:
    """Global summaries, audit reads and feedback over a `Pipeline`.

    Args:
        pipeline: the request pipeline (policy, audit log, stores, worker pool).
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        rows = RowAttributions(max_age_s=pipeline.settings.cache_max_age_s)  # one budget of rows for both views
        self.rows = rows
        self.summaries = GlobalSummaries(rows=rows)
        self.drift = DriftMonitor(rows=rows)

    def _authorize(self, principal: Principal, action: str, model: str, purpose: str, version: str = "") -> Decision:
        """The policy's decision on `action`, audited; denials raise.

        `model` "" is the store's log (``audit/read`` of the records that concern no model).
        """
        p = self.pipeline
        handle = p.models.resolve(model, version) if model else None
        p.check_purpose(purpose)
        name, attrs = (handle.name, model_attributes(handle)) if handle is not None else ("", {})
        decision = p.policy.pdp.authorize(principal, action, name, attrs, purpose)
        audit_decision(p.audit, principal, handle, action, purpose, Consumption.STATIC, decision)
        if not decision.allowed:
            raise PermissionDenied(
                f"policy denies {action} to role {principal.role!r} for purpose {purpose!r}",
                decision_id=decision.decision_id,
                reasons=decision.reasons,
            )
        return decision

    async def _global_view(self, deadline: float | None, view: Callable[[ExplainContext], T]) -> T:
        """`view` on the worker pool; it stops at the deadline or when the caller cancels."""
        cancel = threading.Event()
        work = lambda: view(ExplainContext(deadline=deadline, cancel=cancel))  # noqa: E731
        return await self.pipeline.off_loop(work, deadline, cancel)

    async def global_summary(
        self, principal: Principal, model: str, version: str, purpose: str, deadline: float | None
    ) -> tuple[GlobalSummary, Decision]:
        """The model version's global summary, rounded as the caller's tier says."""
        decision = self._authorize(principal, "global/summary", model, purpose, version)
        handle = self.pipeline.models.resolve(model, version)
        summary = await self._global_view(deadline, lambda ctx: self.summaries.get(handle, ctx))
        step = decision.profile.rounding if decision.profile else 0.0
        if step:
            classes = tuple(type(c)(c.label, c.rows, np.round(c.mean_abs / step) * step) for c in summary.classes)
            summary = GlobalSummary(summary.model, summary.model_version, summary.method, summary.features, classes)
        return summary, decision

    async def attribution_drift(
        self, principal: Principal, model: str, version: str, purpose: str, max_decisions: int, deadline: float | None
    ) -> tuple[AttributionDrift, Decision]:
        """The version's recent decisions against its training reference; mean |attribution|
        rounded as the caller's tier says (Cedar action ``global/drift``)."""
        limit = check_window(max_decisions)
        decision = self._authorize(principal, "global/drift", model, purpose, version)
        handle = self.pipeline.models.resolve(model, version)
        decisions = self.pipeline.decisions

        def view(ctx: ExplainContext) -> AttributionDrift:
            return self.drift.drift(handle, decisions.recent(handle.name, handle.version, limit), ctx)

        drift = await self._global_view(deadline, view)
        step = decision.profile.rounding if decision.profile else 0.0
        if step:
            rounded = tuple(
                dataclasses.replace(
                    f,
                    reference_mean_abs=float(np.round(f.reference_mean_abs / step) * step),
                    recent_mean_abs=float(np.round(f.recent_mean_abs / step) * step),
                )
                for f in drift.features
            )
            drift = dataclasses.replace(drift, features=rounded)
        return drift, decision

    def query_audit(
        self, principal: Principal, model: str, purpose: str, filters: AuditFilter, page_size: int, page_token: str
    ) -> AuditPage:
        """One page of the model's audited decisions, if the policy allows audit reads.

        With ``filters.store_only`` (and `model` ""): the records that concern no model
        (erasures, and these reads), decided as audit reads of ``Log::"store"``.
        """
        _check_scope(model, filters.store_only)
        self._authorize(principal, "audit/read", model, purpose)
        filters = AuditFilter(**{**filters.__dict__, "model": model})
        return self.pipeline.audit.query(filters, page_size or 100, page_token)

    def verify_audit(self, principal: Principal, model: str, purpose: str, store_records: bool = False) -> VerifyResult:
        """Verifies the whole hash chain (if the policy allows audit reads of `model`, or with
        `store_records` and `model` "", of the records that concern no model)."""
        _check_scope(model, store_records)
        self._authorize(principal, "audit/read", model, purpose)
        return self.pipeline.audit.verify()

    def submit_feedback(self, principal: Principal, request: FeedbackRequest) -> tuple[Feedback, Decision]:
        """Stores feedback on an explanation, if the policy allows dynamic consumption."""
        p = self.pipeline
        handle = p.models.resolve(request.model)
        if not request.purpose:
            raise InvalidArgument.single("purpose", "required")
        p.check_purpose(request.purpose)
        decision = p.policy.decide(
            PolicyInput(
                principal=principal,
                model=handle.name,
                model_attributes=model_attributes(handle),
                kind=Kind.FEATURE_ATTRIBUTION,
                purpose=request.purpose,
                consumption=Consumption.DYNAMIC,
                own_decision=False,
                submitted_instance=False,
            )
        )
        audit_decision(p.audit, principal, handle, "feedback", request.purpose, Consumption.DYNAMIC, decision)
        if not decision.allowed:
            raise PermissionDenied(
                "policy does not let this principal feed explanations back into the model (dynamic consumption)",
                decision_id=decision.decision_id,
                reasons=decision.reasons,
            )
        fb = Feedback(
            decision_id=request.decision_id,
            explanation_id=request.explanation_id,
            principal=principal.id,
            role=principal.role,
            subject_id=principal.subject_id,
            model=handle.name,
            model_version=handle.version,
            verdict=request.verdict,
            should_matter=request.should_matter,
            should_not_matter=request.should_not_matter,
            text=request.text,
        )
        return p.feedback.submit(fb, frozenset(handle.schema.names + handle.schema.players)), decision

    def capabilities(
        self, principal: Principal, model: str, version: str, purpose: str, consumption: Consumption
    ) -> tuple[ModelHandle, list[KindCapability], Budget | None, str]:
        """What `principal` may ask of a model, from the same decision point."""
        p = self.pipeline
        handle = p.models.resolve(model, version)
        p.check_purpose(purpose)
        caps = p.policy.capabilities(principal, handle.name, model_attributes(handle), purpose, consumption)
        out: list[KindCapability] = []
        budget: Budget | None = None
        for c in caps:
            available = [
                m
                for m in registry.names(c.kind)
                if (handle.card.differentiable or not registry.get(m).capabilities.white_box)
                and (not c.profile.methods or m in c.profile.methods)
            ]
            if not available:
                continue
            out.append(
                KindCapability(
                    c.kind, c.tier, tuple(available), c.may_submit_instances, c.profile.narrative_only, c.profile.top_k
                )
            )
            if budget is None:
                budget = p.guard.remaining(principal.id, handle.name, c.profile.privacy)
        return handle, out, budget, p.policy.version


def _check_scope(model: str, store_records: bool) -> None:
    """An audit read names a model, or asks for the store-wide records, never both or neither."""
    if store_records == bool(model):
        why = "must be empty when the store-wide records are read" if model else "required"
        raise InvalidArgument.single("model", why)
