"""xpnn: a small, fast neural-network library with hand-written backprop on any array-API library.

The same layers run on NumPy (CPU), CuPy (NVIDIA GPU), PyTorch tensors or array-api-strict; the
backend is chosen once at run time::

    import xpnn
    backend = xpnn.get_backend("cpu")          # or "gpu", "cuda:1", "torch", ...
    model = xpnn.mlp([784, 256, 128, 10], backend=backend, seed=0)
    optimizer = xpnn.optim.SGD(model, lr=0.1)
    loss = model.loss(x, labels)               # x, labels on the backend
    model.backward()
    optimizer.step()
"""

from . import data, initializers, layers, losses, optim, trainer
from .backend import Backend, BackendError, get_backend
from .gradcheck import gradcheck
from .layers import ELU, Add, Affine, BatchNorm1d, Dropout, Layer, LeakyReLU, Linear, Mul, ReLU, Sigmoid, Tanh
from .layers.batchnorm import BatchNorm2d
from .layers.conv import Conv2d
from .layers.pooling import AvgPool2d, MaxPool2d
from .layers.reshape import Flatten
from .losses import BCEWithLogits, MeanSquaredError, SoftmaxCrossEntropy
from .model import Sequential, cnn, load, mlp
from .serialization import FormatError
from .trainer import Trainer

__version__ = "0.1.0"

__all__ = [
    "ELU", "Add", "Affine", "BCEWithLogits", "Backend", "BackendError", "BatchNorm1d", "Dropout", "FormatError",
    "Layer", "LeakyReLU", "Linear", "MeanSquaredError", "Mul", "ReLU", "Sequential", "Sigmoid",
    "SoftmaxCrossEntropy", "Tanh", "Trainer", "data", "get_backend", "gradcheck", "initializers", "layers", "load",
    "losses", "mlp", "optim", "trainer",
    "AvgPool2d", "BatchNorm2d", "Conv2d", "Flatten", "MaxPool2d", "cnn",
]
