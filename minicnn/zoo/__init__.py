"""Named models (``build_model``) and the reference training recipe."""
from minicnn.zoo.reference import (
                                   MODELS,
                                   OPTIMIZER_DEFAULTS,
                                   REFERENCE_RECIPE,
                                   SCHEDULES,
                                   Recipe,
                                   build_model,
                                   lenet5,
                                   make_optimizer,
                                   make_schedule,
                                   ref_cnn,
)

__all__ = ["MODELS", "build_model", "ref_cnn", "lenet5", "Recipe", "REFERENCE_RECIPE",
           "SCHEDULES", "OPTIMIZER_DEFAULTS", "make_optimizer", "make_schedule"]
