"""Feature standardization as a layer, so that a saved model applies it wherever it predicts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import Layer

__all__ = ["Standardize"]


class Standardize(Layer):
    """``y = (x - mean) / std`` with statistics fixed from training data (Keras' ``Normalization``).

    The statistics are buffers: saved with the model and its checkpoints, never trained. Set them once with
    :meth:`adapt` (the training set's mean and standard deviation); a freshly built layer is the identity.

    Parameters
    ----------
    shape : sequence of int
        Shape of the statistics, broadcast against one sample: ``(D,)`` scales each of D features of
        (N, D) rows; ``(C, 1, 1)`` each channel of (N, C, H, W) images.

    Shapes: ``x`` ``(N, *sample)`` -> ``y`` the same.
    """

    def __init__(self, shape: Sequence[int]):
        super().__init__()
        if isinstance(shape, int | np.integer):
            shape = (shape,)
        shape = tuple(shape)
        if not shape or not all(isinstance(n, int | np.integer) and not isinstance(n, bool) and n > 0 for n in shape):
            raise ValueError(f"Standardize: shape must be positive integers such as (784,) or (3, 1, 1), got {shape!r}")
        self.shape = tuple(int(n) for n in shape)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Two buffers of ``shape``: ``mean`` and ``std``."""
        return {"mean": self.shape, "std": self.shape}

    def initialize(self, rng: np.random.Generator) -> None:
        self.buffers["mean"] = self.backend.zeros(self.shape)
        self.buffers["std"] = self.backend.ones(self.shape)

    def adapt(self, x: Any) -> Standardize:
        """Set ``mean`` and ``std`` from host data ``x`` ``(N, *sample)``, reducing over every axis the statistics
        broadcast along. A feature (or channel) that does not vary gets std 1, so it is centred, not blown up.

        Returns
        -------
        Standardize
            ``self``.
        """
        self._require_built()
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != len(self.shape) + 1 or x.shape[0] == 0:
            raise ValueError(f"{self!r}: cannot adapt to data of shape {x.shape}")
        self.output_shape(x.shape[1:])
        axes = (0, *(1 + i for i, s in enumerate(self.shape) if s == 1 and x.shape[1 + i] != 1))
        mean = x.mean(axis=axes, keepdims=True)[0]
        std = x.std(axis=axes, keepdims=True)[0]
        tiny = 1e-7 * np.maximum(np.abs(mean), 1.0)  # below this the spread is float rounding, not signal
        std = np.where(std > tiny, std, 1.0)
        self.buffers["mean"] = self.backend.asarray(mean.reshape(self.shape))
        self.buffers["std"] = self.backend.asarray(std.reshape(self.shape))
        return self

    def forward(self, x: Any, *, train: bool = False) -> Any:
        self._require_built()
        self.output_shape(tuple(x.shape[1:]))  # else NumPy broadcasts (N, 5) against (4,) or, worse, (N, 1)
        return (x - self.buffers["mean"]) / self.buffers["std"]

    def backward(self, dy: Any) -> Any:
        return dy / self.buffers["std"]

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(input_shape) != len(self.shape) or any(s != 1 and s != n for s, n in zip(self.shape, input_shape,
                                                                                         strict=True)):
            raise ValueError(f"{self!r}: expected samples of shape {self.shape} (1 broadcasts), got {input_shape}")
        return tuple(input_shape)

    def config(self) -> dict[str, Any]:
        return {"shape": list(self.shape)}
