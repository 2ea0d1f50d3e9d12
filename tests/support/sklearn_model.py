"""A model folder holding a scikit-learn classifier saved with skops, built in tests:
six numeric features, a 100-row training reference (so the server's background is
exactly those rows) and a card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import skops.io as sio
import yaml
from sklearn.ensemble import GradientBoostingClassifier

D = 6
TREE_TYPES = ["sklearn.tree._tree.Tree"]
"""What skops does not trust by default in a gradient-boosting classifier."""


def fit_classifier(rows: int = 400, seed: int = 0) -> tuple[GradientBoostingClassifier, np.ndarray]:
    """A small gradient-boosting classifier with interactions, and its training rows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, D))
    y = ((x[:, 0] + x[:, 1] * x[:, 2] - 0.5 * x[:, 3]) > 0).astype(np.int64)
    model = GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=seed).fit(x, y)
    return model, x


def write_sklearn_model(folder: Path, estimator: Any, ref_x: np.ndarray, **card_overrides: object) -> Path:
    """Writes ``model.skops``, ``reference.npz`` (first 100 rows) and ``card.yaml``; returns the folder."""
    folder.mkdir(parents=True)
    sio.dump(estimator, folder / "model.skops")
    ref = ref_x[:100]
    y = estimator.predict(ref).astype(np.int64)
    np.savez_compressed(folder / "reference.npz", x=ref, y=y, ids=np.array([f"r{i}" for i in range(len(ref))]))
    card: dict[str, object] = {
        "name": "gbm",
        "version": "1",
        "description": "gradient-boosted trees over six numeric features",
        "domain": "test",
        "class_names": ["no", "yes"],
        "positive_class": "yes",
        "features": [{"name": f"x{i}", "type": "number"} for i in range(ref_x.shape[1])],
        "training_data": {"name": "synthetic", "rows": len(ref), "path": "reference.npz"},
        "artifact": "model.skops",
        "trusted_types": TREE_TYPES,
        "differentiable": False,
    }
    card.update(card_overrides)
    (folder / "card.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    return folder
