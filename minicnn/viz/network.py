"""See what a network computes: its filters, its feature maps, one im2col window, and
cross-correlation beside true convolution, as pictures.

Each picture has a pure function that computes the numbers behind it (so tests assert on
numbers, not pixels), and a function that draws them as a matplotlib ``Figure``::

    filter_grids(model)                   -> filters(model)
    activations(model, x)                 -> feature_maps(model, x)
    im2col_example(conv, x, row, filter)  -> im2col_window(model, x, row, filter)
    correlation_example(image, kernel)    -> correlation_vs_convolution(image, kernel)

``save(figure, path)`` writes one figure, ``write_pictures(model, x, out_dir)`` all four as PNGs
(``minicnn visualize``). The numbers are computed with the array module of the model's
parameters (NumPy or CuPy) and copied to the host only for drawing. matplotlib is optional: it
is imported only to draw, and without it drawing raises ``minicnn.viz.plots.PlotUnavailable``
(``pip install -e ".[plot]"``).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy

from minicnn.core import backend, modes
from minicnn.kernels.im2col import im2col
from minicnn.layers import Conv2D, Layer
from minicnn.models import Model
from minicnn.viz import plots

__all__ = ["EXAMPLE_IMAGE", "EXAMPLE_KERNEL", "conv_layers", "filter_grids", "activations",
           "probabilities", "im2col_example", "correlation_example", "filters", "feature_maps",
           "im2col_window", "correlation_vs_convolution", "save", "write_pictures", "PICTURES"]

EXAMPLE_IMAGE = numpy.array([[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1],
                             [0, 0, 1, 1, 0], [0, 1, 1, 0, 0]])
"""The 5x5 image of ``examples/conv_explained.py``."""
EXAMPLE_KERNEL = numpy.array([[1, 0, 0], [0, 0, 0], [0, 0, 0]])
"""Its asymmetric 3x3 kernel: cross-correlation copies each window's top-left pixel, true
convolution (the kernel flipped) its bottom-right one."""

PICTURES = ("filters.png", "feature_maps.png", "im2col.png", "correlation_vs_convolution.png")
DIVERGING = "RdBu_r"


# =========================================================================== the numbers

def conv_layers(model: Layer) -> list[Conv2D]:
    """Every Conv2D in ``model`` (the model itself if it is one), in the model's order."""
    return [layer for _, layer in model.named_layers() if isinstance(layer, Conv2D)]


def filter_grids(model: Layer) -> list[tuple[str, Any]]:
    """One (label, tiles) per Conv2D, tiles an (out_channels, kh, kw) array: for a layer with one
    input channel each filter itself; for more input channels each filter's mean over its input
    channels (what it responds to on average), as the label says."""
    grids = []
    for conv in conv_layers(model):
        w = conv.weight.data                                     # (O, C, kh, kw)
        o, c, kh, kw = w.shape
        label = f"{conv.name or 'conv2d'}: {o} filters of {c}x{kh}x{kw}"
        if c == 1:
            grids.append((label, w[:, 0]))
        else:
            grids.append((f"{label}, each shown as its mean over the {c} input channels",
                          w.mean(axis=1)))
    return grids


def _batch(model: Layer, x: Any) -> Any:
    """x (C, H, W) or (N, C, H, W) as a batch on the module and in the dtype of the model's
    parameters."""
    if not hasattr(x, "shape") or x.ndim not in (3, 4):
        raise ValueError("expected an image (C, H, W) or a batch (N, C, H, W), got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    x = x[None] if x.ndim == 3 else x
    params = model.parameters()
    if params:
        data = params[0].data
        xp = backend.get_array_module(data)
        if backend.get_array_module(x) is not xp:
            x = backend.to_numpy(x) if xp is numpy else xp.asarray(x)
        if x.dtype != data.dtype:
            x = x.astype(data.dtype)
    return x


def _run(model: Layer, x: Any) -> list[tuple[Layer, Any, Any]]:
    """(layer, its first input, its output) for every layer of ``model`` in order, run under
    ``no_grad()`` in eval mode: a Sequential's ``layers``, a graph Model's topological order,
    or ``model`` alone."""
    steps = []
    with modes.no_grad(), modes.training_mode(False):
        if isinstance(model, Model):
            values = {id(model.input_tensor): x}
            for t in model.order:
                inputs = [values[id(p)] for p in t.parents]
                values[id(t)] = t.layer.forward(*inputs)
                steps.append((t.layer, inputs[0], values[id(t)]))
        elif hasattr(model, "layers"):
            for layer in model.layers:
                y = layer.forward(x)
                steps.append((layer, x, y))
                x = y
        else:
            steps.append((model, x, model.forward(x)))
    return steps


def _outputs(model: Layer, x: Any) -> list[tuple[Layer, Any]]:
    """(layer, output batch) for every layer, on x made a batch of the model's module."""
    return [(layer, y) for layer, _, y in _run(model, _batch(model, x))]


def activations(model: Layer, x: Any) -> list[tuple[str, tuple[int, ...], Any]]:
    """(name, per-sample shape, output batch) for the input ("input") and after every layer,
    running the layers one by one under ``no_grad()`` in eval mode; x is an image (C, H, W) or
    a batch (N, C, H, W). The last entry is the model's output (the logits)."""
    x = _batch(model, x)
    return [("input", tuple(x.shape[1:]), x)] + [
        (layer.name or type(layer).__name__.lower(), tuple(y.shape[1:]), y)
        for layer, y in _outputs(model, x)]


def probabilities(logits: Any) -> Any:
    """Softmax of logits (N, K) along the classes, computed stably (max subtracted)."""
    xp = backend.get_array_module(logits)
    e = xp.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _first_conv_input(model: Layer, x: Any) -> tuple[Conv2D, Any]:
    """The model's first Conv2D and its input for x."""
    for layer, inp, _ in _run(model, _batch(model, x)):
        if isinstance(layer, Conv2D):
            return layer, inp
    raise ValueError(f"{type(model).__name__} has no Conv2D among its layers")


def im2col_example(conv: Conv2D, x: Any, row: int | None = None, filter: int = 0
                   ) -> dict[str, Any]:
    """What ``conv`` computes at one output position of the first image of x (C, H, W or
    N, C, H, W): the window, that window as row ``row`` of the im2col matrix (columns in
    (i, j, c) order), filter ``filter`` flattened the same way, their element-wise products,
    the products' sum, the bias, and the output the layer itself computed there (``output``
    equals ``sum + bias`` up to float rounding). ``row`` (= oh * Wo + ow) defaults to the
    position where that filter responds most strongly."""
    top_pad, left_pad, bottom_pad, right_pad = getattr(conv, "pads", conv.padding * 2)
    if getattr(conv, "groups", 1) != 1 or (top_pad, left_pad) != (bottom_pad, right_pad):
        raise ValueError(f"{conv.label()}: the im2col example shows ungrouped convolutions "
                         "with the same padding on both sides (groups=1, odd 'same' kernels)")
    x = _batch(conv, x)[:1]
    with modes.no_grad():
        y = conv.forward(x)                                       # (1, O, Ho, Wo)
    _, o, ho, wo = y.shape
    if not 0 <= filter < o:
        raise ValueError(f"filter {filter} is out of range 0..{o - 1} for {conv.label()}")
    if row is None:
        row = int(y[0, filter].argmax())
    if not 0 <= row < ho * wo:
        raise ValueError(f"row {row} is out of range 0..{ho * wo - 1} ({ho}x{wo} positions)")
    oh, ow = divmod(row, wo)
    xp = backend.get_array_module(x)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (conv.kernel_size, conv.stride, conv.padding,
                                              conv.dilation)
    padded = xp.pad(x[0], ((0, 0), (ph, ph), (pw, pw)))           # (C, H + 2ph, W + 2pw)
    top, left = oh * sh, ow * sw                                   # in padded coordinates
    window = padded[:, top:top + dh * (kh - 1) + 1:dh, left:left + dw * (kw - 1) + 1:dw]
    cols = im2col(x, conv.kernel_size, conv.stride, conv.padding,
                  conv.dilation).reshape(ho * wo, -1)
    vector = conv.weight.data[filter].transpose(1, 2, 0).reshape(-1)   # (i, j, c) order
    products = cols[row] * vector
    bias = 0.0 if conv.bias is None else float(conv.bias.data[filter])
    return {"position": (oh, ow), "row": row, "filter": filter, "origin": (top, left),
            "padded": padded, "window": window, "cols": cols, "cols_row": cols[row],
            "filter_vector": vector, "products": products,
            "sum": float(products.astype(xp.float64).sum()), "bias": bias,
            "output": float(y[0, filter, oh, ow]), "output_map": y[0, filter]}


def correlation_example(image: Any = None, kernel: Any = None) -> dict[str, Any]:
    """Cross-correlation (what Conv2D computes) and true convolution (the kernel flipped) of a
    2-D image with a 2-D kernel, 'valid' positions, both as im2col matrix times the flattened
    (flipped) kernel; defaults: ``EXAMPLE_IMAGE`` and ``EXAMPLE_KERNEL``."""
    image = EXAMPLE_IMAGE if image is None else image
    kernel = EXAMPLE_KERNEL if kernel is None else kernel
    if getattr(image, "ndim", 0) != 2 or getattr(kernel, "ndim", 0) != 2:
        raise ValueError("correlation_example: expected a 2-D image and a 2-D kernel")
    xp = backend.get_array_module(image, kernel)
    image, kernel = xp.asarray(image, dtype=xp.float64), xp.asarray(kernel, dtype=xp.float64)
    cols = im2col(image[None, None], kernel.shape)                # (1, Ho, Wo, kh, kw, 1)
    ho, wo = cols.shape[1:3]
    cols = cols.reshape(ho * wo, -1)
    flipped = kernel[::-1, ::-1]
    return {"image": image, "kernel": kernel, "flipped": flipped,
            "correlation": (cols @ kernel.reshape(-1)).reshape(ho, wo),
            "convolution": (cols @ flipped.reshape(-1)).reshape(ho, wo)}


# =========================================================================== drawing helpers

def _figure(width: float, height: float) -> Any:
    if not plots.available():
        raise plots.PlotUnavailable('matplotlib is not installed: pip install -e ".[plot]"')
    return plots._figure(width, height)


def _mosaic(tiles: Any, columns: int) -> numpy.ndarray:
    """Tiles (T, h, w) laid out in rows of ``columns``, one NaN pixel between them."""
    tiles = backend.to_numpy(tiles).astype(numpy.float64)
    t, h, w = tiles.shape
    columns = max(1, min(columns, t))
    rows = -(-t // columns)
    out = numpy.full((rows * (h + 1) - 1, columns * (w + 1) - 1), numpy.nan)
    for k in range(t):
        r, c = divmod(k, columns)
        out[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = tiles[k]
    return out


def _show(figure: Any, ax: Any, image: Any, cmap: str | None = None, bar: bool = True) -> Any:
    """imshow ``image`` without ticks: diverging and centred on zero (symmetric limits) when it
    has negative values, else 'viridis' from 0 (or ``cmap``); NaN is white; a colourbar."""
    import matplotlib
    image = backend.to_numpy(image)
    finite = image[numpy.isfinite(image)]
    low = float(finite.min()) if finite.size else 0.0
    high = float(numpy.abs(finite).max()) if finite.size else 1.0
    high = high or 1.0
    if cmap is None:
        cmap = DIVERGING if low < 0 else "viridis"
    vmin = -high if cmap == DIVERGING else min(low, 0.0)
    shown = ax.imshow(image, cmap=matplotlib.colormaps[cmap].with_extremes(bad="white"),
                      vmin=vmin, vmax=high, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if bar:
        figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    return shown


def _annotate(ax: Any, shown: Any, values: Any, fmt: str, size: float = 8) -> None:
    """Print every value of a 2-D array in its cell of the image ``shown``, in white on dark
    colours and black on light ones."""
    values = backend.to_numpy(values)
    if fmt == "d":
        values = numpy.round(values).astype(numpy.int64)
    for (i, j), v in numpy.ndenumerate(values):
        r, g, b, _ = shown.cmap(shown.norm(v))
        ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=size,
                color="white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black")


def _number_format(values: Any) -> str:
    values = backend.to_numpy(values)
    return "d" if numpy.array_equal(values, numpy.round(values)) else ".2f"


# =========================================================================== the pictures

def filters(model: Layer, columns: int = 16) -> Any:
    """Every Conv2D layer's filters as a grid of tiles (see ``filter_grids``), one row block per
    layer, on a diverging colour scale centred on zero with its colourbar."""
    grids = filter_grids(model)
    if not grids:
        raise ValueError(f"{type(model).__name__} has no Conv2D layer")
    heights = [0.9 + 0.55 * -(-len(t) // columns) for _, t in grids]
    figure = _figure(10, sum(heights))
    spec = figure.add_gridspec(len(grids), 1, height_ratios=heights)
    for k, (label, tiles) in enumerate(grids):
        ax = figure.add_subplot(spec[k])
        _show(figure, ax, _mosaic(tiles, columns), cmap=DIVERGING)
        ax.set_title(f"{label} (blue < 0 < red)", fontsize=10)
    return figure


def feature_maps(model: Layer, x: Any, class_names: Sequence[str] | None = None,
                 label: int | None = None, max_channels: int = 64) -> Any:
    """The input and the activations after each conv and pooling layer for the first image of
    x, each a grid of its channels titled with the layer's name and shape, and the predicted
    class with its softmax probability."""
    x = _batch(model, x)[:1]
    outputs = _outputs(model, x)
    shown = [(layer, y) for layer, y in outputs if y.ndim == 4 and
             (isinstance(layer, Conv2D) or "Pool" in type(layer).__name__)]
    logits = outputs[-1][1] if outputs else x
    probs = backend.to_numpy(probabilities(logits))[0] if logits.ndim == 2 else None
    panels = 1 + len(shown) + (probs is not None)
    cols = min(3, panels)
    rows = -(-panels // cols)
    figure = _figure(5.2 * cols, 4.6 * rows)
    ax = figure.add_subplot(rows, cols, 1)
    _show(figure, ax, x[0, 0], cmap="gray")
    ax.set_title(f"input {_dims(x.shape[1:])}" + (" (channel 0)" if x.shape[1] > 1 else ""))
    for k, (layer, y) in enumerate(shown):
        ax = figure.add_subplot(rows, cols, k + 2)
        channels = y[0, :max_channels]
        _show(figure, ax, _mosaic(channels, int(numpy.ceil(numpy.sqrt(len(channels))))))
        more = f", first {len(channels)} channels" if len(channels) < y.shape[1] else ""
        ax.set_title(f"{layer.name} ({type(layer).__name__}) {_dims(y.shape[1:])}{more}",
                     fontsize=10)
    if probs is not None:
        names = list(class_names) if class_names and len(class_names) == len(probs) else \
            [str(i) for i in range(len(probs))]
        best = int(probs.argmax())
        ax = figure.add_subplot(rows, cols, panels)
        ax.barh(range(len(probs)), probs, color=["C3" if i == best else "C0"
                                                 for i in range(len(probs))])
        ax.set_yticks(range(len(probs)))
        ax.set_yticklabels(names)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("softmax probability")
        truth = "" if label is None else f", true: {names[label]}"
        ax.set_title(f"predicted {names[best]} (p = {probs[best]:.3f}){truth}")
        figure.suptitle(f"What the network computes for this image: predicted {names[best]} "
                        f"with probability {probs[best]:.3f}{truth}")
    return figure


def _dims(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def im2col_window(model: Layer, x: Any, row: int | None = None, filter: int = 0) -> Any:
    """The first Conv2D on the first image of x, at one output position: the input with the
    window outlined, the im2col matrix with that window's row marked, the output map with the
    pixel marked, and below the row, the flattened filter and their products, with the numbers
    (see ``im2col_example``)."""
    import matplotlib.patches as patches
    conv, conv_input = _first_conv_input(model, x)
    ex = im2col_example(conv, conv_input, row, filter)
    (oh, ow), (top, left), r, f = ex["position"], ex["origin"], ex["row"], ex["filter"]
    cols, window = ex["cols"], ex["window"]
    c, kh, kw = window.shape
    k = cols.shape[1]
    figure = _figure(14, 9.5)
    spec = figure.add_gridspec(5, 3, height_ratios=[6, 1, 1, 1, 1.1])

    ax = figure.add_subplot(spec[0, 0])
    _show(figure, ax, ex["padded"][0], cmap="gray")
    span_h, span_w = conv.dilation[0] * (kh - 1) + 1, conv.dilation[1] * (kw - 1) + 1
    ax.add_patch(patches.Rectangle((left - 0.5, top - 0.5), span_w, span_h, fill=False,
                                   edgecolor="red", linewidth=2))
    pad = f", zero-padded by {conv.padding[0]}" if any(conv.padding) else ""
    channel = f" (channel 0 of {c})" if c > 1 else ""
    ax.set_title(f"input{pad}{channel}\n"
                 f"the {kh}x{kw} window for output ({oh}, {ow})", fontsize=10)

    ax = figure.add_subplot(spec[0, 1])
    _show(figure, ax, cols, cmap="gray", bar=False)
    ax.set_aspect("auto")
    ax.add_patch(patches.Rectangle((-0.5, r - 0.5), k, 1, fill=False, edgecolor="red",
                                   linewidth=2))
    ax.annotate(f"row {r}", xy=(k - 0.5, r), xytext=(k + 0.5, r), color="red",
                annotation_clip=False, va="center", fontsize=9)
    ax.set_title(f"im2col matrix {cols.shape[0]} x {k}: one row per output position\n"
                 f"row {r} = {oh} * {ex['output_map'].shape[1]} + {ow}", fontsize=10)

    ax = figure.add_subplot(spec[0, 2])
    _show(figure, ax, ex["output_map"])
    ax.add_patch(patches.Rectangle((ow - 0.5, oh - 0.5), 1, 1, fill=False, edgecolor="black",
                                   linewidth=2))
    ax.set_title(f"{conv.name or 'conv2d'} output, filter {f}\n"
                 f"y[{oh}, {ow}] = {ex['output']:.4f}", fontsize=10)

    strips = ((f"the window as row {r} of the im2col matrix (x), in (i, j, c) order",
               ex["cols_row"], ".2f"),
              (f"filter {f} flattened the same way (w)", ex["filter_vector"], ".2f"),
              ("element-wise products x * w", ex["products"], ".3f"))
    for i, (title, values, fmt) in enumerate(strips):
        ax = figure.add_subplot(spec[1 + i, :])
        shown = _show(figure, ax, values[None, :], cmap=DIVERGING)
        ax.set_aspect("auto")
        ax.set_title(title, fontsize=10)
        if k <= 27:
            _annotate(ax, shown, values[None, :], fmt, size=9)
            ax.set_xticks(range(k))
            ax.set_xticklabels([",".join(map(str, t[:2 + (c > 1)])) for t in numpy.ndindex(
                kh, kw, c)], fontsize=7)
    ax = figure.add_subplot(spec[4, :])
    ax.axis("off")
    ax.text(0.5, 0.5, f"sum of the {k} products = {ex['sum']:.4f},   + bias {ex['bias']:.4f}"
            f"   = {ex['sum'] + ex['bias']:.4f}\n{conv.name or 'Conv2D'} computed "
            f"y[{oh}, {ow}] = {ex['output']:.4f} (one dot product: x . w + b)",
            ha="center", va="center", fontsize=12, transform=ax.transAxes)
    return figure


def correlation_vs_convolution(image: Any = None, kernel: Any = None) -> Any:
    """The image, the kernel, the kernel flipped, their cross-correlation (what Conv2D
    computes) and their true convolution (cross-correlation with the flipped kernel), each with
    its numbers (see ``correlation_example``)."""
    ex = correlation_example(image, kernel)
    panels = (("image", ex["image"]), ("kernel", ex["kernel"]),
              ("kernel flipped\n(rows and columns reversed)", ex["flipped"]),
              ("cross-correlation\n(what Conv2D computes)", ex["correlation"]),
              ("true convolution\n(cross-correlation with the flipped kernel)",
               ex["convolution"]))
    figure = _figure(17, 4)
    for i, (title, values) in enumerate(panels):
        ax = figure.add_subplot(1, len(panels), i + 1)
        shown = _show(figure, ax, values, cmap="Blues", bar=False)
        _annotate(ax, shown, values, _number_format(values), size=12)
        ax.set_title(f"{title} {_dims(values.shape)}", fontsize=11)
    return figure


def save(figure: Any, path: str | os.PathLike) -> Path:
    """Lay out ``figure`` and write it to ``path`` atomically (PNG unless the suffix names
    another format); return the path."""
    return plots._save(figure, path)


def write_pictures(model: Layer, x: Any, out_dir: str | os.PathLike,
                   class_names: Sequence[str] | None = None, label: int | None = None,
                   row: int | None = None, filter: int = 0) -> list[Path]:
    """Write ``PICTURES`` into ``out_dir`` (created if missing) for the first image of x,
    preprocessed as the model expects; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = (filters(model), feature_maps(model, x, class_names, label),
               im2col_window(model, x, row, filter), correlation_vs_convolution())
    return [save(fig, out / name) for fig, name in zip(figures, PICTURES)]
