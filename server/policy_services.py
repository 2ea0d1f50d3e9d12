"""Pipeline operations beyond single explanations, each decided by the same
policy and audited: global summaries (``global/summary``), the audit log
(``audit/read``) and feedback on explanations (dynamic consumption).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from desiderata.explainers.base import Kind
from desiderata.policy.audit import AuditFilter, AuditPage, VerifyResult
from desiderata.policy.decision import Decision, PolicyInput
from desiderata.policy.feedback import Feedback, Verdict
from desiderata.policy.model import Consumption, Principal
from desiderata.server.decision_audit import audit_decision, model_attributes
from desiderata.server.errors import InvalidArgument, PermissionDenied
from desiderata.server.global_views import GlobalSummaries, GlobalSummary
from desiderata.server.pipeline import Pipeline

__all__ = ["FeedbackRequest", "PolicyServices"]


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
        self.summaries = GlobalSummaries()

    def _authorize(self, principal: Principal, action: str, model: str, purpose: str) -> Decision:
        p = self.pipeline
        handle = p.models.resolve(model)
        p.check_purpose(purpose)
        decision = p.policy.pdp.authorize(principal, action, handle.name, model_attributes(handle), purpose)
        audit_decision(p.audit, principal, handle, action, purpose, Consumption.STATIC, decision)
        if not decision.allowed:
            raise PermissionDenied(
                f"policy denies {action} to role {principal.role!r} for purpose {purpose!r}",
                decision_id=decision.decision_id,
                reasons=decision.reasons,
            )
        return decision

    async def global_summary(
        self, principal: Principal, model: str, purpose: str, deadline: float | None
    ) -> tuple[GlobalSummary, Decision]:
        """The model's global summary, rounded as the caller's tier says."""
        decision = self._authorize(principal, "global/summary", model, purpose)
        handle = self.pipeline.models.resolve(model)
        summary = await self.pipeline._off_loop(lambda: self.summaries.get(handle), deadline)
        step = decision.profile.rounding if decision.profile else 0.0
        if step:
            classes = tuple(type(c)(c.label, c.rows, np.round(c.mean_abs / step) * step) for c in summary.classes)
            summary = GlobalSummary(summary.model, summary.model_version, summary.method, summary.features, classes)
        return summary, decision

    def query_audit(
        self, principal: Principal, model: str, purpose: str, filters: AuditFilter, page_size: int, page_token: str
    ) -> AuditPage:
        """One page of the model's audited decisions, if the policy allows audit reads."""
        self._authorize(principal, "audit/read", model, purpose)
        filters = AuditFilter(**{**filters.__dict__, "model": model})
        return self.pipeline.audit.query(filters, page_size or 100, page_token)

    def verify_audit(self, principal: Principal, model: str, purpose: str) -> VerifyResult:
        """Verifies the whole hash chain (if the policy allows audit reads)."""
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
            model=handle.name,
            model_version=handle.version,
            verdict=request.verdict,
            should_matter=request.should_matter,
            should_not_matter=request.should_not_matter,
            text=request.text,
        )
        return p.feedback.submit(fb, frozenset(handle.schema.names)), decision
