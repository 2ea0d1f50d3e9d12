"""Admission: the privacy guard's reservation for an allowed call, and what the
extraction monitor makes of it.

The guard reserves the call's budget before any work (rate, lifetime queries, privacy
loss) and runs the extraction monitor, which may

- block the caller: the denial is audited and the call refused, or
- move it to a stricter tier: the whole call is then served as that tier (its
  disclosure, methods, privacy, noise and charge, and the tier and reasons that the
  caller and the audit log see), not only its budget. A submitted instance is refused
  when the stricter tier does not take them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog

from desiderata.policy.audit import AuditLog
from desiderata.policy.decision import Decision
from desiderata.policy.guard import Admission, PrivacyGuard
from desiderata.policy.model import Principal
from desiderata.policy.privacy_params import PrivacyParams
from desiderata.policy.profiles import DisclosureProfile
from desiderata.policy.store import PolicyStore
from desiderata.server.config import ExplainSettings
from desiderata.server.decision_audit import audit_decision
from desiderata.server.errors import InternalError, PermissionDenied
from desiderata.server.method_choice import resolve_method
from desiderata.server.model_handle import ModelHandle
from desiderata.server.served import ExplainCall
from desiderata.server.serving import params_dict

__all__ = ["DOWNGRADE_REASON", "Admitted", "admit"]

log = structlog.get_logger("desiderata.pipeline")

DOWNGRADE_REASON = "extraction_monitor.downgrade"
"""Reason id added to a decision the extraction monitor moved to a stricter tier."""


@dataclass(frozen=True)
class Admitted:
    """What the explainer step runs under.

    Args:
        admission: the guard's reservation.
        decision: the tier served, a downgrade's stricter one included.
        profile: that tier's disclosure profile.
        method: the method, resolved again after a downgrade.
        params: its parameters.
    """

    admission: Admission
    decision: Decision
    profile: DisclosureProfile
    method: str
    params: Any


def admit(
    guard: PrivacyGuard,
    policy: PolicyStore,
    audit: AuditLog,
    settings: ExplainSettings,
    *,
    principal: Principal,
    handle: ModelHandle,
    call: ExplainCall,
    decision: Decision,
    method: str,
    params: Any,
    x: np.ndarray,
    probs: np.ndarray,
) -> Admitted:
    """Reserves the call's budget under its tier, or under the stricter tier the monitor chose.

    Args:
        x: the encoded instance, ``(n_columns,)``.
        probs: its predicted class probabilities, ``(k,)`` (the monitor's label).
    """
    profile = decision.profile
    if profile is None:
        raise InternalError("an allowed decision without a profile")

    def denied(reasons: tuple[str, ...], message: str) -> PermissionDenied:
        refused = dataclasses.replace(decision, allowed=False, reasons=(*decision.reasons, *reasons))
        audit_decision(audit, principal, handle, call.kind.value, call.purpose, call.consumption, refused)
        return PermissionDenied(message, decision_id=decision.decision_id, reasons=reasons)

    def reserve(privacy: PrivacyParams, method: str, params: Any, **monitor: Any) -> Admission:
        return guard.admit(
            principal.id,
            handle.name,
            handle.version,
            privacy,
            x,
            method=method,
            method_params=params_dict(params),
            **monitor,
        )

    try:
        admission = reserve(profile.privacy, method, params, label=int(np.argmax(probs)))
    except PermissionDenied as exc:  # the extraction monitor blocked this caller: audit it
        raise denied(exc.reasons, exc.message) from None
    if not admission.downgrade_to:
        return Admitted(admission, decision, profile, method, params)
    # The monitor moved the caller to a stricter tier: nothing is held yet.
    stricter = policy.pdp.bundle.profiles.get(admission.downgrade_to)
    if stricter is None:
        raise InternalError(f"downgrade tier {admission.downgrade_to!r} has no profile")
    log.warning("extraction_monitor_downgrade", principal=principal.id, tier=stricter.tier)
    if call.features is not None and not stricter.may_submit_instances:
        raise denied((DOWNGRADE_REASON,), f"tier {stricter.tier!r} explains recorded decisions only")
    decision = dataclasses.replace(
        decision, tier=stricter.tier, profile=stricter, reasons=(*decision.reasons, DOWNGRADE_REASON)
    )
    method, params = resolve_method(handle, call, decision, settings)
    return Admitted(reserve(stricter.privacy, method, params, observe=False), decision, stricter, method, params)
