"""A tiny model repository built in tests: four typed features, an MLP exported
with torch.export, a card and a training reference — independent of the demo."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
import yaml

from desiderata.server.model_card import FeatureSchema, ModelCard

CARD = {
    "name": "tiny",
    "version": "3",
    "description": "test model",
    "domain": "test",
    "class_names": ["no", "yes"],
    "positive_class": "yes",
    "features": [
        {"name": "x1", "type": "number", "min": -10.0, "max": 10.0, "display_name": "First", "baseline": 0.0},
        {"name": "x2", "type": "integer", "min": 0, "max": 100, "unit": "years"},
        {"name": "color", "type": "category", "categories": ["red", "green", "blue"], "protected": True},
        {"name": "flag", "type": "boolean", "immutable": True},
    ],
    "training_data": {"name": "synthetic", "rows": 200, "path": "reference.npz"},
}

INSTANCE = {"x1": 1.5, "x2": 40, "color": "green", "flag": True}


class _Net(torch.nn.Module):
    def __init__(self, n_in: int, seed: int = 7) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.l1 = torch.nn.Linear(n_in, 16)
        self.l2 = torch.nn.Linear(16, 2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.scale = torch.nn.Parameter(torch.tensor([0.2, 0.03, 1.0, 1.0, 1.0, 1.0]), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.l2(torch.tanh(self.l1(x * self.scale))), dim=-1)


def build_tiny_repo(
    root: Path, *, card_overrides: dict[str, object] | None = None, folder: str = "tiny", seed: int = 7
) -> Path:
    """Writes <root>/<folder>/{card.yaml, model.pt2, reference.npz}, weights drawn with `seed`; returns <root>."""
    card_dict = {**CARD, **(card_overrides or {})}
    card = ModelCard.model_validate(card_dict)
    schema = FeatureSchema(card.features)
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(200):
        rows.append(
            schema.encode(
                {
                    "x1": float(rng.uniform(-5, 5)),
                    "x2": int(rng.integers(0, 90)),
                    "color": str(rng.choice(["red", "green", "blue"])),
                    "flag": bool(rng.random() < 0.5),
                }
            )
        )
    x = np.stack(rows)
    net = _Net(schema.n_columns, seed).eval()
    with torch.no_grad():
        y = net(torch.as_tensor(x, dtype=torch.float32)).argmax(1).numpy().astype(np.int64)
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(net, (torch.zeros(2, schema.n_columns),), dynamic_shapes={"x": {0: batch}})
    out = root / folder
    out.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(out / "model.pt2"))
    np.savez_compressed(out / "reference.npz", x=x, y=y, ids=np.array([f"t{i}" for i in range(len(x))]))
    (out / "card.yaml").write_text(yaml.safe_dump(card_dict, sort_keys=False))
    return root


def publish(source: Path, repo: Path, version: str, folder: str | None = None, **card: object) -> Path:
    """Copies a model folder into `repo` under `folder` with the card's version (and fields) set."""
    target = repo / (folder or f"tiny-{version}")
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(".*"))  # not the indexes tests wrote
    edit_card(target, version=version, **card)
    return target


def edit_card(folder: Path, **fields: object) -> None:
    """Rewrites fields of the folder's card.yaml."""
    path = folder / "card.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(fields)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
