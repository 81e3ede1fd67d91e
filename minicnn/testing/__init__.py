"""Tools for checking layers: numerical gradients and ``gradcheck``."""
from minicnn.testing.gradient_check import (
    GradientCheckError,
    gradcheck,
    numeric_gradient,
    relative_error,
)

__all__ = ["GradientCheckError", "gradcheck", "numeric_gradient", "relative_error"]
