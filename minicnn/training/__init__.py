"""Training: losses, optimizers, schedules, callbacks, gradient clipping, the loop (``fit``,
``train_step``), mixed ``precision``, evaluation, the split of a batch among CPU threads and
data-parallel training over processes.

    from minicnn.training import SGD, CosineLR, SoftmaxCrossEntropy, fit
"""
from minicnn.training.callbacks import (
    BestCheckpoint,
    Callback,
    CSVLogger,
    EarlyStopping,
    TensorBoard,
    TrainingRun,
)
from minicnn.training.clipping import GradientClip, clip_grad_norm, clip_grad_value
from minicnn.training.evaluation import (
    EVAL_BATCH_SIZE,
    Evaluation,
    confusion_matrix,
    evaluate,
    predict,
)
from minicnn.training.history import History
from minicnn.training.loop import DIVERGENCE_FACTOR, TrainingError, fit, train_step
from minicnn.training.losses import BCEWithLogits, MSELoss, SoftmaxCrossEntropy
from minicnn.training.optimizers import (
    OPTIMIZERS,
    SGD,
    Adagrad,
    Adam,
    AdamW,
    Optimizer,
    RMSprop,
)
from minicnn.training.precision import PRECISIONS, LossScaler, Precision
from minicnn.training.recipe import (
    OPTIMIZER_DEFAULTS,
    REFERENCE_RECIPE,
    Recipe,
    make_optimizer,
)
from minicnn.training.schedules import (
    SCHEDULES,
    ConstantLR,
    CosineLR,
    OneCycleLR,
    ReduceLROnPlateau,
    StepLR,
    WarmupLR,
    make_schedule,
)

__all__ = ["SoftmaxCrossEntropy", "MSELoss", "BCEWithLogits",
           "Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "OPTIMIZERS",
           "ConstantLR", "StepLR", "CosineLR", "OneCycleLR", "WarmupLR", "ReduceLROnPlateau",
           "SCHEDULES", "make_schedule",
           "Callback", "TrainingRun", "EarlyStopping", "BestCheckpoint", "CSVLogger",
           "TensorBoard", "clip_grad_norm", "clip_grad_value", "GradientClip",
           "Recipe", "REFERENCE_RECIPE", "OPTIMIZER_DEFAULTS", "make_optimizer",
           "fit", "train_step", "History", "TrainingError", "DIVERGENCE_FACTOR",
           "Precision", "LossScaler", "PRECISIONS",
           "evaluate", "predict", "confusion_matrix", "Evaluation", "EVAL_BATCH_SIZE"]
