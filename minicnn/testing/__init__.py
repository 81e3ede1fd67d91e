"""Tools for checking layers: numerical gradients, ``gradcheck`` and the whole contract,
``check_layer``."""
from minicnn.testing.check_layer import LayerContractError, check_layer
from minicnn.testing.gradient_check import (
    GradientCheckError,
    gradcheck,
    numeric_gradient,
    relative_error,
)

__all__ = ["GradientCheckError", "LayerContractError", "check_layer", "gradcheck",
           "numeric_gradient", "relative_error"]
