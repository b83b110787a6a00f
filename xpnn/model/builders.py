"""Ways to get a model: build the standard ones (:func:`mlp`, :func:`cnn`), put standardization in front of one
(:func:`standardized`), or load one from a file (:func:`load`)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..core.backend import Backend
from ..core.validation import check_bool, check_positive_int, check_real
from ..io.serialization import FormatError
from ..nn.layers import (
    ELU,
    Affine,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Layer,
    LeakyReLU,
    MaxPool2d,
    ReLU,
    Sigmoid,
    Standardize,
    Tanh,
)
from ..nn.losses import Loss
from .saving import class_names_of, input_shape_of, read_model_file
from .sequential import Sequential

__all__ = ["ACTIVATIONS", "cnn", "default_init", "load", "mlp", "standardized"]

ACTIVATIONS: dict[str, type[Layer]] = {
    "relu": ReLU, "leaky_relu": LeakyReLU, "sigmoid": Sigmoid, "tanh": Tanh, "elu": ELU,
}


def default_init(activation: str) -> str:
    """The weight initializer that suits ``activation``: He for ReLU-like ones, Xavier otherwise."""
    return "he" if activation in ("relu", "leaky_relu", "elu") else "xavier"


def mlp(
    sizes: Sequence[int],
    *,
    activation: str = "relu",
    init: str | None = None,
    std: float | None = None,
    dropout: float = 0.0,
    batchnorm: bool = False,
    loss: Loss | None = None,
    backend: Backend | str = "cpu",
    seed: int = 0,
) -> Sequential:
    """A multilayer perceptron: Affine layers of ``sizes`` with an activation between them.

    Parameters
    ----------
    sizes : sequence of int
        ``[n_in, hidden..., n_out]``, e.g. ``[784, 256, 128, 10]``; inputs are (N, n_in), outputs (N, n_out).
    activation : {"relu", "leaky_relu", "sigmoid", "tanh", "elu"}
        Hidden activation.
    init : str, optional
        Weight initializer (see :mod:`xpnn.initializers`, including the tutorials' ``"fcn_xavier"``); defaults
        to ``"he"`` for ReLU-like activations, ``"xavier"`` otherwise.
    std : float, optional
        Standard deviation when ``init="normal"`` (default 0.01), >= 0.
    dropout : float
        Dropout probability after each hidden activation, in [0, 1) (0 disables it).
    batchnorm : bool
        Insert BatchNorm1d before each hidden activation.
    loss, backend, seed
        As for :class:`Sequential`; the loss defaults to softmax cross-entropy (use
        :class:`~xpnn.losses.BCEWithLogits` with ``n_out=1`` for binary, :class:`~xpnn.losses.MeanSquaredError`
        for a regression).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"mlp: unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    if isinstance(sizes, str | bytes) or not isinstance(sizes, Sequence) or len(sizes) < 2:
        raise ValueError(f"mlp: sizes must list at least the input and output sizes, e.g. [784, 10], got {sizes!r}")
    for index, size in enumerate(sizes):
        check_positive_int("mlp", f"sizes[{index}]", size)
    dropout = check_real("mlp", "dropout", dropout, low=0.0, high=1.0, high_open=True)
    check_bool("mlp", "batchnorm", batchnorm)
    if std is not None:
        check_real("mlp", "std", std, low=0.0)
    if init is None:
        init = default_init(activation)
    layers: list[Layer] = []
    for index, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(Affine(n_in, n_out, init=init, std=std))
        if index < len(sizes) - 2:
            if batchnorm:
                layers.append(BatchNorm1d(n_out))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(Dropout(dropout))
    return Sequential(layers, loss, backend=backend, seed=seed, input_shape=(int(sizes[0]),))


def cnn(
    channels: Sequence[int] = (1, 32, 64),
    sizes: Sequence[int] = (128, 10),
    *,
    image_size: int | tuple[int, int] = 28,
    kernel_size: int = 3,
    pool: int = 2,
    activation: str = "relu",
    init: str | None = None,
    dropout: float = 0.5,
    batchnorm: bool = False,
    loss: Loss | None = None,
    backend: Backend | str = "cpu",
    seed: int = 0,
) -> Sequential:
    """A convolutional network: conv blocks of ``channels``, then a multilayer perceptron of ``sizes``.

    Each block is Conv2d (``kernel_size``, stride 1, padding that keeps the size for odd kernels),
    optionally BatchNorm2d, the activation and MaxPool2d(``pool``); then Flatten and Affine layers with
    the activation (and dropout) between them. The defaults build the two-conv network that ``--model cnn`` trains:
    conv 1->32 3x3, ReLU, max-pool 2; conv 32->64 3x3, ReLU, max-pool 2; flatten; 3136->128, ReLU,
    dropout 0.5; 128->10.

    With ReLU the block pools first and applies ReLU to the pooled values: for finite inputs
    ``max(relu(x)) == relu(max(x))`` exactly, and the gradients are identical too (a window whose maximum
    is positive sends it to the same first maximum either way; one whose maximum is <= 0 gets none either
    way), at a quarter of the activation's cost. (A NaN in a window, or torch's sign of a zero result, can
    differ; neither changes a loss that is finite.) Other activations keep the order above (saturation
    could create ties that move the gradient to another element of the window).

    Parameters
    ----------
    channels : sequence of int
        ``[in_channels, block channels...]``, e.g. ``[1, 32, 64]``.
    sizes : sequence of int
        Dense layers after flattening, ``[hidden..., n_out]``; the flattened size is computed.
    image_size : int or (int, int)
        Height and width of the input images; inputs are (N, channels[0], H, W).
    kernel_size : int
        Side of the square convolution kernels (odd sizes keep the spatial size).
    pool : int
        Side and stride of the max-pooling windows (1 disables pooling).
    activation : {"relu", "leaky_relu", "sigmoid", "tanh", "elu"}
        Activation after every convolution and hidden dense layer.
    init : str, optional
        Weight initializer; defaults to ``"he"`` for ReLU-like activations, ``"xavier"`` otherwise.
    dropout : float
        Dropout probability after each hidden dense activation (0 disables it).
    batchnorm : bool
        Insert BatchNorm2d after each convolution (before the activation).
    loss, backend, seed
        As for :class:`Sequential`.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    if len(channels) < 2 or len(sizes) < 1:
        raise ValueError(f"cnn needs at least [in_channels, channels] and [n_out], got {list(channels)} and "
                         f"{list(sizes)}")
    if init is None:
        init = default_init(activation)
    layers: list[Layer] = []
    shape: tuple[int, ...] = (channels[0], *(image_size if isinstance(image_size, tuple | list) else
                                            (image_size, image_size)))
    input_shape = tuple(int(size) for size in shape)
    for c_in, c_out in itertools.pairwise(channels):
        conv = Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, init=init)
        shape = conv.output_shape(shape)
        layers.append(conv)
        if batchnorm:
            layers.append(BatchNorm2d(c_out))
        block = [ACTIVATIONS[activation](), MaxPool2d(pool)] if pool > 1 else [ACTIVATIONS[activation]()]
        if activation == "relu":
            block.reverse()  # pooled first: the same numbers (see the docstring) on a quarter of the elements
        for layer in block:
            shape = layer.output_shape(shape)
        layers.extend(block)
    layers.append(Flatten())
    dense = [int(np.prod(shape)), *sizes]
    for index, (n_in, n_out) in enumerate(itertools.pairwise(dense)):
        layers.append(Affine(n_in, n_out, init=init))
        if index < len(dense) - 2:
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(Dropout(dropout))
    return Sequential(layers, loss, backend=backend, seed=seed, input_shape=input_shape)


def standardized(model: Sequential, x: Any) -> Sequential:
    """``model`` with a :class:`~xpnn.layers.Standardize` layer in front, its statistics taken from ``x``.

    Features of (N, D) rows are scaled one by one; images (N, C, H, W) channel by channel. The statistics
    are saved with the model, so :meth:`Sequential.predict` on raw data applies them.

    Parameters
    ----------
    model : Sequential
        A model that knows its input shape (as :func:`mlp` and :func:`cnn` build); its layers are rebuilt,
        so their weights are drawn anew from its seed.
    x : NumPy array, shape ``(N, *model.input_shape)``
        The training inputs (never validation or test data).
    """
    if model.input_shape is None:
        raise ValueError("standardized: the model does not know its input shape; build it with input_shape=...")
    shape = model.input_shape if len(model.input_shape) == 1 else (model.input_shape[0],) + (1,) * (
        len(model.input_shape) - 1)
    layer = Standardize(shape)
    result = Sequential([layer, *model.layers], model.loss_fn, backend=model.backend, seed=model.seed,
                        check_values=model.check_values, input_shape=model.input_shape)
    layer.adapt(model.unflatten(np.asarray(x)))
    result.class_names = model.class_names
    return result


def load(path: str | os.PathLike, backend: Backend | str = "cpu") -> Sequential:
    """Load a model for inference onto ``backend`` (any backend) from a model file or a checkpoint.

    Takes what :meth:`Sequential.save` writes and also a checkpoint (``python -m xpnn.train --save``,
    :func:`xpnn.training.checkpoint.save_checkpoint`): its model is returned, its optimizer state is left unread.
    To continue training from a checkpoint, use ``--resume`` or :func:`xpnn.training.checkpoint.load_checkpoint`.

    The file is not trusted: its header is checked against a schema, and the shapes its configuration
    implies (:meth:`Layer.param_shapes`) are compared with the arrays' declared shapes before anything is
    built or read, so a small file claiming huge layers fails at once. Layers that do not declare their
    shapes are built and checked afterwards.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    FormatError
        Naming the file, for any other problem (corrupted, crafted, not a model).
    """
    source = str(path)
    layers, loss, arrays, header = read_model_file(path)
    try:
        model = Sequential(layers, loss, backend=backend, seed=header.get("seed", 0),
                           input_shape=input_shape_of(header["config"], source))
    except (ValueError, TypeError, OverflowError, MemoryError) as error:
        raise FormatError(f"{source}: its configuration cannot be built ({type(error).__name__}: {error})") from None
    model.load_state_dict(arrays, source=source)
    model.class_names = class_names_of(header["config"], source)
    return model
