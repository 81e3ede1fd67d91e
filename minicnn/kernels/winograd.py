"""Winograd F(2x2, 3x3): a 3x3 stride-1 convolution with 2.25x fewer multiplies in its products.

Cut the zero-padded input into 4x4 tiles that overlap by 2 (tile (t, s) starts at pixel
(2t, 2s)); each tile d (4, 4) yields one 2x2 block of the output as::

    y = A^T [ (G g G^T) * (B^T d B) ] A          (* is elementwise, per channel pair)

with the constant matrices of Lavin & Gray (2015) below (the last row of ``B_T`` and the last
column of ``A_T`` negated, which cancels in the product and makes every one-term row of the
transposed transforms a plain ``+1``: an alias, not a copy). Summed over the input channels, the
elementwise products of all tiles are 16 matrix products, one per tile position (a, b)::

    V[a*4+b] = (B^T d B)[a, b]     (N*T*S, C)      T, S = tile rows and columns of the output
    U[a*4+b] = (G g G^T)[a, b]     (C, O)
    M[k]     = V[k] @ U[k]         (N*T*S, O)      16*C*O multiply-adds per 2x2 block
    y        = A^T M A             (N, 2T, 2S, O)  (im2col: 4*9*C*O for the same 4 outputs)

Every step is linear, so the backward pass runs the same steps transposed: dM = A dY A^T,
dU[k] = V[k]^T @ dM[k], dV[k] = dM[k] @ U[k]^T, dd = B dV B^T added back onto the overlapping
tiles, dW = G^T dU G. B_T and A_T hold only 0 and +-1, so the transforms are additions of whole
arrays (``_combine``), run along image rows first (long contiguous runs), then columns. A
"plane list" is a list of 16 such 2-D arrays, one per tile position.
"""
from __future__ import annotations

from typing import Any

from minicnn.core import backend

Matrix = tuple[tuple[float, ...], ...]
B_T: Matrix = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, -1, 0, 1))
G: Matrix = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))
A_T: Matrix = ((1, 1, 1, 0), (0, 1, -1, 1))
B: Matrix = tuple(zip(*B_T))
A: Matrix = tuple(zip(*A_T))

Pads = tuple[int, int, int, int]


def tile_counts(h: int, w: int, pads: Pads) -> tuple[int, int, int, int]:
    """(Ho, Wo, T, S): output size of the 3x3 convolution of an h x w image padded by ``pads``
    (top, left, bottom, right), and the rows and columns of 2x2 output blocks that cover it."""
    ho, wo = h + pads[0] + pads[2] - 2, w + pads[1] + pads[3] - 2
    if ho < 1 or wo < 1:
        raise ValueError(f"winograd: a {h}x{w} image padded by {pads} is smaller than 3x3")
    return ho, wo, (ho + 1) // 2, (wo + 1) // 2


def _combine(row: Any, planes: list[Any], out: Any = None) -> Any:
    """sum_i row[i] * planes[i] for a row of 0 and +-1, by whole-array additions written into
    ``out`` (a new array if None); a row with a single +1 returns that plane itself."""
    terms = [(plane, c) for plane, c in zip(planes, row) if c != 0]
    if len(terms) == 1 and terms[0][1] == 1 and out is None:
        return terms[0][0]
    xp = backend.get_array_module(terms[0][0])
    (first, c0), rest = terms[0], terms[1:]
    if not rest:
        return xp.multiply(first, first.dtype.type(c0), out=out)
    (second, c1), rest = rest[0], rest[1:]
    if c0 == c1:
        out, sign = xp.add(first, second, out=out), c0
    else:                                                   # first - second, or second - first
        out, sign = (xp.subtract(first, second, out=out) if c0 > 0 else
                     xp.subtract(second, first, out=out)), 1
    for plane, c in rest:
        (xp.add if c * sign > 0 else xp.subtract)(out, plane, out=out)
    return out if sign > 0 else xp.negative(out, out=out)


def weight_transform(w: Any) -> list[Any]:
    """U = G w G^T: weight (O, C, 3, 3) -> 16 (C, O) planes, in w's dtype."""
    xp = backend.get_array_module(w)
    g = xp.asarray(G, dtype=w.dtype)
    u = xp.ascontiguousarray((g @ w @ g.T).transpose(2, 3, 1, 0))        # (4, 4, C, O)
    return [u[a, b] for a in range(4) for b in range(4)]


def weight_transform_grad(du: list[Any]) -> Any:
    """dW = G^T dU G, the adjoint of ``weight_transform``: 16 (C, O) planes -> (O, C, 3, 3)."""
    xp = backend.get_array_module(du[0])
    g = xp.asarray(G, dtype=du[0].dtype)
    c, o = du[0].shape
    return g.T @ xp.stack(du).reshape(4, 4, c, o).transpose(3, 2, 0, 1) @ g


def products(planes: list[Any], weights: list[Any]) -> list[Any]:
    """[planes[k] @ weights[k]]: the 16 matrix products (each one BLAS call)."""
    return [p @ w for p, w in zip(planes, weights)]


CHUNK_ELEMENTS = 1 << 18
"""Image elements per chunk of the batch that a transform runs on at a time (1 MiB float32),
so that its intermediate arrays stay in cache."""


def _chunks(n: int, per_image: int) -> list[slice]:
    """Slices of the batch of about ``CHUNK_ELEMENTS`` elements each (``per_image`` each)."""
    step = max(1, CHUNK_ELEMENTS // max(1, per_image))
    return [slice(start, min(n, start + step)) for start in range(0, n, step)]


def _planes(xp: Any, shape: tuple[int, ...], dtype: Any) -> list[Any]:
    """16 arrays of ``shape``, allocated one by one: malloc keeps reusing blocks of this size
    in a worker thread's arena, where one 16x larger block (over 32 MiB) would be mapped afresh
    and page-faulted in every step (measured: 10k faults and 1.4x the time per step with two
    threads, none alone)."""
    return [xp.empty(shape, dtype=dtype) for _ in range(16)]


def input_transform(x_nhwc: Any, pads: Pads) -> list[Any]:
    """V = B^T d B of every 4x4 tile: x (N, H, W, C) -> 16 (N*T*S, C) planes (rows in (n, t, s)
    order): along image rows first (4 passes over whole rows), then columns (16 passes)."""
    xp = backend.get_array_module(x_nhwc)
    n, h, w, c = x_nhwc.shape
    _, _, t, s = tile_counts(h, w, pads)
    planes = _planes(xp, (n, t, s, c), x_nhwc.dtype)
    for part in _chunks(n, h * w * c):
        k = part.stop - part.start
        padded = xp.zeros((k, 2 * t + 2, 2 * s + 2, c), dtype=x_nhwc.dtype)
        padded[:, pads[0]:pads[0] + h, pads[1]:pads[1] + w] = x_nhwc[part]
        rows = [padded[:, i:i + 2 * t:2] for i in range(4)]        # (k, T, 2S+2, C) each
        for a in range(4):
            r = _combine(B_T[a], rows)
            cols = [r[:, :, j:j + 2 * s:2] for j in range(4)]      # (k, T, S, C) each
            for b in range(4):
                _combine(B_T[b], cols, out=planes[4 * a + b][part])
    return [p.reshape(n * t * s, c) for p in planes]


def output_transform(m: list[Any], n: int, ho: int, wo: int) -> Any:
    """y = A^T m A: 16 (N*T*S, O) planes -> (N, Ho, Wo, O), C-contiguous (channels-last)."""
    xp = backend.get_array_module(m[0])
    t, s, o = (ho + 1) // 2, (wo + 1) // 2, m[0].shape[1]
    y = xp.empty((n, t, 2, s, 2, o), dtype=m[0].dtype)
    for part in _chunks(n, 4 * t * s * o):
        rows = slice(part.start * t * s, part.stop * t * s)
        k = part.stop - part.start
        half = [[_combine(A_T[j], [p[rows] for p in m[4 * a:4 * a + 4]]) for j in range(2)]
                for a in range(4)]
        for i in range(2):
            for j in range(2):
                y[part, :, i, :, j] = _combine(A_T[i], [half[a][j] for a in range(4)]).reshape(
                    k, t, s, o)
    y = y.reshape(n, 2 * t, 2 * s, o)
    return y if (2 * t, 2 * s) == (ho, wo) else xp.ascontiguousarray(y[:, :ho, :wo])


def output_transform_grad(dy_nhwc: Any) -> list[Any]:
    """dM = A dY A^T, the adjoint of ``output_transform``: dy (N, Ho, Wo, O) -> 16 (N*T*S, O)
    planes."""
    xp = backend.get_array_module(dy_nhwc)
    n, ho, wo, o = dy_nhwc.shape
    t, s = (ho + 1) // 2, (wo + 1) // 2
    planes = _planes(xp, (n, t, s, o), dy_nhwc.dtype)
    for part in _chunks(n, ho * wo * o):
        k = part.stop - part.start
        blocks = (xp.empty if ho % 2 == wo % 2 == 0 else xp.zeros)((2, 2, k, t, s, o),
                                                                   dtype=dy_nhwc.dtype)
        for i in range(2):
            for j in range(2):
                quarter = dy_nhwc[part, i::2, j::2]
                blocks[i, j, :, :quarter.shape[1], :quarter.shape[2]] = quarter
        for a in range(4):
            half = [_combine(A[a], [blocks[0, j], blocks[1, j]]) for j in range(2)]
            for b in range(4):
                _combine(A[b], half, out=planes[4 * a + b][part])
    return [p.reshape(n * t * s, o) for p in planes]


def input_transform_grad(dv: list[Any], x_shape: tuple[int, int, int, int], pads: Pads) -> Any:
    """dx, the adjoint of ``input_transform``: 16 (N*T*S, C) planes -> (N, H, W, C) (C-
    contiguous) for x_shape = (N, H, W, C): each tile's B dV B^T added back where the tile was
    read, along columns first, then rows."""
    xp = backend.get_array_module(dv[0])
    n, h, w, c = x_shape
    _, _, t, s = tile_counts(h, w, pads)
    planes = [p.reshape(n, t, s, c) for p in dv]
    dx = xp.empty((n, h, w, c), dtype=dv[0].dtype)
    for part in _chunks(n, h * w * c):
        k = part.stop - part.start
        rows = []                                          # d(r_a), (k, T, 2S+2, C) each
        for a in range(4):
            row = xp.empty((k, t, 2 * s + 2, c), dtype=dv[0].dtype)
            row[:, :, 2 * s:] = 0                          # columns only j = 2, 3 reach
            for j in range(4):
                grad = _combine(B[j], [p[part] for p in planes[4 * a:4 * a + 4]])
                if j < 2:                                  # j = 0, 1 write disjoint columns
                    row[:, :, j:j + 2 * s:2] = grad
                else:
                    row[:, :, j:j + 2 * s:2] += grad
            rows.append(row)
        padded = xp.empty((k, 2 * t + 2, 2 * s + 2, c), dtype=dv[0].dtype)
        padded[:, 2 * t:] = 0                              # rows only i = 2, 3 reach
        for i in range(4):
            grad = _combine(B[i], rows)
            if i < 2:
                padded[:, i:i + 2 * t:2] = grad
            else:
                padded[:, i:i + 2 * t:2] += grad
        dx[part] = padded[:, pads[0]:pads[0] + h, pads[1]:pads[1] + w]
    return dx


def conv_forward(x_nhwc: Any, w: Any, bias: Any, pads: Pads, u: list[Any] | None = None
                 ) -> tuple[Any, list[Any], list[Any]]:
    """The whole convolution: x (N, H, W, C), weight (O, C, 3, 3), bias (O,) or None ->
    (y (N, Ho, Wo, O) C-contiguous, V, U), V and U kept for ``conv_backward`` (``u``: U of w
    already transformed, e.g. once for all slices of a batch). The bias rides on tile position
    (1, 1), whose product reaches all four outputs of a block with weight 1 (column 1 of A_T is
    (1, 1))."""
    n, h, w_in, _ = x_nhwc.shape
    ho, wo, _, _ = tile_counts(h, w_in, pads)
    u = weight_transform(w) if u is None else u
    v = input_transform(x_nhwc, pads)
    m = products(v, u)
    if bias is not None:
        m[5] += bias
    return output_transform(m, n, ho, wo), v, u


def conv_backward(dy_nhwc: Any, v: list[Any], u: list[Any], x_shape: tuple[int, int, int, int],
                  pads: Pads, input_grad: bool = True) -> tuple[Any, Any, Any]:
    """(dx (N, H, W, C) or None, dW (O, C, 3, 3), bias rows) from dy (N, Ho, Wo, O) and
    ``conv_forward``'s V and U: dM = A dY A^T, dW = G^T (V^T dM) G, dx from dM U^T. The bias
    rows are dM's tile position (1, 1), (N*T*S, O): their column sums are dL/db (the adjoint of
    where the bias was added)."""
    dm = output_transform_grad(dy_nhwc)
    dw = weight_transform_grad(products([p.T for p in v], dm))
    if not input_grad:
        return None, dw, dm[5]
    return input_transform_grad(products(dm, [p.T for p in u]), x_shape, pads), dw, dm[5]
