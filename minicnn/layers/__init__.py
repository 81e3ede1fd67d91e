"""minicnn's layers: each one file, each with explicit forward and backward."""
from minicnn.layers.activations import (
    Identity,
    LeakyReLU,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
    get_activation,
)
from minicnn.layers.base import LAYER_REGISTRY, Layer, Parameter
from minicnn.layers.conv import Conv2D
from minicnn.layers.dense import Dense
from minicnn.layers.dropout import Dropout
from minicnn.layers.flatten import Flatten
from minicnn.layers.merge import Add, Concatenate
from minicnn.layers.normalization import BatchNorm2D
from minicnn.layers.pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D

__all__ = ["Layer", "Parameter", "LAYER_REGISTRY", "Conv2D", "Dense", "MaxPool2D", "AvgPool2D",
           "GlobalAvgPool2D", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "Identity",
           "Flatten", "Dropout", "BatchNorm2D", "Add", "Concatenate", "get_activation"]
