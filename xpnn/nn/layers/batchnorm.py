"""Batch normalization over the batch axis (and, for images, the spatial axes)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...core.validation import check_positive_int, check_real
from .base import Layer

__all__ = ["BatchNorm1d", "BatchNorm2d"]


class BatchNorm1d(Layer):
    """Normalize each feature by batch statistics (training) or running statistics (evaluation).

    ``y = gamma · (x - mean) / sqrt(var + eps) + beta``. In training the running statistics move by
    ``momentum`` towards the batch's (the running variance uses the unbiased estimate, as PyTorch does),
    in place where the library updates arrays in place (:meth:`xpnn.Backend.assign`).

    Parameters
    ----------
    n_features : int
        Features per sample.
    momentum : float
        Weight of the newest batch in the running statistics.
    eps : float
        Added to the variance for stability.

    Shapes: ``x`` (N, n_features) -> ``y`` (N, n_features).
    """

    def __init__(self, n_features: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.n_features = check_positive_int("BatchNorm1d", "n_features", n_features)
        self.momentum = check_real("BatchNorm1d", "momentum", momentum, low=0.0, high=1.0)
        self.eps = check_real("BatchNorm1d", "eps", eps, low=0.0, low_open=True)
        self.x_hat: Any = None
        self.inv_std: Any = None
        self.train_mode = False

    def initialize(self, rng: np.random.Generator) -> None:
        be, shape = self.backend, (self.n_features,)
        self.params = {"gamma": be.ones(shape), "beta": be.zeros(shape)}
        self.grads = {"gamma": be.zeros(shape), "beta": be.zeros(shape)}
        self.buffers = {"running_mean": be.zeros(shape), "running_var": be.ones(shape)}

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """``gamma``, ``beta``, ``running_mean`` and ``running_var``, each (n_features,)."""
        shape = (self.n_features,)
        return {"gamma": shape, "beta": shape, "running_mean": shape, "running_var": shape}

    def forward(self, x: Any, *, train: bool = False) -> Any:
        self._require_built()
        xp = self.xp
        if getattr(x, "ndim", None) != 2 or x.shape[1] != self.n_features:
            raise ValueError(
                f"{self!r}: expected input of shape (N, {self.n_features}), got {tuple(getattr(x, 'shape', ()))}"
            )
        if train:
            n = x.shape[0]
            if n < 2:
                raise ValueError(f"{self!r}: training needs at least 2 samples per batch, got {n}")
            mean = xp.mean(x, axis=0)
            centered = x - mean
            var = xp.mean(centered * centered, axis=0)
            m, be = self.momentum, self.backend
            # Written into the same arrays where the library allows, so that a replayed CUDA graph updates them.
            be.assign(self.buffers, "running_mean", (1 - m) * self.buffers["running_mean"] + m * mean)
            be.assign(self.buffers, "running_var", (1 - m) * self.buffers["running_var"] + m * var * (n / (n - 1)))
        else:
            centered = x - self.buffers["running_mean"]
            var = self.buffers["running_var"]
        self.train_mode = train
        self.inv_std = 1.0 / xp.sqrt(var + self.eps)
        self.x_hat = centered * self.inv_std
        return self.params["gamma"] * self.x_hat + self.params["beta"]

    def backward(self, dy: Any) -> Any:
        xp = self.xp
        self.grads["beta"] = xp.sum(dy, axis=0)
        self.grads["gamma"] = xp.sum(dy * self.x_hat, axis=0)
        d_xhat = dy * self.params["gamma"]
        if not self.train_mode:
            return d_xhat * self.inv_std
        # The batch mean and variance depend on every sample, which adds the two centring terms.
        mean_d = xp.mean(d_xhat, axis=0)
        mean_d_xhat = xp.mean(d_xhat * self.x_hat, axis=0)
        return (d_xhat - mean_d - self.x_hat * mean_d_xhat) * self.inv_std

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """``(n_features,)``; any other per-sample shape is refused."""
        if tuple(input_shape) != (self.n_features,):
            raise ValueError(f"{self!r}: expects samples of shape ({self.n_features},), got {tuple(input_shape)}")
        return (self.n_features,)

    def config(self) -> dict[str, Any]:
        return {"n_features": self.n_features, "momentum": self.momentum, "eps": self.eps}


class BatchNorm2d(BatchNorm1d):
    """Batch normalization per channel of NCHW images, over the batch and both spatial axes.

    It is :class:`BatchNorm1d` applied to every pixel's channel vector: the input is viewed as
    (N·H·W, C) rows, so the statistics, the running averages (unbiased over N·H·W values, as PyTorch)
    and the backward pass are BatchNorm1d's.

    Parameters
    ----------
    num_features : int
        Channels C.
    momentum, eps : float
        As for :class:`BatchNorm1d`.

    Shapes: ``x`` (N, C, H, W) -> ``y`` (N, C, H, W); ``gamma``, ``beta`` and the running statistics (C,).
    """

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5):
        if not isinstance(num_features, int | np.integer) or num_features < 1:
            raise ValueError(f"BatchNorm2d: num_features must be a positive integer, got {num_features!r}")
        super().__init__(num_features, momentum, eps)
        self.image_shape: tuple[int, int, int, int] | None = None

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of gamma, beta, running_mean and running_var, from the constructor arguments alone."""
        return {name: (self.n_features,) for name in ("gamma", "beta", "running_mean", "running_var")}

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-sample shape (C, H, W) -> the same; ValueError for a wrong shape."""
        if len(input_shape) != 3 or input_shape[0] != self.n_features:
            raise ValueError(f"{self!r}: expected input of shape ({self.n_features}, H, W), got {tuple(input_shape)}")
        return tuple(input_shape)

    def forward(self, x: Any, *, train: bool = False) -> Any:
        self._require_built()
        shape = tuple(getattr(x, "shape", ()))
        if len(shape) != 4 or shape[1] != self.n_features:
            raise ValueError(f"{self!r}: expected input of shape (N, {self.n_features}, H, W), got {shape}")
        n, c, h, w = shape
        self.image_shape = (n, h, w, c)
        y = super().forward(self._rows(x), train=train)
        return self._images(y)

    def backward(self, dy: Any) -> Any:
        return self._images(super().backward(self._rows(dy)))

    def _rows(self, a: Any) -> Any:
        """(N, C, H, W) -> (N·H·W, C); free when ``a`` is channels-last in memory, as Conv2d's outputs are."""
        return self.xp.reshape(self.xp.permute_dims(a, (0, 2, 3, 1)), (-1, self.n_features))

    def _images(self, rows: Any) -> Any:
        return self.xp.permute_dims(self.xp.reshape(rows, self.image_shape), (0, 3, 1, 2))

    def config(self) -> dict[str, Any]:
        return {"num_features": self.n_features, "momentum": self.momentum, "eps": self.eps}
