"""The fully connected layer ``y = x·W + b``."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...core.validation import check_bool, check_positive_int, check_real
from ..initializers import get_initializer
from .base import Layer

__all__ = ["Affine", "Linear"]


class Affine(Layer):
    """Fully connected layer ``y = x·W + b``.

    Parameters
    ----------
    n_in, n_out : int
        Input and output features; ``W`` has shape (n_in, n_out), ``b`` shape (n_out,).
    init : str
        Weight initializer name (see :mod:`xpnn.initializers`): ``"he"``, ``"xavier"``, ``"normal"``,
        ``"uniform"``.
    std : float, optional
        Standard deviation for ``init="normal"`` (the classic tutorials use 0.01).
    bias : bool
        Whether to learn a bias.

    Shapes: ``x`` (N, n_in) -> ``y`` (N, n_out).
    """

    def __init__(self, n_in: int, n_out: int, init: str = "he", std: float | None = None, bias: bool = True):
        super().__init__()
        self.n_in, self.n_out = check_positive_int("Affine", "n_in", n_in), check_positive_int("Affine", "n_out", n_out)
        if std is not None:
            if init != "normal":
                raise ValueError(f"Affine: std is only used by init='normal', got init={init!r}; "
                                 "drop std or use init='normal'")
            std = check_real("Affine", "std", std, low=0.0)
        self.init, self.std, self.bias = init, std, check_bool("Affine", "bias", bias)
        self._initializer = get_initializer(init, **({} if std is None else {"std": std}))
        self.x: Any = None

    def initialize(self, rng: np.random.Generator) -> None:
        be = self.backend
        self.params["W"] = be.asarray(self._initializer(rng, (self.n_in, self.n_out)))
        if self.bias:
            self.params["b"] = be.zeros((self.n_out,))
        self.grads = {key: be.zeros(value.shape) for key, value in self.params.items()}

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """``W`` (n_in, n_out) and, with a bias, ``b`` (n_out,)."""
        return {"W": (self.n_in, self.n_out), **({"b": (self.n_out,)} if self.bias else {})}

    def forward(self, x: Any, *, train: bool = False) -> Any:
        W = self.params["W"]
        if getattr(x, "ndim", None) != 2 or x.shape[1] != self.n_in:
            shape = tuple(getattr(x, "shape", ()))
            raise ValueError(f"{self!r}: expected input of shape (N, {self.n_in}), got {shape}")
        if x.dtype != W.dtype:
            raise TypeError(
                f"{self!r}: expected {W.dtype} input, got {x.dtype}; convert it with backend.asarray(x)"
            )
        self.x = x
        y = self.backend.matmul(x, W)
        if self.bias:
            y += self.params["b"]  # y is ours alone, so adding in place saves a temporary
        return y

    def backward(self, dy: Any) -> Any:
        dx = self.backend.matmul(dy, self.params["W"].T)  # .T: the array API's transpose of a 2-d array
        self.backward_params(dy)  # after dx: an optimizer stepping inside backward may move W here
        return dx

    def backward_params(self, dy: Any) -> None:
        x, self.x = self.x, None  # release the input: backward runs once per forward
        self.set_grad_product("W", x.T, dy)
        if self.bias:
            self.grads["b"] = self.backend.column_sums(dy)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(n_out,)`` for samples of shape ``(n_in,)``; any other input shape is refused."""
        if tuple(input_shape) != (self.n_in,):
            raise ValueError(f"{self!r}: expects samples of shape ({self.n_in},), got {tuple(input_shape)}")
        return (self.n_out,)

    def config(self) -> dict[str, Any]:
        config = {"n_in": self.n_in, "n_out": self.n_out, "init": self.init}
        if self.std is not None:
            config["std"] = self.std
        if not self.bias:
            config["bias"] = False
        return config


Linear = Affine
