"""The ``minicnn`` command line: the parser, ``main``, and the commands other than ``train``
(``minicnn.cli.train``): evaluate, predict, summary, export, visualize, bench.

    minicnn train --dataset mnist --model ref-cnn --epochs 3 --out runs/ref-cnn-mnist
    minicnn train --out runs/ref-cnn-mnist --resume
    mpiexec -n 2 minicnn train            # data-parallel over 2 processes
    minicnn evaluate runs/ref-cnn-mnist/model.npz
    minicnn predict runs/ref-cnn-mnist/model.npz digit.png 0 1 2
    minicnn summary --model lenet5
    minicnn export runs/ref-cnn-mnist/model.npz model.onnx --include-preprocessing

A run directory holds ``last.npz`` (the resumable training checkpoint, rewritten after every
epoch and on Ctrl-C), ``model.npz`` (the finished model, written at the end), ``metrics.jsonl``
(one JSON line per epoch) and, when matplotlib is installed, ``curves.png`` and
``confusion.png``. Errors print one line to stderr and exit with status 1 (2 for bad usage,
130 after Ctrl-C); --debug (or MINICNN_DEBUG=1) shows a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy

import minicnn
from minicnn import zoo
from minicnn.cli import onnx_import
from minicnn.cli.common import (
    EVAL_CONFUSION,
    CLIError,
    Parser,
    can_plot,
    checkpoint_path,
    class_names,
    dataset_name,
    positive,
    say,
    set_backend,
    test_set,
)
from minicnn.cli.train import cmd_train
from minicnn.cli.train_options import add_train_arguments, model_name
from minicnn.core import backend
from minicnn.data import model_transform, raw_input_transform
from minicnn.data.datasets import DatasetError
from minicnn.data.images import image_for_model
from minicnn.kernels import allocator
from minicnn.layers.base import Layer
from minicnn.saving.checkpoint import CheckpointError, load_checkpoint
from minicnn.training.evaluation import confusion_matrix, predict
from minicnn.training.loop import TrainingError
from minicnn.viz import plots

# Commands that run training or inference steps, for which the CLI tunes the C allocator.
RUNS_MODELS = ("train", "evaluate", "predict", "bench")


def _import_modules(names: Sequence[str]) -> None:
    """Import the modules that define a checkpoint's custom layers (``--import``): a module
    name (the current folder searched first, as ``python -m`` does) or a file path
    (``work/mylayers.py``, imported as module ``mylayers``)."""
    if names and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            if name.endswith(".py") or os.sep in name or "/" in name:
                _import_file(Path(name))
            else:
                importlib.import_module(name)
        except CLIError:
            raise
        except Exception as exc:
            raise CLIError(f"--import {name}: cannot import it ({type(exc).__name__}: "
                           f"{exc})") from None


def _import_file(path: Path) -> None:
    """Run the Python file ``path`` as the module named after its stem."""
    if not path.is_file():
        raise CLIError(f"--import {path}: no such file (give a module name, or the path of a "
                       ".py file)")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise CLIError(f"--import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(path.stem, None)
        raise


# --------------------------------------------------------------------------- evaluate, predict

def cmd_evaluate(args: argparse.Namespace) -> int:
    set_backend(args.backend)
    path = checkpoint_path(args.checkpoint)
    ckpt = load_checkpoint(path)
    dataset, xt, yt = test_set(ckpt.meta, args)
    if args.limit:
        xt, yt = xt[:args.limit], yt[:args.limit]
    logits = predict(ckpt.model, xt, batch_size=args.batch_size)   # the model's transform
    loss = float(minicnn.training.losses.SoftmaxCrossEntropy().forward(logits, yt))
    pred = backend.to_numpy(logits.argmax(axis=1))
    k = int(logits.shape[1])
    matrix = backend.to_numpy(confusion_matrix(yt, pred, k))
    names = class_names(ckpt.meta, k, dataset)
    correct = int((pred == yt).sum())
    print(f"{path}: {dataset} test set, {len(yt)} images")
    print(f"accuracy {100 * correct / len(yt):.2f}% ({correct}/{len(yt)}), loss {loss:.4f}")
    print("per-class accuracy:")
    width = max(len(n) for n in names)
    for i, name in enumerate(names):
        total = int(matrix[i].sum())
        acc = f"{100 * matrix[i, i] / total:6.2f}%" if total else "     -"
        print(f"  {name:<{width}}  {acc}  ({int(matrix[i, i])}/{total})")
    print("confusion matrix (rows: true class, columns: predicted):")
    cell = max(5, len(str(int(matrix.max()))) + 1)
    print(" " * (width + 2) + "".join(f"{j:>{cell}}" for j in range(k)))
    for i, name in enumerate(names):
        print(f"  {name:<{width}}" + "".join(f"{int(v):>{cell}}" for v in matrix[i]))
    if can_plot():
        picture = path.with_name(EVAL_CONFUSION)          # training's confusion.png stays
        plots.plot_confusion(matrix, picture, names, title=f"{path.name} on {dataset}")
        print(f"wrote {picture}")
    return 0


def _image_file(item: str, in_shape: tuple[int, ...], invert: bool) -> numpy.ndarray:
    """An image file fitted to the model's input, as predict and visualize both read one
    (``minicnn.data.images.image_for_model``); a light background is inverted, saying so."""
    try:
        fitted, inverted = image_for_model(item, in_shape, True if invert else None)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if inverted and not invert:
        say(f"note: {item} has a light background; inverted to white on black, as the model "
             "was trained")
    return fitted


def cmd_predict(args: argparse.Namespace) -> int:
    set_backend(args.backend)
    ckpt = load_checkpoint(checkpoint_path(args.checkpoint))
    model = ckpt.model
    in_shape = tuple(model.declared_input_shape() or (1, 28, 28))
    images: list[Any] = []
    labels: list[int | None] = []             # None: an image file, whose label is unknown
    test = None
    for item in args.images:
        if not Path(item).exists() and item.lstrip("-").isdigit():
            if test is None:
                test = test_set(ckpt.meta, args)
            _, xt, yt = test
            index = int(item)
            if not 0 <= index < len(xt):
                raise CLIError(f"test-set index {index} is out of range 0..{len(xt) - 1}")
            images.append(xt[index])
            labels.append(int(yt[index]))
            continue
        images.append(_image_file(item, in_shape, args.invert))
        labels.append(None)
    logits = backend.to_numpy(predict(model, numpy.stack(images)))    # the model's transform
    shifted = logits - logits.max(axis=1, keepdims=True)
    prob = numpy.exp(shifted) / numpy.exp(shifted).sum(axis=1, keepdims=True)
    names = class_names(ckpt.meta, prob.shape[1], test[0] if test else args.dataset)
    for item, p, label in zip(args.images, prob, labels):
        top = numpy.argsort(-p)[:args.top]
        guesses = ", ".join(f"{names[c]} (p={p[c]:.3f})" for c in top)
        truth = "" if label is None else f"  [true: {names[label]}]"
        print(f"{item}: {guesses}{truth}")
    return 0


# --------------------------------------------------------------------------- summary, bench

def cmd_summary(args: argparse.Namespace) -> int:
    if (args.model is None) == (args.checkpoint is None):
        raise CLIError("give either --model NAME (the zoo) or a checkpoint")
    model: Any = zoo.build_model(args.model) if args.model else \
        load_checkpoint(checkpoint_path(args.checkpoint)).model
    model.summary()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a checkpoint's model as an ONNX file (see minicnn.onnx.export)."""
    from minicnn.onnx.export import DEFAULT_OPSET, export_onnx
    ckpt = load_checkpoint(checkpoint_path(args.checkpoint))
    path = export_onnx(ckpt, args.out, opset=args.opset,
                       include_preprocessing=args.include_preprocessing)
    pixels = f"uint8 pixels, {model_transform(ckpt.model)!r} inside" \
        if args.include_preprocessing else "float32"
    print(f"wrote {path} ({path.stat().st_size:,} bytes, ONNX opset "
          f"{args.opset or DEFAULT_OPSET}, input {pixels})")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        from minicnn.tools.bench import command as bench
    except ImportError as exc:
        raise CLIError(f"the benchmark is not available ({exc})") from None
    parser = Parser(prog="minicnn bench", description="Time training and inference steps.")
    bench.add_arguments(parser)
    try:
        bench_args = parser.parse_args(args.bench_args)
    except SystemExit as exc:                  # --help, usage errors
        return exc.code if isinstance(exc.code, int) else 0
    return int(bench.run(bench_args) or 0)


# --------------------------------------------------------------------------- visualize

def cmd_visualize(args: argparse.Namespace) -> int:
    """Write filters.png, feature_maps.png, im2col.png and correlation_vs_convolution.png for
    one image (a file, or a test-set index), preprocessed as the model was trained."""
    from minicnn.viz import network as visualize
    set_backend(args.backend)
    path = checkpoint_path(args.checkpoint)
    if not plots.available():
        raise CLIError('matplotlib is not installed: pip install -e ".[plot]"')
    ckpt = load_checkpoint(path)
    in_shape = tuple(ckpt.model.declared_input_shape() or (1, 28, 28))
    label, dataset = None, None
    if Path(args.image).exists() or not args.image.lstrip("-").isdigit():
        image = _image_file(args.image, in_shape, getattr(args, "invert", False))
    else:
        meta = dict(ckpt.meta, dataset=ckpt.meta.get("dataset") or "mnist")
        dataset, xt, yt = test_set(meta, args)
        index = int(args.image)
        if not 0 <= index < len(xt):
            raise CLIError(f"test-set index {index} is out of range 0..{len(xt) - 1}")
        image, label = xt[index], int(yt[index])
    x = raw_input_transform(ckpt.model)(image.reshape((1,) + in_shape))   # as predict does
    names = class_names(ckpt.meta, int(ckpt.model.output_shape(in_shape)[-1]), dataset)
    out = Path(args.out) if args.out else path.parent
    model = cast(Layer, ckpt.model)            # a LoadedModel is a Network, so a Layer
    written = visualize.write_pictures(model, x, out, names, label)
    print(f"wrote {out}/ ({', '.join(p.name for p in written)})")
    return 0


# --------------------------------------------------------------------------- parser, main

def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="minicnn", description="Train and use small CNNs on MNIST and "
                     "Fashion-MNIST with minicnn.")
    parser.add_argument("--version", action="version", version=f"minicnn {minicnn.__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an unexpected error (anywhere on the line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def imports(p: argparse.ArgumentParser) -> None:
        p.add_argument("--import", dest="imports", action="append", default=[],
                       metavar="MODULE", help="import MODULE first (the module defining a "
                       "checkpoint's custom layers: a name, or a .py file's path); repeatable")

    def common(p: argparse.ArgumentParser) -> None:
        imports(p)
        p.add_argument("--backend", choices=backend.BACKENDS,
                       help="array backend (default: $MINICNN_BACKEND or numpy)")
        p.add_argument("--data-root", metavar="DIR",
                       help="folder holding mnist/ and fashion-mnist/ (default: $MINICNN_DATA)")

    t = sub.add_parser("train", help="train a model; writes a run directory")
    add_train_arguments(t)
    common(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="accuracy, per-class accuracy, confusion matrix")
    e.add_argument("checkpoint", help="a .npz checkpoint or a run folder (its model.npz)")
    e.add_argument("--dataset", type=dataset_name, metavar="DATASET",
                   help="default: the checkpoint's")
    e.add_argument("--batch-size", type=positive, default=256)
    e.add_argument("--limit", type=positive, metavar="N", help="only the first N test images")
    common(e)
    e.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify image files or test-set images")
    p.add_argument("checkpoint", help="a .npz checkpoint or a run folder (its model.npz)")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="an image file (any size; PNG/PGM, or any format with Pillow) or a "
                   "test-set index")
    p.add_argument("--dataset", type=dataset_name, metavar="DATASET",
                   help="test set for indices (default: the "
                   "checkpoint's)")
    p.add_argument("--invert", action="store_true", help="invert files (black digit on "
                   "white); by default light backgrounds are detected and inverted")
    p.add_argument("--top", type=positive, default=1, help="show the K likeliest classes")
    common(p)
    p.set_defaults(func=cmd_predict)

    s = sub.add_parser("summary", help="print a model's layers and parameter counts")
    s.add_argument("--model", type=model_name, metavar="MODEL",
                   help=f"a model of the zoo ({', '.join(zoo.MODELS)}) or module:function")
    s.add_argument("checkpoint", nargs="?", metavar="MODEL.npz",
                   help="or a checkpoint (or run folder) to summarise")
    imports(s)
    s.set_defaults(func=cmd_summary)

    x = sub.add_parser("export", help="write a checkpoint's model as an ONNX file")
    x.add_argument("checkpoint", metavar="MODEL", help="a .npz checkpoint or a run folder")
    imports(x)
    x.add_argument("out", metavar="OUT", help="the .onnx file to write")
    x.add_argument("--opset", type=positive, metavar="N", help="ONNX opset (default "
                   f"{minicnn.onnx.export.DEFAULT_OPSET})")
    x.add_argument("--include-preprocessing", action="store_true",
                   help="take uint8 pixels and apply the checkpoint's input transform inside")
    x.set_defaults(func=cmd_export)
    onnx_import.add_parser(sub)

    v = sub.add_parser("visualize", help="filters, feature maps and im2col as PNG pictures")
    v.add_argument("checkpoint", metavar="MODEL", help="a .npz checkpoint or a run folder")
    v.add_argument("--image", default="0", metavar="INDEX|FILE",
                   help="a test-set index (default 0) or an image file, fitted to the model's "
                   "input as predict does (PNG/PGM, or any format with Pillow)")
    v.add_argument("--invert", action="store_true", help="invert the file (black on white); "
                   "by default a light background is detected and inverted")
    v.add_argument("--out", metavar="DIR", help="where to write (default: the model's folder)")
    v.add_argument("--dataset", type=dataset_name, metavar="DATASET",
                   help="test set for an index (default: the "
                   "checkpoint's)")
    common(v)
    v.set_defaults(func=cmd_visualize)

    b = sub.add_parser("bench", help="time training and inference steps (see minicnn bench "
                       "--help)", add_help=False)
    b.set_defaults(func=cmd_bench)            # its options are parsed by minicnn.tools.bench
    return parser


def _warnings_in_one_line(prog: str) -> None:
    """Inside ``warnings.catch_warnings()``: each warning is one line ``<prog>: warning: ...``
    on stderr, shown once (not Python's file:line and source excerpt)."""
    warnings.simplefilter("default")

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        say(f"{prog}: warning: {' '.join(str(message).split())}")

    warnings.showwarning = show


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default sys.argv[1:]); return the exit status."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("MINICNN_DEBUG"))
    argv = [a for a in argv if a != "--debug"]     # accepted anywhere on the line
    try:
        args, extra = parser.parse_known_args(argv)
        if getattr(args, "command", None) == "bench":
            args.bench_args = extra
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:                  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else 0
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    if args.command in RUNS_MODELS:
        allocator.keep_freed_memory()      # once per process; see minicnn/kernels/allocator.py
    try:
        with warnings.catch_warnings():
            _warnings_in_one_line(f"minicnn {args.command}")
            _import_modules(getattr(args, "imports", []))
            return args.func(args)
    except KeyboardInterrupt:
        say("minicnn: interrupted")
        return 130
    except BrokenPipeError:                    # e.g. `minicnn evaluate ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (CLIError, CheckpointError, DatasetError, TrainingError, minicnn.BackendError,
            plots.PlotUnavailable, OSError, ValueError) as exc:
        if debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        say(f"minicnn {args.command}: error: {message}")
        return 1
    except Exception as exc:                   # a bug: one line, the traceback on request
        if debug:
            raise
        message = " ".join(str(exc).split())[:300]
        say(f"minicnn {args.command}: internal error: {type(exc).__name__}: {message} "
             "(run again with --debug for the traceback)")
        return 1
