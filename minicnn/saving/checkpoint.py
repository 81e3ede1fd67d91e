"""Checkpoints: a model's architecture, weights, optimizer state and metadata in one ``.npz``.

The file is a plain NumPy ``.npz`` archive: one array per parameter (``param/<layer>.<name>``),
per non-trained state array (``state/<layer>.<name>``, e.g. BatchNorm running statistics) and
per optimizer buffer (``optim/<buffer>/<i>``, e.g. SGD's velocity, Adam's exp_avg), plus
``__minicnn__``, the UTF-8 bytes of a JSON description: the model's ``config()`` (so ``load``
rebuilds it without the user's code), the optimizer's hyper-parameters and free-form metadata
(epoch, RNG states, metrics...)::

    minicnn.save(model, "model.npz", optimizer=opt, epoch=3)
    model = minicnn.load("model.npz")

Loading never unpickles (``allow_pickle=False``). Arrays are written from the host and loaded
onto the active backend, so a checkpoint trained on a GPU loads on a CPU. Writes go to a
temporary file in the same folder that is then renamed over the target, so a crash never
leaves a half-written checkpoint.
"""
from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, cast

import numpy

from minicnn.core import backend
from minicnn.core.atomic import atomic_write
from minicnn.data import transform_from_config
from minicnn.layers import initializers
from minicnn.layers.base import Layer, Parameter, layer_config, layer_from_config
from minicnn.saving.description import check_model_description
from minicnn.saving.npz_reader import NpzError, read_npz

MAX_CHECKPOINT_BYTES = 2 << 30
"""Most bytes a checkpoint's arrays may inflate to (2 GiB: 500 M float32 weights)."""

__all__ = ["CheckpointError", "Checkpoint", "LoadedModel", "save", "load", "load_checkpoint",
           "load_weights", "checkpoint_file", "RUN_MODEL"]

RUN_MODEL = "model.npz"
"""A run folder's finished model: ``load("runs/ref-cnn-mnist")`` reads this file in it."""

FORMAT = "minicnn-checkpoint"
VERSION = 1
_DESCRIPTION = "__minicnn__"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, unsafe (needs pickle) or does not fit the model; the
    message names the file."""


class LoadedModel(Protocol):
    """What ``load`` rebuilds: a ``Sequential`` or a ``Model`` (``minicnn.models.Network``),
    described by what it offers, as this package sits below ``minicnn.models`` and may not
    import it. Every ``Network`` is one."""

    name: str
    layers: list[Layer]
    input_transform: Any
    workers: int | None

    def __call__(self, *inputs: Any, **kwargs: Any) -> Any: ...
    def forward(self, x: Any, training: bool | None = None, check: bool = True) -> Any: ...
    def backward(self, grad_out: Any, input_grad: bool = False) -> Any: ...
    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]: ...
    def declared_input_shape(self) -> tuple[int, ...] | None: ...
    def named_layers(self, prefix: str = "") -> Iterator[tuple[str, Layer]]: ...
    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]: ...
    def named_state(self, prefix: str = "") -> Iterator[tuple[str, Any]]: ...
    def load_named_state(self, arrays: dict[str, Any]) -> None: ...
    def parameters(self) -> list[Parameter]: ...
    def zero_grad(self) -> None: ...
    def state_arrays(self) -> dict[str, Any]: ...
    def clear_cache(self) -> None: ...
    def train(self, mode: bool = True) -> Layer: ...
    def eval(self) -> Layer: ...
    def to(self, backend_name: str) -> Layer: ...
    def astype(self, dtype: Any) -> Layer: ...
    def config(self) -> dict[str, Any]: ...
    def fit(self, *args: Any, **kwargs: Any) -> Any: ...
    def evaluate(self, *args: Any, **kwargs: Any) -> Any: ...
    def predict(self, *args: Any, **kwargs: Any) -> Any: ...
    def predict_proba(self, *args: Any, **kwargs: Any) -> Any: ...
    def predict_classes(self, *args: Any, **kwargs: Any) -> Any: ...
    def summary(self, print_fn: Any = print) -> str: ...


ModelT = TypeVar("ModelT")
"""The model a Checkpoint holds: a LoadedModel from ``load_checkpoint``, the caller's own
model from ``load_weights``."""
LayerT = TypeVar("LayerT", bound=Layer)


@dataclass
class Checkpoint(Generic[ModelT]):
    """What ``load_checkpoint`` returns: the rebuilt model and everything saved beside it."""

    path: Path
    model: ModelT
    meta: dict[str, Any] = field(default_factory=dict)
    optimizer_state: dict[str, Any] | None = None
    """``SGD.load_state_dict`` input (velocity on the active backend), or None if not saved."""


# --------------------------------------------------------------------------- saving

def _transform_config(model: Layer) -> dict[str, Any] | None:
    """The model's input transform as JSON (see ``Network.input_transform``), or None."""
    transform = getattr(model, "input_transform", None)
    if transform is None or not hasattr(transform, "config"):
        return None
    return transform.config()


def _json_default(value: Any) -> Any:
    if isinstance(value, numpy.generic):
        return value.item()
    if hasattr(value, "tolist"):
        return backend.to_numpy(value).tolist()
    if isinstance(value, (Path, tuple)):
        return str(value) if isinstance(value, Path) else list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def save(model: Layer, path: str | os.PathLike, optimizer: Any = None,
         **meta: Any) -> Path:
    """Write ``model`` (architecture and weights), optionally ``optimizer``'s state, and the
    JSON-serialisable keyword arguments ``meta`` to the ``.npz`` file ``path``, atomically.

    Returns the path. Raises CheckpointError if the model or meta cannot be described as JSON.
    """
    path = Path(path)
    arrays: dict[str, numpy.ndarray] = {}
    shapes: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        arrays[f"param/{name}"] = backend.to_numpy(p.data)
        shapes[name] = list(p.shape)
    for name, value in model.named_state():
        arrays[f"state/{name}"] = backend.to_numpy(value)
    description: dict[str, Any] = {
        "format": FORMAT, "version": VERSION,
        "model": layer_config(model),
        "transform": _transform_config(model),
        "parameters": shapes, "optimizer": None, "meta": meta}
    if optimizer is not None:
        state = dict(optimizer.state_dict())
        counts = {}
        for key in getattr(optimizer, "BUFFERS", ("velocity",)):
            buffers = state.pop(key, [])
            counts[key] = len(buffers)
            for i, b in enumerate(buffers):
                arrays[f"optim/{key}/{i}"] = backend.to_numpy(b)
        description["optimizer"] = dict(state, buffers=counts,
                                        **{"class": type(optimizer).__name__})
    try:
        text = json.dumps(description, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot describe the model and metadata as JSON "
                              f"({exc})") from None
    arrays[_DESCRIPTION] = numpy.frombuffer(text.encode("utf-8"), dtype=numpy.uint8)
    # numpy's stub lets **kwds reach savez's allow_pickle (a bool); these keys are array names
    atomic_write(path, lambda f: numpy.savez(f, **arrays))  # type: ignore[arg-type]
    return path


# --------------------------------------------------------------------------- loading

def _read(path: Path) -> tuple[dict[str, Any], dict[str, numpy.ndarray]]:
    """The checked JSON description and all arrays of a checkpoint file (within the budgets
    of ``minicnn.saving.npz_reader``); every problem is a CheckpointError naming the file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        arrays = read_npz(path, max_total_bytes=MAX_CHECKPOINT_BYTES)
    except NpzError as exc:
        what = "a .npz archive" if zipfile.is_zipfile(path) else _file_kind(path)
        raise CheckpointError(f"{path}: not a minicnn checkpoint ({what}: {exc})") from None
    raw = arrays.pop(_DESCRIPTION, None)
    if raw is None or raw.dtype != numpy.uint8 or raw.ndim != 1:
        raise CheckpointError(f"{path}: not a minicnn checkpoint (no '{_DESCRIPTION}' "
                              "description inside)")
    try:
        description = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint description "
                              f"({type(exc).__name__}: {str(exc)[:80]})") from None
    found = description.get("format") if isinstance(description, dict) else None
    if found != FORMAT:
        raise CheckpointError(f"{path}: not a minicnn checkpoint (format {found!r:.40}, "
                              f"expected {FORMAT!r})")
    version = description.get("version")
    if type(version) is not int or version < 1:
        raise CheckpointError(f"{path}: corrupt checkpoint description (version {version!r:.20}"
                              ", expected a positive integer)")
    if version > VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version} is newer than this "
                              f"minicnn understands ({VERSION}); upgrade minicnn")
    for key, kind in (("meta", dict), ("optimizer", dict), ("parameters", dict)):
        if description.get(key) is not None and not isinstance(description[key], kind):
            raise CheckpointError(f"{path}: corrupt checkpoint description ('{key}' must be an "
                                  f"object, got {type(description[key]).__name__})")
    for name, value in arrays.items():
        if value.dtype.kind != "f" or not numpy.isfinite(value).all():
            problem = f"dtype {value.dtype}" if value.dtype.kind != "f" else "NaN or inf"
            raise CheckpointError(f"{path}: array {name!r} holds {problem}; weights and "
                                  "optimizer state must be finite floating-point numbers")
    return description, arrays


def _file_kind(path: Path) -> str:
    """A short guess at what a file that is not a zip archive is, from its first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    if not head:
        return "an empty file"
    if head.startswith(b"\x93NUMPY"):
        return "a single .npy array, not an .npz archive"
    if head.startswith(b"\x80"):
        return "a Python pickle, which minicnn never loads"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "a text file"
    return "not a zip archive"


def _restore(model: Layer, path: Path, arrays: dict[str, numpy.ndarray]) -> None:
    """Copy parameters and state arrays into ``model`` (active backend), checking names/shapes."""
    params = dict(model.named_parameters())
    saved = {k[len("param/"):] for k in arrays if k.startswith("param/")}
    missing, extra = sorted(set(params) - saved), sorted(saved - set(params))
    if missing or extra:
        raise CheckpointError(
            f"{path}: the checkpoint does not match the model's architecture: "
            + "; ".join(filter(None, [
                f"missing in the file: {', '.join(missing[:5])}" if missing else "",
                f"not in the model: {', '.join(extra[:5])}" if extra else ""])))
    for name, p in params.items():
        value = arrays[f"param/{name}"]
        if tuple(value.shape) != p.shape:
            raise CheckpointError(f"{path}: the checkpoint does not match the model's "
                                  f"architecture: {name} has shape {tuple(value.shape)} in the "
                                  f"file, {p.shape} in the model")
    states = dict(model.named_state())
    for name, value in states.items():
        key = f"state/{name}"
        if key not in arrays or tuple(arrays[key].shape) != tuple(value.shape):
            raise CheckpointError(f"{path}: the checkpoint does not match the model's "
                                  f"architecture: state array {name} missing or of another shape")
    xp = backend.xp
    for name, p in params.items():
        p.data = xp.asarray(arrays[f"param/{name}"], dtype=p.data.dtype)
        p.grad = xp.zeros_like(p.data)
    model.load_named_state({name: xp.asarray(arrays[f"state/{name}"], dtype=value.dtype)
                            for name, value in states.items()})
    model.clear_cache()


def _optimizer_state(path: Path, description: dict[str, Any],
                     arrays: dict[str, numpy.ndarray]) -> dict[str, Any] | None:
    """The optimizer's ``state_dict`` (buffers on the active backend) and its "class", or
    None if none was saved."""
    opt = description.get("optimizer")
    if not opt:
        return None
    counts = opt.get("buffers")
    if counts is None and "velocity" in opt:          # files written before Adam existed
        counts = {"velocity": opt["velocity"]}
    if not isinstance(counts, dict) or not all(
            isinstance(k, str) and type(n) is int and 0 <= n <= len(arrays)
            for k, n in counts.items()):
        raise CheckpointError(f"{path}: corrupt checkpoint: optimizer buffers {counts!r:.60}")
    try:
        buffers = {key: [backend.xp.asarray(arrays[f"optim/{key}/{i}"]) for i in range(n)]
                   for key, n in counts.items()}
    except KeyError as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint: optimizer buffer {exc} "
                              "missing") from None
    hyper = {k: v for k, v in opt.items() if k not in ("buffers", "velocity")}
    return hyper | buffers


def _build(path: Path, description: dict[str, Any]) -> Layer:
    """Rebuild the model from its checked JSON config with placeholder weights (no memory,
    no draws from the global RNG); ``_restore`` then fills in the file's arrays."""
    try:
        check_model_description(description.get("model"))
        with initializers.placeholders():
            return layer_from_config(description["model"])
    except Exception as exc:          # a layer's own checks, or anything a bad config trips
        message = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"{path}: cannot rebuild the model from its description "
                              f"({type(exc).__name__}: {message})") from None


def checkpoint_file(path: str | os.PathLike) -> Path:
    """``path`` itself, or for a run folder (what ``minicnn train`` writes) its ``model.npz``;
    a folder without one is a CheckpointError."""
    path = Path(path)
    if path.is_dir():
        if not (path / RUN_MODEL).is_file():
            raise CheckpointError(f"{path}: a folder without {RUN_MODEL}; give a checkpoint "
                                  "file or a run folder")
        return path / RUN_MODEL
    return path


def load_checkpoint(path: str | os.PathLike) -> Checkpoint[LoadedModel]:
    """Read a checkpoint (a ``.npz`` file, or a run folder: its ``model.npz``): rebuild its
    model on the active backend with the saved weights, and return it with the metadata and
    the optimizer state. Any problem with the file, whatever its content, raises
    CheckpointError (checked within budgets before anything large is allocated: see
    ``minicnn.saving.npz_reader`` and ``minicnn.saving.description``)."""
    path = checkpoint_file(path)
    try:
        description, arrays = _read(path)
        layer = _build(path, description)
        _restore(layer, path, arrays)
        # a Sequential or a Model: the only classes check_model_description lets _build make
        model = cast(LoadedModel, layer)
        meta = description.get("meta") or {}
        transform = description.get("transform") or meta.get("transform")
        if transform is not None:
            try:
                model.input_transform = transform_from_config(transform)
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                raise CheckpointError(f"{path}: corrupt input transform {transform!r:.60} "
                                      f"({exc})") from None
        return Checkpoint(path, model, meta, _optimizer_state(path, description, arrays))
    except CheckpointError:
        raise
    except Exception as exc:                   # a bug or a case not foreseen: still one type
        raise CheckpointError(f"{path}: cannot load ({type(exc).__name__}: "
                              f"{str(exc)[:200]})") from None


def load(path: str | os.PathLike) -> LoadedModel:
    """The model saved in ``path`` (architecture and weights), rebuilt on the active backend;
    ``path`` is a checkpoint file or a run folder (its ``model.npz``), as on the command line."""
    return load_checkpoint(path).model


def load_weights(model: LayerT, path: str | os.PathLike) -> Checkpoint[LayerT]:
    """Copy the weights of checkpoint ``path`` into an existing ``model`` (which must have the
    same architecture) and return the checkpoint's metadata and optimizer state.

    The returned ``Checkpoint.model`` is ``model`` itself. ``path`` may be a run folder.
    """
    path = checkpoint_file(path)
    description, arrays = _read(path)
    _restore(model, path, arrays)
    return Checkpoint(path, model, description.get("meta") or {},
                      _optimizer_state(path, description, arrays))
