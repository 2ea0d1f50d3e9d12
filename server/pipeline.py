"""The transport-neutral core: resolve → decide → admit → explain → disclose → record.

The gRPC servicers only convert messages and call this class; everything a
request goes through, in order, is in `Pipeline.explain`. Heavy work (model
evaluation, explainers) runs on a worker pool off the event loop, bounded by
the request's deadline; cancellation stops the work between batches. Every
policy decision, allowed or denied, is written to the audit log; a store that
is down fails closed.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import structlog

from desiderata.explainers.torch_threads import torch_executor
from desiderata.policy.accounting import epsilon_from_rho
from desiderata.policy.audit import AuditLog
from desiderata.policy.decision import Decision
from desiderata.policy.feedback import FeedbackStore
from desiderata.policy.guard import PrivacyGuard
from desiderata.policy.model import Principal
from desiderata.policy.store import PolicyStore
from desiderata.server.admission import admit
from desiderata.server.answer_cache import AnswerCache
from desiderata.server.answering import Answer, Prepared, compute_answers
from desiderata.server.coalescing import Coalescer
from desiderata.server.config import ExplainSettings
from desiderata.server.decision_audit import audit_decision, decide_explanation
from desiderata.server.decision_store import DecisionRecord, DecisionStore, new_record_id, utcnow
from desiderata.server.errors import (
    DeadlineExceeded,
    FieldViolation,
    InternalError,
    InvalidArgument,
    PermissionDenied,
    UnknownPurpose,
)
from desiderata.server.method_choice import resolve_method
from desiderata.server.metrics import Metrics
from desiderata.server.model_card import FeatureValue
from desiderata.server.model_handle import ModelHandle
from desiderata.server.model_repository import ModelRepository
from desiderata.server.served import (
    REPRODUCTION_TOLERANCE,
    ExplainCall,
    KindCapability,
    ServedExplanation,
    reproduction_gap,
    served_explanation,
)

__all__ = ["Answer", "ExplainCall", "KindCapability", "Pipeline", "Prepared", "ServedExplanation"]

log = structlog.get_logger("desiderata.pipeline")
T = TypeVar("T")

PREDICT_ROLES = frozenset({"ml_engineer", "domain_expert"})
"""Roles that may score instances through Predict (services acting for the business)."""


@dataclass
class Pipeline:
    """The request path shared by every transport.

    Args:
        models: the model repository.
        decisions: the decision store.
        policy: the policy store (Cedar PDP, hot-reloaded).
        audit: the audit log.
        guard: the privacy guard (budgets, rates, noise, extraction monitor).
        feedback: the store of dynamic-consumption feedback.
        settings: explainer limits.
        workers: threads for model evaluation and explainers.
        metrics: where served explanations are counted; None counts nothing.
    """

    models: ModelRepository
    decisions: DecisionStore
    policy: PolicyStore
    audit: AuditLog
    guard: PrivacyGuard
    feedback: FeedbackStore
    settings: ExplainSettings = field(default_factory=ExplainSettings)
    workers: int = 2
    metrics: Metrics | None = None
    _pool: ThreadPoolExecutor = field(init=False)
    answers: AnswerCache = field(init=False)
    _in_flight: set[threading.Event] = field(init=False, default_factory=set)
    coalescer: Coalescer | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._pool = torch_executor(self.workers, "desiderata-worker")
        self.answers = AnswerCache(self.settings.answer_cache_size, self.settings.cache_max_age_s)
        if self.settings.coalesce_max_calls > 1:
            observe = None if self.metrics is None else self.metrics.coalesced_calls.observe
            self.coalescer = Coalescer(self, self._pool, self.workers, self.settings.coalesce_max_calls, observe)

    def close(self) -> None:
        """Cancels the work still running (its calls are gone once the server has stopped),
        waits for the workers to reach their next check, and closes the stores."""
        for cancel in list(self._in_flight):
            cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.models.runner.shutdown()
        self.decisions.close()
        self.audit.close()
        self.feedback.close()

    async def off_loop(self, fn: Callable[[], T], deadline: float | None, cancel: threading.Event | None = None) -> T:
        """Runs `fn` on the worker pool, bounded by `deadline` (monotonic), in a copy of the
        caller's context: the request id and trace context bound by the interceptor reach the
        worker's log lines and audit records (an executor, unlike `asyncio.to_thread`, copies none)."""
        future = asyncio.get_running_loop().run_in_executor(self._pool, contextvars.copy_context().run, fn)
        timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        if cancel is not None:
            self._in_flight.add(cancel)
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
        finally:
            if cancel is not None:
                self._in_flight.discard(cancel)

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
        probs = await self.off_loop(lambda: handle.predict_proba(x[None, :])[0], deadline)
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
        await self.off_loop(lambda: self.decisions.record(rec), deadline)
        log.info(
            "decision_recorded",
            decision_id=rec.decision_id,
            model=handle.name,
            model_version=handle.version,
            principal=principal.id,
        )
        return rec, handle

    # ------------------------------------------------------------ policy

    def check_purpose(self, purpose: str) -> None:
        known = self.policy.known_purposes()
        if purpose not in known:
            raise UnknownPurpose(
                f"unknown purpose {purpose!r}", [FieldViolation("purpose", f"must be one of {sorted(known)}")]
            )

    # ----------------------------------------------------------- explanations

    async def explain(
        self,
        principal: Principal,
        call: ExplainCall,
        deadline: float | None,
        progress: Callable[[ServedExplanation], None] | None = None,
    ) -> ServedExplanation:
        """Explains a submitted instance or a recorded decision for `principal`.

        One trip to the worker pool does everything (resolve, decide, predict,
        admit, explain, disclose, commit, audit); the event loop only waits. A
        second trip cost a thread hand-off per request for no parallelism. Calls
        of methods whose instances share model passes go through the coalescer,
        which explains those that queue together (`server.coalescing`).
        """
        if progress is None and self.coalescer is not None and self.coalescer.accepts(call):
            return await self.coalescer.explain(principal, call, deadline, self._in_flight)
        cancel = threading.Event()
        work = lambda: self._explain(principal, call, deadline, cancel, progress)  # noqa: E731
        return await self.off_loop(work, deadline, cancel)

    def _explain(
        self,
        principal: Principal,
        call: ExplainCall,
        deadline: float | None,
        cancel: threading.Event,
        progress: Callable[[ServedExplanation], None] | None,
    ) -> ServedExplanation:
        p = self.prepare(principal, call)
        return self.settle(principal, call, p, self.compute(call, p, deadline, cancel, progress))

    def compute(
        self,
        call: ExplainCall,
        p: Prepared,
        deadline: float | None,
        cancel: threading.Event,
        progress: Callable[[ServedExplanation], None] | None = None,
    ) -> Answer:
        """Explains (or finds in the answer cache) and discloses an admitted call; on any
        failure, or a deadline passed or a caller gone by the end, its reservation is released."""
        try:
            return compute_answers(self.answers, self.guard, self.settings, [call], [p], deadline, cancel, progress)[0]
        except BaseException:
            self.guard.release(p.admission)
            raise

    def settle(self, principal: Principal, call: ExplainCall, p: Prepared, answer: Answer) -> ServedExplanation:
        """Charges a computed answer's reservation, audits and logs it, and serves it."""
        try:
            budget = self.guard.commit_with_budget(p.admission, p.profile.privacy)
        except BaseException:
            self.guard.release(p.admission)
            raise
        raw, shown, handle = answer.raw, answer.shown, p.handle
        privacy = p.profile.privacy
        charge = epsilon_from_rho(privacy.rho_per_query, privacy.delta) if privacy.noisy else 0.0
        audit_decision(
            self.audit, principal, handle, call.kind.value, call.purpose, call.consumption, p.decision, charge
        )
        if self.metrics is not None:
            self.metrics.explanation(
                model=handle.name,
                kind=call.kind.value,
                method=p.method,
                tier=p.decision.tier,
                noised=shown.noised,
                cached=answer.cached,
                seconds=raw.quality.compute_ms / 1e3,
                rows=raw.quality.model_evaluations,
            )
        log.info(
            "explanation_served",
            decision_id=p.decision.decision_id,
            method=p.method,
            model=handle.name,
            compute_ms=round(raw.quality.compute_ms, 3),
            noised=shown.noised,
        )
        return served_explanation(handle, p.probs, raw, shown, p.decision, budget, charge, p.record)

    def prepare(self, principal: Principal, call: ExplainCall) -> Prepared:
        """Resolve, decide (denials audited), predict and admit (budget reserved before any work)."""
        record: DecisionRecord | None = None
        if call.decision_id:
            record = self.decisions.get(call.decision_id)
            own = bool(principal.subject_id) and principal.subject_id == record.subject_id
            handle = self.models.resolve(record.model, record.model_version)
            features = record.features
        else:
            own = False
            handle = self.models.resolve(call.model, call.model_version)
            if call.features is None:
                raise InvalidArgument.single("instance", "required")
            handle.schema.validate(call.features)
            features = call.features
        self.check_purpose(call.purpose)
        decision = decide_explanation(self.policy, self.audit, principal, handle, call, own)
        method, params = resolve_method(handle, call, decision, self.settings)
        if decision.profile is None:
            raise InternalError("an allowed decision without a profile")
        x = handle.schema.encode(features)
        probs = handle.predict_proba(x[None, :])[0]
        if record is not None:
            self.check_reproduced(record, probs)
        return self.admit(principal, handle, call, decision, method, params, x, probs, record)

    def admit(
        self,
        principal: Principal,
        handle: ModelHandle,
        call: ExplainCall,
        decision: Decision,
        method: str,
        params: Any,
        x: np.ndarray,
        probs: np.ndarray,
        record: DecisionRecord | None = None,
    ) -> Prepared:
        """The guard's reservation for one allowed instance (`server.admission.admit`), ready to compute."""
        a = admit(
            self.guard,
            self.policy,
            self.audit,
            self.settings,
            principal=principal,
            handle=handle,
            call=call,
            decision=decision,
            method=method,
            params=params,
            x=x,
            probs=probs,
        )
        return Prepared(record, handle, a.decision, a.profile, a.method, a.params, x, probs, a.admission)

    def check_reproduced(self, record: DecisionRecord, probs: np.ndarray) -> None:
        """Logs and counts a recorded decision that the loaded model no longer reproduces (the
        answer carries a quality warning too): the folder of its version was changed, across a
        restart or on another replica, though versions are immutable."""
        gap = reproduction_gap(record, probs)
        if gap <= REPRODUCTION_TOLERANCE:
            return
        log.warning(
            "decision_not_reproduced",
            decision_id=record.decision_id,
            model=record.model,
            version=record.model_version,
            max_difference=gap,
        )
        if self.metrics is not None:
            self.metrics.decisions_not_reproduced.labels(record.model, record.model_version).inc()
