"""Retention of what the server keeps about people: end users' feature values and their feedback.

Why: Predict stores each decision with the features it was made on, so that
the person it is about can later ask why (GDPR Art. 13–15), and feedback
holds what its givers wrote. Both are personal data, and storage limitation
(GDPR Art. 5(1)(e)) says they are kept no longer than their purpose needs.
With `store.decisions_retention_days` or `store.feedback_retention_days` set,
the server deletes the records older than that, at start and then every
`store.retention_check_s`.

The stores stay append-only otherwise: their triggers let through only the
deletion of rows older than a cutoff, or of one subject's rows, that the
deleting transaction itself allows (`DecisionStore.expire`,
`FeedbackStore.expire`), so no other path can delete or alter one. An expired
decision answers NOT_FOUND to ExplainDecision, attribution drift reads only
what is kept, and what a server derived from it in memory goes within
`explain.cache_max_age_s` (`aged_cache`). The audit log keeps its records: they hold decision ids and
never feature values, and its hash chain would break otherwise. Replicas
sharing PostgreSQL stores may all run the schedule; a second run finds nothing
left to delete.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from desiderata.policy.audit import AuditLog, AuditRecord, utc_now
from desiderata.policy.feedback import FeedbackStore
from desiderata.server.decision_store import DecisionStore, utcnow
from desiderata.server.errors import DesiderataError, InvalidArgument
from desiderata.server.metrics import Metrics

__all__ = ["Retention", "audit_erasure", "erase_subject", "expire_decisions", "expire_feedback", "watch_retention"]

log = structlog.get_logger("desiderata.retention")


def expire_decisions(store: DecisionStore, days: float, now: datetime | None = None) -> int:
    """Deletes the decisions older than `days` (blocking); returns how many.

    Args:
        store: the decision store.
        days: retention period; the cutoff is `now` minus this.
        now: the current time (UTC); the clock when None.
    """
    return _expire(store, days, now, "decisions_expired")


def expire_feedback(store: FeedbackStore, days: float, now: datetime | None = None) -> int:
    """Deletes the feedback given more than `days` ago (blocking); returns how many (Args as
    `expire_decisions`)."""
    return _expire(store, days, now, "feedback_expired")


def _expire(store: DecisionStore | FeedbackStore, days: float, now: datetime | None, event: str) -> int:
    cutoff = (now or utcnow()) - timedelta(days=days)
    n = store.expire(cutoff)
    log.info(event, count=n, before=cutoff.isoformat())
    return n


def erase_subject(decisions: DecisionStore, feedback: FeedbackStore, subject_id: str) -> tuple[int, int]:
    """Deletes every decision about `subject_id` and all feedback given for them (blocking);
    returns both counts. Decisions go first: they hold the feature values."""
    if not subject_id:  # checked before anything is deleted: no store may see an empty subject
        raise InvalidArgument.single("subject_id", "required")
    n_decisions = decisions.erase_subject(subject_id)
    n_feedback = feedback.erase_subject(subject_id)
    log.info("subject_erased", decisions=n_decisions, feedback=n_feedback)
    return n_decisions, n_feedback


def audit_erasure(audit: AuditLog, *, by: str, request: str, counts: dict[str, int]) -> str:
    """Appends an erasure to the hash-chained audit log (accountability, GDPR Art. 5(2)); returns
    its id. The record names who erased and under which request, and how many records went; never
    the subject, whose id the erasure is there to remove (the request reference leads to it in the
    organisation's own data-subject process).

    Args:
        audit: the audit log.
        by: who ran the erasure.
        request: the organisation's reference of the erasure request ("" when none was given).
        counts: records deleted, by store.
    """
    record = AuditRecord(
        decision_id="era_" + uuid.uuid4().hex,
        time=utc_now(),
        principal=by,
        role="operator",
        purpose="erasure",
        consumption="",
        model="",
        model_version="",
        policy_version="",
        action="erase_subject",
        allowed=True,
        tier="",
        reasons=tuple(f"{store}_erased={n}" for store, n in sorted(counts.items())),
        request_id=request,
    )
    audit.append(record)
    return record.decision_id


@dataclass(frozen=True)
class Retention:
    """What is expired on the schedule: a store with a period of 0 days is kept whole.

    Args:
        decisions: the decision store.
        decisions_days: `store.decisions_retention_days`.
        feedback: the feedback store.
        feedback_days: `store.feedback_retention_days`.
    """

    decisions: DecisionStore
    decisions_days: float
    feedback: FeedbackStore
    feedback_days: float

    @property
    def on(self) -> bool:
        return self.decisions_days > 0 or self.feedback_days > 0

    def run(self, metrics: Metrics | None) -> None:
        """One pass over both stores (blocking); a failing store is logged and the other still runs."""
        passes: tuple[tuple[str, float, Callable[[], int]], ...] = (
            ("decisions", self.decisions_days, lambda: expire_decisions(self.decisions, self.decisions_days)),
            ("feedback", self.feedback_days, lambda: expire_feedback(self.feedback, self.feedback_days)),
        )
        for store, days, expire in passes:
            if days <= 0:
                continue
            try:
                n = expire()
            except DesiderataError as exc:
                log.warning("expiry_failed", store=store, code=exc.code)
            except Exception:
                log.exception("expiry_error", store=store)
            else:
                if metrics is not None:
                    (metrics.decisions_expired if store == "decisions" else metrics.feedback_expired).inc(n)


async def watch_retention(retention: Retention, interval_s: float, metrics: Metrics | None) -> None:
    """Runs `retention` at once and then every `interval_s` seconds until cancelled.

    A store that is down is logged and tried again at the next interval.
    """
    while True:
        await asyncio.to_thread(retention.run, metrics)
        await asyncio.sleep(interval_s)
