"""Write a new layer in one short class, check its gradients, and train a model that uses it.

    python examples/custom_layer.py

The layer, ``Scale``, multiplies each channel by its own learned number s_c:

    y[n, c, h, w] = s_c * x[n, c, h, w]

Backward gets dL/dy and must (1) *add* dL/ds into the parameter's gradient and (2) return
dL/dx:

    dL/ds_c = sum over n, h, w of dL/dy[n, c, h, w] * x[n, c, h, w]
    dL/dx   = dL/dy * s_c

What the base class needs, all of it (see ``minicnn/layers/base.py``):

* call ``super().__init__()``; the constructor's arguments are recorded, so a checkpoint can
  rebuild the layer (keep them numbers, strings and tuples);
* hold trainable arrays as ``Parameter`` s, anywhere: attributes, lists, dicts, sub-layers.
  Make the array with ``minicnn.layers.initializers`` (``ones``, ``zeros``, or a random scheme
  such as ``initialize("he", shape, fan_in, fan_out)``), which draws from ``minicnn.manual_seed``
  and puts it on the default backend in float32;
* in ``forward``, keep what backward needs with ``self.save_for_backward(...)`` (nothing is kept
  inside ``minicnn.no_grad()``); in ``backward``, get it back with ``self.pop_saved()``;
* compute with the array module of the input (``xp = backend.get_array_module(x)``), never
  ``import numpy``, so the same layer runs on the GPU after ``model.to("cupy")``;
* say ``per_sample = True`` if each sample's output depends on that sample alone, so a model
  may split a batch among cores (undeclared, it is not split);
* ``minicnn.testing.check_layer(layer, input_shape)`` checks all of this in one call.
"""
from __future__ import annotations

import numpy as np

import minicnn
from minicnn.core import backend
from minicnn.layers import (
    Conv2D,
    Dense,
    GlobalAvgPool2D,
    Layer,
    Parameter,
    ReLU,
    initializers,
)
from minicnn.testing import check_layer
from minicnn.training import SGD, SoftmaxCrossEntropy


class Scale(Layer):
    """y = x * s, with one learned scale s per channel (s starts at 1)."""

    per_sample = True                            # each sample on its own: batches may be split

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        # shape (1, C, 1, 1) so that it broadcasts over (N, C, H, W)
        self.s = Parameter(initializers.ones((1, channels, 1, 1)), "s")

    def output_shape(self, input_shape):
        """Per-sample shape in -> out (no batch axis); lets models check shapes when built."""
        if len(input_shape) != 3 or input_shape[0] != self.channels:
            raise ValueError(f"{self.label()}: expected input shape ({self.channels}, H, W), "
                             f"got {tuple(input_shape)}")
        return tuple(input_shape)

    def forward(self, x):
        self.check_input(x, 4, "(N, C, H, W)", channels=self.channels)
        self.save_for_backward(x)
        return backend.get_array_module(x).multiply(x, self.s.data)

    def backward(self, grad_out):
        (x,) = self.pop_saved()                  # a clear error if forward kept nothing
        xp = backend.get_array_module(grad_out)
        self.s.grad += xp.sum(grad_out * x, axis=(0, 2, 3), keepdims=True)   # add, not assign
        return grad_out * self.s.data

    def to_onnx(self, ctx, inputs):
        """Optional, for ``minicnn.export_onnx``: y = x * s as one ONNX Mul by a constant.
        ``inputs`` are the names of the input values; return the name of the output."""
        s = ctx.add_initializer(f"{ctx.name}.s", self.s.data)     # named e.g. "scale_1.s"
        return ctx.add_node("Mul", [inputs[0], s], [ctx.name])[0]


def check_gradients(verbose: bool = True) -> dict[str, float]:
    """Compare Scale's backward with central differences (in float64); raises if wrong."""
    layer = Scale(3)
    layer.s.data[...] = np.array([0.5, -1.0, 2.0]).reshape(1, 3, 1, 1)   # not all ones
    return minicnn.gradcheck(layer, (2, 3, 5, 5), verbose=verbose)


def check_contract() -> None:
    """Every rule of the layer contract (gradients, shapes, config and checkpoint round trips,
    split against whole, copies); raises LayerContractError naming the rule broken."""
    check_layer(Scale(3), (4, 3, 5, 5))


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """8x8 images holding one bar: horizontal (label 0) or vertical (label 1), plus noise."""
    rng = np.random.default_rng(seed)
    x = 0.1 * rng.standard_normal((n, 1, 8, 8))
    y = rng.integers(0, 2, size=n)
    for i in range(n):
        pos, start = rng.integers(0, 8), rng.integers(0, 3)
        if y[i] == 0:
            x[i, 0, pos, start:start + 6] += 1.0
        else:
            x[i, 0, start:start + 6, pos] += 1.0
    return x.astype(np.float32), y


def build_model() -> minicnn.Sequential:
    return minicnn.Sequential([
        Conv2D(1, 4, 3, padding=1), Scale(4), ReLU(), GlobalAvgPool2D(), Dense(4, 2),
    ], input_shape=(1, 8, 8))


def train(steps: int = 40, verbose: bool = True) -> list[float]:
    """A few SGD steps on the bars problem; returns the loss of every step."""
    minicnn.manual_seed(0)
    model = build_model()
    if verbose:
        model.summary()
    x, y = make_data(64)
    loss_fn = SoftmaxCrossEntropy()
    optimizer = SGD(model.parameters(), lr=0.5, momentum=0.9)
    losses = []
    for step in range(steps):
        optimizer.zero_grad()
        loss = loss_fn.forward(model.forward(x), y)
        model.backward(loss_fn.backward())
        optimizer.step()
        losses.append(float(loss))
        if verbose and (step % 10 == 0 or step == steps - 1):
            print(f"  step {step:3d}  loss {losses[-1]:.4f}")
    if verbose:
        scale = model.layers[1].s.data.reshape(-1)
        print(f"  learned per-channel scales: {np.round(backend.to_numpy(scale), 3).tolist()}")
    return losses


def main() -> None:
    print("Gradient check of Scale (worst relative error per tensor, float64):")
    check_gradients()
    check_contract()
    print("check_layer(Scale): every rule of the layer contract holds")
    print("\nTraining Conv2D -> Scale -> ReLU -> GlobalAvgPool2D -> Dense on horizontal vs "
          "vertical bars:")
    losses = train()
    print(f"\nloss {losses[0]:.4f} -> {losses[-1]:.4f}")


if __name__ == "__main__":
    main()
