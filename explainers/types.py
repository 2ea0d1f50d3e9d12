"""Immutable, self-describing explanation values and the typed parameters of
each family. They mirror the v1 protos without depending on them: the gRPC
edge converts, explainers and policy never see a protobuf message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from desiderata.explainers.base import Kind
from desiderata.server.model_card import FeatureValue

__all__ = [
    "AttributionParams",
    "AttributionResult",
    "Counterfactual",
    "CounterfactualParams",
    "CounterfactualResult",
    "Explanation",
    "FeatureChange",
    "FeatureConstraint",
    "InfluentialSample",
    "Quality",
    "Result",
    "RobustnessParams",
    "RobustnessResult",
    "SampleImportanceParams",
    "SampleImportanceResult",
]


# ---------------------------------------------------------------- parameters


@dataclass(frozen=True)
class AttributionParams:
    """Parameters of a feature attribution (defaults are the server's).

    Args:
        method: registry name; "" selects the tier's default.
        target_class: class index explained; None explains the predicted class.
        steps: integration steps of path methods (0 = default).
        integration_rule: "gauss_legendre" or a captum Riemann rule name.
        baseline: "card", "zero" or "mean".
        max_samples: model-row budget of sampling methods (0 = default).
        target_std_error: stop when the mean standard error relative to the
            attribution's L1 norm falls below it (0 = use `max_samples`).
        quality_metrics: extra figures ("max_sensitivity", "infidelity", "rank_agreement").
        agreement_method: second method for "rank_agreement".
        kernel_width: LIME kernel width (0 = default).
        reference_class: class label whose predicted training rows form the background
            (contrastive attributions); "" uses every row.
    """

    method: str = ""
    target_class: int | None = None
    steps: int = 0
    integration_rule: str = ""
    baseline: str = "card"
    max_samples: int = 0
    target_std_error: float = 0.0
    quality_metrics: tuple[str, ...] = ()
    agreement_method: str = ""
    kernel_width: float = 0.0
    reference_class: str = ""


@dataclass(frozen=True)
class FeatureConstraint:
    feature: str
    immutable: bool = False
    min: float | None = None
    max: float | None = None
    direction: str = "any"  # "any" | "increase" | "decrease"


@dataclass(frozen=True)
class CounterfactualParams:
    method: str = ""
    count: int = 0
    constraints: tuple[FeatureConstraint, ...] = ()
    desired_class: int | None = None


@dataclass(frozen=True)
class SampleImportanceParams:
    method: str = ""
    top_k: int = 0
    exclude_outliers: bool = False
    relative: bool = False
    parameter_subset: str = ""
    page_size: int = 0
    page_token: str = ""


@dataclass(frozen=True)
class RobustnessParams:
    norm: str = "l2"


# ------------------------------------------------------------------- results


@dataclass(frozen=True)
class AttributionResult:
    """Per-player attributions of one class output.

    Args:
        players: feature names (a one-hot group is one player), length d.
        values: attributions, shape ``(d,)``, in units of the class probability.
        std_errors: per-player standard errors where the method samples, else None.
        target_class: index of the explained class.
        output: model output for the target class at the input.
        baseline_output: output at the baseline (or mean over the background).
    """

    players: tuple[str, ...]
    values: np.ndarray
    std_errors: np.ndarray | None
    target_class: int
    output: float
    baseline_output: float

    @property
    def shares(self) -> np.ndarray:
        """Signed share of each player in the total absolute attribution."""
        total = float(np.abs(self.values).sum())
        return self.values / total if total > 0 else np.zeros_like(self.values)


@dataclass(frozen=True)
class FeatureChange:
    feature: str
    from_value: FeatureValue
    to_value: FeatureValue


@dataclass(frozen=True)
class Counterfactual:
    changes: tuple[FeatureChange, ...]
    probabilities: np.ndarray
    valid: bool
    normalized_l1_distance: float
    features_changed: int
    plausibility_distance: float
    off_manifold: bool


@dataclass(frozen=True)
class CounterfactualResult:
    counterfactuals: tuple[Counterfactual, ...]
    reason_none: str = ""


@dataclass(frozen=True)
class InfluentialSample:
    sample_id: str
    label: str
    influence: float
    relative_influence: float
    self_influence: float
    outlier: bool
    row: dict[str, FeatureValue] | None = None


@dataclass(frozen=True)
class SampleImportanceResult:
    samples: tuple[InfluentialSample, ...]
    aggregate: str = ""
    next_page_token: str = ""


@dataclass(frozen=True)
class RobustnessResult:
    found: bool
    distance: float
    norm: str
    perturbation: tuple[FeatureChange, ...]
    flipped_probabilities: np.ndarray | None


Result = AttributionResult | CounterfactualResult | SampleImportanceResult | RobustnessResult


@dataclass(frozen=True)
class Quality:
    """Measured quality of an explanation (see the Quality proto)."""

    completeness_gap: float | None = None
    relative_completeness_gap: float | None = None
    relative_std_error: float | None = None
    max_sensitivity: float | None = None
    infidelity: float | None = None
    rank_agreement: float | None = None
    agreement_method: str = ""
    model_evaluations: int = 0
    compute_ms: float = 0.0
    converged: bool = True
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Explanation:
    """What an explainer returns: method, parameters used, result, quality.

    Args:
        kind: the family.
        method: registry name of the method.
        method_version: its version.
        parameters: the parameters actually used, defaults filled in.
        result: the family's result.
        quality: measured quality figures.
    """

    kind: Kind
    method: str
    method_version: str
    parameters: dict[str, Any]
    result: Result
    quality: Quality = field(default_factory=Quality)
