"""Explainers of the four families, their registry and quality metrics.

Importing this package registers the built-in methods.
"""

from desiderata.explainers import influence as _influence  # noqa: F401
from desiderata.explainers import integrated_gradients as _integrated_gradients  # noqa: F401
from desiderata.explainers.base import (
    Capabilities,
    ExplainableModel,
    ExplainContext,
    Explainer,
    Kind,
    Reference,
)

__all__ = ["Capabilities", "ExplainContext", "ExplainableModel", "Explainer", "Kind", "Reference"]
