"""Global views against closed forms on a linear model.

On g(x) = w·x + b every local method has the closed form w_i (x_i − c_i): c is the
reference mean for IG with the mean baseline, and the background's weighted mean
for Shapley values. So the summary's mean |attribution| per predicted class is
known exactly, for the model served differentiable (IG) and black-box
(permutation Shapley); and since each attribution is a monotone function of its
feature's value, the drift test of a feature is the two-sample KS test of the raw
values. The figures' calibration (false alarms at about their nominal rate) is
checked over many samples drawn without drift.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from desiderata.explainers.background import summarize
from desiderata.explainers.base import Cancelled, ExplainContext
from desiderata.server.attribution_drift import (
    ALPHA,
    MIN_DECISIONS,
    DriftMonitor,
    check_window,
    compare,
)
from desiderata.server.decision_store import DecisionRecord, new_record_id
from desiderata.server.errors import FailedPrecondition, InvalidArgument
from desiderata.server.global_views import EXPLAIN_CHUNK, GlobalSummaries
from tests.unit.explainers.attribution_models import Identity2, TorchModel, numeric, reference_rows

W = np.array([1.0, -2.0, 0.5, 3.0, 0.0, -1.0])


def _linear(differentiable: bool) -> TorchModel:
    module = Identity2(torch.tensor(W, dtype=torch.float32), 0.3)
    name = "lin-grad" if differentiable else "lin-box"
    return TorchModel(module, numeric(6), reference_rows(200, 6, 0, 4), name=name, differentiable=differentiable)


def _centre(model: TorchModel) -> np.ndarray:
    ref = model.reference()
    assert ref is not None
    if model.torch_module() is not None:
        return np.asarray(ref.x.mean(axis=0))
    bg = summarize(model, 100)
    return np.asarray(bg.weights @ bg.x)


@pytest.mark.parametrize("differentiable", [True, False], ids=["integrated_gradients", "permutation_shapley"])
def test_summary_is_the_closed_form_per_predicted_class(differentiable: bool) -> None:
    model = _linear(differentiable)
    summary = GlobalSummaries(sample_rows=200).get(model)
    ref = model.reference()
    assert ref is not None
    x = ref.x  # all 200 rows are sampled
    g = x @ W + 0.3
    closed = np.abs(W * (x - _centre(model)))
    assert summary.method == ("integrated_gradients" if differentiable else "permutation_shapley")
    assert summary.features == tuple(f"x{i}" for i in range(6))
    assert {c.label for c in summary.classes} == {"no", "yes"}
    for view in summary.classes:
        rows = g > 0 if view.label == "yes" else g <= 0
        assert view.rows == int(rows.sum())
        np.testing.assert_allclose(view.mean_abs, closed[rows].mean(axis=0), rtol=1e-5, atol=1e-6)


def decision_records(model: TorchModel, x: np.ndarray, start: datetime) -> list[DecisionRecord]:
    return [
        DecisionRecord(
            decision_id=new_record_id(),
            subject_id=f"s{i}",
            principal_id="svc",
            model=model.card.name,
            model_version=model.card.version,
            features={f"x{j}": float(v) for j, v in enumerate(row)},
            probabilities=(0.5, 0.5),
            created_at=start + timedelta(seconds=i),
        )
        for i, row in enumerate(x)
    ]


@pytest.mark.parametrize("differentiable", [True, False], ids=["integrated_gradients", "permutation_shapley"])
def test_drift_of_a_linear_model_is_the_ks_test_of_its_features(differentiable: bool) -> None:
    model = _linear(differentiable)
    ref = model.reference()
    assert ref is not None
    recent = np.random.default_rng(11).normal(size=(120, 6))
    recent[:, 3] += 0.8  # x3 moved; the rest did not
    start = datetime(2026, 11, 23, tzinfo=UTC)
    out = DriftMonitor(reference_rows=200).drift(model, decision_records(model, recent, start), ExplainContext())
    assert (out.decisions, out.reference_rows, out.target_class) == (120, 200, "yes")
    assert (out.first_decision_at, out.last_decision_at) == (start, start + timedelta(seconds=119))
    by_name = {f.feature: f for f in out.features}
    for i, w in enumerate(W):
        f = by_name[f"x{i}"]
        if w == 0:  # float32 noise at most, counted as zero: nothing to compare
            assert f.reference_mean_abs == f.recent_mean_abs == 0.0 and f.ks_statistic == 0.0 and not f.drifted
            continue
        raw = ks_2samp(ref.x[:, i], recent[:, i])
        assert f.ks_statistic == pytest.approx(raw.statistic, abs=1e-12)
        assert f.p_value == pytest.approx(raw.pvalue, rel=1e-6)
        assert f.drifted == (raw.pvalue * 6 < ALPHA)
    assert by_name["x3"].drifted and out.drifted
    assert not any(f.drifted for name, f in by_name.items() if name != "x3")
    assert out.share_distance > out.share_threshold


def test_false_alarms_stay_near_their_nominal_rate() -> None:
    """200 samples without drift: features flagged (family-wise) and share distances over
    their threshold each in at most about ALPHA of them."""
    rng = np.random.default_rng(5)
    scale = np.array([1.0, 2.0, 0.5, 3.0])
    reference = rng.normal(size=(300, 4)) * scale
    names = ["a", "b", "c", "d"]
    flagged = over = 0
    trials = 200
    for _ in range(trials):
        recent = rng.normal(size=(60, 4)) * scale
        distance, threshold, features = compare(reference, recent, names)
        flagged += any(f.drifted for f in features)
        over += distance > threshold
    # Bonferroni is conservative and the permutation threshold exact: ≤ 5% expected, and 10% is
    # 3.2 binomial standard deviations above 5% at 200 trials. Without the Bonferroni
    # adjustment, the family-wise rate of these four features measured 12%.
    assert flagged / trials <= 0.10
    assert over / trials <= 0.10
    # and they are not blind: a modest shift of one feature is caught nearly always
    caught = sum(
        compare(reference, rng.normal(size=(60, 4)) * scale + [0.0, 0.0, 0.0, 2.0], names)[2][3].drifted
        for _ in range(30)
    )
    assert caught >= 26


def test_share_distance_is_half_the_l1_gap_between_importance_shares() -> None:
    reference = np.array([[1.0, -1.0, 2.0], [-1.0, 1.0, 2.0]])
    recent = np.array([[3.0, 0.0, 1.0], [3.0, 0.0, -1.0]])
    distance, _, features = compare(reference, recent, ["a", "b", "c"])
    # shares: reference (1, 1, 2)/4, recent (3, 0, 1)/4 → ½ (2 + 1 + 1)/4
    assert distance == pytest.approx(0.5)
    assert [f.reference_mean_abs for f in features] == [1.0, 1.0, 2.0]
    assert [f.recent_mean_abs for f in features] == [3.0, 0.0, 1.0]


def test_recorded_decisions_are_explained_once(explained: list[int]) -> None:
    model = _linear(True)
    rows = np.random.default_rng(2).normal(size=(40, 6))
    records = decision_records(model, rows, datetime(2026, 11, 23, tzinfo=UTC))
    monitor = DriftMonitor(reference_rows=100)
    first = monitor.drift(model, records[:30], ExplainContext())
    assert sum(explained) == 100 + 30  # the reference sample, then the decisions (in chunks)
    second = monitor.drift(model, records, ExplainContext())
    assert sum(explained) == 100 + 40  # only the ten new decisions
    assert first.decisions == 30 and second.decisions == 40


class _StopsAfter(ExplainContext):
    """A request that is cancelled at its `rows`-th check (one check per row explained)."""

    def __init__(self, rows: int) -> None:
        super().__init__()
        self.left = rows

    def check(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise Cancelled("stopped by the test")


def test_a_stopped_query_leaves_its_finished_rows_to_the_next(explained: list[int]) -> None:
    model = _linear(True)
    records = decision_records(model, np.random.default_rng(3).normal(size=(30, 6)), datetime(2026, 11, 23, tzinfo=UTC))
    monitor = DriftMonitor(reference_rows=100)
    with pytest.raises(Cancelled):
        monitor.drift(model, records, _StopsAfter(2 * EXPLAIN_CHUNK + 5))
    assert explained == [EXPLAIN_CHUNK, EXPLAIN_CHUNK]  # two chunks of reference rows finished
    whole = monitor.drift(model, records, ExplainContext())
    assert sum(explained) == 100 + 30  # nothing was explained twice
    assert whole == DriftMonitor(reference_rows=100).drift(model, records, ExplainContext())


def test_a_stopped_summary_leaves_its_finished_rows_to_the_next(explained: list[int]) -> None:
    model = _linear(False)  # black-box: the costly case
    summaries = GlobalSummaries(sample_rows=100)
    with pytest.raises(Cancelled):
        summaries.get(model, _StopsAfter(EXPLAIN_CHUNK + 3))
    assert explained == [EXPLAIN_CHUNK]
    whole = summaries.get(model, ExplainContext())
    assert sum(explained) == 100
    fresh = GlobalSummaries(sample_rows=100).get(model)
    for resumed, once in zip(whole.classes, fresh.classes, strict=True):
        assert (resumed.label, resumed.rows) == (once.label, once.rows)
        np.testing.assert_array_equal(resumed.mean_abs, once.mean_abs)


def test_too_few_decisions_and_too_large_windows_are_refused() -> None:
    model = _linear(True)
    rows = np.zeros((MIN_DECISIONS - 1, 6))
    with pytest.raises(FailedPrecondition, match=f"at least {MIN_DECISIONS} recorded decisions"):
        DriftMonitor().drift(model, decision_records(model, rows, datetime(2026, 1, 1, tzinfo=UTC)), ExplainContext())
    assert check_window(0) == 500 and check_window(7) == 7
    for bad in (5001, -1):
        with pytest.raises(InvalidArgument) as info:
            check_window(bad)
        assert info.value.violations[0].field == "max_decisions"
