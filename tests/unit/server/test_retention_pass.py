"""One retention pass over both stores: each expires what its period says, a period of 0 keeps
its store whole, and a store that is down does not stop the other (it is tried at the next pass)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

from desiderata.policy.feedback import Feedback, SqliteFeedbackStore, feedback_time
from desiderata.server.decision_store import DecisionStore, SqliteDecisionStore, utcnow
from desiderata.server.errors import Unavailable
from desiderata.server.metrics import Metrics
from desiderata.server.retention import Retention


class _DownDecisions(SqliteDecisionStore):
    def expire(self, before: datetime) -> int:
        raise Unavailable("decision store unavailable: OperationalError")


def _old_feedback(store: SqliteFeedbackStore, days: float) -> None:
    fb = Feedback(decision_id="dec_1", explanation_id="exp_1", principal="lou", role="domain_expert",
                  model="credit", model_version="1", verdict="agree",
                  time=feedback_time(utcnow() - timedelta(days=days)))  # fmt: skip
    store._append(json.dumps(fb.__dict__), fb.model)


def _counts(metrics: Metrics) -> tuple[float, float]:
    value = metrics.registry.get_sample_value
    return value("desiderata_decisions_expired_total") or 0.0, value("desiderata_feedback_expired_total") or 0.0


def test_a_store_that_is_down_does_not_stop_the_other(tmp_path: Path) -> None:
    decisions: DecisionStore = _DownDecisions(tmp_path / "decisions.sqlite")
    feedback = SqliteFeedbackStore(tmp_path / "feedback.sqlite")
    _old_feedback(feedback, 40)
    _old_feedback(feedback, 10)
    metrics = Metrics(process=False)
    Retention(decisions, 30, feedback, 30).run(metrics)
    assert len(feedback.all()) == 1
    assert _counts(metrics) == (0.0, 1.0)
    decisions.close()
    feedback.close()


def test_a_period_of_zero_keeps_its_store_whole(tmp_path: Path) -> None:
    decisions = SqliteDecisionStore(tmp_path / "decisions.sqlite")
    feedback = SqliteFeedbackStore(tmp_path / "feedback.sqlite")
    _old_feedback(feedback, 4000)
    retention = Retention(decisions, 0, feedback, 0)
    assert not retention.on
    retention.run(None)
    assert len(feedback.all()) == 1
    assert Retention(decisions, 0, feedback, 3650).on
    decisions.close()
    feedback.close()
