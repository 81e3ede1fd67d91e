"""Named models and the recipes they train with: ``build_model("resnet")``, ``recipe_for``.

=============  =======================================================  ===================
name           what                                                     inputs
=============  =======================================================  ===================
ref-cnn        the reference CNN (two conv/pool stages, ~420k params)   1x28x28 only
lenet5         LeNet-5, modern form (~62k params)                       1x28x28 only
resnet         basic-block ResNet-14, widths 16/32/64 (``zoo.resnet``)  any CxHxW, H = W
mobilenet      depthwise-separable MobileNet-v1 style (``zoo.mobilenet``)  any CxHxW, H = W
vgg            VGG with BatchNorm, widths 32/64/128 (``zoo.vgg``)       any CxHxW, H = W
autoencoder    denoising conv autoencoder, not a classifier              CxHxW, H = W = 4k
               (``zoo.autoencoder``, ``examples/denoise_mnist.py``)
=============  =======================================================  ===================

Each builder returns a fresh model, its weights drawn from the global generator
(``minicnn.manual_seed``); those taking any input get ``in_channels``, ``input_size`` and
``classes``. ``RECIPES`` holds each one's default training recipe (the command line's
defaults); ``REFERENCE_RECIPE`` is the reference CNN's (also importable from here, as in 0.1).
A model of your own trains from the command line as ``--model package.module:function``.
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from minicnn.layers.base import Layer
from minicnn.training.recipe import (
    OPTIMIZER_DEFAULTS,
    REFERENCE_RECIPE,
    Recipe,
    make_optimizer,
)
from minicnn.training.schedules import SCHEDULES, make_schedule
from minicnn.zoo.autoencoder import autoencoder
from minicnn.zoo.mobilenet import mobilenet
from minicnn.zoo.reference import lenet5, ref_cnn
from minicnn.zoo.resnet import resnet
from minicnn.zoo.vgg import vgg

__all__ = ["MODELS", "RECIPES", "build_model", "recipe_for", "ref_cnn", "lenet5", "resnet",
           "mobilenet", "vgg", "autoencoder", "Recipe", "REFERENCE_RECIPE", "SCHEDULES",
           "OPTIMIZER_DEFAULTS", "make_optimizer", "make_schedule", "load_model_function"]

MODELS: dict[str, Callable[..., Layer]] = {"ref-cnn": ref_cnn, "lenet5": lenet5,
                                           "resnet": resnet, "mobilenet": mobilenet, "vgg": vgg,
                                           "autoencoder": autoencoder}

_CONV_NET = Recipe(lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine", batch_size=128,
                   epochs=10, augment="auto")
RECIPES: dict[str, Recipe] = {
    "ref-cnn": REFERENCE_RECIPE, "lenet5": REFERENCE_RECIPE,
    "resnet": _CONV_NET, "vgg": Recipe(lr=0.05, momentum=0.9, weight_decay=5e-4, epochs=10,
                                       augment="auto"),
    "mobilenet": _CONV_NET,
}
"""Each zoo model's default recipe: SGD with momentum, cosine decay. ``augment="auto"`` means
the data set's own default (``AUTO_AUGMENT``)."""

AUTO_AUGMENT = {"mnist": "1", "fashion-mnist": "crop=2,flip", "cifar10": "crop=4,flip"}
"""What ``augment="auto"`` becomes per data set: small shifts for digits (flips would turn one
digit into another), crops and flips for clothes and photographs."""


def recipe_for(name: str) -> Recipe:
    """The default recipe of a zoo model (the reference recipe for a model of your own)."""
    return RECIPES.get(name, REFERENCE_RECIPE)


def load_model_function(spec: str) -> Callable[..., Layer]:
    """The function ``package.module:function`` names (imported here); ValueError in one line
    when the module or the function is missing."""
    module_name, _, function = spec.partition(":")
    if not module_name or not function:
        raise ValueError(f"model {spec!r}: expected a zoo name or module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"model {spec!r}: cannot import {module_name}: {exc}") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise ValueError(f"model {spec!r}: {module_name} has no function {function}")
    return fn


def build_model(name: str, **kwargs: Any) -> Layer:
    """A freshly initialised model by zoo name or ``module:function``, keyword arguments
    passed on (``build_model("resnet", widths=(32, 64, 128))``). ``in_channels``,
    ``input_size`` and ``classes`` are passed only to builders that take them (the reference
    CNN and LeNet-5 are for 1x28x28 images and 10 classes: other shapes are refused)."""
    fn = MODELS.get(name)
    if fn is None:
        if ":" not in name:
            raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODELS)} or "
                             "module:function")
        fn = load_model_function(name)
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for key, fixed in (("in_channels", 1), ("input_size", 28), ("classes", 10)):
        if key in kwargs and key not in params and not takes_any:
            if kwargs[key] != fixed:
                raise ValueError(f"model {name!r} is for 1x28x28 images and 10 classes; got "
                                 f"{key}={kwargs[key]}")
            del kwargs[key]
    model = fn(**kwargs)
    if not isinstance(model, Layer):
        raise ValueError(f"model {name!r}: the function returned a {type(model).__name__}, "
                         "not a minicnn model")
    return model
