"""ExplainBatch: many submitted instances of one model explained in one call.

Why: a monitoring job or an offline audit explains thousands of rows. As
unary calls each pays the round trip, authentication, conversion, a policy
decision and a hand-off to the worker pool; here those are paid once per
batch, while everything the privacy model counts stays per instance: each
instance is
admitted (rate, lifetime queries, privacy loss, the extraction monitor, which
may move it to a stricter tier), noised, disclosed, charged and audited
exactly as if it had been asked alone, with its own answer-cache entry. Its
answer is the one it would get alone, up to float32 rounding: a method that
gains from larger batches evaluates the instances in shared passes
(`answering.compute_answers`; Integrated Gradients does).

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

from desiderata.policy.model import Principal
from desiderata.server.answering import Prepared, compute_answers
from desiderata.server.decision_audit import decide_explanation
from desiderata.server.errors import FieldViolation, InternalError, InvalidArgument
from desiderata.server.method_choice import resolve_method
from desiderata.server.pipeline import Pipeline
from desiderata.server.served import ExplainCall, ServedExplanation

__all__ = ["answer_batch", "explain_batch"]


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
        calls: one call per instance, alike but for their features.
        deadline: monotonic deadline of the whole batch.
        cancel: set when the caller goes away.

    Returns:
        One served explanation per call, in order.

    Raises:
        InvalidArgument: no instances, too many, or an invalid one (fields ``instances[i]...``).
        PermissionDenied: the policy, or the extraction monitor for any instance.
        ResourceExhausted: the batch does not fit the caller's rate or budget.
    """
    limit = pipeline.settings.max_batch_instances
    if not calls:
        raise InvalidArgument.single("instances", "required: at least one instance")
    if len(calls) > limit:
        raise InvalidArgument.single("instances", f"at most {limit} instances per batch (got {len(calls)})")
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
    pipeline.check_purpose(first.purpose)
    decision = decide_explanation(pipeline.policy, pipeline.audit, principal, handle, first, own=False)
    method, params = resolve_method(handle, first, decision, pipeline.settings)
    xs = [handle.schema.encode(c.features) for c in calls if c.features is not None]
    # Row by row, not one batch: a batched product rounds differently (1e-8 in float32), and an
    # instance's prediction and its label for the extraction monitor must be what the same
    # instance gets when asked alone.
    probs = [handle.predict_proba(x[None, :])[0] for x in xs]
    prepared: list[Prepared] = []
    try:
        for call, x, px in zip(calls, xs, probs, strict=True):
            prepared.append(pipeline.admit(principal, handle, call, decision, method, params, x, px))
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
