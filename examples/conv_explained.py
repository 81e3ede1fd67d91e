"""What a convolution layer computes, four ways, on one small example.

    python examples/conv_explained.py

A 5x5 image and a 3x3 filter. Slide the filter over every 3x3 window of the image and, at
each position,

  (a) multiply the window and the filter element by element and add up the 9 products;
  (b) equivalently, take the dot product of the flattened window with the flattened filter;
  (c) equivalently, put every flattened window in one row of a matrix ("im2col") and multiply
      that matrix by the flattened filter: all 9 outputs in one matrix multiply. This is how
      minicnn's Conv2D layer computes, so
  (d) Conv2D with this filter as its weight gives the same numbers.

Strictly speaking this is *cross-correlation*. A true convolution, as defined in mathematics
and signal processing, flips the kernel (rows and columns) before sliding it. CNNs learn their
filters, so they do not care whether the learned filter is stored flipped, and every deep
learning framework computes cross-correlation and calls it convolution. The second half of
this script shows the difference on a kernel that is not symmetric, and with ``--out DIR``
draws it as DIR/correlation_vs_convolution.png (needs matplotlib):

    python examples/conv_explained.py --out pictures
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from minicnn.kernels.im2col import im2col
from minicnn.layers import Conv2D

IMAGE = np.array([[1, 1, 1, 0, 0],
                  [0, 1, 1, 1, 0],
                  [0, 0, 1, 1, 1],
                  [0, 0, 1, 1, 0],
                  [0, 1, 1, 0, 0]])

FILTER = np.array([[1, 0, 1],
                   [0, 1, 0],
                   [1, 0, 1]])

EXPECTED = np.array([[4, 3, 4],
                     [2, 4, 3],
                     [2, 3, 4]])

# An asymmetric kernel: 1 in the top-left corner only. Cross-correlation with it copies each
# window's top-left pixel; the flip of a true convolution moves the 1 to the bottom-right corner,
# so convolution copies each window's bottom-right pixel instead.
ASYMMETRIC = np.array([[1, 0, 0],
                       [0, 0, 0],
                       [0, 0, 0]])


def output_size(image: np.ndarray, kernel: np.ndarray) -> tuple[int, int]:
    """Number of window positions: (H - kh + 1, W - kw + 1) with no padding and stride 1."""
    return image.shape[0] - kernel.shape[0] + 1, image.shape[1] - kernel.shape[1] + 1


# --------------------------------------------------------------------------- (a), (b), (c), (d)

def cross_correlation_loops(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """(a) At each position, the sum of the element-wise products of window and kernel."""
    kh, kw = kernel.shape
    ho, wo = output_size(image, kernel)
    out = np.zeros((ho, wo), dtype=image.dtype)
    for r in range(ho):
        for c in range(wo):
            total = 0
            for i in range(kh):
                for j in range(kw):
                    total += image[r + i, c + j] * kernel[i, j]
            out[r, c] = total
    return out


def cross_correlation_dot(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """(b) At each position, the dot product of the flattened window and flattened kernel."""
    kh, kw = kernel.shape
    ho, wo = output_size(image, kernel)
    out = np.zeros((ho, wo), dtype=image.dtype)
    for r in range(ho):
        for c in range(wo):
            window = image[r:r + kh, c:c + kw]
            out[r, c] = np.dot(window.reshape(-1), kernel.reshape(-1))
    return out


def im2col_matrix(image: np.ndarray, kernel_shape: tuple[int, int]) -> np.ndarray:
    """One row per window position, each row the flattened window: (Ho*Wo, kh*kw).

    ``minicnn.kernels.im2col.im2col`` takes a batch of multi-channel images (N, C, H, W) and returns
    (N, Ho, Wo, kh, kw, C); with N = C = 1 that reshapes to this matrix.
    """
    x = image.astype(np.float64)[None, None]             # (1, 1, 5, 5): batch and channel axes
    cols = im2col(x, kernel_shape)                       # (1, 3, 3, 3, 3, 1)
    n, ho, wo, kh, kw, c = cols.shape
    return cols.reshape(n * ho * wo, kh * kw * c)


def cross_correlation_im2col(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """(c) All positions at once: the im2col matrix times the flattened kernel."""
    matrix = im2col_matrix(image, kernel.shape)
    ho, wo = output_size(image, kernel)
    return (matrix @ kernel.reshape(-1).astype(np.float64)).reshape(ho, wo)


def cross_correlation_conv2d(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """(d) minicnn's Conv2D layer with one input channel, one filter and no bias."""
    layer = Conv2D(1, 1, kernel.shape, bias=False).astype(np.float64)
    layer.weight.data[0, 0] = kernel                     # weight: (out, in, kh, kw)
    y = layer.forward(image.astype(np.float64)[None, None])
    return y[0, 0]


# --------------------------------------------------------------------------- true convolution

def flip(kernel: np.ndarray) -> np.ndarray:
    """Turn the kernel by 180 degrees: reverse the rows and the columns."""
    return kernel[::-1, ::-1]


def true_convolution(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolution from its definition, (f * g)[p, q] = sum over (m, n) of f[m, n] g[p-m, q-n],
    at the positions where the kernel lies wholly inside the image ('valid' mode).

    Output (r, c) is the full-convolution index (p, q) = (r + kh - 1, c + kw - 1): the kernel
    index runs *backwards* while the image index runs forwards.
    """
    kh, kw = kernel.shape
    ho, wo = output_size(image, kernel)
    out = np.zeros((ho, wo), dtype=image.dtype)
    for r in range(ho):
        for c in range(wo):
            p, q = r + kh - 1, c + kw - 1
            total = 0
            for m in range(image.shape[0]):
                for n in range(image.shape[1]):
                    if 0 <= p - m < kh and 0 <= q - n < kw:
                        total += image[m, n] * kernel[p - m, q - n]
            out[r, c] = total
    return out


def numpy_1d_check() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NumPy's own 1-D functions follow the same convention: np.convolve flips, np.correlate
    does not, so convolve(a, v) == correlate(a, v[::-1])."""
    a, v = np.array([1, 2, 3, 4, 5]), np.array([1, 0, -2])
    return (np.convolve(a, v, mode="valid"), np.correlate(a, v, mode="valid"),
            np.correlate(a, v[::-1], mode="valid"))


# --------------------------------------------------------------------------- printing

def grid(a: np.ndarray, indent: str = "    ") -> str:
    values = np.asarray(a)
    if values.dtype.kind == "f" and np.array_equal(values, np.round(values)):
        values = values.astype(np.int64)                 # 4.0 -> 4, for reading
    width = max(len(str(v)) for v in values.reshape(-1))
    return "\n".join(indent + " ".join(f"{v:>{width}}" for v in row) for row in values)


def draw(out_dir: str | Path) -> Path:
    """Write out_dir/correlation_vs_convolution.png: IMAGE, ASYMMETRIC, the kernel flipped, and
    their cross-correlation beside their true convolution (minicnn.viz.network draws it)."""
    from minicnn.viz import network as visualize
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figure = visualize.correlation_vs_convolution(IMAGE, ASYMMETRIC)
    return visualize.save(figure, out / "correlation_vs_convolution.png")


def main(argv: Sequence[str] = ()) -> None:
    parser = argparse.ArgumentParser(description="What a convolution layer computes.")
    parser.add_argument("--out", metavar="DIR",
                        help="also draw DIR/correlation_vs_convolution.png")
    args = parser.parse_args(list(argv))
    print("The image (5x5):")
    print(grid(IMAGE))
    print("The filter (3x3):")
    print(grid(FILTER))

    r, c = 0, 1
    window = IMAGE[r:r + 3, c:c + 3]
    print(f"\n(a) One position, the window whose top-left corner is at row {r}, column {c}:")
    print(grid(window))
    products = window * FILTER
    print("    element-wise times the filter:")
    print(grid(products))
    print(f"    and summed: {products.sum()}  <- output[{r}, {c}]")
    a = cross_correlation_loops(IMAGE, FILTER)
    print("    Doing that at all 3x3 = 9 positions gives:")
    print(grid(a))

    print("\n(b) The same number as a dot product of two length-9 vectors:")
    print(f"    window {window.reshape(-1).tolist()}")
    print(f"    filter {FILTER.reshape(-1).tolist()}")
    print(f"    dot    {int(np.dot(window.reshape(-1), FILTER.reshape(-1)))}")
    b = cross_correlation_dot(IMAGE, FILTER)
    print(grid(b))

    matrix = im2col_matrix(IMAGE, FILTER.shape)
    print(f"\n(c) im2col: every window flattened into one row, a {matrix.shape[0]}x"
          f"{matrix.shape[1]} matrix")
    print(grid(matrix))
    print("    times the flattened filter (a column of 9) gives all 9 outputs in one multiply:")
    c_out = cross_correlation_im2col(IMAGE, FILTER)
    print(grid(c_out))

    d = cross_correlation_conv2d(IMAGE, FILTER)
    print("\n(d) minicnn.layers.Conv2D(1, 1, 3, bias=False) with the filter as its weight:")
    print(grid(d))
    same = all(np.array_equal(v, EXPECTED) for v in (a, b, c_out, d))
    print(f"    all four equal {EXPECTED.tolist()}: {same}")

    print("\nConvolution or cross-correlation?")
    print("    A true convolution flips the kernel first. This filter is the same after a 180")
    print(f"    degree turn (flip(filter) == filter: {np.array_equal(flip(FILTER), FILTER)}),")
    print("    so here both give the same result:")
    print(grid(true_convolution(IMAGE, FILTER)))
    print("    For an asymmetric kernel they differ. The kernel:")
    print(grid(ASYMMETRIC))
    print("    and the kernel flipped (rows and columns reversed):")
    print(grid(flip(ASYMMETRIC)))
    xcorr = cross_correlation_loops(IMAGE, ASYMMETRIC)
    conv = true_convolution(IMAGE, ASYMMETRIC)
    print("    cross-correlation (what Conv2D computes):")
    print(grid(xcorr))
    print("    true convolution (by its definition, kernel index running backwards):")
    print(grid(conv))
    flipped = cross_correlation_loops(IMAGE, flip(ASYMMETRIC))
    print("    (cross-correlation picked each window's top-left pixel, convolution its")
    print("    bottom-right one)")
    print(f"    they differ: {not np.array_equal(xcorr, conv)}")
    print("    true convolution == cross-correlation with the flipped kernel: "
          f"{np.array_equal(conv, flipped)}")
    print("    so Conv2D computes a true convolution when given the flipped kernel: "
          f"{np.array_equal(cross_correlation_conv2d(IMAGE, flip(ASYMMETRIC)), conv)}")
    conv1d, corr1d, corr1d_flipped = numpy_1d_check()
    print("    NumPy's 1-D functions agree, for a = [1, 2, 3, 4, 5] and v = [1, 0, -2]:")
    print(f"      np.convolve(a, v)        {conv1d.tolist()}")
    print(f"      np.correlate(a, v)       {corr1d.tolist()}")
    print(f"      np.correlate(a, v[::-1]) {corr1d_flipped.tolist()}")
    print("\nA CNN learns its filters, so it would simply learn the flipped one: the name")
    print("'convolution' stuck, the arithmetic is cross-correlation.")
    if args.out:
        from minicnn.viz.plots import PlotUnavailable
        try:
            print(f"\nwrote {draw(args.out)}")
        except PlotUnavailable as exc:
            sys.exit(f"conv_explained.py: {exc}")


if __name__ == "__main__":
    main(sys.argv[1:])
