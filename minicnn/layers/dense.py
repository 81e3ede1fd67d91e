"""Dense (fully connected): y = f(x @ W + b) for x (N, in_features), W (in_features,
out_features)."""
from __future__ import annotations

from typing import Any

from minicnn.core.modes import inside_model
from minicnn.layers import initializers
from minicnn.layers.activations import get_activation
from minicnn.layers.base import Layer, Parameter, column_sums


class Dense(Layer):
    """Fully connected layer with an optional fused activation (a name or a layer object).

    ``init`` is 'kaiming_uniform' (PyTorch's default), 'he' or 'glorot'
    (see ``minicnn.layers.initializers``).

    weight: (in_features, out_features); bias: (out_features,). Backward::

        dz = f'(z) * dy     dW = x.T @ dz     db = sum of dz over the batch     dx = dz @ W.T
    """

    per_sample = True

    def __init__(self, in_features: int, out_features: int, activation: str | Layer | None = None,
                 bias: bool = True, init: str = "kaiming_uniform"):
        super().__init__()
        for what, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"Dense: {what} must be a positive int, got {v!r}")
        self.in_features, self.out_features = in_features, out_features
        self.activation = get_activation(activation)
        self.weight = Parameter(initializers.initialize(
            init, (in_features, out_features), in_features, out_features), "weight")
        self.bias = Parameter(initializers.initialize_bias(init, out_features, in_features),
                              "bias") if bias else None

    def config(self) -> dict[str, Any]:
        config = super().config()
        activation = config.get("activation")
        if isinstance(activation, Layer):              # stored by name and arguments
            config["activation"] = {"class": type(activation).__name__,
                                    "config": activation.config()}
        return config

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if tuple(input_shape) != (self.in_features,):
            raise ValueError(f"{self.label()}: expected input shape ({self.in_features},), got "
                             f"{tuple(input_shape)} (use Flatten before Dense)")
        return (self.out_features,)

    def forward(self, x: Any) -> Any:
        """x (N, in_features) -> y (N, out_features)."""
        self.check_input(x, 2, "(N, in_features); use Flatten before Dense",
                         features=self.in_features)
        z = x @ self.weight.data
        if self.bias is not None:
            z += self.bias.data
        self.save_for_backward(x)
        if self.activation is None:
            return z
        with inside_model():                         # z comes from this layer: no NaN scan
            return self.activation.forward(z)

    def backward(self, grad_out: Any, input_grad: bool = True) -> Any:
        """dL/dy (N, out_features) -> dL/dx (N, in_features) (None without ``input_grad``);
        adds into weight/bias grads."""
        (x,) = self.pop_saved()
        dz = grad_out if self.activation is None else self.activation.backward(grad_out)
        self.weight.grad += x.T @ dz
        if self.bias is not None:
            self.bias.grad += column_sums(dz)
        return dz @ self.weight.data.T if input_grad else None
