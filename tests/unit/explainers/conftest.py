"""Fixtures of the attribution tests (defined in attribution_models)."""

from tests.unit.explainers.attribution_models import linear_model, mlp_model, numeric_model, small_background

__all__ = ["linear_model", "mlp_model", "numeric_model", "small_background"]
