"""BatchNorm2D: normalise each channel over (N, H, W), then scale and shift.

Training uses the batch's mean and (biased) variance and updates running statistics
(running = (1 - momentum) * running + momentum * batch, with the unbiased variance, as PyTorch);
evaluation uses the running statistics. In training its output for one sample depends on the
whole batch, so a model that holds one is not split among threads (``per_sample``).
"""
from __future__ import annotations

from typing import Any

from minicnn.core import backend
from minicnn.layers import initializers
from minicnn.layers.base import Layer, Parameter


class BatchNorm2D(Layer):
    """y = weight * (x - mean) / sqrt(var + eps) + bias, per channel; weight, bias: (C,)."""

    running_mean: Any
    running_var: Any

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.num_features, self.momentum, self.eps = num_features, float(momentum), float(eps)
        self.weight = Parameter(initializers.ones((num_features,)), "weight")
        self.bias = Parameter(initializers.zeros((num_features,)), "bias")
        self.add_state("running_mean", initializers.zeros((num_features,)))
        self.add_state("running_var", initializers.ones((num_features,)))

    @property
    def per_sample(self) -> bool:  # type: ignore[override]  # computed: only in training
        return not self.training                    # batch statistics mix the samples

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != 3 or input_shape[0] != self.num_features:
            raise ValueError(f"{self.label()}: expected input shape ({self.num_features}, H, W), "
                             f"got {tuple(input_shape)}")
        return tuple(input_shape)

    def forward(self, x: Any) -> Any:
        self.check_input(x, 4, "(N, C, H, W)", channels=self.num_features)
        xp = backend.get_array_module(x)
        x_nhwc = x.transpose(0, 2, 3, 1)            # channels last: per-channel stats broadcast
        if self.training:
            count = x.size // self.num_features
            if count < 2:
                raise ValueError(f"{self.label()}: training needs more than one value per "
                                 f"channel, got input shape {tuple(x.shape)}")
            mean = x_nhwc.mean(axis=(0, 1, 2))
            var = x_nhwc.var(axis=(0, 1, 2))
            m = self.momentum
            self.running_mean = (1 - m) * self.running_mean + m * mean
            self.running_var = (1 - m) * self.running_var + m * var * (count / (count - 1))
        else:
            mean, var = self.running_mean, self.running_var
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        x_hat = (x_nhwc - mean) * inv_std
        self.save_for_backward(x_hat, inv_std, self.training)
        return (x_hat * self.weight.data + self.bias.data).transpose(0, 3, 1, 2)

    def backward(self, grad_out: Any) -> Any:
        x_hat, inv_std, training = self.pop_saved()
        dy = grad_out.transpose(0, 2, 3, 1)
        self.bias.grad += dy.sum(axis=(0, 1, 2))
        self.weight.grad += (dy * x_hat).sum(axis=(0, 1, 2))
        dx_hat = dy * self.weight.data
        if not training:                             # statistics are constants in eval mode
            return (dx_hat * inv_std).transpose(0, 3, 1, 2)
        dx = (dx_hat - dx_hat.mean(axis=(0, 1, 2))
              - x_hat * (dx_hat * x_hat).mean(axis=(0, 1, 2))) * inv_std
        return dx.transpose(0, 3, 1, 2)
