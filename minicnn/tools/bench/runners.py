"""What is timed on minicnn's side: fit's training step (``MinicnnRunner``) and the README's
hand-written loop (``HandLoopRunner``) on one fixed random batch (``make_batch``), with the
reference recipe's SGD. A classifier trains on integer labels with softmax cross-entropy; an
image-to-image model (one whose output has its input's shape: the autoencoder) on float target
images in [0, 1) with ``BCEWithLogits`` (``loss_for``)."""
from __future__ import annotations

from typing import Any

import numpy

import minicnn
from minicnn.core import backend
from minicnn.layers import Layer
from minicnn.models import Network
from minicnn.tools.bench.report import HAND_LOOP_KEY
from minicnn.training import loop as train
from minicnn.training import losses
from minicnn.training import optimizers as optim
from minicnn.training.recipe import REFERENCE_RECIPE as RECIPE

DATA_NOTE = ("random N(0, 1) images (N, 1, 28, 28) with random labels 0-9 (an image-to-image "
             "model: random target images in [0, 1))")


HAND_LOOP = ("opt.zero_grad(); logits = model.forward(x, training=True); "
             "loss.forward(logits, labels); model.backward(loss.backward()); opt.step()")


def bench_model(name: str, width_mult: int = 1) -> Network:
    """The zoo model the bench times, for 1x28x28 images (``width_mult`` for ref-cnn only)."""
    from minicnn import zoo
    model = zoo.build_model(name, **({"width_mult": width_mult} if width_mult != 1 else {}))
    if not isinstance(model, Network):
        raise ValueError(f"bench: {name} is not a Sequential or graph Model")
    return model


IMAGE_SHAPE = (1, 28, 28)


def image_to_image(model: Layer) -> bool:
    """Whether ``model`` maps a 1x28x28 image to an image of the same shape (the autoencoder),
    rather than to class scores."""
    return tuple(model.output_shape(IMAGE_SHAPE)) == IMAGE_SHAPE


def make_batch(batch_size: int, seed: int, images: bool = False
               ) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Random N(0, 1) float32 images (batch, 1, 28, 28) and int64 labels in [0, 10), or with
    ``images`` float32 target images (batch, 1, 28, 28) in [0, 1)."""
    rng = numpy.random.default_rng(seed)
    x = rng.standard_normal((batch_size, *IMAGE_SHAPE), dtype=numpy.float32)
    if images:
        return x, rng.random((batch_size, *IMAGE_SHAPE), dtype=numpy.float32)
    return x, rng.integers(0, 10, size=batch_size, dtype=numpy.int64)


def image_targets(y: Any) -> bool:
    """Whether the targets ``y`` are float images (an image-to-image model), not labels."""
    return y is not None and numpy.dtype(y.dtype).kind == "f"


def loss_for(y: Any) -> losses.SoftmaxCrossEntropy | losses.BCEWithLogits:
    """Softmax cross-entropy for integer labels, ``BCEWithLogits`` for float target images."""
    return losses.BCEWithLogits() if image_targets(y) else losses.SoftmaxCrossEntropy()


class MinicnnRunner:
    """minicnn on the active backend: fit's training step and the inference pass being timed."""

    name = "minicnn"

    def __init__(self, model: Network, x: Any, y: Any, xi: Any = None):
        self.model = model
        self.loss = loss_for(y)
        self.opt = optim.SGD(model.parameters(), RECIPE.lr, momentum=RECIPE.momentum,
                             weight_decay=RECIPE.weight_decay)
        # arrays on the active backend; None where not given (x, y: a runner that only infers)
        self.x: Any = None if x is None else backend.to_backend(x)
        self.y: Any = None if y is None else backend.to_backend(y)
        self.xi: Any = None if xi is None else backend.to_backend(xi)

    def sync(self) -> None:
        backend.synchronize()

    def train_step(self) -> None:
        train.train_step(self.model, self.loss, self.opt, self.x, self.y)     # fit's step

    def infer(self) -> Any:
        with minicnn.no_grad():
            return self.model.forward(self.xi, training=False, check=False)


class HandLoopRunner(MinicnnRunner):
    """The training loop the README writes out by hand (its own optimizer, the same model)."""

    name = HAND_LOOP_KEY

    def train_step(self) -> None:
        model, opt, loss, x, labels = self.model, self.opt, self.loss, self.x, self.y
        opt.zero_grad()
        logits = model.forward(x, training=True)
        loss.forward(logits, labels)
        model.backward(loss.backward())
        opt.step()
