"""Tests for minicnn.images: the PNG (every filter, grey/RGB/RGBA) and PGM (P5/P2) reader."""
from __future__ import annotations

import struct
import sys
import zlib

import numpy as np
import pytest

from minicnn.data.images import fit_to_input, read_image, resize


@pytest.fixture(autouse=True, params=["builtin", "pillow"])
def reader(request, monkeypatch):
    """Every test runs with the built-in PNG/PGM decoder and, where installed, with Pillow."""
    if request.param == "builtin":
        monkeypatch.setitem(sys.modules, "PIL", None)       # makes `import PIL` fail
    else:
        pytest.importorskip("PIL")
    return request.param


def png(pixels: np.ndarray, colour: int = 0, filters: tuple[int, ...] = (0,),
        depth: int = 8) -> bytes:
    """A PNG of uint8 pixels (H, W) or (H, W, C), each row using the next filter of ``filters``."""
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1).astype(np.int64)
    bpp = 1 if pixels.ndim == 2 else pixels.shape[2]
    raw, prev = b"", np.zeros(rows.shape[1], np.int64)
    for r, line in enumerate(rows):
        kind = filters[r % len(filters)]
        left = np.concatenate([np.zeros(bpp, np.int64), line[:-bpp]])
        up_left = np.concatenate([np.zeros(bpp, np.int64), prev[:-bpp]])
        if kind == 0:
            pred = np.zeros_like(line)
        elif kind == 1:
            pred = left
        elif kind == 2:
            pred = prev
        elif kind == 3:
            pred = (left + prev) // 2
        else:
            p = left + prev - up_left
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - up_left)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, up_left))
        raw += bytes([kind]) + ((line - pred) & 0xFF).astype(np.uint8).tobytes()
        prev = line

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + \
            struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("filters", [(0,), (1,), (2,), (3,), (4,), (0, 1, 2, 3, 4)])
def test_read_png_grey_every_filter(tmp_path, filters):
    pixels = np.random.default_rng(1).integers(0, 256, (7, 9), dtype=np.uint8)
    path = tmp_path / "g.png"
    path.write_bytes(png(pixels, filters=filters))
    assert np.array_equal(read_image(path), pixels)


def test_read_png_rgb_and_rgba(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (4, 3, 3), dtype=np.uint8)
    (tmp_path / "c.png").write_bytes(png(rgb, colour=2, filters=(4, 1)))
    grey = np.round(rgb @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
    assert np.array_equal(read_image(tmp_path / "c.png"), grey)
    rgba = np.concatenate([rgb, np.full((4, 3, 1), 255, np.uint8)], axis=2)
    (tmp_path / "a.png").write_bytes(png(rgba, colour=6, filters=(3,)))
    assert np.array_equal(read_image(tmp_path / "a.png"), grey)


def test_read_pgm(tmp_path):
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    (tmp_path / "b.pgm").write_bytes(b"P5\n# a comment\n4 3\n255\n" + pixels.tobytes())
    assert np.array_equal(read_image(tmp_path / "b.pgm"), pixels)
    text = "P2\n4 3\n15\n" + " ".join(str(v) for v in range(12))
    (tmp_path / "a.pgm").write_text(text)
    assert np.array_equal(read_image(tmp_path / "a.pgm"),
                          np.round(np.arange(12) * 17).astype(np.uint8).reshape(3, 4))


def test_read_image_errors(tmp_path, reader):
    (tmp_path / "deep.png").write_bytes(png(np.zeros((2, 2), np.uint8), depth=16))
    with pytest.raises(ValueError, match="deep.png.*(8-bit|truncated)"):
        read_image(tmp_path / "deep.png")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a PNG or PGM .*Pillow" if reader == "builtin"
                       else "x.txt: not an image file Pillow can read"):
        read_image(tmp_path / "x.txt")
    with pytest.raises(ValueError, match="cannot read"):
        read_image(tmp_path / "missing.png")
    good = png(np.zeros((4, 4), np.uint8))
    (tmp_path / "cut.png").write_bytes(good[:40])
    with pytest.raises(ValueError, match="cut.png"):
        read_image(tmp_path / "cut.png")


def _png_chunks(width: int, height: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + \
            struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
                                                             0, 0, 0)) + \
        chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [5000, 100_000])
def test_an_image_too_large_is_refused_from_its_header(tmp_path, side):
    path = tmp_path / "huge.png"
    path.write_bytes(_png_chunks(side, side, zlib.compress(b"\0" * 100)))
    with pytest.raises(ValueError, match=rf"huge.png: bad image file \((image of {side}x{side}"
                                         r"|Image size .* could be decompression bomb)"):
        read_image(path)


def test_a_png_bomb_inflates_no_further_than_its_header_allows(tmp_path, reader):
    """A 28x28 header with 64 MB of compressed zeros behind it: the built-in decoder stops
    inflating at 28*29 + 1 bytes and refuses the rest; Pillow decodes the 28 rows it needs."""
    inflated = zlib.compressobj(1)
    idat = b"".join(inflated.compress(bytes(1 << 20)) for _ in range(64)) + inflated.flush()
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_chunks(28, 28, idat))
    if reader == "builtin":
        with pytest.raises(ValueError, match="bomb.png: bad image file .*expected 812 bytes"):
            read_image(path)
    else:
        assert read_image(path).shape == (28, 28)


def test_fit_to_input_inverts_light_backgrounds_and_keeps_the_aspect_ratio():
    digit = np.full((60, 30), 255, np.uint8)          # a dark bar on white paper, 2:1
    digit[10:50, 12:18] = 0
    image, inverted = fit_to_input(digit, (28, 28))
    assert inverted and image.shape == (28, 28) and image.dtype == np.uint8
    columns = np.flatnonzero(image.max(axis=0))
    assert columns.min() >= 7 and columns.max() <= 20     # 14 wide, centred: black margins
    assert image[14, 14] == 255 and image[0, 0] == 0
    dark = 255 - digit                                   # already white on black: kept
    again, inverted = fit_to_input(dark, (28, 28))
    assert not inverted and np.array_equal(again, image)
    assert fit_to_input(np.zeros((28, 28), np.uint8))[0].shape == (28, 28)


def test_resize_averages_areas():
    grey = np.arange(16, dtype=np.uint8).reshape(4, 4) * 10
    half = resize(grey, (2, 2))
    np.testing.assert_array_equal(half, [[25, 45], [105, 125]])     # 2x2 block means
    np.testing.assert_array_equal(resize(grey, (4, 4)), grey)
    assert resize(grey, (8, 8))[::2, ::2].tolist() == grey.tolist()


def test_transparency_is_composited_over_white_by_either_reader(tmp_path):
    """A black digit on a transparent background (RGBA and grey+alpha) reads as a dark digit
    on white, with or without Pillow (the built-in reader used to drop alpha: all black)."""
    alpha = np.zeros((6, 5), np.uint8)
    alpha[1:5, 2] = 255                                           # an opaque stroke
    alpha[0, 0] = 128                                             # and one half-transparent
    rgba = np.zeros((6, 5, 4), np.uint8)
    rgba[..., 3] = alpha
    expected = np.round(255.0 * (1 - alpha / 255.0))
    (tmp_path / "rgba.png").write_bytes(png(rgba, colour=6))
    (tmp_path / "la.png").write_bytes(png(rgba[..., 2:], colour=4))
    for name in ("rgba.png", "la.png"):
        got = read_image(tmp_path / name)
        np.testing.assert_allclose(got, expected, atol=1)        # Pillow rounds its own way
        assert got[2, 2] == 0 and got[2, 0] == 255, name
