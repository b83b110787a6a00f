"""Batch normalization over the batch axis."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..validation import check_positive_int, check_real
from .base import Layer

__all__ = ["BatchNorm1d"]


class BatchNorm1d(Layer):
    """Normalize each feature by batch statistics (training) or running statistics (evaluation).

    ``y = gamma · (x - mean) / sqrt(var + eps) + beta``. In training the running statistics move by
    ``momentum`` towards the batch's (the running variance uses the unbiased estimate, as PyTorch does).

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
            m = self.momentum
            self.buffers["running_mean"] = (1 - m) * self.buffers["running_mean"] + m * mean
            self.buffers["running_var"] = (1 - m) * self.buffers["running_var"] + m * var * (n / (n - 1))
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
