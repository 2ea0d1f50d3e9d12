"""Model cards and the feature schema that turns named, typed features into the
model's input vector.

A model in the repository is a folder holding ``card.yaml`` (this module's
`ModelCard`) and the artifact it names. The card is the single source of the
feature names, types, ranges, units, immutable/protected flags, class names,
training reference and DP facts that validation, explainers, policy and
narratives all read.

The model takes an *encoded* float32 row: one column per number, integer or
boolean feature and one one-hot column per category of a category feature,
in card order. A category feature is one player for attribution methods, and so is
each group of features the card declares (`FeatureGroup`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from desiderata.server.errors import FieldViolation, InvalidArgument

__all__ = [
    "FeatureSchema",
    "FeatureSpec",
    "FeatureValue",
    "ModelCard",
    "PrivacyFacts",
    "TrainingDataRef",
    "inside_model_folder",
    "load_card",
]

FeatureValue = float | int | str | bool
FeatureType = Literal["number", "integer", "category", "boolean"]


class FeatureSpec(BaseModel):
    """One input feature as callers name it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    """Stable name used on the wire."""
    display_name: str = ""
    """Name shown to people (narratives); defaults to `name`."""
    type: FeatureType
    """Declared type; values of another type are refused."""
    min: float | None = None
    """Smallest allowed value (numbers and integers)."""
    max: float | None = None
    """Largest allowed value (numbers and integers)."""
    unit: str = ""
    """Unit shown after values in narratives, e.g. "€" or "months"."""
    unit_prefix: bool = False
    """Whether the unit is written before the value ("€450") or after ("12 months")."""
    categories: list[str] = Field(default_factory=list)
    """Allowed values of a category feature, in one-hot column order."""
    immutable: bool = False
    """The subject cannot change it: never suggested in recourse."""
    protected: bool = False
    """A protected attribute (e.g. age); policy may redact it for some audiences."""
    description: str = ""
    """What the feature means."""
    baseline: float | int | str | bool | None = None
    """The card's baseline value for path attributions; None uses the reference mean."""

    @model_validator(mode="after")
    def _check(self) -> FeatureSpec:
        if self.type == "category" and len(self.categories) < 2:
            raise ValueError(f"category feature {self.name!r} needs at least two categories")
        if self.type != "category" and self.categories:
            raise ValueError(f"feature {self.name!r} is not a category but lists categories")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"feature {self.name!r}: min {self.min} > max {self.max}")
        return self

    @property
    def label(self) -> str:
        return self.display_name or self.name

    @property
    def width(self) -> int:
        return len(self.categories) if self.type == "category" else 1


class FeatureGroup(BaseModel):
    """Features that attribution methods treat as one player, e.g. the street, city and
    postcode of an address: one attribution for the group, none for its members.

    The one-hot columns of a category feature are always one player; a group joins
    whole features (categories included)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    """Stable name on the wire: the ``feature`` of the group's attribution; unique among
    the card's features and groups."""
    display_name: str = ""
    """Name shown to people (narratives); defaults to `name`."""
    features: list[str]
    """Member features, at least two; a feature belongs to one group at most."""
    description: str = ""
    """What the group stands for."""

    @property
    def label(self) -> str:
        return self.display_name or self.name


def inside_model_folder(path: str, field: str) -> str:
    """`path` if it names a file inside the model folder: relative, without ``..``.

    Raises:
        ValueError: naming `field`, for an absolute path or one that climbs out.
    """
    p = Path(path)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ValueError(f"{field} {path!r}: must be a file inside the model folder (relative, no '..')")
    return path


class TrainingDataRef(BaseModel):
    """Where the model's training reference comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    """Data set name."""
    source: str = ""
    """Where the data set comes from (citation or package)."""
    licence: str = ""
    """Licence of the data set."""
    rows: int = 0
    """Rows used for training."""
    path: str = ""
    """Training reference (encoded rows and labels, .npz) relative to the model folder."""

    @field_validator("path")
    @classmethod
    def _inside(cls, value: str) -> str:
        return inside_model_folder(value, "training_data.path") if value else value


class PrivacyFacts(BaseModel):
    """Differential-privacy facts of the training run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dp_trained: bool = False
    """Trained with DP-SGD."""
    epsilon: float = 0.0
    """Privacy loss ε of training (0 when not DP-trained)."""
    delta: float = 0.0
    """δ of the (ε, δ) guarantee."""


class ModelCard(BaseModel):
    """Everything the server knows about one model version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    """Model name used on the wire."""
    version: str
    """Version string; a new artifact is a new version."""
    task: Literal["classification"] = "classification"
    """Only classification is served in v1."""
    description: str = ""
    """What the model decides."""
    domain: str = ""
    """Business domain, e.g. "credit" (a policy attribute)."""
    features: list[FeatureSpec]
    """Input features in encoding order."""
    feature_groups: list[FeatureGroup] = []
    """Groups of features explained as one player each (see `FeatureGroup`); features in
    no group are players of their own."""
    class_names: list[str]
    """Output classes in the model's output order."""
    positive_class: str = ""
    """The outcome favourable to the subject (recourse aims at it)."""
    training_data: TrainingDataRef | None = None
    """The training reference; explainers needing background data use it."""
    privacy: PrivacyFacts = PrivacyFacts()
    """DP facts of training."""
    artifact: str = "model.pt2"
    """Artifact file relative to the model folder: a torch.export program (``.pt2``) or a
    scikit-learn classifier saved with skops (``.skops``, see server/sklearn_artifact.py)."""
    artifact_sha256: str = ""
    """SHA-256 of the artifact; checked at load when set."""
    trusted_types: list[str] = []
    """For a ``.skops`` artifact: the types beyond skops' defaults that the operator reviewed
    and allows to load (``skops.io.get_untrusted_types`` lists them); any other is refused."""
    differentiable: bool = True
    """Whether gradients of the artifact are meaningful (white-box methods); false for ``.skops``."""
    loss: str = "cross_entropy"
    """Training loss (influence functions need it)."""

    @model_validator(mode="after")
    def _check(self) -> ModelCard:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError("feature names must be unique")
        _check_groups(names, self.feature_groups)
        if len(self.class_names) < 2:
            raise ValueError("a classifier needs at least two classes")
        if self.positive_class and self.positive_class not in self.class_names:
            raise ValueError(f"positive_class {self.positive_class!r} is not a class")
        inside_model_folder(self.artifact, "artifact")
        suffix = Path(self.artifact).suffix
        if suffix not in (".pt2", ".skops"):
            raise ValueError(f"artifact {self.artifact!r}: a .pt2 (torch.export) or .skops (scikit-learn) file")
        if suffix == ".skops" and self.differentiable:
            raise ValueError("a scikit-learn (.skops) model has no gradients: set differentiable: false")
        if self.trusted_types and suffix != ".skops":
            raise ValueError("trusted_types applies to .skops artifacts only")
        return self

    def policy_attributes(self) -> dict[str, str | bool | int | float]:
        """The model's attributes in a policy request (Cedar resource attributes)."""
        return {"domain": self.domain, "dp_trained": self.privacy.dp_trained, "name": self.name}

    @property
    def labels(self) -> dict[str, str]:
        """Display name of every feature and feature group, by name."""
        return {f.name: f.label for f in self.features} | {g.name: g.label for g in self.feature_groups}


def _check_groups(features: list[str], groups: list[FeatureGroup]) -> None:
    """Raises ValueError naming the first group that is not a set of two or more of the
    card's features, disjoint from the other groups, under a name of its own."""
    known = set(features)
    owner: dict[str, str] = {}
    for g in groups:
        if g.name in known:
            raise ValueError(f"feature group {g.name!r}: the name is taken by a feature or another group")
        known.add(g.name)
        if len(set(g.features)) < 2:
            raise ValueError(f"feature group {g.name!r}: needs at least two distinct features")
        for member in g.features:
            if member not in features:
                raise ValueError(f"feature group {g.name!r}: {member!r} is not a feature of the card")
            if member in owner and owner[member] != g.name:
                raise ValueError(f"feature {member!r} is in two groups, {owner[member]!r} and {g.name!r}")
            owner[member] = g.name


def load_card(path: Path) -> ModelCard:
    """Reads and validates a card.yaml; raises ValueError naming the file."""
    try:
        raw = yaml.safe_load(path.read_text())
        return ModelCard.model_validate(raw)
    except Exception as exc:  # pydantic / yaml errors carry line and field
        raise ValueError(f"{path}: invalid model card: {exc}") from exc


class FeatureSchema:
    """Validates named feature values and encodes them into the model's input.

    Args:
        features: the card's feature specs, in encoding order.
        groups: the card's feature groups (validated by `ModelCard`).
    """

    def __init__(self, features: list[FeatureSpec], groups: Sequence[FeatureGroup] = ()) -> None:
        self.features = list(features)
        self.by_name = {f.name: f for f in self.features}
        self.slices: list[slice] = []
        start = 0
        for f in self.features:
            self.slices.append(slice(start, start + f.width))
            start += f.width
        self.n_columns = start
        owner = {member: g.name for g in groups for member in g.features}
        self.players: list[str] = []
        """Names of the players of attribution methods: a group where its first member is,
        every feature in no group where it is."""
        self.groups: list[list[int]] = []
        """Encoded columns of each player."""
        for f, sl in zip(self.features, self.slices, strict=True):
            player = owner.get(f.name, f.name)
            if player not in self.players:
                self.players.append(player)
                self.groups.append([])
            self.groups[self.players.index(player)].extend(range(sl.start, sl.stop))

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def validate(self, values: Mapping[str, FeatureValue], field_prefix: str = "instance") -> None:
        """Raises InvalidArgument with one field violation per problem."""
        violations: list[FieldViolation] = []
        for name in values:
            if name not in self.by_name:
                violations.append(FieldViolation(f"{field_prefix}.features[{name}]", "unknown feature"))
        for spec in self.features:
            path = f"{field_prefix}.features[{spec.name}]"
            if spec.name not in values:
                violations.append(FieldViolation(path, f"missing; expected a {spec.type}"))
                continue
            problem = _check_value(spec, values[spec.name])
            if problem:
                violations.append(FieldViolation(path, problem))
        if violations:
            raise InvalidArgument(f"{len(violations)} invalid feature(s)", violations)

    def encode(self, values: Mapping[str, FeatureValue]) -> np.ndarray:
        """Encodes validated values into one float64 row of width `n_columns`."""
        row = np.zeros(self.n_columns, dtype=np.float64)
        for spec, sl in zip(self.features, self.slices, strict=True):
            v = values[spec.name]
            if spec.type == "category":
                row[sl.start + spec.categories.index(str(v))] = 1.0
            else:
                row[sl.start] = float(v)
        return row

    def decode(self, row: np.ndarray) -> dict[str, FeatureValue]:
        """Inverse of `encode` (a category takes its largest one-hot column)."""
        out: dict[str, FeatureValue] = {}
        for spec, sl in zip(self.features, self.slices, strict=True):
            if spec.type == "category":
                out[spec.name] = spec.categories[int(np.argmax(row[sl]))]
            elif spec.type == "integer":
                out[spec.name] = round(float(row[sl.start]))
            elif spec.type == "boolean":
                out[spec.name] = bool(row[sl.start] >= 0.5)
            else:
                out[spec.name] = float(row[sl.start])
        return out


def _check_value(spec: FeatureSpec, value: FeatureValue) -> str:
    """The problem with one value, or '' when it is valid."""
    if spec.type == "category":
        if not isinstance(value, str):
            return f"expected a category, one of {spec.categories}"
        if value not in spec.categories:
            return f"unknown category; allowed: {spec.categories}"
        return ""
    if spec.type == "boolean":
        return "" if isinstance(value, bool) else "expected a boolean"
    if isinstance(value, (bool, str)):
        return f"expected a {spec.type}"
    if spec.type == "integer" and not isinstance(value, int):
        return "expected an integer"
    x = float(value)
    if math.isnan(x):
        return "NaN is not a value"
    if math.isinf(x):
        return "infinite values are not allowed"
    if spec.min is not None and x < spec.min:
        return f"below the declared minimum {spec.min:g}"
    if spec.max is not None and x > spec.max:
        return f"above the declared maximum {spec.max:g}"
    return ""
