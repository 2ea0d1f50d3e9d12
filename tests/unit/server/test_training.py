"""The demo model: committed data and artifacts are valid, good enough, and reproducible.

One seed-0 retraining (module fixture, the committed settings) serves the
determinism, export-fidelity and gradient tests; a small DP run checks the
privacy facts.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from desiderata.server.artifact import sha256_file
from desiderata.server.demo_data import CREDIT_CSV, CREDIT_MODEL_DIR, read_credit_csv
from desiderata.server.demo_model import roc_auc
from desiderata.server.model_card import FeatureSchema, load_card
from desiderata.server.training import TrainingRun, main, stratified_split, train_credit

FEATURES = [
    "seniority", "home", "time", "age", "marital", "records", "job",
    "expenses", "income", "assets", "debt", "amount", "price",
]  # fmt: skip


@pytest.fixture(scope="module")
def retrained(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainingRun, Path]:
    out = tmp_path_factory.mktemp("credit")
    return train_credit(out, seed=0), out


def _probabilities(model_dir: Path, x: np.ndarray) -> np.ndarray:
    module = torch.export.load(model_dir / "model.pt2").module()
    with torch.no_grad():
        out: np.ndarray = module(torch.as_tensor(x, dtype=torch.float32)).double().numpy()
    return out


def test_committed_card_is_valid_and_describes_the_artifacts() -> None:
    card = load_card(CREDIT_MODEL_DIR / "card.yaml")
    assert (card.name, card.version, card.domain) == ("credit", "1", "credit")
    assert card.class_names == ["bad", "good"] and card.positive_class == "good"
    assert [f.name for f in card.features] == FEATURES
    by_name = {f.name: f for f in card.features}
    assert by_name["age"].protected and by_name["age"].immutable
    assert by_name["marital"].protected and by_name["marital"].immutable
    assert by_name["records"].immutable and by_name["records"].type == "boolean"
    assert by_name["income"].unit == "€" and by_name["income"].unit_prefix
    assert card.artifact_sha256 == sha256_file(CREDIT_MODEL_DIR / card.artifact)
    assert not card.privacy.dp_trained
    reference = np.load(CREDIT_MODEL_DIR / "reference.npz")
    assert card.training_data is not None and card.training_data.path == "reference.npz"
    assert card.training_data.rows == len(reference["x"]) == len(reference["ids"])
    assert (CREDIT_MODEL_DIR / "reference.npz").stat().st_size < 1_000_000


def test_categories_are_the_data_levels_and_ranges_cover_the_data() -> None:
    card = load_card(CREDIT_MODEL_DIR / "card.yaml")
    with CREDIT_CSV.open(newline="") as fh:
        records = list(csv.DictReader(fh))
    for spec in card.features:
        column = [r[spec.name] for r in records]
        if spec.type == "category":
            assert spec.categories == sorted(set(column))
        elif spec.type in ("integer", "number"):
            values = [float(v) for v in column]
            assert spec.min is not None and spec.max is not None
            assert spec.min <= min(values) and max(values) <= spec.max


def test_schema_round_trips_every_csv_row_and_the_reference_is_their_encoding() -> None:
    card = load_card(CREDIT_MODEL_DIR / "card.yaml")
    schema = FeatureSchema(card.features)
    data = read_credit_csv()
    assert len(data.rows) == 4039
    encoded = {}
    for row_id, row in zip(data.ids, data.rows, strict=True):
        schema.validate(row)
        encoded[row_id] = schema.encode(row)
        assert schema.decode(encoded[row_id]) == row
    reference = np.load(CREDIT_MODEL_DIR / "reference.npz")
    assert reference["x"].dtype == np.float64 and reference["y"].dtype == np.int64
    label = dict(zip(data.ids, data.labels.tolist(), strict=True))
    for xs, ys, ids in (("x", "y", "ids"), ("x_test", "y_test", "ids_test")):
        expected = np.stack([encoded[str(i)] for i in reference[ids]])
        np.testing.assert_array_equal(reference[xs], expected)
        assert reference[ys].tolist() == [label[str(i)] for i in reference[ids]]
    assert not set(reference["ids"].tolist()) & set(reference["ids_test"].tolist())
    assert len(reference["ids"]) + len(reference["ids_test"]) == len(data.rows)


def test_committed_model_separates_the_holdout() -> None:
    reference = np.load(CREDIT_MODEL_DIR / "reference.npz")
    proba = _probabilities(CREDIT_MODEL_DIR, reference["x_test"])
    y = reference["y_test"]
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    accuracy = float(np.mean(proba.argmax(axis=1) == y))
    assert accuracy >= 0.75
    assert accuracy > max(np.mean(y), 1 - np.mean(y))  # beats always predicting the majority class
    assert roc_auc_score(y, proba[:, 1]) >= 0.78


def test_exported_program_matches_the_eager_module_and_passes_gradients(
    retrained: tuple[TrainingRun, Path],
) -> None:
    run, out = retrained
    reference = np.load(out / "reference.npz")
    x = torch.as_tensor(reference["x_test"][:64], dtype=torch.float32)
    loaded = torch.export.load(out / "model.pt2").module()
    x_eager, x_loaded = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    p_eager, p_loaded = run.module(x_eager), loaded(x_loaded)
    torch.testing.assert_close(p_loaded, p_eager, atol=1e-6, rtol=0)
    (g_eager,) = torch.autograd.grad(p_eager[:, 1].sum(), x_eager)
    (g_loaded,) = torch.autograd.grad(p_loaded[:, 1].sum(), x_loaded)
    assert g_loaded.abs().sum() > 0
    torch.testing.assert_close(g_loaded, g_eager, atol=1e-6, rtol=1e-5)
    loaded(x[:1])[0, 1].backward()  # batch 1 through the dynamic batch dimension
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loaded.parameters())


def test_retraining_with_seed_0_reproduces_the_committed_artifacts(
    retrained: tuple[TrainingRun, Path],
) -> None:
    run, out = retrained
    committed = np.load(CREDIT_MODEL_DIR / "reference.npz")
    fresh = np.load(out / "reference.npz")
    for key in ("x", "y", "ids", "x_test", "y_test", "ids_test"):
        np.testing.assert_array_equal(fresh[key], committed[key])
    x = np.concatenate([committed["x"], committed["x_test"]])
    np.testing.assert_allclose(_probabilities(out, x), _probabilities(CREDIT_MODEL_DIR, x), atol=1e-6, rtol=0)
    committed_card = load_card(CREDIT_MODEL_DIR / "card.yaml").model_dump(exclude={"artifact_sha256"})
    assert run.card.model_dump(exclude={"artifact_sha256"}) == committed_card
    assert run.holdout_auc == pytest.approx(
        roc_auc_score(committed["y_test"], _probabilities(out, x)[-len(committed["y_test"]) :, 1])
    )


def test_dp_training_records_the_privacy_spent(tmp_path: Path) -> None:
    small = tmp_path / "small.csv"
    lines = CREDIT_CSV.read_text().splitlines()
    small.write_text("\n".join(lines[:1201]) + "\n")  # header + 1200 rows keeps the run short
    out = tmp_path / "dp"
    run = train_credit(out, seed=1, dp=True, epsilon=2.0, epochs=2, csv_path=small)
    privacy = load_card(out / "card.yaml").privacy
    assert privacy == run.card.privacy
    assert privacy.dp_trained
    assert 0 < privacy.epsilon <= 2.0
    n_train = len(np.load(out / "reference.npz")["x"])
    assert privacy.delta == pytest.approx(1 / n_train)
    proba = _probabilities(out, np.load(out / "reference.npz")["x_test"])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert not any(hasattr(p, "grad_sample") for p in run.module.parameters())


def test_dp_needs_a_positive_epsilon(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="epsilon"):
        train_credit(tmp_path, dp=True, epsilon=None)
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--dp"])
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--epsilon", "1.0"])


def test_stratified_split_keeps_class_shares() -> None:
    labels = np.array([0] * 300 + [1] * 700)
    train, test = stratified_split(labels, test_fraction=0.2, seed=3)
    assert len(test) == 200 and np.mean(labels[test]) == pytest.approx(0.7)
    assert not set(train) & set(test) and len(train) + len(test) == len(labels)
    again, _ = stratified_split(labels, test_fraction=0.2, seed=3)
    other, _ = stratified_split(labels, test_fraction=0.2, seed=4)
    assert np.array_equal(train, again) and not np.array_equal(train, other)


def test_roc_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    score = np.round(rng.normal(size=500) + y, 1)  # rounding creates ties
    assert roc_auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
