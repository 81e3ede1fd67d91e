"""``minicnn train``'s options: what defines a run (model, data, recipe, training tools) and
how it runs, each with the type that checks its value (``minicnn.cli.common``)."""
from __future__ import annotations

import argparse

from minicnn import training, zoo
from minicnn.cli.common import (
    augmentation_spec,
    dataset_name,
    label_smoothing,
    non_negative,
    non_negative_float,
    positive,
    positive_float,
)

__all__ = ["add_train_arguments", "model_name"]


def model_name(text: str) -> str:
    """--model: a zoo name, or module:function (imported when the run starts)."""
    if text in zoo.MODELS or (":" in text and all(text.partition(":")[::2])):
        return text
    raise argparse.ArgumentTypeError(f"expected one of {', '.join(zoo.MODELS)} or "
                                     f"module:function, got {text!r}")


def add_train_arguments(t: argparse.ArgumentParser) -> None:
    """Add ``minicnn train``'s own options to its subparser ``t``."""
    r = training.REFERENCE_RECIPE
    t.add_argument("--dataset", type=dataset_name, metavar="DATASET",
                   help="mnist (default), fashion-mnist, cifar10, or folder:PATH (one "
                   "subfolder of images per class; train/ and test/ inside, or a tenth held out)")
    t.add_argument("--channels", type=int, choices=(1, 3),
                   help="folder:PATH images read as grey (1) or RGB (3, default)")
    t.add_argument("--image-size", type=positive, metavar="N",
                   help="folder:PATH images resized to NxN (default 32)")
    t.add_argument("--model", type=model_name, metavar="MODEL",
                   help=f"{', '.join(zoo.MODELS)} (default ref-cnn), or module:function for "
                   "a model of your own (a function returning a minicnn model; it may take "
                   "in_channels, input_size and classes; with --import for a .py file)")
    t.add_argument("--epochs", type=positive, help=f"epochs (default {r.epochs})")
    t.add_argument("--batch-size", type=positive, help=f"batch size (default {r.batch_size})")
    t.add_argument("--optimizer", choices=tuple(training.OPTIMIZER_DEFAULTS),
                   help="sgd (default), adam, adamw, rmsprop or adagrad")
    t.add_argument("--lr", type=positive_float, help=f"peak learning rate (default {r.lr} for "
                   "sgd, 0.001 for adam and adamw)")
    t.add_argument("--momentum", type=non_negative_float,
                   help=f"SGD and RMSprop momentum (default {r.momentum} for SGD, 0 for RMSprop)")
    t.add_argument("--weight-decay", type=non_negative_float, help=f"weight decay (default "
                   f"{r.weight_decay} for sgd, 0 for adam, 0.01 for adamw)")
    t.add_argument("--schedule", choices=training.SCHEDULES,
                   help=f"lr schedule (default {r.schedule}; plateau: x0.1 after 2 epochs "
                   "without a better validation loss)")
    t.add_argument("--warmup-steps", type=non_negative, metavar="N",
                   help="linear warm-up from 0.1 x lr over the first N steps, before the "
                   "schedule (default 0)")
    t.add_argument("--clip-norm", type=positive_float, metavar="X",
                   help="clip the gradients' global L2 norm to X before each update (the "
                   "norm is logged per epoch; default: off)")
    t.add_argument("--clip-value", type=positive_float, metavar="X",
                   help="clip each gradient element to [-X, X] (default: off)")
    t.add_argument("--label-smoothing", type=label_smoothing, metavar="EPS",
                   help="cross-entropy against (1 - EPS) one-hot + EPS/K uniform targets, as "
                   "PyTorch's CrossEntropyLoss(label_smoothing=EPS) (default 0)")
    t.add_argument("--augment", type=augmentation_spec, metavar="SPEC",
                   help=f"K: random shifts of up to K pixels (default {r.augment}; 0: none), or "
                   "a list such as crop=2,flip or affine=10,cutout=8 (shift=K, crop=P, "
                   "flip[=p], affine=DEGREES, cutout=SIZE; flips do not suit digits)")
    t.add_argument("--seed", type=int, help="random seed (default 0)")
    t.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/MODEL-DATASET)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--overwrite", action="store_true", help="replace a finished or stopped run "
                   "in --out (by default train refuses a folder that holds one)")
    t.add_argument("--limit", type=positive, metavar="N", help="train on the first N images")
    t.add_argument("--test-limit", type=positive, metavar="N",
                   help="evaluate on the first N test images")
    t.add_argument("--val-split", type=non_negative, metavar="N", help="training images held "
                   f"out for validation, scored every epoch (default {r.val_split}, at most a "
                   "tenth of them; 0: none)")
    t.add_argument("--early-stop", type=positive, metavar="PATIENCE", help="stop when the "
                   "validation loss has not improved for PATIENCE epochs (default: off)")
    t.add_argument("--precision", choices=("fp32", "fp16", "bf16"),
                   help="compute precision (default fp32); fp16/bf16 keep float32 master "
                   "weights with dynamic loss scaling (bf16 needs a bfloat16 dtype: not NumPy)")
    t.add_argument("--quiet", action="store_true",
                   help="no progress bars (the line per epoch stays)")
    t.add_argument("--distributed", nargs="?", const="on", choices=("on", "mpi", "nccl", "off"),
                   help="data-parallel over MPI ranks (default: when started by mpiexec; "
                   "alone or 'on': mpi on numpy, nccl on cupy; off: ignore mpiexec)")
