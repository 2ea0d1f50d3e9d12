"""Explainers of the four families, their registry and quality metrics.

Importing this package registers the built-in methods.
"""

from desiderata.explainers import counterfactual_genetic as _counterfactual_genetic  # noqa: F401
from desiderata.explainers import counterfactual_gradient as _counterfactual_gradient  # noqa: F401
from desiderata.explainers import gradients as _gradients  # noqa: F401
from desiderata.explainers import influence as _influence  # noqa: F401
from desiderata.explainers import integrated_gradients as _integrated_gradients  # noqa: F401
from desiderata.explainers import kernel_shap as _kernel_shap  # noqa: F401
from desiderata.explainers import lime as _lime  # noqa: F401
from desiderata.explainers import robustness as _robustness  # noqa: F401
from desiderata.explainers import shapley_exact as _shapley_exact  # noqa: F401
from desiderata.explainers import shapley_permutation as _shapley_permutation  # noqa: F401
from desiderata.explainers.base import (
    Capabilities,
    ExplainableModel,
    ExplainContext,
    Explainer,
    Kind,
    Reference,
)

__all__ = ["Capabilities", "ExplainContext", "ExplainableModel", "Explainer", "Kind", "Reference"]
