"""ExplainBatch: many instances of one model explained in one call, submitted
instances or recorded decisions.

Why: a monitoring job or an offline audit explains thousands of rows. As
unary calls each pays the round trip, authentication, conversion, a policy
decision and a hand-off to the worker pool; here those are paid once per
batch, while everything the privacy model counts stays per instance: each
instance is admitted (rate, lifetime queries, privacy loss, the extraction
monitor, which may move it to a stricter tier), noised, disclosed, charged
and audited exactly as if it had been asked alone, with its own answer-cache
entry. Its answer is the one it would get alone, up to float32 rounding: a
method that gains from larger batches evaluates the instances in shared
passes (`answering.compute_answers`; the gradient methods do).

Recorded decisions (an audit of many decisions, or an end user's own) are
each resolved, checked and decided as ExplainDecision would: the policy sees
whether each is the caller's own, so a batch holds at most two policy
decisions, and one denial refuses the batch.

All or nothing: every instance is validated and admitted before any is
explained, so a batch that does not fit the caller's budget is refused with
nothing charged; an explainer failure, a passed deadline or a cancelled call
releases every reservation; instances are charged only once all are
computed. (Were the ledger to fail while charging, the instances charged
before it stay charged, the safe direction, and the rest are released.)
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from desiderata.policy.decision import Decision
from desiderata.policy.model import Principal
from desiderata.server.answering import Prepared, compute_answers
from desiderata.server.decision_audit import decide_explanation
from desiderata.server.decision_store import DecisionRecord
from desiderata.server.errors import DecisionNotFound, FieldViolation, InternalError, InvalidArgument
from desiderata.server.method_choice import resolve_method
from desiderata.server.model_handle import ModelHandle
from desiderata.server.pipeline import Pipeline
from desiderata.server.served import ExplainCall, ServedExplanation

__all__ = ["answer_batch", "explain_batch"]


@dataclass(frozen=True)
class _Row:
    """One instance of a batch, decided and scored, ready to admit."""

    call: ExplainCall
    decision: Decision
    method: str
    params: Any
    x: np.ndarray
    probs: np.ndarray
    record: DecisionRecord | None = None


def answer_batch(
    pipeline: Pipeline,
    principal: Principal,
    calls: Sequence[ExplainCall],
    deadline: float | None,
    cancel: threading.Event,
) -> list[ServedExplanation]:
    """Explains every call of a batch (blocking: run it on the worker pool).

    Args:
        pipeline: the request pipeline.
        principal: who asks.
        calls: one call per instance, alike but for their features, or for their
            recorded decision (``decision_id``).
        deadline: monotonic deadline of the whole batch.
        cancel: set when the caller goes away.

    Returns:
        One served explanation per call, in order.

    Raises:
        InvalidArgument: no instances, too many, or an invalid one (fields ``instances[i]...``),
            or decisions of different model versions (``decision_ids[i]``).
        NotFound: an unknown decision id (named ``decision_ids[i]``).
        PermissionDenied: the policy, or the extraction monitor for any instance.
        ResourceExhausted: the batch does not fit the caller's rate or budget.
    """
    limit = pipeline.settings.max_batch_instances
    field = "decision_ids" if calls and calls[0].decision_id else "instances"
    if not calls:
        raise InvalidArgument.single("instances", "required: at least one instance")
    if len(calls) > limit:
        raise InvalidArgument.single(field, f"at most {limit} instances per batch (got {len(calls)})")
    pipeline.check_purpose(calls[0].purpose)
    if calls[0].decision_id:
        handle, rows = _recorded(pipeline, principal, calls)
    else:
        handle, rows = _submitted(pipeline, principal, calls)
    return _explain(pipeline, principal, handle, rows, deadline, cancel)


def _submitted(
    pipeline: Pipeline, principal: Principal, calls: Sequence[ExplainCall]
) -> tuple[ModelHandle, list[_Row]]:
    """Validates submitted instances (every invalid field named), decides once, scores each."""
    first = calls[0]
    handle = pipeline.models.resolve(first.model, first.model_version)
    problems: list[FieldViolation] = []
    for i, call in enumerate(calls):
        if call.features is None:
            raise InternalError("a batch call without features")
        try:
            handle.schema.validate(call.features, field_prefix=f"instances[{i}]")
        except InvalidArgument as exc:
            problems.extend(exc.violations)
    if problems:
        raise InvalidArgument(f"{len(problems)} invalid field(s)", problems)
    decision = decide_explanation(pipeline.policy, pipeline.audit, principal, handle, first, own=False)
    method, params = resolve_method(handle, first, decision, pipeline.settings)
    rows = []
    for call in calls:
        x = handle.schema.encode(call.features or {})
        # Row by row, not one batch: a batched product rounds differently (1e-8 in float32), and an
        # instance's prediction and its label for the extraction monitor must be what the same
        # instance gets when asked alone.
        rows.append(_Row(call, decision, method, params, x, handle.predict_proba(x[None, :])[0]))
    return handle, rows


def _recorded(pipeline: Pipeline, principal: Principal, calls: Sequence[ExplainCall]) -> tuple[ModelHandle, list[_Row]]:
    """Finds the recorded decisions (one model version), decides per ownership, re-scores each."""
    records: list[DecisionRecord] = []
    for i, call in enumerate(calls):
        try:
            records.append(pipeline.decisions.get(call.decision_id))
        except DecisionNotFound:
            raise DecisionNotFound(f"decision_ids[{i}]: no recorded decision {call.decision_id!r}") from None
    first = records[0]
    if calls[0].model and calls[0].model != first.model:
        raise InvalidArgument.single("model", f"the decisions are of model {first.model!r}")
    if calls[0].model_version and calls[0].model_version != first.model_version:
        raise InvalidArgument.single("model_version", f"the decisions are of version {first.model_version!r}")
    for i, r in enumerate(records):
        if (r.model, r.model_version) != (first.model, first.model_version):
            raise InvalidArgument.single(
                f"decision_ids[{i}]",
                f"a decision of {r.model} version {r.model_version}; a batch's decisions are of one "
                f"model version (the first is of {first.model} version {first.model_version})",
            )
    handle = pipeline.models.resolve(first.model, first.model_version)
    decided: dict[bool, tuple[Decision, str, Any]] = {}
    for call, record in zip(calls, records, strict=True):
        own = bool(principal.subject_id) and principal.subject_id == record.subject_id
        if own not in decided:  # denials refuse the batch before anything is scored
            decision = decide_explanation(pipeline.policy, pipeline.audit, principal, handle, call, own)
            decided[own] = (decision, *resolve_method(handle, call, decision, pipeline.settings))
    rows = []
    for call, record in zip(calls, records, strict=True):
        own = bool(principal.subject_id) and principal.subject_id == record.subject_id
        x = handle.schema.encode(record.features)
        probs = handle.predict_proba(x[None, :])[0]
        pipeline.check_reproduced(record, probs)
        rows.append(_Row(call, *decided[own], x, probs, record))
    return handle, rows


def _explain(
    pipeline: Pipeline,
    principal: Principal,
    handle: ModelHandle,
    rows: list[_Row],
    deadline: float | None,
    cancel: threading.Event,
) -> list[ServedExplanation]:
    """Admits every row, explains them together, then charges and audits each (all or nothing)."""
    calls = [r.call for r in rows]
    prepared: list[Prepared] = []
    try:
        for r in rows:
            prepared.append(
                pipeline.admit(principal, handle, r.call, r.decision, r.method, r.params, r.x, r.probs, r.record)
            )
        answers = compute_answers(
            pipeline.answers, pipeline.guard, pipeline.settings, calls, prepared, deadline, cancel
        )
    except BaseException:
        for p in prepared:
            pipeline.guard.release(p.admission)
        raise
    served: list[ServedExplanation] = []
    try:
        for c, p, answer in zip(calls, prepared, answers, strict=True):
            served.append(pipeline.settle(principal, c, p, answer))  # releases its own on failure
    except BaseException:
        for p in prepared[len(served) + 1 :]:
            pipeline.guard.release(p.admission)
        raise
    return served


async def explain_batch(
    pipeline: Pipeline, principal: Principal, calls: Sequence[ExplainCall], deadline: float | None
) -> list[ServedExplanation]:
    """`answer_batch` on the worker pool, in one trip, bounded by the deadline."""
    cancel = threading.Event()
    return await pipeline.off_loop(lambda: answer_batch(pipeline, principal, calls, deadline, cancel), deadline, cancel)
