"""Every policy decision, allowed or denied, as one audit record; the model
attributes the policy decides on; and the decision on an explanation request.

Why a module of its own: explanations, global summaries, audit reads and
feedback are decided by the same decision point and must be audited the same
way, with the same fields, and fail the same way when the log is down: the
request fails (UNAVAILABLE) and nothing is served unaudited.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from desiderata.policy.audit import AuditLog, AuditRecord, utc_now
from desiderata.policy.decision import Decision, PolicyInput
from desiderata.policy.model import Consumption, Principal
from desiderata.policy.store import PolicyStore
from desiderata.server.errors import DesiderataError, PermissionDenied, Unavailable
from desiderata.server.model_handle import ModelHandle

if TYPE_CHECKING:
    from desiderata.server.served import ExplainCall

__all__ = ["audit_decision", "decide_explanation", "model_attributes"]

log = structlog.get_logger("desiderata.audit")


def model_attributes(handle: ModelHandle) -> dict[str, str | bool | int | float]:
    """The model's attributes in a policy request (Cedar resource attributes)."""
    return handle.card.policy_attributes()


def audit_decision(
    audit: AuditLog,
    principal: Principal,
    handle: ModelHandle | None,
    action: str,
    purpose: str,
    consumption: Consumption,
    decision: Decision,
    charge: float = 0.0,
) -> None:
    """Appends one decision to the audit log.

    Args:
        audit: the log.
        principal: who asked.
        handle: the model version the request resolved to; None for a request about no
            model (a read of the store-wide records).
        action: the explanation kind or operation (e.g. ``feature_attribution``, ``feedback``).
        purpose: the declared purpose.
        consumption: static or dynamic.
        decision: the policy decision, with its id, tier and reasons.
        charge: ε charged for this answer (0 when nothing was).

    Raises:
        Unavailable: the log cannot be written.
    """
    record = AuditRecord(
        decision_id=decision.decision_id,
        time=utc_now(),
        principal=principal.id,
        role=principal.role,
        purpose=purpose,
        consumption=consumption.value,
        model=handle.name if handle is not None else "",
        model_version=handle.version if handle is not None else "",
        policy_version=decision.policy_version,
        action=action,
        allowed=decision.allowed,
        tier=decision.tier,
        privacy_charge=charge,
        reasons=decision.reasons,
        request_id=structlog.contextvars.get_contextvars().get("request_id", ""),
    )
    try:
        audit.append(record)
    except DesiderataError:
        raise
    except Exception as exc:
        log.error("audit_unavailable", error=exc.__class__.__name__)
        raise Unavailable("the audit log is unavailable; no explanation is served unaudited") from exc


def decide_explanation(
    policy: PolicyStore, audit: AuditLog, principal: Principal, handle: ModelHandle, call: ExplainCall, own: bool
) -> Decision:
    """Decides an explanation request, logs the decision, and audits and refuses a denial.

    Args:
        policy: the decision point.
        audit: where a denial is recorded (an allowed request is recorded once answered).
        principal: who asks.
        handle: the model version the request resolved to.
        call: the request.
        own: whether the instance is the caller's own recorded decision.

    Raises:
        PermissionDenied: the policy denies it, with the decision id and reasons.
        Unavailable: the denial could not be audited.
    """
    request = PolicyInput(
        principal=principal,
        model=handle.name,
        model_attributes=model_attributes(handle),
        kind=call.kind,
        purpose=call.purpose,
        consumption=call.consumption,
        own_decision=own,
        submitted_instance=call.features is not None,
    )
    decision = policy.decide(request)
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
        audit_decision(audit, principal, handle, call.kind.value, call.purpose, call.consumption, decision)
        raise PermissionDenied(
            f"policy denies {call.kind.value} explanations to role {principal.role!r} for purpose {call.purpose!r}",
            decision_id=decision.decision_id,
            reasons=decision.reasons,
        )
    return decision
