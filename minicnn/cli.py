"""The ``minicnn`` command line: train, evaluate, predict, summary, bench.

    minicnn train --dataset mnist --model ref-cnn --epochs 3 --out runs/ref-cnn-mnist
    minicnn train --out runs/ref-cnn-mnist --resume
    mpiexec -n 2 minicnn train            # data-parallel over 2 processes (minicnn.distributed)
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
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy

import minicnn
from minicnn import allocator, backend, distributed, plots, zoo
from minicnn.atomic import atomic_write_bytes
from minicnn.checkpoint import CheckpointError, load_checkpoint, save
from minicnn.data import DataLoader, Normalize, RandomShift, transform_from_config
from minicnn.datasets import DatasetError, load_fashion_mnist, load_mnist
from minicnn.images import fit_to_input, read_image
from minicnn.evaluation import confusion_matrix, evaluate, predict
from minicnn.train import TrainingError, fit

LAST, FINAL, BEST, METRICS = "last.npz", "model.npz", "best.npz", "metrics.jsonl"
CURVES, CONFUSION, EVAL_CONFUSION = "curves.png", "confusion.png", "evaluate_confusion.png"

DATASETS = {
    "mnist": (load_mnist, [str(d) for d in range(10)]),
    "fashion-mnist": (load_fashion_mnist, ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]),
}

# Commands that run training or inference steps, for which the CLI tunes the C allocator.
RUNS_MODELS = ("train", "evaluate", "predict", "bench")

# Settings a run is defined by: on --resume they default to the saved ones and may not change.
RUN_KEYS = ("dataset", "model", "batch_size", "lr", "momentum", "weight_decay", "schedule",
            "seed", "limit", "augment", "optimizer", "val_split")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


def _checkpoint_path(arg: str) -> Path:
    """A checkpoint file, or a run folder's model.npz."""
    path = Path(arg)
    if path.is_dir():
        if not (path / FINAL).is_file():
            raise CLIError(f"{arg}: a folder without {FINAL}; give a checkpoint file")
        return path / FINAL
    return path


def _import_modules(names: Sequence[str]) -> None:
    """Import the modules that define a checkpoint's custom layers (``--import``); the current
    folder is searched first, as ``python -m`` does."""
    if names and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise CLIError(f"--import {name}: cannot import it ({type(exc).__name__}: "
                           f"{exc})") from None


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _set_backend(name: str | None) -> None:
    if name is not None:
        minicnn.set_backend(name)


def _load_dataset(name: str, root: str | None):
    """((x_train, y_train), (x_test, y_test)) as NumPy arrays; a given root must exist."""
    if root is not None and not Path(root).is_dir():
        raise CLIError(f"--data-root {root}: no such folder")
    loader, _ = DATASETS[name]
    return loader(root)


def _can_plot() -> bool:
    """True if matplotlib can draw; otherwise says so (once per command) and returns False."""
    if plots.available():
        return True
    _say("note: matplotlib is not installed, so no curves.png / confusion.png "
         "(pip install matplotlib)")
    return False


# --------------------------------------------------------------------------- train

def _resolve(args: argparse.Namespace, saved: dict[str, Any] | None) -> dict[str, Any]:
    """The run's settings: explicit options, else the saved run's (on --resume), else the
    reference recipe's defaults. A resumed run may change only --epochs and --test-limit."""
    defaults = {"dataset": "mnist", "model": "ref-cnn", "seed": 0, "limit": None,
                "test_limit": None, **zoo.REFERENCE_RECIPE.as_dict()}
    saved = saved or {}
    optimizer = getattr(args, "optimizer", None) or saved.get("optimizer", "sgd")
    defaults.update(optimizer=optimizer, **zoo.OPTIMIZER_DEFAULTS[optimizer])
    settings = {}
    for key in defaults:
        given = getattr(args, key, None)
        if key in RUN_KEYS and key in saved and given is not None and given != saved[key]:
            raise CLIError(f"--{key.replace('_', '-')} {given} differs from the run being "
                           f"resumed ({saved[key]}); a resumed run keeps its settings")
        settings[key] = given if given is not None else saved.get(key, defaults[key])
    if saved and settings["epochs"] != saved.get("epochs", settings["epochs"]) and \
            settings["schedule"] != "constant":
        raise CLIError(f"--epochs {settings['epochs']}: the run's {settings['schedule']} "
                       f"schedule was planned over {saved['epochs']} epochs, and resuming with "
                       "another count would bend it mid-run; resume with --epochs "
                       f"{saved['epochs']}, or start a new run (--schedule constant runs may "
                       "be extended)")
    return settings


def _write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    """Rewrite ``path`` atomically with one JSON line per record."""
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode("utf-8"))


def cmd_train(args: argparse.Namespace) -> int:
    """Train alone, or as one rank of ``mpiexec -n N minicnn train`` (data-parallel, see
    minicnn.distributed): a rank that fails prints one line and aborts every rank."""
    _set_backend(args.backend)
    try:
        comm = distributed.init(args.distributed or "auto")
    except distributed.DistributedError as exc:
        raise CLIError(str(exc)) from None
    if comm.size < 2:
        return _train(args, comm)
    return distributed.run_rank(lambda: _train(args, comm), comm, "minicnn train", (
        CLIError, CheckpointError, DatasetError, TrainingError, minicnn.BackendError,
        plots.PlotUnavailable, OSError, ValueError),
        debug=bool(os.environ.get("MINICNN_DEBUG")) or "--debug" in sys.argv)


def _train(args: argparse.Namespace, comm: distributed.Communicator) -> int:
    """cmd_train's run; with several ranks only rank 0 prints and writes files."""
    root = comm.is_root
    model_name, dataset = args.model or "ref-cnn", args.dataset or "mnist"
    out = Path(args.out or f"runs/{model_name}-{dataset}")
    last = out / LAST
    saved, records = None, []
    if args.resume:
        if not last.is_file():
            raise CLIError(f"--resume: no checkpoint {last} to resume from")
        meta = load_checkpoint(last).meta
        saved = meta.get("run")
        if saved is None:
            raise CLIError(f"{last}: not a checkpoint written by 'minicnn train'")
        records = list(meta.get("training", {}).get("history", []))
    elif last.exists():
        raise CLIError(f"{out} already holds a run ({last}); pass --resume to continue it, or "
                       "choose another --out")
    s = _resolve(args, saved)
    if s["batch_size"] % comm.size:
        raise CLIError(f"--batch-size {s['batch_size']} does not split evenly among "
                       f"{comm.size} ranks; use a multiple of {comm.size}")
    (x, y), (xt, yt) = _load_dataset(s["dataset"], args.data_root)
    if s["limit"]:
        x, y = x[:s["limit"]], y[:s["limit"]]
    if s["test_limit"]:
        xt, yt = xt[:s["test_limit"]], yt[:s["test_limit"]]
    if args.val_split is None and saved is None:      # the default: at most a tenth
        s["val_split"] = min(s["val_split"], len(x) // 10)
    if s["val_split"] >= len(x):
        raise CLIError(f"--val-split {s['val_split']} leaves no training images out of {len(x)}")
    held_out = numpy.random.default_rng(s["seed"]).permutation(len(x))[:s["val_split"]]
    keep = numpy.ones(len(x), bool)
    keep[held_out] = False
    (xv, yv), (x, y) = (x[held_out], y[held_out]), (x[keep], y[keep])
    classes = DATASETS[s["dataset"]][1]

    minicnn.manual_seed(s["seed"])
    model = zoo.build_model(s["model"])
    optimizer = zoo.make_optimizer(model, s["optimizer"], s["lr"], s["momentum"],
                                   s["weight_decay"])
    loader = DataLoader(x, y, batch_size=s["batch_size"], shuffle=True, seed=s["seed"],
                        transform=Normalize(s["mean"], s["std"]),
                        augment=RandomShift(s["augment"]) if s["augment"] else None)
    schedule = zoo.make_schedule(s["schedule"], s["lr"], s["epochs"] * len(loader))

    out.mkdir(parents=True, exist_ok=True)
    metrics = out / METRICS
    if root and records:
        _write_metrics(metrics, records)        # on resume: drop epochs after the checkpoint
    elif root:
        metrics.unlink(missing_ok=True)

    def log_epoch(record: dict[str, Any]) -> None:
        records.append(record)
        _write_metrics(metrics, records)

    meta = {"run": s, "dataset": s["dataset"], "model_name": s["model"], "classes": classes,
            "transform": loader.transform.config(), "ranks": comm.size}
    ranks = f", {comm.size} ranks ({comm.name})" if comm.size > 1 else ""
    if root:
        _say(f"training {s['model']} on {s['dataset']} with {s['optimizer']} ({len(x)} train / "
             f"{len(xv)} validation images, {s['epochs']} epoch{'s' * (s['epochs'] > 1)}, "
             f"backend {backend.name}{ranks}) -> {out}")
    try:
        history = fit(model, loader, s["epochs"], optimizer,
                      val_data=(xv, yv) if len(xv) else None, schedule=schedule,
                      callbacks=[log_epoch] if root else [], checkpoint=last,
                      resume=bool(args.resume), meta=meta, progress=not args.quiet and root,
                      verbose=root, comm=comm, early_stop=args.early_stop,
                      best_checkpoint=out / BEST if len(xv) else None)
    except TrainingError:
        if root and out.is_dir() and not any(out.iterdir()):
            out.rmdir()                           # a run that wrote nothing leaves nothing
        raise
    if history.stopped == "interrupted":
        if root:
            _say(f"resume with: minicnn train --out {out} --resume")
        return 130
    test = evaluate(model, (xt, yt), comm=comm)           # once, at the end; every rank
    if not root:
        return 0
    if records:                                         # the test figures join the last epoch
        records[-1].update(test_loss=test.loss, test_acc=test.accuracy)
        _write_metrics(metrics, records)
    save(model, out / FINAL, test_loss=test.loss, test_acc=test.accuracy,
         history=history.records, **meta)
    written = [FINAL, LAST, METRICS] + ([BEST] if (out / BEST).is_file() else [])
    if _can_plot():
        plots.plot_curves(history.records, out / CURVES)
        logits = predict(model, (xt, yt))
        matrix = backend.to_numpy(confusion_matrix(yt, logits.argmax(axis=1), len(classes)))
        plots.plot_confusion(matrix, out / CONFUSION, classes,
                             title=f"{s['model']} on {s['dataset']} test set")
        written += [CURVES, CONFUSION]
    epochs = history.records[-1]["epoch"] if history.records else 0
    print(f"test accuracy {100 * test.accuracy:.2f}% (loss {test.loss:.4f}) after {epochs} "
          f"epoch{'s' * (epochs != 1)}"
          + (" (early stop)" if history.stopped == "early stop" else ""))
    print(f"wrote {out}/ ({', '.join(written)})")
    return 0


# --------------------------------------------------------------------------- evaluate, predict

def _test_set(meta: dict[str, Any], args: argparse.Namespace):
    dataset = args.dataset or meta.get("dataset")
    if dataset is None:
        raise CLIError("the checkpoint does not say which dataset it was trained on; pass "
                       "--dataset")
    if dataset not in DATASETS:
        raise CLIError(f"unknown dataset {dataset!r} in the checkpoint; pass --dataset")
    _, (xt, yt) = _load_dataset(dataset, args.data_root)
    return dataset, xt, yt


def _class_names(meta: dict[str, Any], k: int, dataset: str | None = None) -> list[str]:
    """Names for k classes: the dataset's, else the checkpoint's, else 0..k-1."""
    names = DATASETS[dataset][1] if dataset in DATASETS else \
        meta.get("classes") or DATASETS.get(meta.get("dataset"), (None, None))[1]
    return list(names) if isinstance(names, list) and len(names) == k else \
        [str(i) for i in range(k)]


def cmd_evaluate(args: argparse.Namespace) -> int:
    _set_backend(args.backend)
    path = _checkpoint_path(args.checkpoint)
    ckpt = load_checkpoint(path)
    dataset, xt, yt = _test_set(ckpt.meta, args)
    if args.limit:
        xt, yt = xt[:args.limit], yt[:args.limit]
    logits = predict(ckpt.model, xt, batch_size=args.batch_size)   # the model's transform
    loss = float(minicnn.losses.SoftmaxCrossEntropy().forward(logits, yt))
    pred = backend.to_numpy(logits.argmax(axis=1))
    k = int(logits.shape[1])
    matrix = backend.to_numpy(confusion_matrix(yt, pred, k))
    names = _class_names(ckpt.meta, k, dataset)
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
    if _can_plot():
        picture = path.with_name(EVAL_CONFUSION)          # training's confusion.png stays
        plots.plot_confusion(matrix, picture, names, title=f"{path.name} on {dataset}")
        print(f"wrote {picture}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    _set_backend(args.backend)
    ckpt = load_checkpoint(_checkpoint_path(args.checkpoint))
    model = ckpt.model
    in_shape = tuple(getattr(model, "input_shape", None) or (1, 28, 28))
    images, labels, test = [], [], None
    for item in args.images:
        if not Path(item).exists() and item.lstrip("-").isdigit():
            if test is None:
                test = _test_set(ckpt.meta, args)
            _, xt, yt = test
            index = int(item)
            if not 0 <= index < len(xt):
                raise CLIError(f"test-set index {index} is out of range 0..{len(xt) - 1}")
            images.append(xt[index])
            labels.append(int(yt[index]))
            continue
        try:
            image = read_image(item)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        if in_shape[0] != 1:
            raise CLIError(f"{item}: the model expects {in_shape[0]}-channel images; predict "
                           "reads grey images only")
        fitted, inverted = fit_to_input(image, in_shape[1:], True if args.invert else None)
        if inverted and not args.invert:
            _say(f"note: {item} has a light background; inverted to white on black, as the "
                 "model was trained")
        images.append(fitted)
        labels.append(None)
    logits = backend.to_numpy(predict(model, numpy.stack(images)))    # the model's transform
    shifted = logits - logits.max(axis=1, keepdims=True)
    prob = numpy.exp(shifted) / numpy.exp(shifted).sum(axis=1, keepdims=True)
    names = _class_names(ckpt.meta, prob.shape[1], test[0] if test else args.dataset)
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
    model = zoo.build_model(args.model) if args.model else \
        load_checkpoint(_checkpoint_path(args.checkpoint)).model
    model.summary()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a checkpoint's model as an ONNX file (see minicnn.onnx_export)."""
    from minicnn.onnx_export import DEFAULT_OPSET, export_onnx
    ckpt = load_checkpoint(_checkpoint_path(args.checkpoint))
    path = export_onnx(ckpt, args.out, opset=args.opset,
                       include_preprocessing=args.include_preprocessing)
    pixels = "uint8 pixels, preprocessed inside" if args.include_preprocessing else "float32"
    print(f"wrote {path} ({path.stat().st_size:,} bytes, ONNX opset "
          f"{args.opset or DEFAULT_OPSET}, input {pixels})")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    try:
        from minicnn.tools import bench
    except ImportError as exc:
        raise CLIError(f"the benchmark is not available ({exc})") from None
    parser = _Parser(prog="minicnn bench", description="Time training and inference steps.")
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
    from minicnn import visualize
    _set_backend(args.backend)
    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / FINAL
        if not path.is_file():
            raise CLIError(f"{args.checkpoint}: the folder holds no {FINAL}")
    if not plots.available():
        raise CLIError('matplotlib is not installed: pip install -e ".[plot]"')
    ckpt = load_checkpoint(path)
    in_shape = tuple(getattr(ckpt.model, "input_shape", None) or (1, 28, 28))
    label, dataset = None, None
    if Path(args.image).exists() or not args.image.lstrip("-").isdigit():
        try:
            image = read_image(args.image)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        if (1,) + image.shape != in_shape:
            raise CLIError(f"{args.image}: image is {image.shape[1]}x{image.shape[0]} pixels, "
                           f"the model expects {in_shape[2]}x{in_shape[1]} grey images")
    else:
        meta = dict(ckpt.meta, dataset=ckpt.meta.get("dataset") or "mnist")
        dataset, xt, yt = _test_set(meta, args)
        index = int(args.image)
        if not 0 <= index < len(xt):
            raise CLIError(f"test-set index {index} is out of range 0..{len(xt) - 1}")
        image, label = xt[index], int(yt[index])
    x = transform_from_config(ckpt.meta.get("transform"))(image.reshape((1,) + in_shape))
    names = _class_names(ckpt.meta, int(ckpt.model.output_shape(in_shape)[-1]), dataset)
    out = Path(args.out) if args.out else path.parent
    written = visualize.write_pictures(ckpt.model, x, out, names, label)
    print(f"wrote {out}/ ({', '.join(p.name for p in written)})")
    return 0


# --------------------------------------------------------------------------- parser, main

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="minicnn", description="Train and use small CNNs on MNIST and "
                     "Fashion-MNIST with minicnn.")
    parser.add_argument("--version", action="version", version=f"minicnn {minicnn.__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an unexpected error (anywhere on the line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    r = zoo.REFERENCE_RECIPE

    def imports(p: argparse.ArgumentParser) -> None:
        p.add_argument("--import", dest="imports", action="append", default=[],
                       metavar="MODULE", help="import MODULE first (the module defining a "
                       "checkpoint's custom layers); repeatable")

    def common(p: argparse.ArgumentParser) -> None:
        imports(p)
        p.add_argument("--backend", choices=backend.BACKENDS,
                       help="array backend (default: $MINICNN_BACKEND or numpy)")
        p.add_argument("--data-root", metavar="DIR",
                       help="folder holding mnist/ and fashion-mnist/ (default: $MINICNN_DATA)")

    t = sub.add_parser("train", help="train a model; writes a run directory")
    t.add_argument("--dataset", choices=DATASETS, help="mnist (default) or fashion-mnist")
    t.add_argument("--model", choices=zoo.MODELS, help="ref-cnn (default) or lenet5")
    t.add_argument("--epochs", type=_positive, help=f"epochs (default {r.epochs})")
    t.add_argument("--batch-size", type=_positive, help=f"batch size (default {r.batch_size})")
    t.add_argument("--optimizer", choices=tuple(zoo.OPTIMIZER_DEFAULTS),
                   help="sgd (default), adam or adamw")
    t.add_argument("--lr", type=_positive_float, help=f"peak learning rate (default {r.lr} for "
                   "sgd, 0.001 for adam and adamw)")
    t.add_argument("--momentum", type=_non_negative_float,
                   help=f"SGD momentum (default {r.momentum})")
    t.add_argument("--weight-decay", type=_non_negative_float, help=f"weight decay (default "
                   f"{r.weight_decay} for sgd, 0 for adam, 0.01 for adamw)")
    t.add_argument("--schedule", choices=zoo.SCHEDULES, help=f"lr schedule (default {r.schedule})")
    t.add_argument("--augment", type=int, metavar="K",
                   help=f"random shifts of up to K pixels (default {r.augment}; 0: none)")
    t.add_argument("--seed", type=int, help="random seed (default 0)")
    t.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/MODEL-DATASET)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--limit", type=_positive, metavar="N", help="train on the first N images")
    t.add_argument("--test-limit", type=_positive, metavar="N",
                   help="evaluate on the first N test images")
    t.add_argument("--val-split", type=_non_negative, metavar="N", help="training images held "
                   f"out for validation, scored every epoch (default {r.val_split}, at most a "
                   "tenth of them; 0: none)")
    t.add_argument("--early-stop", type=_positive, metavar="PATIENCE", help="stop when the "
                   "validation loss has not improved for PATIENCE epochs (default: off)")
    t.add_argument("--quiet", action="store_true",
                   help="no progress bars (the line per epoch stays)")
    t.add_argument("--distributed", nargs="?", const="on", choices=("on", "mpi", "nccl", "off"),
                   help="data-parallel over MPI ranks (default: when started by mpiexec; "
                   "alone or 'on': mpi on numpy, nccl on cupy; off: ignore mpiexec)")
    common(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="accuracy, per-class accuracy, confusion matrix")
    e.add_argument("checkpoint", help="a .npz checkpoint or a run folder (its model.npz)")
    e.add_argument("--dataset", choices=DATASETS, help="default: the checkpoint's")
    e.add_argument("--batch-size", type=_positive, default=256)
    e.add_argument("--limit", type=_positive, metavar="N", help="only the first N test images")
    common(e)
    e.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify image files or test-set images")
    p.add_argument("checkpoint", help="a .npz checkpoint or a run folder (its model.npz)")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="an image file (any size; PNG/PGM, or any format with Pillow) or a "
                   "test-set index")
    p.add_argument("--dataset", choices=DATASETS, help="test set for indices (default: the "
                   "checkpoint's)")
    p.add_argument("--invert", action="store_true", help="invert files (black digit on "
                   "white); by default light backgrounds are detected and inverted")
    p.add_argument("--top", type=_positive, default=1, help="show the K likeliest classes")
    common(p)
    p.set_defaults(func=cmd_predict)

    s = sub.add_parser("summary", help="print a model's layers and parameter counts")
    s.add_argument("--model", choices=zoo.MODELS, help="a model of the zoo")
    s.add_argument("checkpoint", nargs="?", metavar="MODEL.npz",
                   help="or a checkpoint (or run folder) to summarise")
    imports(s)
    s.set_defaults(func=cmd_summary)

    x = sub.add_parser("export", help="write a checkpoint's model as an ONNX file")
    x.add_argument("checkpoint", metavar="MODEL", help="a .npz checkpoint or a run folder")
    imports(x)
    x.add_argument("out", metavar="OUT", help="the .onnx file to write")
    x.add_argument("--opset", type=_positive, metavar="N", help="ONNX opset (default "
                   f"{minicnn.onnx_export.DEFAULT_OPSET})")
    x.add_argument("--include-preprocessing", action="store_true",
                   help="take uint8 pixels and apply the checkpoint's input transform inside")
    x.set_defaults(func=cmd_export)

    v = sub.add_parser("visualize", help="filters, feature maps and im2col as PNG pictures")
    v.add_argument("checkpoint", metavar="MODEL", help="a .npz checkpoint or a run folder")
    v.add_argument("--image", default="0", metavar="INDEX|FILE",
                   help="a test-set index (default 0) or a PNG/PGM file")
    v.add_argument("--out", metavar="DIR", help="where to write (default: the model's folder)")
    v.add_argument("--dataset", choices=DATASETS, help="test set for an index (default: the "
                   "checkpoint's)")
    common(v)
    v.set_defaults(func=cmd_visualize)

    b = sub.add_parser("bench", help="time training and inference steps (see minicnn bench "
                       "--help)", add_help=False)
    b.set_defaults(func=cmd_bench)            # its options are parsed by minicnn.tools.bench
    return parser


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
        allocator.keep_freed_memory()      # once per process; see minicnn/allocator.py
    try:
        _import_modules(getattr(args, "imports", []))
        return args.func(args)
    except KeyboardInterrupt:
        _say("minicnn: interrupted")
        return 130
    except BrokenPipeError:                    # e.g. `minicnn evaluate ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (CLIError, CheckpointError, DatasetError, TrainingError, minicnn.BackendError,
            plots.PlotUnavailable, OSError, ValueError) as exc:
        if debug:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        _say(f"minicnn {args.command}: error: {message}")
        return 1
    except Exception as exc:                   # a bug: one line, the traceback on request
        if debug:
            raise
        message = " ".join(str(exc).split())[:300]
        _say(f"minicnn {args.command}: internal error: {type(exc).__name__}: {message} "
             "(run again with --debug for the traceback)")
        return 1
