"""The decisions recorded about one subject, as ListDecisions serves them.

Why: an end user may explain their own recorded decisions (ExplainDecision),
but had to learn each decision's id from the application that asked for the
prediction. GDPR Art. 15 gives them the right to know which decisions were
made about them; this lists them, newest first, without the features they were
made from, and the policy decides who may list whose (action
``decisions/list``: an end user their own, by default, and staff as the
bundle says). Every list is audited like any other decision.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from desiderata.policy.model import Consumption, Principal
from desiderata.server.decision_audit import audit_decision, model_attributes
from desiderata.server.decision_store import FIRST_PAGE, DecisionRecord, page_after
from desiderata.server.errors import InvalidArgument, PermissionDenied
from desiderata.server.pipeline import Pipeline

__all__ = ["DEFAULT_PAGE", "MAX_PAGE", "DecisionPage", "decode_page_token", "encode_page_token", "list_decisions"]

DEFAULT_PAGE = 50
"""Decisions per page when the request gives no page size."""
MAX_PAGE = 500
"""Most decisions one page may ask for."""
_PREFIX = "decisions:"


@dataclass(frozen=True)
class DecisionPage:
    """One page of a subject's decisions, newest first, and the token of the next ("" on the last)."""

    records: tuple[DecisionRecord, ...]
    next_page_token: str


def encode_page_token(after: tuple[str, str]) -> str:
    """Opaque token resuming after a decision's (stored time, id) key."""
    return base64.urlsafe_b64encode(f"{_PREFIX}{after[0]}|{after[1]}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[str, str]:
    """The key a page resumes after (`FIRST_PAGE` for no token).

    Raises:
        InvalidArgument: a token this server did not issue.
    """
    if not token:
        return FIRST_PAGE
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    time, sep, decision_id = raw.removeprefix(_PREFIX).partition("|")
    if not raw.startswith(_PREFIX) or not sep or not time or not decision_id:
        raise InvalidArgument.single("page_token", "not a token this server issued")
    return time, decision_id


def list_decisions(
    pipeline: Pipeline,
    principal: Principal,
    *,
    model: str,
    purpose: str,
    subject_id: str,
    page_size: int,
    page_token: str,
) -> DecisionPage:
    """One page of the decisions about a subject by a model (any version), if the policy allows.

    Args:
        pipeline: the request pipeline (models, policy, audit log, decision store).
        principal: the caller.
        model: model name.
        purpose: declared purpose.
        subject_id: whose decisions; "" is the caller's own subject.
        page_size: decisions per page; 0 is `DEFAULT_PAGE`, at most `MAX_PAGE`.
        page_token: the previous page's token, or "".

    Raises:
        InvalidArgument: no subject, a bad page size or token, an undeclared purpose.
        ModelNotFound: an unknown model.
        PermissionDenied: the policy denies it (audited).
    """
    if not model:
        raise InvalidArgument.single("model", "required")
    if not purpose:
        raise InvalidArgument.single("purpose", "required")
    if page_size > MAX_PAGE:
        raise InvalidArgument.single("page_size", f"at most {MAX_PAGE}")
    after = decode_page_token(page_token)
    subject = subject_id or principal.subject_id
    if not subject:
        raise InvalidArgument.single("subject_id", "required (the caller acts for no subject)")
    handle = pipeline.models.resolve(model)
    pipeline.check_purpose(purpose)
    own = bool(principal.subject_id) and subject == principal.subject_id
    decision = pipeline.policy.pdp.authorize(
        principal, "decisions/list", handle.name, model_attributes(handle), purpose, own_decision=own
    )
    audit_decision(pipeline.audit, principal, handle, "decisions/list", purpose, Consumption.STATIC, decision)
    if not decision.allowed:
        raise PermissionDenied(
            f"policy denies listing decisions to role {principal.role!r} for purpose {purpose!r}",
            decision_id=decision.decision_id,
            reasons=decision.reasons,
        )
    size = page_size or DEFAULT_PAGE
    rows = pipeline.decisions.of_subject(subject, handle.name, after, size + 1)
    page = tuple(rows[:size])
    return DecisionPage(page, encode_page_token(page_after(page[-1])) if len(rows) > size else "")
