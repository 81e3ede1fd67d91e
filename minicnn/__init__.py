"""minicnn: a small, readable deep-learning framework.

Layers with explicit forward and backward, im2col convolution, Sequential and graph models,
SGD, and one switch between NumPy (CPU) and CuPy (GPU)::

    import minicnn
    from minicnn.layers import Conv2D, ReLU, MaxPool2D, Flatten, Dense
    model = minicnn.Sequential([Conv2D(1, 8, 3), ReLU(), MaxPool2D(2), Flatten(),
                                Dense(8 * 13 * 13, 10)], input_shape=(1, 28, 28))

The package is grouped by layer of the stack ("Where things are", docs/architecture.md):
``core`` (arrays, modes, random state), ``kernels`` (im2col, CUDA, BLAS), ``layers``,
``data``, ``saving``, ``training``, ``models``, ``zoo``, ``onnx``, ``viz``, ``testing``, and the
``cli`` and ``tools`` on top.
"""
import sys as _sys
import types as _types

from minicnn import layers
from minicnn.core import atomic, backend, modes, symbolic
from minicnn.core import random as _random
from minicnn.core.backend import BackendError, get_backend, set_backend
from minicnn.core.random import manual_seed
from minicnn.data import datasets, images
from minicnn.kernels import allocator, blas, im2col
from minicnn.kernels import cuda as cuda_kernels
from minicnn.layers import initializers as _initializers
from minicnn.layers.base import no_grad
from minicnn.models import Input, Model, Sequential
from minicnn.onnx import export as onnx_export
from minicnn.onnx.export import ExportError, export_onnx
from minicnn.onnx.importer import OnnxImportError, import_onnx
from minicnn.saving import checkpoint, npz_reader
from minicnn.saving import description as model_description
from minicnn.saving.checkpoint import CheckpointError, load, save
from minicnn.saving.safetensors import SafetensorsError, load_weights, save_weights
from minicnn.testing import gradient_check as _gradient_check
from minicnn.testing.check_layer import LayerContractError, check_layer
from minicnn.testing.gradient_check import GradientCheckError, gradcheck
from minicnn.training import distributed, evaluation, losses, parallel
from minicnn.training import loop as train
from minicnn.training import optimizers as _optimizers
from minicnn.training import schedules as _schedules
from minicnn.viz import network as visualize
from minicnn.viz import plots

__version__ = "0.2.0.dev0"

__all__ = ["layers", "losses", "optim", "set_backend", "get_backend", "BackendError",
           "gradcheck", "GradientCheckError", "check_layer", "LayerContractError", "manual_seed",
           "Input", "Model", "Sequential", "save", "load", "CheckpointError", "no_grad",
           "export_onnx", "ExportError", "import_onnx", "OnnxImportError", "save_weights",
           "load_weights", "SafetensorsError"]

def _union(name: str, *modules: _types.ModuleType) -> _types.ModuleType:
    """A module ``minicnn.<name>`` holding the public names of ``modules`` (0.1's ``init`` and
    ``optim`` each held what is now two modules)."""
    union = _types.ModuleType(f"{__name__}.{name}", f"minicnn 0.1's {name}: the names of "
                              + " and ".join(m.__name__ for m in modules) + ".")
    union.__dict__["__all__"] = [n for m in modules for n in m.__all__]   # ModuleType declares none
    for m in modules:
        for n in m.__all__:
            setattr(union, n, getattr(m, n))
    return union


init = _union("init", _random, _initializers)
optim = _union("optim", _optimizers, _schedules)

# minicnn 0.1's module paths (``minicnn.optim``, ``from minicnn.datasets import load_mnist``, ...)
# name the modules that now hold that code, so code written for 0.1 imports as it did.
_OLD_PATHS = {
    "backend": backend, "modes": modes, "symbolic": symbolic, "atomic": atomic, "init": init,
    "im2col": im2col, "cuda_kernels": cuda_kernels, "blas": blas, "allocator": allocator,
    "gradcheck": _gradient_check, "datasets": datasets, "images": images,
    "checkpoint": checkpoint, "npz_reader": npz_reader, "model_description": model_description,
    "losses": losses, "optim": optim, "train": train, "evaluation": evaluation,
    "parallel": parallel, "distributed": distributed, "onnx_export": onnx_export,
    "plots": plots, "visualize": visualize,
}
for _name, _module in _OLD_PATHS.items():
    _sys.modules.setdefault(f"{__name__}.{_name}", _module)
