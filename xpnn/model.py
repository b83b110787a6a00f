"""The sequential model: layers applied in order, a loss at the end, backprop as a reversed walk."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .backend import Backend, get_backend
from .layers import ELU, Affine, BatchNorm1d, Dropout, Layer, LeakyReLU, ReLU, Sigmoid, Tanh
from .layers.batchnorm import BatchNorm2d
from .layers.conv import Conv2d
from .layers.pooling import MaxPool2d
from .layers.reshape import Flatten
from .losses import Loss, SoftmaxCrossEntropy
from .serialization import FormatError, read_npz, write_npz

__all__ = ["ACTIVATIONS", "Sequential", "load", "mlp"]

# Independent random streams derived from one seed (numpy.random.SeedSequence keys).
INIT_STREAM, SHUFFLE_STREAM, DROPOUT_STREAM = 0, 1, 2

ACTIVATIONS: dict[str, type[Layer]] = {
    "relu": ReLU, "leaky_relu": LeakyReLU, "sigmoid": Sigmoid, "tanh": Tanh, "elu": ELU,
}


class Sequential:
    """Layers applied in order, followed by a loss.

    Parameters
    ----------
    layers : iterable of Layer
        Unbuilt layers; the model creates their arrays on ``backend``.
    loss : Loss, optional
        Defaults to :class:`~xpnn.losses.SoftmaxCrossEntropy`.
    backend : Backend or str
        Where the arrays live (see :func:`xpnn.get_backend`).
    seed : int
        Seeds the initial weights (drawn on the host, identical on every backend) and dropout.
    check_values : bool
        Check inputs for NaN and labels for range on every call. Each check reads a number back from
        the device; a training loop that validated its data once turns this off.

    Examples
    --------
    >>> import xpnn
    >>> model = xpnn.mlp([784, 256, 10], backend="cpu", seed=0)
    >>> model.predict(model.backend.zeros((2, 784))).shape
    (2, 10)
    """

    def __init__(
        self,
        layers: Iterable[Layer],
        loss: Loss | None = None,
        *,
        backend: Backend | str = "cpu",
        seed: int = 0,
        check_values: bool = True,
    ):
        self.layers = list(layers)
        self.loss_fn = SoftmaxCrossEntropy() if loss is None else loss
        self.backend = get_backend(backend)
        self.seed = seed
        self.check_values = check_values
        init_rng = np.random.default_rng(np.random.SeedSequence([seed, INIT_STREAM]))
        for layer in self.layers:
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: {layer!r} is not an xpnn Layer")
            layer.build(self.backend, init_rng)
        self.reseed(seed)

    @property
    def check_values(self) -> bool:
        """Whether inputs are checked for NaN and labels for range (each check syncs the device)."""
        return self.loss_fn.check_values

    @check_values.setter
    def check_values(self, value: bool) -> None:
        self.loss_fn.check_values = value

    # ------------------------------------------------------------------ computation
    def predict(self, x: Any, *, train: bool = False) -> Any:
        """Run the layers on ``x`` (N, n_in) and return the outputs (N, n_out), e.g. logits."""
        self._check_input(x)
        for layer in self.layers:
            x = layer.forward(x, train=train)
        return x

    __call__ = predict

    def loss(self, x: Any, t: Any, *, train: bool = True) -> Any:
        """Forward ``x`` (N, n_in) and return the loss against targets ``t`` as a 0-d array.

        In training mode (the default) dropout is active and batch normalization uses batch
        statistics; call :meth:`backward` next to get gradients.
        """
        return self.loss_fn(self.predict(x, train=train), t)

    def backward(self, *, input_grad: bool = False) -> Any:
        """Backpropagate the last :meth:`loss`, filling every layer's ``grads``.

        Returns the gradient for the input (N, n_in) when ``input_grad`` is true, else None (the
        first layer then skips computing it).
        """
        dy = self.loss_fn.backward()
        for layer in reversed(self.layers[1:]):
            dy = layer.backward(dy)
        if input_grad:
            return self.layers[0].backward(dy)
        self.layers[0].backward_params(dy)
        return None

    def evaluate(self, x: Any, t: Any, batch_size: int = 10_000) -> tuple[Any, Any]:
        """Mean loss and number of correct predictions over ``x`` in evaluation mode.

        Both come back as 0-d arrays on the device, so no transfer happens until they are read.
        ``t`` holds integer labels (N,) or one-hot rows (N, C).
        """
        xp = self.backend.xp
        n = x.shape[0]
        total_loss = self.backend.zeros(())
        correct = self.backend.zeros((), dtype=xp.int64)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)  # the array API leaves out-of-range slices unspecified
            xb, tb = x[start:stop, ...], t[start:stop, ...]
            logits = self.predict(xb)
            total_loss = total_loss + self.loss_fn(logits, tb) * xb.shape[0]
            labels = tb if tb.ndim == 1 else xp.argmax(tb, axis=1)
            correct = correct + xp.count_nonzero(xp.argmax(logits, axis=1) == labels)
        return total_loss / n, correct

    def accuracy(self, x: Any, t: Any, batch_size: int = 10_000) -> float:
        """Fraction of samples whose largest output is the label; ``t`` integer (N,) or one-hot (N, C)."""
        _, correct = self.evaluate(x, t, batch_size)
        return int(correct) / x.shape[0]

    # ------------------------------------------------------------------ parameters
    def parameter_slots(self) -> Iterator[tuple[str, Layer, str]]:
        """``(dotted name, owning layer, key)`` for every trainable parameter, in layer order."""
        for index, layer in enumerate(self.layers):
            for key in layer.params:
                yield f"{index}.{key}", layer, key

    def named_parameters(self) -> dict[str, Any]:
        """Trainable arrays by dotted name (``"0.W"``, ``"0.b"``, ...)."""
        return {name: layer.params[key] for name, layer, key in self.parameter_slots()}

    def named_gradients(self) -> dict[str, Any]:
        """Gradients from the last :meth:`backward`, keyed like :meth:`named_parameters`."""
        return {name: layer.grads[key] for name, layer, key in self.parameter_slots()}

    def state_dict(self) -> dict[str, Any]:
        """Parameters and buffers (running statistics) by dotted name."""
        state = self.named_parameters()
        for index, layer in enumerate(self.layers):
            state.update({f"{index}.{key}": value for key, value in layer.buffers.items()})
        return state

    def load_state_dict(self, state: dict[str, Any], source: str = "state") -> None:
        """Copy arrays (of any library) into this model, checking every key and shape first.

        Raises
        ------
        FormatError
            Naming the missing or unexpected key, or the key with both shapes.
        """
        expected = {name: tuple(value.shape) for name, value in self.state_dict().items()}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise FormatError(
                f"{source}: does not match this model (missing keys {missing}, unexpected keys {unexpected})"
            )
        for name, shape in expected.items():
            if tuple(state[name].shape) != shape:
                raise FormatError(
                    f"{source}: parameter {name!r} has shape {tuple(state[name].shape)}, the model expects {shape}"
                )
        for index, layer in enumerate(self.layers):
            for store in (layer.params, layer.buffers):
                for key in store:
                    store[key] = self.backend.asarray(state[f"{index}.{key}"])

    @property
    def n_parameters(self) -> int:
        """Number of trainable scalars."""
        return sum(int(np.prod(value.shape)) for value in self.named_parameters().values())

    def reseed(self, *entropy: int) -> None:
        """Restart dropout's random streams from ``(seed, *entropy)``; the trainer passes the epoch."""
        for index, layer in enumerate(self.layers):
            layer.reseed([self.seed, DROPOUT_STREAM, *entropy, index])

    def to(self, backend: Backend | str) -> Sequential:
        """Move the model to another backend (in place) and return it."""
        self.backend = get_backend(backend)
        for layer in self.layers:
            layer.to(self.backend)
        self.reseed(self.seed)
        return self

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """A JSON-serializable description that rebuilds the architecture."""
        return {
            "layers": [{"type": type(layer).__name__, **layer.config()} for layer in self.layers],
            "loss": {"type": type(self.loss_fn).__name__, **self.loss_fn.config()},
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], *, backend: Backend | str = "cpu", seed: int = 0) -> Sequential:
        """Rebuild a model (freshly initialized) from :meth:`config`."""
        layers = [_construct(Layer.registry, spec, "layer") for spec in config["layers"]]
        loss = _construct(Loss.registry, config["loss"], "loss")
        return cls(layers, loss, backend=backend, seed=seed)

    def save(self, path: str | os.PathLike) -> Path:
        """Write architecture and weights to an ``.npz`` file atomically; the model stays on its device."""
        arrays = {name: self.backend.to_numpy(value) for name, value in self.state_dict().items()}
        return write_npz(path, arrays, {"kind": "model", "config": self.config(), "seed": self.seed})

    def _check_input(self, x: Any) -> None:
        self.backend.check_array(x, "Sequential input")
        if self.check_values and bool(self.backend.xp.any(self.backend.xp.isnan(x))):
            raise ValueError("Sequential input contains NaN; clean or impute the data before training")

    def __repr__(self) -> str:
        lines = [f"  ({i}) {layer!r}" for i, layer in enumerate(self.layers)]
        lines.append(f"  loss: {self.loss_fn!r}")
        return f"Sequential on {self.backend.name}, {self.n_parameters:,} parameters\n" + "\n".join(lines)


def load(path: str | os.PathLike, backend: Backend | str = "cpu") -> Sequential:
    """Load a model written by :meth:`Sequential.save` onto ``backend`` (any backend)."""
    arrays, header = read_npz(path, "model")
    model = Sequential.from_config(header["config"], backend=backend, seed=header.get("seed", 0))
    model.load_state_dict(arrays, source=str(path))
    return model


def _construct(registry: dict[str, type], spec: dict[str, Any], what: str) -> Any:
    spec = dict(spec)
    kind = spec.pop("type")
    if kind not in registry:
        raise FormatError(f"unknown {what} type {kind!r} in the saved configuration")
    return registry[kind](**spec)


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
        ``[n_in, hidden..., n_out]``, e.g. ``[784, 256, 128, 10]``.
    activation : {"relu", "leaky_relu", "sigmoid", "tanh", "elu"}
        Hidden activation.
    init : str, optional
        Weight initializer; defaults to ``"he"`` for ReLU-like activations, ``"xavier"`` otherwise.
    std : float, optional
        Standard deviation when ``init="normal"``.
    dropout : float
        Dropout probability after each hidden activation (0 disables it).
    batchnorm : bool
        Insert BatchNorm1d before each hidden activation.
    loss, backend, seed
        As for :class:`Sequential`.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    if len(sizes) < 2:
        raise ValueError(f"mlp needs at least input and output sizes, got {list(sizes)}")
    if init is None:
        init = "he" if activation in ("relu", "leaky_relu", "elu") else "xavier"
    layers: list[Layer] = []
    for index, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(Affine(n_in, n_out, init=init, std=std))
        if index < len(sizes) - 2:
            if batchnorm:
                layers.append(BatchNorm1d(n_out))
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(Dropout(dropout))
    return Sequential(layers, loss, backend=backend, seed=seed)



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
    the activation (and dropout) between them. The defaults build the two-conv network of issue 8:
    conv 1->32 3x3, ReLU, max-pool 2; conv 32->64 3x3, ReLU, max-pool 2; flatten; 3136->128, ReLU,
    dropout 0.5; 128->10.

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
        init = "he" if activation in ("relu", "leaky_relu", "elu") else "xavier"
    layers: list[Layer] = []
    shape: tuple[int, ...] = (channels[0], *(image_size if isinstance(image_size, tuple | list) else
                                            (image_size, image_size)))
    for c_in, c_out in itertools.pairwise(channels):
        conv = Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, init=init)
        shape = conv.output_shape(shape)
        layers.append(conv)
        if batchnorm:
            layers.append(BatchNorm2d(c_out))
        layers.append(ACTIVATIONS[activation]())
        if pool > 1:
            layers.append(MaxPool2d(pool))
            shape = layers[-1].output_shape(shape)
    layers.append(Flatten())
    dense = [int(np.prod(shape)), *sizes]
    for index, (n_in, n_out) in enumerate(itertools.pairwise(dense)):
        layers.append(Affine(n_in, n_out, init=init))
        if index < len(dense) - 2:
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(Dropout(dropout))
    return Sequential(layers, loss, backend=backend, seed=seed)
