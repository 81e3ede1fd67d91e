"""A convolutional autoencoder that denoises images: not a classifier, (N, C, H, W) in, the same
shape out as logits: sigmoid(logits) is the denoised image in [0, 1]. It trains with
``BCEWithLogits`` against the clean image (per-pixel binary cross-entropy: with MSE through a
final Sigmoid, mostly-black digits push every output into the flat tail of the sigmoid, where
the gradient vanishes, and training stalls); see ``examples/denoise_mnist.py``.

    encoder: Conv 3x3 (C -> w) + ReLU, MaxPool 2   ->  (w, H/2, W/2)
             Conv 3x3 (w -> 2w) + ReLU, MaxPool 2  ->  (2w, H/4, W/4)
    decoder: 2x up, Conv 3x3 (2w -> w) + ReLU      ->  (w, H/2, W/2)
             2x up, Conv 3x3 (w -> C)              ->  (C, H, W) logits

"2x up" is ``Upsample2D(2)`` (nearest) by default, or a learned ``ConvTranspose2D(k=2,
stride=2)`` with ``decoder="transpose"``. H and W must be multiples of 4.
"""
from __future__ import annotations

import math
from typing import Any

from minicnn.core import backend
from minicnn.layers import Conv2D, Layer, MaxPool2D, ReLU
from minicnn.layers.upsample import Upsample2D
from minicnn.models import Sequential

__all__ = ["autoencoder", "add_noise", "psnr", "denoise"]


def _up(c_in: int, c_out: int, decoder: str) -> list[Layer]:
    if decoder == "upsample":
        return [Upsample2D(2), Conv2D(c_in, c_out, 3, padding=1)]
    from minicnn.layers.conv_transpose import ConvTranspose2D
    return [ConvTranspose2D(c_in, c_in, 2, stride=2), Conv2D(c_in, c_out, 3, padding=1)]


def autoencoder(in_channels: int = 1, input_size: int = 28, width: int = 32,
                decoder: str = "upsample") -> Sequential:
    """The denoising autoencoder for (in_channels, input_size, input_size) images."""
    if decoder not in ("upsample", "transpose"):
        raise ValueError(f"autoencoder: decoder must be 'upsample' or 'transpose', got "
                         f"{decoder!r}")
    if input_size % 4:
        raise ValueError(f"autoencoder: input_size must be a multiple of 4, got {input_size}")
    w = width
    return Sequential([
        Conv2D(in_channels, w, 3, padding=1), ReLU(), MaxPool2D(2),
        Conv2D(w, 2 * w, 3, padding=1), ReLU(), MaxPool2D(2),
        *_up(2 * w, w, decoder), ReLU(),
        *_up(w, in_channels, decoder),
    ], input_shape=(in_channels, input_size, input_size))


def denoise(model: Any, noisy: Any) -> Any:
    """The denoised images sigmoid(model(noisy)) in [0, 1], in inference mode."""
    from minicnn.core.modes import no_grad
    with no_grad():
        logits = model.forward(noisy, training=False)
    xp = backend.get_array_module(logits)
    return 1 / (1 + xp.exp(-logits))


def add_noise(x: Any, std: float, rng: Any) -> Any:
    """x (a host float array in [0, 1]) plus N(0, std^2) noise from the NumPy generator
    ``rng``, clipped to [0, 1], in x's dtype."""
    noisy = x + rng.normal(0.0, std, x.shape).astype(x.dtype)
    return noisy.clip(0.0, 1.0, out=noisy)


def psnr(prediction: Any, target: Any) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1]: 10 log10(1 / MSE)."""
    mse = float(((backend.to_numpy(prediction) - backend.to_numpy(target)) ** 2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)
