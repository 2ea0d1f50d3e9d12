"""Broken model folders are refused with a ValueError that names the problem, never a crash.

The people who write model cards are users too: `desiderata model check` and
the server's boot (which refuses, or with `models.skip_broken` skips, a bad
folder) both rely on `load_model` raising ValueError for anything wrong with a
folder. This mutates the tiny model's card at random (seeded: keys deleted,
values of the wrong type, edge values, duplicated list entries) and corrupts
its reference file in the ways it can be wrong; every load must either succeed,
giving a model that validates, encodes and scores a reference row, or raise
ValueError. Found by it: a training reference path naming a missing file
escaped as FileNotFoundError, and paths could climb out of the model folder.
"""

from __future__ import annotations

import copy
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from desiderata.server.model_handle import load_model

SEED = 20261123
CARDS = 150
_VALUES: tuple[Any, ...] = (None, 0, -1, 1, 1e308, float("nan"), float("inf"), "", "x" * 300, "../../etc/passwd")
_VALUES += ("/etc/passwd", [], {}, [1, 2], {"a": 1}, True, "number", "category", "red", "reference.npz", "model.pt2")


def _mutate(obj: Any, rng: random.Random) -> None:
    """One random change somewhere inside a card's dict/list tree."""
    if isinstance(obj, dict) and obj:
        key = rng.choice(list(obj))
        r = rng.random()
        if r < 0.2:
            del obj[key]
        elif r < 0.3:
            extra = rng.choice(["extra", "min", "max", "categories", "baseline", "path"])
            obj[extra] = copy.deepcopy(rng.choice(_VALUES))
        elif isinstance(obj[key], dict | list) and obj[key] and rng.random() < 0.7:
            _mutate(obj[key], rng)
        else:
            obj[key] = copy.deepcopy(rng.choice(_VALUES))
    elif isinstance(obj, list) and obj:
        i = rng.randrange(len(obj))
        r = rng.random()
        if r < 0.2:
            del obj[i]
        elif r < 0.35:
            obj.append(copy.deepcopy(obj[i]))
        elif isinstance(obj[i], dict | list) and obj[i]:
            _mutate(obj[i], rng)
        else:
            obj[i] = copy.deepcopy(rng.choice(_VALUES))


def _loads_and_serves_or_says_why(folder: Path) -> bool:
    """True if the folder loaded and serves a reference row; False if refused with ValueError."""
    try:
        handle = load_model(folder)
    except ValueError as exc:
        assert str(exc), "a refusal must say why"
        return False
    ref = handle.reference()
    if ref is not None:
        row = handle.schema.decode(np.asarray(ref.x[0]))
        handle.schema.validate(row)
        probs = handle.predict_proba(handle.schema.encode(row)[None, :])
        assert probs.shape == (1, handle.n_classes) and np.all(np.isfinite(probs))
    return True


def test_mutated_cards_load_or_are_refused_with_a_value_error(tiny_repo: Path, tmp_path: Path) -> None:
    base = yaml.safe_load((tiny_repo / "tiny" / "card.yaml").read_text())
    rng = random.Random(SEED)
    outcomes = {True: 0, False: 0}
    for i in range(CARDS):
        folder = tmp_path / f"m{i}"
        shutil.copytree(tiny_repo / "tiny", folder)
        card = copy.deepcopy(base)
        for _ in range(rng.choice((1, 1, 2, 3))):
            _mutate(card, rng)
        (folder / "card.yaml").write_text(yaml.safe_dump(card))
        outcomes[_loads_and_serves_or_says_why(folder)] += 1
        shutil.rmtree(folder)
    assert outcomes[True] >= CARDS // 10 and outcomes[False] >= CARDS // 2, outcomes  # both paths exercised


def _write_reference(folder: Path, **arrays: Any) -> None:
    np.savez(folder / "reference.npz", **arrays)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda f: (f / "reference.npz").unlink(), "not a training reference"),
        (lambda f: (f / "reference.npz").write_text("not a zip file"), "not a training reference"),
        (lambda f: _write_reference(f, y=np.zeros(3)), "not a training reference"),
        (lambda f: _write_reference(f, x=np.full((3, 6), np.nan), y=np.zeros(3)), "NaN or infinite"),
        (lambda f: _write_reference(f, x=np.zeros((3, 6)), y=np.array([0, 1, 7])), "class indices"),
        (lambda f: _write_reference(f, x=np.zeros((3, 5)), y=np.zeros(3)), "does not match the card's 6 columns"),
        (lambda f: _write_reference(f, x=np.array([["a"] * 6] * 3), y=np.zeros(3)), "not a training reference"),
    ],
)
def test_a_broken_reference_file_is_refused_by_name(
    tiny_repo: Path, tmp_path: Path, corrupt: Any, message: str
) -> None:
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_repo / "tiny", folder)
    corrupt(folder)
    with pytest.raises(ValueError, match=message):
        load_model(folder)


@pytest.mark.parametrize(
    ("field", "path"), [("artifact", "../model.pt2"), ("artifact", "/tmp/model.pt2"), ("path", "../../x.npz")]
)
def test_paths_may_not_leave_the_model_folder(tiny_repo: Path, tmp_path: Path, field: str, path: str) -> None:
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_repo / "tiny", folder)
    card = yaml.safe_load((folder / "card.yaml").read_text())
    if field == "path":
        card["training_data"]["path"] = path
    else:
        card[field] = path
    (folder / "card.yaml").write_text(yaml.safe_dump(card))
    with pytest.raises(ValueError, match="inside the model folder"):
        load_model(folder)
