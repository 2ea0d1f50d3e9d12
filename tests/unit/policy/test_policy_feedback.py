"""Feedback store: validation, storage and export as CSV / JSONL."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from desiderata.policy.feedback import Feedback, FeedbackStore
from desiderata.server.errors import InvalidArgument

FEATURES = frozenset({"income", "age", "debt"})


def _fb(**kw: object) -> Feedback:
    base = dict(decision_id="dec_1", explanation_id="ex_1", principal="lou", role="domain_expert",
                model="credit", model_version="1", verdict="disagree", should_matter=("income",),
                should_not_matter=("age",), text="age should not count")  # fmt: skip
    base.update(kw)
    return Feedback(**base)  # type: ignore[arg-type]


def test_submit_and_export(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "fb.db")
    stored = store.submit(_fb(), FEATURES)
    store.submit(_fb(decision_id="dec_2", verdict="agree", should_not_matter=(), model="other"), FEATURES)
    assert stored.time.endswith("Z")
    assert [f.decision_id for f in store.all("credit")] == ["dec_1"]
    assert store.export(tmp_path / "fb.jsonl", "jsonl") == 2
    lines = [json.loads(x) for x in (tmp_path / "fb.jsonl").read_text().splitlines()]
    assert lines[0]["should_not_matter"] == ["age"] and lines[1]["verdict"] == "agree"
    assert store.export(tmp_path / "fb.csv", "csv", model="credit") == 1
    with (tmp_path / "fb.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["should_matter"] == "income" and rows[0]["text"] == "age should not count"
    store.close()


@pytest.mark.parametrize(
    "bad",
    [
        {"verdict": "maybe"},
        {"should_matter": ("shoe_size",)},
        {"should_matter": ("age",), "should_not_matter": ("age",)},
        {"text": "x" * 5000},
        {"decision_id": ""},
    ],
)
def test_invalid_feedback_is_refused(tmp_path: Path, bad: dict[str, object]) -> None:
    store = FeedbackStore(tmp_path / "fb.db")
    with pytest.raises(InvalidArgument):
        store.submit(_fb(**bad), FEATURES)
    assert store.all() == []
    store.close()
