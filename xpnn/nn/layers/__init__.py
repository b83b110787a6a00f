"""Layers with hand-written forward and backward passes."""

from .activations import ELU, LeakyReLU, ReLU, Sigmoid, Tanh
from .affine import Affine, Linear
from .base import Layer
from .batchnorm import BatchNorm1d, BatchNorm2d
from .conv import Conv2d
from .dropout import Dropout
from .graph import Add, Mul
from .pooling import AvgPool2d, MaxPool2d
from .reshape import Flatten
from .standardize import Standardize

__all__ = [
    "ELU", "Add", "Affine", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "Conv2d", "Dropout", "Flatten", "Layer",
    "LeakyReLU", "Linear", "MaxPool2d", "Mul", "ReLU", "Sigmoid", "Standardize", "Tanh",
]
