"""minicnn: a small, readable deep-learning framework.

Layers with explicit forward and backward, im2col convolution, Sequential and graph models,
SGD, and one switch between NumPy (CPU) and CuPy (GPU)::

    import minicnn
    from minicnn.layers import Conv2D, ReLU, MaxPool2D, Flatten, Dense
    model = minicnn.Sequential([Conv2D(1, 8, 3), ReLU(), MaxPool2D(2), Flatten(),
                                Dense(8 * 13 * 13, 10)], input_shape=(1, 28, 28))

The package is grouped by layer of the stack (README, "Where things are"): ``core`` (arrays,
modes, random state), ``kernels`` (im2col, CUDA, BLAS), ``layers``, ``data``, ``saving``,
``training``, ``models``, ``zoo``, ``onnx``, ``viz``, ``testing``, and the ``cli`` and
``tools`` on top.
"""
import sys as _sys

from minicnn import layers
from minicnn.core import atomic, backend, modes, symbolic
from minicnn.core import random as init
from minicnn.core.backend import BackendError, get_backend, set_backend
from minicnn.core.random import manual_seed
from minicnn.data import datasets, images
from minicnn.kernels import allocator, blas, im2col
from minicnn.kernels import cuda as cuda_kernels
from minicnn.layers.base import no_grad
from minicnn.models import Input, Model, Sequential
from minicnn.onnx import export as onnx_export
from minicnn.onnx.export import ExportError, export_onnx
from minicnn.saving import checkpoint, npz_reader
from minicnn.saving import description as model_description
from minicnn.saving.checkpoint import CheckpointError, load, save
from minicnn.testing import gradcheck as _gradcheck_module
from minicnn.testing.gradcheck import GradientCheckError, gradcheck
from minicnn.training import distributed, evaluation, losses, parallel
from minicnn.training import loop as train
from minicnn.training import optimizers as optim
from minicnn.viz import network as visualize
from minicnn.viz import plots

__version__ = "0.1.0"

__all__ = ["layers", "losses", "optim", "set_backend", "get_backend", "BackendError",
           "gradcheck", "GradientCheckError", "manual_seed", "Input", "Model", "Sequential",
           "save", "load", "CheckpointError", "no_grad", "export_onnx", "ExportError"]

# minicnn 0.1's module paths (``minicnn.optim``, ``from minicnn.datasets import load_mnist``, ...)
# name the modules that now hold that code, so code written for 0.1 imports as it did.
_OLD_PATHS = {
    "backend": backend, "modes": modes, "symbolic": symbolic, "atomic": atomic, "init": init,
    "im2col": im2col, "cuda_kernels": cuda_kernels, "blas": blas, "allocator": allocator,
    "gradcheck": _gradcheck_module, "datasets": datasets, "images": images,
    "checkpoint": checkpoint, "npz_reader": npz_reader, "model_description": model_description,
    "losses": losses, "optim": optim, "train": train, "evaluation": evaluation,
    "parallel": parallel, "distributed": distributed, "onnx_export": onnx_export,
    "plots": plots, "visualize": visualize,
}
for _name, _module in _OLD_PATHS.items():
    _sys.modules.setdefault(f"{__name__}.{_name}", _module)
