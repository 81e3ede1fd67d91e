"""``minicnn train``: settings from the options, the saved run or the reference recipe; the
validation split; the run folder (checkpoints, metrics, plots); one rank of ``mpiexec``."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy

import minicnn
from minicnn import training, zoo
from minicnn.cli.common import (
    BEST,
    CONFUSION,
    CURVES,
    EVAL_CONFUSION,
    FINAL,
    FOLDER,
    FOLDER_SHAPE,
    LAST,
    METRICS,
    CLIError,
    can_plot,
    dataset_classes,
    load_dataset,
    say,
    set_backend,
)
from minicnn.cli.ranks import run_rank
from minicnn.core import backend
from minicnn.core.atomic import atomic_write_bytes
from minicnn.data import DataLoader, Normalize, parse_augmentation
from minicnn.data.datasets import DatasetError
from minicnn.saving.checkpoint import CheckpointError, load_checkpoint, save
from minicnn.training import distributed
from minicnn.training.evaluation import confusion_matrix, evaluate, predict
from minicnn.training.loop import TrainingError, fit
from minicnn.viz import plots

# Settings a run is defined by: on --resume they default to the saved ones and may not change.
RUN_KEYS = ("dataset", "model", "batch_size", "lr", "momentum", "weight_decay", "schedule",
            "seed", "limit", "augment", "optimizer", "val_split", "precision", "clip_norm",
            "clip_value", "warmup_steps", "channels", "image_size", "label_smoothing")


def _resolve(args: argparse.Namespace, saved: dict[str, Any] | None) -> dict[str, Any]:
    """The run's settings: explicit options, else the saved run's (on --resume), else the
    reference recipe's defaults. A resumed run may change only --epochs and --test-limit."""
    saved = saved or {}
    model = getattr(args, "model", None) or saved.get("model", "ref-cnn")
    defaults = {"dataset": "mnist", "model": "ref-cnn", "seed": 0, "limit": None,
                "test_limit": None, "precision": "fp32", "clip_norm": None, "clip_value": None,
                "warmup_steps": 0, "label_smoothing": 0.0, "channels": FOLDER_SHAPE[0],
                "image_size": FOLDER_SHAPE[1],
                **zoo.recipe_for(model).as_dict()}
    optimizer = getattr(args, "optimizer", None) or saved.get("optimizer", defaults["optimizer"])
    if optimizer != defaults["optimizer"]:             # another optimizer: its own defaults
        defaults.update(optimizer=optimizer, **training.OPTIMIZER_DEFAULTS[optimizer])
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
    if settings["augment"] == "auto":
        settings["augment"] = zoo.AUTO_AUGMENT.get(settings["dataset"], "crop=2")
    return settings


def _write_metrics(path: Path, records: list[dict[str, Any]]) -> None:
    """Rewrite ``path`` atomically with one JSON line per record."""
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode("utf-8"))


def _batch_bytes(model: Any, batch_size: int) -> int:
    """About the memory a training step takes for ``batch_size`` images: every layer's
    float32 output, kept for backward and matched by its gradient (x 3 with temporaries)."""
    per_image = sum(int(numpy.prod(shape)) for _, shape in model._summary_rows())
    return 3 * 4 * per_image * batch_size


def cmd_train(args: argparse.Namespace) -> int:
    """Train alone, or as one rank of ``mpiexec -n N minicnn train`` (data-parallel, see
    minicnn.training.distributed): a rank that fails prints one line and aborts every rank."""
    set_backend(args.backend)
    try:
        comm = distributed.init(args.distributed or "auto")
    except distributed.DistributedError as exc:
        raise CLIError(str(exc)) from None
    if comm.size < 2:
        return _train(args, comm)
    return run_rank(lambda: _train(args, comm), comm, "minicnn train", (
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
    elif last.exists() and not getattr(args, "overwrite", False):
        raise CLIError(f"{out} already holds a run ({last}); pass --resume to continue it, "
                       "--overwrite to replace it, or choose another --out")
    elif last.exists() and root:                      # --overwrite: the old run's files go
        for name in (LAST, FINAL, BEST, METRICS, CURVES, CONFUSION, EVAL_CONFUSION):
            (out / name).unlink(missing_ok=True)
    s = _resolve(args, saved)
    try:                                 # bf16 without a bfloat16 dtype: before any file
        training.Precision(s["precision"]).compute_dtype(backend.get_module(backend.name))
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if s["batch_size"] % comm.size:
        raise CLIError(f"--batch-size {s['batch_size']} does not split evenly among "
                       f"{comm.size} ranks; use a multiple of {comm.size}")
    folder_shape = (s["channels"], s["image_size"], s["image_size"])
    (x, y), (xt, yt) = load_dataset(s["dataset"], args.data_root, folder_shape)
    if s["limit"]:
        x, y = x[:s["limit"]], y[:s["limit"]]
    if s["test_limit"]:
        xt, yt = xt[:s["test_limit"]], yt[:s["test_limit"]]
    if args.val_split is None and saved is None:      # the default: at most a tenth
        s["val_split"] = min(s["val_split"], len(x) // 10)
    if s["val_split"] >= len(x):
        raise CLIError(f"--val-split {s['val_split']} leaves no training images out of {len(x)}")
    if s["batch_size"] > len(x) - s["val_split"]:
        raise CLIError(f"--batch-size {s['batch_size']} is larger than the "
                       f"{len(x) - s['val_split']:,} training images; use at most that many")
    held_out = numpy.random.default_rng(s["seed"]).permutation(len(x))[:s["val_split"]]
    keep = numpy.ones(len(x), bool)
    keep[held_out] = False
    (xv, yv), (x, y) = (x[held_out], y[held_out]), (x[keep], y[keep])
    classes = dataset_classes(s["dataset"])

    minicnn.manual_seed(s["seed"])
    if ":" in s["model"] and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())       # module:function found as python -m finds it
    try:
        shape = x.shape[1:] if x.ndim == 4 else (1, *x.shape[1:])    # (C, H, W)
        model = zoo.build_model(s["model"], in_channels=shape[0], input_size=shape[1],
                                classes=len(classes))
    except (ValueError, TypeError) as exc:
        raise CLIError(f"--model {s['model']}: {exc}") from None
    produces = tuple(model.output_shape(tuple(shape)))
    if produces != (len(classes),):
        raise CLIError(f"--model {s['model']}: 'minicnn train' trains classifiers, and this "
                       f"model's output per image is {produces}, not ({len(classes)},) class "
                       "scores (the autoencoder trains with examples/denoise_mnist.py)")
    try:
        optimizer = training.make_optimizer(model, s["optimizer"], s["lr"], s["momentum"],
                                            s["weight_decay"])
    except ValueError as exc:
        raise CLIError(f"--optimizer {s['optimizer']}: {exc}") from None
    transform = Normalize(s["mean"], s["std"])
    loader = DataLoader(x, y, batch_size=s["batch_size"], shuffle=True, seed=s["seed"],
                        transform=transform,
                        augment=parse_augmentation(s["augment"]))
    if s["schedule"] == "plateau" and not s["val_split"]:
        raise CLIError("--schedule plateau watches the validation loss: it needs --val-split > 0")
    try:
        schedule = training.make_schedule(s["schedule"], s["lr"], s["epochs"] * len(loader),
                                          s["warmup_steps"])
    except ValueError as exc:
        raise CLIError(f"--warmup-steps {s['warmup_steps']}: {exc}") from None

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
            "transform": transform.config(), "ranks": comm.size}
    if s["dataset"].startswith(FOLDER):
        meta["image_shape"] = list(folder_shape)
    ranks = f", {comm.size} ranks ({comm.name})" if comm.size > 1 else ""
    if root:
        say(f"training {s['model']} on {s['dataset']} with {s['optimizer']} ({len(x)} train / "
             f"{len(xv)} validation images, {s['epochs']} epoch{'s' * (s['epochs'] > 1)}, "
             f"backend {backend.name}{ranks}) -> {out}")
    try:
        history = fit(model, loader, s["epochs"], optimizer,
                      loss=training.SoftmaxCrossEntropy(label_smoothing=s["label_smoothing"]),
                      val_data=(xv, yv) if len(xv) else None, schedule=schedule,
                      callbacks=[log_epoch] if root else [], checkpoint=last,
                      resume=bool(args.resume), meta=meta, progress=not args.quiet and root,
                      verbose=root, comm=comm, early_stop=args.early_stop,
                      best_checkpoint=out / BEST if len(xv) else None,
                      precision=s["precision"], clip_norm=s["clip_norm"],
                      clip_value=s["clip_value"])
    except TrainingError:
        if root and out.is_dir() and not any(out.iterdir()):
            out.rmdir()                           # a run that wrote nothing leaves nothing
        raise
    except MemoryError:
        need = _batch_bytes(model, s["batch_size"])
        raise CLIError(f"out of memory: a training step on batches of {s['batch_size']} images "
                       f"needs about {need / 2**30:.1f} GiB for this model's activations and "
                       "gradients; use a smaller --batch-size") from None
    if history.stopped == "interrupted":
        if root:
            say(f"resume with: minicnn train --out {out} --resume")
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
    if can_plot():
        plots.plot_curves(history.records, out / CURVES)
        logits = predict(model, (xt, yt))
        matrix = backend.to_numpy(confusion_matrix(yt, logits.argmax(axis=1), len(classes)))
        plots.plot_confusion(matrix, out / CONFUSION, classes,
                             title=f"{s['model']} on {s['dataset']} test set")
        written += [CURVES, CONFUSION]
    epochs = history.records[-1]["epoch"] if history.records else 0
    # accuracy is None only for outputs that are not class scores (never a zoo model's)
    accuracy = "-" if test.accuracy is None else f"{100 * test.accuracy:.2f}%"
    print(f"test accuracy {accuracy} (loss {test.loss:.4f}) after {epochs} "
          f"epoch{'s' * (epochs != 1)}"
          + (" (early stop)" if history.stopped == "early stop" else ""))
    print(f"wrote {out}/ ({', '.join(written)})")
    return 0
