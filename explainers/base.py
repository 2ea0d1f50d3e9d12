"""The Explainer contract: what a method declares, what it receives, what it returns.

Every method of every family is an `Explainer` subclass registered by a stable
name. The pipeline calls it through one path (format → validate → compute →
format the output, as captum does): the explainer receives an already
validated, encoded instance (`x`, shape ``(n_columns,)``), a model that
satisfies `ExplainableModel`, typed parameters and an `ExplainContext`
(seeded RNG, deadline, cancellation), and returns an immutable `Explanation`
with its quality figures. Explainers never import grpc or policy code.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from desiderata.server.errors import DeadlineExceeded, DesiderataError

if TYPE_CHECKING:
    import torch

    from desiderata.explainers.types import Explanation
    from desiderata.server.model_card import FeatureSchema, ModelCard

__all__ = [
    "Cancelled",
    "Capabilities",
    "ExplainContext",
    "ExplainableModel",
    "Explainer",
    "Kind",
    "Reference",
    "target_gradients",
]


class Kind(StrEnum):
    """The four explanation families (Bhatt et al. 2020, section 4)."""

    FEATURE_ATTRIBUTION = "feature_attribution"
    COUNTERFACTUAL = "counterfactual"
    SAMPLE_IMPORTANCE = "sample_importance"
    ROBUSTNESS = "robustness"


@dataclass(frozen=True)
class Capabilities:
    """What a method is and needs; the registry and policy read these.

    Args:
        kind: the family the method belongs to.
        white_box: needs gradients of a differentiable model.
        needs_background: needs background / reference data from the card.
        dp_sensitivity: how output noise is calibrated, e.g. "l2_clip" for
            attributions clipped to an L2 norm before noise.
        streaming: can report successive refinements (anytime).
        batches: instances explained together share model passes (`explain_many`), so
            concurrent calls gain from being explained as one group.
    """

    kind: Kind
    white_box: bool = False
    needs_background: bool = False
    dp_sensitivity: str = "l2_clip"
    streaming: bool = False
    batches: bool = False


@dataclass(frozen=True)
class Reference:
    """Training reference of a model: encoded rows and their labels.

    Args:
        x: encoded rows, shape ``(n, n_columns)``, float64.
        y: class indices, shape ``(n,)``, int64.
        ids: stable row ids, shape ``(n,)``.
    """

    x: np.ndarray
    y: np.ndarray
    ids: tuple[str, ...]


class ExplainableModel(Protocol):
    """What an explainer may use of a served model."""

    @property
    def card(self) -> ModelCard: ...

    @property
    def schema(self) -> FeatureSchema: ...

    @property
    def n_classes(self) -> int: ...

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities, ``(n, n_columns)`` → ``(n, n_classes)`` float64."""
        ...

    def torch_module(self) -> torch.nn.Module | None:
        """A differentiable module mapping float32 ``(n, n_columns)`` to
        probabilities, or None for black-box models."""
        ...

    def reference(self) -> Reference | None:
        """The training reference, or None when the card declares none."""
        ...


def target_gradients(model: ExplainableModel, rows: torch.Tensor, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of class `target`'s output at each row, and those outputs (float32, detached).

    A served model evaluates them itself (its `target_gradients`, which fuses the
    small calls of concurrent requests into one batch); any other differentiable
    model through its module.

    Args:
        model: a differentiable model (`torch_module` not None).
        rows: float32 encoded rows, shape ``(n, n_columns)``.
        target: class index.

    Returns:
        ``(gradients (n, n_columns), outputs (n,))``.
    """
    own = getattr(model, "target_gradients", None)
    if own is not None:
        return own(rows, target)  # type: ignore[no-any-return]
    module = model.torch_module()
    if module is None:
        raise TypeError("target_gradients needs a differentiable model")
    import torch

    x = rows.detach().requires_grad_(True)
    with torch.enable_grad():
        out = module(x)[:, target]
        (g,) = torch.autograd.grad(out.sum(), x)
    return g, out.detach()


class Cancelled(DesiderataError):
    """The caller went away; the work was stopped."""

    code = "cancelled"


@dataclass
class ExplainContext:
    """Per-request execution context handed to every explainer.

    Args:
        seed: seed of the method's generator (same seed, same answer).
        deadline: absolute `time.monotonic()` by which the answer is due, or None.
        cancel: set when the caller cancels; explainers check it between batches.
        progress: called with intermediate explanations by streaming methods.
    """

    seed: int = 0
    deadline: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    progress: Callable[[Explanation], None] | None = None

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)

    def remaining_s(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def check(self) -> None:
        """Raises when the request is cancelled or past its deadline."""
        if self.cancel.is_set():
            raise Cancelled("the request was cancelled")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DeadlineExceeded("the deadline passed before the explanation was complete")


class Explainer(ABC):
    """Base class of all methods. Subclasses set `name`, `version`, `capabilities`."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    capabilities: ClassVar[Capabilities]

    @abstractmethod
    def explain(self, model: ExplainableModel, x: np.ndarray, params: Any, ctx: ExplainContext) -> Explanation:
        """Explains one encoded instance.

        Args:
            model: the served model.
            x: encoded, validated instance, shape ``(n_columns,)``, float64.
            params: the family's typed parameters (e.g. `AttributionParams`).
            ctx: seed, deadline, cancellation, progress callback.

        Returns:
            An immutable explanation with its quality figures.
        """

    def explain_many(
        self, model: ExplainableModel, xs: Sequence[np.ndarray], params: Any, ctxs: Sequence[ExplainContext]
    ) -> list[Explanation]:
        """Explains several instances of one model with the same parameters (ExplainBatch).

        One by one here; a method whose model evaluations gain from sharing batches
        across instances overrides it. Each answer is the one `explain` gives the
        instance alone, up to the float32 rounding of a larger product.

        Args:
            model: the served model.
            xs: encoded, validated instances, each of shape ``(n_columns,)``.
            params: the family's typed parameters, shared by all.
            ctxs: one context per instance (its seed; deadline and cancellation).

        Returns:
            One explanation per instance, in order.
        """
        return [self.explain(model, x, params, ctx) for x, ctx in zip(xs, ctxs, strict=True)]
