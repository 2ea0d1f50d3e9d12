"""Retention of recorded decisions: end users' feature values are kept only as long as configured.

Why: Predict stores each decision with the features it was made on, so that
the person it is about can later ask why (GDPR Art. 13–15). Those features
are personal data, and storage limitation (GDPR Art. 5(1)(e)) says they are
kept no longer than that purpose needs. With `store.decisions_retention_days`
set, the server deletes the decisions older than that, at start and then every
`store.retention_check_s`.

Decisions stay append-only otherwise: the stores' triggers let through only
the deletion of rows older than a cutoff that the deleting transaction itself
sets (`DecisionStore.expire`), so no other path can delete or alter one. An
expired decision answers NOT_FOUND to ExplainDecision, and attribution drift
reads only what is kept. The audit log keeps its records: they hold decision
ids and never feature values, and its hash chain would break otherwise.
Replicas sharing a PostgreSQL store may all run the schedule; a second run
finds nothing left to delete.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import structlog

from desiderata.server.decision_store import DecisionStore, utcnow
from desiderata.server.errors import DesiderataError
from desiderata.server.metrics import Metrics

__all__ = ["expire_decisions", "watch_retention"]

log = structlog.get_logger("desiderata.retention")


def expire_decisions(store: DecisionStore, days: float, now: datetime | None = None) -> int:
    """Deletes the decisions older than `days` (blocking); returns how many.

    Args:
        store: the decision store.
        days: retention period; the cutoff is `now` minus this.
        now: the current time (UTC); the clock when None.
    """
    cutoff = (now or utcnow()) - timedelta(days=days)
    n = store.expire(cutoff)
    log.info("decisions_expired", count=n, before=cutoff.isoformat())
    return n


async def watch_retention(store: DecisionStore, days: float, interval_s: float, metrics: Metrics | None) -> None:
    """Expires decisions at once and then every `interval_s` seconds until cancelled.

    A store that is down is logged and tried again at the next interval.
    """
    while True:
        try:
            n = await asyncio.to_thread(expire_decisions, store, days)
        except DesiderataError as exc:
            log.warning("decisions_expiry_failed", code=exc.code)
        except Exception:
            log.exception("decisions_expiry_error")
        else:
            if metrics is not None:
                metrics.decisions_expired.inc(n)
        await asyncio.sleep(interval_s)
