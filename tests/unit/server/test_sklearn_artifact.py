"""scikit-learn classifiers load from .skops files only with the types the card trusts,
and predict exactly what the estimator predicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

from desiderata.server.model_handle import load_model
from tests.support.sklearn_model import fit_classifier, write_sklearn_model


def test_predictions_are_the_estimators_on_float32_rows(tmp_path: Path) -> None:
    model, x = fit_classifier()
    handle = load_model(write_sklearn_model(tmp_path / "gbm", model, x))
    rows = np.random.default_rng(1).normal(size=(300, 6))
    expected = model.predict_proba(rows.astype(np.float32))
    np.testing.assert_allclose(handle.predict_proba(rows), expected, rtol=0, atol=1e-12)
    assert handle.torch_module() is None  # black-box: no gradients
    assert handle.reference() is not None and handle.reference().x.shape == (100, 6)


def test_types_the_card_does_not_trust_are_refused_by_name(tmp_path: Path) -> None:
    model, x = fit_classifier()
    folder = write_sklearn_model(tmp_path / "gbm", model, x, trusted_types=[])
    with pytest.raises(ValueError, match=r"neither skops nor the card trusts: \['sklearn.tree._tree.Tree'\]"):
        load_model(folder)


def test_a_model_of_default_trusted_types_needs_no_list(tmp_path: Path) -> None:
    _, x = fit_classifier()
    y = (x[:, 0] > 0).astype(int)
    folder = write_sklearn_model(tmp_path / "lr", LogisticRegression().fit(x, y), x, trusted_types=[])
    np.testing.assert_allclose(load_model(folder).predict_proba(x[:5]).sum(axis=1), 1.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"differentiable": True}, "has no gradients: set differentiable: false"),
        ({"artifact": "model.pkl"}, "a .pt2 \\(torch.export\\) or .skops"),
        ({"class_names": ["a", "b", "c"], "positive_class": "a"}, "the estimator has 2 classes; the card names 3"),
    ],
)
def test_inconsistent_cards_stop_the_load(tmp_path: Path, overrides: dict[str, object], message: str) -> None:
    model, x = fit_classifier()
    with pytest.raises(ValueError, match=message):
        load_model(write_sklearn_model(tmp_path / "gbm", model, x, **overrides))


def test_a_regressor_is_not_served(tmp_path: Path) -> None:
    _, x = fit_classifier()
    regressor = LinearRegression().fit(x, x[:, 0])
    regressor.classes_ = np.array([0, 1])  # even when it looks like a classifier
    folder = write_sklearn_model(tmp_path / "reg", regressor, x, trusted_types=[])
    with pytest.raises(ValueError, match="has no predict_proba"):
        load_model(folder)


def test_trusted_types_only_for_skops(tmp_path: Path) -> None:
    model, x = fit_classifier()
    with pytest.raises(ValueError, match=r"trusted_types applies to \.skops artifacts only"):
        load_model(write_sklearn_model(tmp_path / "gbm", model, x, artifact="model.pt2", differentiable=True))


def test_model_check_names_the_types_to_review_then_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from desiderata.server.cli import main

    model, x = fit_classifier()
    write_sklearn_model(tmp_path / "repo" / "gbm", model, x, trusted_types=[])
    assert main(["model", "check", str(tmp_path / "repo")]) == 1
    failed = capsys.readouterr().out  # the card does not trust the tree type yet
    assert failed.startswith("FAIL ") and "['sklearn.tree._tree.Tree']" in failed
    card = tmp_path / "repo" / "gbm" / "card.yaml"
    card.write_text(card.read_text().replace("trusted_types: []", "trusted_types: [sklearn.tree._tree.Tree]"))
    assert main(["model", "check", str(tmp_path / "repo" / "gbm")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK ") and "scikit-learn (skops)" in out and "black-box" in out and "100 rows" in out
