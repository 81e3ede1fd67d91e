"""ZeroPad2D: add rows and columns of zeros around NCHW images, as ``torch.nn.ZeroPad2d``.

``padding`` is an int (the same on every side) or (left, right, top, bottom); a negative
amount removes that many rows or columns instead, as in PyTorch. The output is
(N, C, H + top + bottom, W + left + right); backward crops the gradient back to the input's
place (and puts zeros where the input was cropped away).
"""
from __future__ import annotations

from typing import Any

from minicnn.core import backend
from minicnn.layers.base import Layer


def _overlap(before: int, after: int, size: int) -> tuple[slice, slice]:
    """(slice of the input, slice of the output) along one axis that hold the same elements
    when ``before`` / ``after`` elements are added (negative: removed) at the two ends."""
    start_in, stop_in = max(0, -before), size - max(0, -after)
    start_out = max(0, before)
    return slice(start_in, stop_in), slice(start_out, start_out + stop_in - start_in)


class ZeroPad2D(Layer):
    """Pad (N, C, H, W) with zeros: ``padding`` an int or (left, right, top, bottom), giving
    (N, C, H + top + bottom, W + left + right); negative amounts crop."""

    per_sample = True

    def __init__(self, padding: int | tuple[int, int, int, int]):
        super().__init__()
        sides = (padding,) * 4 if not isinstance(padding, tuple | list) else tuple(padding)
        if len(sides) != 4 or not all(isinstance(p, int) and not isinstance(p, bool)
                                      for p in sides):
            raise ValueError(f"ZeroPad2D: padding must be an int or (left, right, top, bottom) "
                             f"ints, got {padding!r}")
        self.padding: tuple[int, int, int, int] = (int(sides[0]), int(sides[1]),
                                                   int(sides[2]), int(sides[3]))

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 3:
            raise ValueError(f"{self.label()}: expected input shape (C, H, W), "
                             f"got {tuple(input_shape)}")
        left, right, top, bottom = self.padding
        c, h, w = input_shape
        ho, wo = h + top + bottom, w + left + right
        if ho < 1 or wo < 1:
            raise ValueError(f"{self.label()}: cropping an input {h}x{w} by padding "
                             f"{self.padding} leaves {ho}x{wo}, nothing")
        return (c, ho, wo)

    def _regions(self, h: int, w: int) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        """(index of the input, index of the output) of the elements both hold."""
        left, right, top, bottom = self.padding
        rows_in, rows_out = _overlap(top, bottom, h)
        cols_in, cols_out = _overlap(left, right, w)
        return (..., rows_in, cols_in), (..., rows_out, cols_out)

    def forward(self, x: Any) -> Any:
        self.check_input(x, 4, "(N, C, H, W)")
        n, c, h, w = x.shape
        _, ho, wo = self.output_shape((c, h, w))
        xp = backend.get_array_module(x)
        inner, outer = self._regions(h, w)
        y = xp.zeros((n, c, ho, wo), dtype=x.dtype)
        y[outer] = x[inner]
        self.save_for_backward(tuple(x.shape))
        return y

    def backward(self, grad_out: Any) -> Any:
        (shape,) = self.pop_saved()
        inner, outer = self._regions(shape[2], shape[3])
        xp = backend.get_array_module(grad_out)
        if min(self.padding) >= 0:                       # every input element is in the output
            return xp.ascontiguousarray(grad_out[outer])
        dx = xp.zeros(shape, dtype=grad_out.dtype)
        dx[inner] = grad_out[outer]
        return dx

    def to_onnx(self, ctx: Any, inputs: list[str]) -> str:
        """ONNX ``Pad`` (constant 0), the pads an int64 input (opset >= 11): begins of N, C,
        H, W then their ends; negative pads crop, as here."""
        left, right, top, bottom = self.padding
        pads = ctx.add_initializer(f"{ctx.name}.pads", backend.to_numpy(
            [0, 0, top, left, 0, 0, bottom, right]).astype("int64"))
        return ctx.add_node("Pad", [inputs[0], pads], [ctx.name], mode="constant")[0]
