"""minicnn's layers: each one file, each with explicit forward and backward."""
from minicnn.layers.activations import (
    Identity,
    LeakyReLU,
    LogSoftmax,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
    get_activation,
)
from minicnn.layers.adaptive_pooling import AdaptiveAvgPool2D, GlobalMaxPool2D
from minicnn.layers.base import LAYER_REGISTRY, Layer, Parameter
from minicnn.layers.conv import Conv2D
from minicnn.layers.conv_transpose import ConvTranspose2D
from minicnn.layers.dense import Dense
from minicnn.layers.dropout import Dropout, Dropout2D
from minicnn.layers.flatten import Flatten
from minicnn.layers.layer_norm import GroupNorm, LayerNorm
from minicnn.layers.merge import Add, Concatenate
from minicnn.layers.normalization import BatchNorm1D, BatchNorm2D
from minicnn.layers.padding import ZeroPad2D
from minicnn.layers.piecewise_activations import Hardswish, PReLU, ReLU6
from minicnn.layers.pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D
from minicnn.layers.smooth_activations import ELU, GELU, SiLU, Softplus
from minicnn.layers.upsample import Upsample2D

__all__ = ["Layer", "Parameter", "LAYER_REGISTRY", "Conv2D", "ConvTranspose2D", "Dense",
           "MaxPool2D", "AvgPool2D", "GlobalAvgPool2D", "GlobalMaxPool2D", "AdaptiveAvgPool2D",
           "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Identity", "GELU",
           "SiLU", "ELU", "Softplus", "ReLU6", "Hardswish", "PReLU", "Flatten", "Dropout",
           "Dropout2D", "BatchNorm2D", "BatchNorm1D", "LayerNorm", "GroupNorm", "Upsample2D",
           "ZeroPad2D", "Add", "Concatenate", "get_activation"]
