"""minicnn: a small, readable deep-learning framework.

Layers with explicit forward and backward, im2col convolution, Sequential and graph models,
SGD, and one switch between NumPy (CPU) and CuPy (GPU)::

    import minicnn
    from minicnn.layers import Conv2D, ReLU, MaxPool2D, Flatten, Dense
    model = minicnn.Sequential([Conv2D(1, 8, 3), ReLU(), MaxPool2D(2), Flatten(),
                                Dense(8 * 13 * 13, 10)], input_shape=(1, 28, 28))
"""
from minicnn import layers, losses, optim
from minicnn.backend import BackendError, get_backend, set_backend
from minicnn.checkpoint import CheckpointError, load, save
from minicnn.gradcheck import GradientCheckError, gradcheck
from minicnn.init import manual_seed
from minicnn.layers.base import no_grad
from minicnn.models import Input, Model, Sequential
from minicnn.onnx_export import ExportError, export_onnx

__version__ = "0.1.0"

__all__ = ["layers", "losses", "optim", "set_backend", "get_backend", "BackendError",
           "gradcheck", "GradientCheckError", "manual_seed", "Input", "Model", "Sequential",
           "save", "load", "CheckpointError", "no_grad", "export_onnx", "ExportError"]
