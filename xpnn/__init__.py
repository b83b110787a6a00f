"""xpnn: a small, fast neural-network library with hand-written backprop on any array-API library.

The same layers run on NumPy (CPU), CuPy (NVIDIA GPU), PyTorch tensors or array-api-strict; the
backend is chosen once at run time::

    import xpnn
    backend = xpnn.get_backend("cpu")          # or "gpu", "cuda:1", "torch", ...
    model = xpnn.mlp([784, 256, 128, 10], backend=backend, seed=0)
    model.summary()                            # layers, output shapes, parameters, trainable or not
    optimizer = xpnn.optim.SGD(model, lr=0.1)
    loss = model.loss(x, labels)               # training mode; x, labels on the backend
    model.backward()
    optimizer.step()
    model.accuracy(x_test, y_test)             # evaluation mode; NumPy arrays are copied over
    model.predict_proba(x_test)                # softmax (or sigmoid for BCEWithLogits) probabilities
    model.freeze(0)                            # layer 0 stays as it is (also: layer.trainable = False)
"""

import sys as _sys

from . import optim
from .core import backend  # noqa: F401 (xpnn.backend.to_numpy, as the README uses it)
from .core.backend import Backend, BackendError, get_backend
from .io import data
from .io.serialization import FormatError
from .model import IncompatibleKeys, Sequential, cnn, load, mlp
from .model.gradcheck import gradcheck
from .model.onnx import export_onnx, register_onnx_rule
from .nn import initializers, layers, losses, metrics
from .nn.layers import (
    ELU,
    Add,
    Affine,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Layer,
    LeakyReLU,
    Linear,
    MaxPool2d,
    Mul,
    ReLU,
    Sigmoid,
    Standardize,
    Tanh,
)
from .nn.losses import BCEWithLogits, MeanSquaredError, SoftmaxCrossEntropy
from .training import callbacks, trainer
from .training.callbacks import Callback, EarlyStopping, History, JsonLinesLogger, ModelCheckpoint
from .training.trainer import DivergenceError, Trainer, fit

__version__ = "0.1.0"

# The modules bound above keep their short import paths too: ``from xpnn.layers import Affine``.
# Likewise ``from xpnn.layers.base import Layer``: the layer modules under their short names too.
for _name in ("backend", "callbacks", "data", "initializers", "layers", "losses", "metrics", "trainer"):
    _sys.modules[f"{__name__}.{_name}"] = globals()[_name]
for _name, _module in list(_sys.modules.items()):
    if _name.startswith(f"{layers.__name__}."):
        _sys.modules[f"{__name__}.layers.{_name.rpartition('.')[2]}"] = _module
del _name, _module

__all__ = [
    "AvgPool2d", "BatchNorm2d", "Conv2d", "ELU", "Add", "Affine", "BCEWithLogits", "Backend", "BackendError",
    "BatchNorm1d", "Callback", "DivergenceError", "Dropout", "EarlyStopping", "Flatten", "FormatError", "History",
    "IncompatibleKeys", "JsonLinesLogger", "Layer", "LeakyReLU", "Linear", "MaxPool2d", "MeanSquaredError",
    "ModelCheckpoint", "Mul", "ReLU", "Sequential",
    "Sigmoid", "SoftmaxCrossEntropy", "Standardize", "Tanh", "Trainer", "callbacks", "cnn", "data", "export_onnx",
    "fit", "get_backend", "gradcheck", "initializers", "layers", "load", "losses", "metrics", "mlp", "optim",
    "register_onnx_rule", "trainer",
]
