"""The public API of 0.1 is still there after the package was regrouped into subpackages.

``OLD_API`` is every public name of every module of minicnn 0.1 (its ``__all__``, read from
the 0.1.0 tree), by module path: ``minicnn.<path>`` must still import and hold each name. One
name moved out on purpose: ``distributed.run_rank`` (command-line process handling) is now
``minicnn.cli.ranks.run_rank``, as the core never imports the command line.
"""
from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import minicnn

OLD_API = {
    "backend": ["BackendError", "get_array_module", "get_backend", "get_module", "is_cupy_array",
                "module_of", "set_backend", "synchronize", "to_backend", "to_numpy"],
    "modes": ["grad_enabled", "inside_model", "is_inside_model", "no_grad", "setting",
              "training_mode", "training_override"],
    "symbolic": ["Input", "SymbolicTensor"],
    "atomic": ["atomic_write", "atomic_write_bytes", "remove_leftovers"],
    "init": ["generator", "generator_scope", "get_rng_state", "glorot_uniform", "he_normal",
             "host_rng", "initialize", "initialize_bias", "is_placeholder", "kaiming_uniform",
             "manual_seed", "ones", "placeholders", "rng_for", "set_rng_state", "zeros"],
    "im2col": ["col2im", "col2im_matmul", "conv_output_size", "im2col", "pair"],
    "cuda_kernels": ["avgpool_backward_nhwc", "avgpool_forward_nhwc", "col2im_nhwc", "im2col_nhwc",
                     "maxpool_backward_nhwc", "maxpool_forward_nhwc"],
    "blas": ["can_set_threads", "corename", "cpu_flags", "kernels", "openblas_library",
             "set_blas_threads", "single_threaded", "slow_kernels_note"],
    "allocator": ["keep_freed_memory"],
    "gradcheck": ["GradientCheckError", "gradcheck", "numeric_gradient", "relative_error"],
    "data": ["DataLoader", "Normalize", "RandomShift", "ToFloat", "transform_from_config"],
    "datasets": ["DatasetError", "FILE_NAMES", "data_root", "dataset_files", "idx_payload",
                 "load_fashion_mnist", "load_mnist", "payload_sha256", "read_idx", "write_idx"],
    "images": ["MAX_IMAGE_BYTES", "MAX_IMAGE_PIXELS", "fit_to_input", "read_image", "resize"],
    "checkpoint": ["Checkpoint", "CheckpointError", "load", "load_checkpoint", "load_weights",
                   "save"],
    "npz_reader": ["NpzError", "read_npz"],
    "model_description": ["check_model_description"],
    "losses": ["MSELoss", "SoftmaxCrossEntropy"],
    "optim": ["Adam", "AdamW", "ConstantLR", "CosineLR", "Optimizer", "SGD", "StepLR"],
    "train": ["DIVERGENCE_FACTOR", "History", "TrainingError", "fit", "train_step"],
    "evaluation": ["EVAL_BATCH_SIZE", "Evaluation", "confusion_matrix", "evaluate", "predict"],
    "parallel": ["Replicas", "default_workers", "split_count"],
    "distributed": ["Communicator", "DistributedError", "GradientSync", "INSTALL_HINT",
                    "LocalComm", "MPIComm", "NCCLComm", "broadcast_parameters", "broadcast_state",
                    "cores_per_rank", "init", "shard_range", "world_size"],
    "onnx_export": ["DEFAULT_OPSET", "ExportContext", "ExportError", "MIN_OPSET", "export_onnx"],
    "plots": ["PlotUnavailable", "available", "confusion_figure", "plot_confusion", "plot_curves"],
    "visualize": ["EXAMPLE_IMAGE", "EXAMPLE_KERNEL", "PICTURES", "activations", "conv_layers",
                  "correlation_example", "correlation_vs_convolution", "feature_maps",
                  "filter_grids", "filters", "im2col_example", "im2col_window", "probabilities",
                  "save", "write_pictures"],
    "zoo": ["MODELS", "REFERENCE_RECIPE", "Recipe", "SCHEDULES", "build_model", "make_optimizer",
            "make_schedule"],
    "models": ["Input", "Model", "Network", "Sequential", "SymbolicTensor", "layer_from_config"],
    "layers": ["Add", "AvgPool2D", "BatchNorm2D", "Concatenate", "Conv2D", "Dense", "Dropout",
               "Flatten", "GlobalAvgPool2D", "Identity", "LAYER_REGISTRY", "Layer", "LeakyReLU",
               "MaxPool2D", "Parameter", "ReLU", "Sigmoid", "Softmax", "Tanh", "get_activation"],
}

TOP_LEVEL = ["layers", "losses", "optim", "set_backend", "get_backend", "BackendError",
             "gradcheck", "GradientCheckError", "manual_seed", "Input", "Model", "Sequential",
             "save", "load", "CheckpointError", "no_grad", "export_onnx", "ExportError"]


@pytest.mark.parametrize("path", sorted(OLD_API))
def test_every_0_1_module_path_still_imports_with_its_names(path):
    module = importlib.import_module(f"minicnn.{path}")
    missing = [n for n in OLD_API[path] if not hasattr(module, n)]
    assert not missing, f"minicnn.{path} lost {missing}"
    space: dict = {}
    exec(f"from minicnn.{path} import {', '.join(OLD_API[path])}", space)


def test_the_top_level_names_are_there():
    assert [n for n in TOP_LEVEL if not hasattr(minicnn, n)] == []
    assert set(TOP_LEVEL) <= set(minicnn.__all__)


def test_an_old_path_is_the_module_that_holds_the_code():
    """Not a copy: monkeypatching or reading a constant through the old path is the real one."""
    import minicnn.backend

    import minicnn.core.backend
    import minicnn.training.parallel
    assert minicnn.backend is minicnn.core.backend
    assert sys.modules["minicnn.parallel"] is minicnn.training.parallel
    assert minicnn.optim.SGD is minicnn.training.SGD
    assert minicnn.init.ones is minicnn.layers.initializers.ones


def test_old_paths_import_in_a_fresh_process():
    code = ("from minicnn.optim import SGD, CosineLR; from minicnn.init import manual_seed, ones; "
            "from minicnn.datasets import load_mnist, DatasetError; import minicnn.visualize; "
            "import minicnn.train as t; assert t.fit")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_one_source_for_the_version():
    """pyproject.toml reads the version from minicnn.__version__; the installed metadata agrees
    (skipped when minicnn runs from a checkout that is not installed)."""
    import importlib.metadata
    try:
        installed = importlib.metadata.version("minicnn")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("minicnn is not installed")
    assert installed == minicnn.__version__
