"""Servicers of the policy-governed RPCs: AuditService, and ExplanationService's
GetGlobalSummary, GetAttributionDrift and SubmitFeedback (mixed into the
explanation servicer).
Thin: convert, call `PolicyServices`, convert back."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from grpc import aio

from desiderata.policy.audit import AuditFilter
from desiderata.policy.feedback import Verdict
from desiderata.server.attribution_drift import ALPHA, AttributionDrift
from desiderata.server.errors import InvalidArgument
from desiderata.server.grpc.interceptors import current_principal
from desiderata.server.policy_services import FeedbackRequest, PolicyServices
from desiderata.v1 import audit_service_pb2 as au
from desiderata.v1 import audit_service_pb2_grpc as au_grpc
from desiderata.v1 import explanation_service_pb2 as es
from desiderata.v1 import types_pb2 as pb

if TYPE_CHECKING:
    Ctx = aio.ServicerContext[Any, Any]
else:
    Ctx = aio.ServicerContext

__all__ = ["AuditServicer", "attribution_drift_response", "feedback_request", "global_summary_response", "required"]

VERDICTS: dict[int, Verdict] = {es.FEEDBACK_VERDICT_AGREE: "agree", es.FEEDBACK_VERDICT_DISAGREE: "disagree"}


def _iso(ts: Any, field: str) -> str:
    if not ts.seconds and not ts.nanos:
        return ""
    try:
        return str(ts.ToDatetime(tzinfo=UTC).isoformat())
    except ValueError as exc:  # outside 0001-01-01 .. 9999-12-31, or nanos out of range
        raise InvalidArgument.single(field, "not a valid timestamp (years 1 to 9999)") from exc


def required(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument.single(field, "required")
    return value


class AuditServicer(au_grpc.AuditServiceServicer):
    """AuditService over `PolicyServices` (Cedar action ``audit/read``)."""

    def __init__(self, services: PolicyServices) -> None:
        self._services = services

    async def QueryAudit(self, request: au.QueryAuditRequest, context: Ctx) -> au.QueryAuditResponse:
        outcome = {au.AUDIT_OUTCOME_ALLOWED: True, au.AUDIT_OUTCOME_DENIED: False}.get(request.outcome)
        filters = AuditFilter(
            principal=request.principal,
            role=request.role,
            purpose="",
            allowed=outcome,
            decision_id=request.decision_id,
            action=request.action,
            since=_iso(request.since, "since"),
            until=_iso(request.until, "until"),
            store_only=request.store_records,
        )
        page = self._services.query_audit(
            current_principal.get(),
            request.model,
            required(request.purpose, "purpose"),
            filters,
            request.page_size,
            request.page_token,
        )
        out = au.QueryAuditResponse(next_page_token=page.next_page_token)
        for stored in page.records:
            r = stored.record
            entry = out.entries.add(
                seq=stored.seq,
                decision_id=r.decision_id,
                principal=r.principal,
                role=r.role,
                purpose=r.purpose,
                consumption=r.consumption,
                model=r.model,
                model_version=r.model_version,
                policy_version=r.policy_version,
                action=r.action,
                allowed=r.allowed,
                tier=r.tier,
                privacy_charge=r.privacy_charge,
                reasons=list(r.reasons),
                request_id=r.request_id,
                hash=stored.hash,
            )
            entry.time.FromDatetime(datetime.fromisoformat(r.time))
        return out

    async def VerifyAudit(self, request: au.VerifyAuditRequest, context: Ctx) -> au.VerifyAuditResponse:
        result = self._services.verify_audit(
            current_principal.get(), request.model, required(request.purpose, "purpose"), request.store_records
        )
        return au.VerifyAuditResponse(ok=result.ok, records=result.records, problem=result.problem)


def feedback_request(request: es.SubmitFeedbackRequest) -> FeedbackRequest:
    verdict = VERDICTS.get(request.verdict)
    if verdict is None:
        raise InvalidArgument.single("verdict", "must be AGREE or DISAGREE")
    return FeedbackRequest(
        model=required(request.model, "model"),
        decision_id=required(request.decision_id, "decision_id"),
        explanation_id=request.explanation_id,
        verdict=verdict,
        should_matter=tuple(request.should_matter),
        should_not_matter=tuple(request.should_not_matter),
        text=request.text,
        purpose=request.purpose,
    )


def global_summary_response(services: PolicyServices, summary: Any, decision: Any) -> es.GetGlobalSummaryResponse:
    handle = services.pipeline.models.resolve(summary.model, summary.model_version)
    labels = handle.card.labels
    out = es.GetGlobalSummaryResponse(model=summary.model, model_version=summary.model_version, method=summary.method)
    for view in summary.classes:
        total = float(view.mean_abs.sum())
        cls = out.classes.add(class_label=view.label, rows=view.rows)
        for i in sorted(range(len(summary.features)), key=lambda j: -float(view.mean_abs[j])):
            name = summary.features[i]
            cls.features.add(
                feature=name,
                display_name=labels.get(name, name),
                mean_abs_attribution=float(view.mean_abs[i]),
                share=float(view.mean_abs[i]) / total if total > 0 else 0.0,
            )
    out.disclosure.CopyFrom(_disclosure(decision))
    return out


def _disclosure(decision: Any) -> pb.Disclosure:
    return pb.Disclosure(
        tier=decision.tier,
        decision_id=decision.decision_id,
        policy_version=decision.policy_version,
        reasons=list(decision.reasons),
        rounding=decision.profile.rounding if decision.profile else 0.0,
    )


def attribution_drift_response(
    services: PolicyServices, drift: AttributionDrift, decision: Any
) -> es.GetAttributionDriftResponse:
    handle = services.pipeline.models.resolve(drift.model, drift.model_version)
    labels = handle.card.labels
    out = es.GetAttributionDriftResponse(
        model=drift.model,
        model_version=drift.model_version,
        method=drift.method,
        target_class=drift.target_class,
        reference_rows=drift.reference_rows,
        decisions=drift.decisions,
        alpha=ALPHA,
        share_distance=drift.share_distance,
        share_threshold=drift.share_threshold,
        drifted=drift.drifted,
        disclosure=_disclosure(decision),
    )
    out.first_decision_at.FromDatetime(drift.first_decision_at)
    out.last_decision_at.FromDatetime(drift.last_decision_at)
    for f in sorted(drift.features, key=lambda f: -f.ks_statistic):
        out.features.add(
            feature=f.feature,
            display_name=labels.get(f.feature, f.feature),
            reference_mean_abs_attribution=f.reference_mean_abs,
            recent_mean_abs_attribution=f.recent_mean_abs,
            ks_statistic=f.ks_statistic,
            p_value=f.p_value,
            drifted=f.drifted,
        )
    return out
