"""Image files as NumPy arrays, and images fitted to a model's input.

``read_image`` decodes a file into uint8 grey levels (H, W): with Pillow (the ``image`` extra)
any format it reads, colour or grey; without it, PNG and PGM through a small decoder written
with the standard library (zlib, struct) and NumPy. ``fit_to_input`` then makes a drawn digit
look like an MNIST one: white on black (a light background is detected and inverted), scaled
with its aspect ratio kept to fit the model's input size, and centred::

    grey = read_image("digit.jpg")                     # uint8 (H, W)
    image, inverted = fit_to_input(grey, (28, 28))     # uint8 (28, 28); True if dark-on-light
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy

__all__ = ["read_image", "fit_to_input", "image_for_model", "resize", "MAX_IMAGE_PIXELS",
           "MAX_IMAGE_BYTES"]

MAX_IMAGE_PIXELS = 4096 * 4096
"""Largest image (width x height) decoded; checked from the header, before any pixel data."""
MAX_IMAGE_BYTES = 64 << 20
"""Largest image file read."""


def read_image(path: str | Path) -> numpy.ndarray:
    """Read an image file as uint8 grey levels (H, W); colours become grey as 0.299 R + 0.587 G
    + 0.114 B, and transparent pixels white. With Pillow, any format it reads; without it, PNG
    (8-bit, non-interlaced) and PGM (P5/P2). The size is checked before pixels are decoded."""
    path = Path(path)
    try:
        from PIL import Image
    except ImportError:
        return _read_builtin(path)
    return _read_with_pillow(path, Image)


def _read_with_pillow(path: Path, Image: Any) -> numpy.ndarray:
    if path.is_file() and path.stat().st_size > MAX_IMAGE_BYTES:
        raise ValueError(f"{path}: larger than {MAX_IMAGE_BYTES:,} bytes, the most an image "
                         "file may have here")
    try:
        with Image.open(path) as image:              # reads the header only
            _check_size(*image.size)
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                rgba = image.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(white, rgba)
            return numpy.asarray(image.convert("L"), dtype=numpy.uint8).copy()
    except FileNotFoundError:
        raise ValueError(f"{path}: cannot read (No such file or directory)") from None
    except OSError as exc:                           # Pillow's UnidentifiedImageError too
        raise ValueError(f"{path}: not an image file Pillow can read ({exc})") from None
    except (ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path}: bad image file ({exc})") from None


def image_for_model(path: str | Path, input_shape: tuple[int, ...],
                    invert: bool | None = None) -> tuple[numpy.ndarray, bool]:
    """An image file as a model of per-sample ``input_shape`` (1, H, W) takes it: read
    (``read_image``) and fitted (``fit_to_input``), uint8 (H, W), and whether it was inverted.
    The one way ``minicnn predict`` and ``minicnn visualize`` read image files. ValueError
    names the file when the model takes other than one grey channel."""
    if len(input_shape) != 3 or input_shape[0] != 1:
        raise ValueError(f"{path}: the model expects inputs of shape {tuple(input_shape)}; image "
                         "files are read as grey images (1, H, W) only")
    return fit_to_input(read_image(path), (int(input_shape[1]), int(input_shape[2])), invert)


def fit_to_input(grey: numpy.ndarray, size: tuple[int, int] = (28, 28),
                 invert: bool | None = None) -> tuple[numpy.ndarray, bool]:
    """``grey`` (H, W) uint8 as the model's input (size) uint8, white on black, and whether it
    was inverted. ``invert=None`` inverts when the border is light (the median of the edge
    pixels above 127: a dark digit on paper); the image is scaled with its aspect ratio kept so
    its longer side fills the input, and centred on black."""
    if invert is None:
        border = numpy.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
        invert = bool(numpy.median(border) > 127)
    image = 255 - grey if invert else grey
    height, width = size
    scale = min(height / image.shape[0], width / image.shape[1])
    h = max(1, min(height, round(image.shape[0] * scale)))
    w = max(1, min(width, round(image.shape[1] * scale)))
    out = numpy.zeros(size, dtype=numpy.uint8)
    top, left = (height - h) // 2, (width - w) // 2
    out[top:top + h, left:left + w] = resize(image, (h, w))
    return out, invert


def resize(grey: numpy.ndarray, size: tuple[int, int]) -> numpy.ndarray:
    """``grey`` (H, W) uint8 resampled to ``size`` (h, w): each output pixel is the mean of the
    input area it covers (box filter; exact for whole-number factors), so thin strokes survive
    shrinking."""
    height, width = grey.shape
    h, w = size
    rows = _coverage(height, h)                      # (h, H): how much of each input row
    cols = _coverage(width, w)                       # (w, W)
    out = rows @ grey.astype(numpy.float64) @ cols.T
    return numpy.clip(numpy.round(out), 0, 255).astype(numpy.uint8)


def _coverage(n_in: int, n_out: int) -> numpy.ndarray:
    """(n_out, n_in) weights: output cell i averages input cells over [i, i+1) * n_in / n_out."""
    edges = numpy.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    cells = numpy.arange(n_in)[None, :]
    overlap = numpy.clip(numpy.minimum(hi, cells + 1) - numpy.maximum(lo, cells), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def _read_builtin(path: Path) -> numpy.ndarray:
    """PNG or PGM without Pillow."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_IMAGE_BYTES:
                raise ValueError(f"{path}: larger than {MAX_IMAGE_BYTES:,} bytes, the most an "
                                 "image file may have here")
            data = f.read()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            return _decode_png(data)
        if data[:2] in (b"P5", b"P2"):
            return _decode_pgm(data)
    except (ValueError, zlib.error, struct.error, IndexError) as exc:
        raise ValueError(f"{path}: bad image file ({exc})") from None
    raise ValueError(f"{path}: not a PNG or PGM (P5/P2) image; other formats need Pillow "
                     "(pip install -e \".[image]\")")


def _decode_pgm(data: bytes) -> numpy.ndarray:
    """The uint8 (H, W) pixels of a P5 or P2 file, rescaled from 0..maxval to 0..255."""
    binary = data[:2] == b"P5"
    # Header: magic, width, height, maxval, separated by whitespace; '#' starts a comment.
    fields: list[int] = []
    pos = 2
    while len(fields) < 3:
        while data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            pos = data.index(b"\n", pos) + 1
            continue
        end = pos
        while end < len(data) and data[end:end + 1].isdigit():
            end += 1
        if end == pos:
            raise ValueError("malformed PGM header")
        fields.append(int(data[pos:end]))
        pos = end
    width, height, maxval = fields
    _check_size(width, height)
    if not 0 < maxval < 256:
        raise ValueError(f"only 8-bit PGM is supported, maxval is {maxval}")
    if binary:
        pixels = numpy.frombuffer(data, numpy.uint8, width * height, pos + 1)
    else:
        pixels = numpy.array(data[pos:].split()[:width * height], dtype=numpy.int64)
        if pixels.size != width * height:
            raise ValueError(f"expected {width * height} pixels, found {pixels.size}")
    scaled = pixels.astype(numpy.float64) * (255.0 / maxval)
    return numpy.round(scaled).astype(numpy.uint8).reshape(height, width)


_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}   # colour type -> samples per pixel


def _decode_png(data: bytes) -> numpy.ndarray:
    """The uint8 (H, W) grey levels of a PNG file (chunks -> inflate -> unfilter -> grey; an
    alpha channel composited over white)."""
    pos, header, idat = 8, None, []
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if len(body) != length:
            raise ValueError("truncated PNG chunk")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None:
        raise ValueError("PNG without IHDR chunk")
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in _PNG_CHANNELS or interlace:
        raise ValueError(f"only 8-bit non-interlaced grey/RGB(A) PNG is supported (bit depth "
                         f"{depth}, colour type {colour}, interlace {interlace})")
    channels = _PNG_CHANNELS[colour]
    _check_size(width, height)
    stride = width * channels
    inflater = zlib.decompressobj()                # never past the size the header declares
    raw = inflater.decompress(b"".join(idat), height * (stride + 1) + 1)
    if len(raw) != height * (stride + 1):
        raise ValueError(f"expected {height * (stride + 1)} bytes of pixel data, found {len(raw)}")
    rows = numpy.frombuffer(raw, numpy.uint8).reshape(height, stride + 1)
    image = _unfilter(rows, channels).reshape(height, width, channels).astype(numpy.float64)
    if channels >= 3:
        grey = image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114
    else:
        grey = image[..., 0]
    if channels in (2, 4):                # transparency: composited over white, as with Pillow
        alpha = image[..., -1] / 255.0
        grey = grey * alpha + 255.0 * (1.0 - alpha)
    return numpy.round(grey).astype(numpy.uint8)


def _check_size(width: int, height: int) -> None:
    if width < 1 or height < 1 or width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f"image of {width}x{height} pixels; expected 1 to "
                         f"{MAX_IMAGE_PIXELS:,} pixels")


def _unfilter(rows: numpy.ndarray, bpp: int) -> numpy.ndarray:
    """Undo PNG's per-row filters (None, Sub, Up, Average, Paeth); rows carry the filter byte."""
    height, width = rows.shape[0], rows.shape[1] - 1
    out = numpy.zeros((height, width), numpy.int64)
    prev = numpy.zeros(width, numpy.int64)
    for r in range(height):
        kind, line = rows[r, 0], rows[r, 1:].astype(numpy.int64)
        if kind == 0:
            cur = line
        elif kind == 2:
            cur = (line + prev) & 0xFF
        elif kind in (1, 3, 4):     # these depend on the pixel to the left: byte by byte
            cur = numpy.zeros(width, numpy.int64)
            for i in range(width):
                left = cur[i - bpp] if i >= bpp else 0
                up, up_left = prev[i], prev[i - bpp] if i >= bpp else 0
                if kind == 1:
                    pred = left
                elif kind == 3:
                    pred = (left + up) // 2
                else:
                    p = left + up - up_left
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                    pred = left if pa <= pb and pa <= pc else up if pb <= pc else up_left
                cur[i] = (line[i] + pred) & 0xFF
        else:
            raise ValueError(f"unknown PNG filter type {kind}")
        out[r] = cur
        prev = cur
    return out.astype(numpy.uint8)
