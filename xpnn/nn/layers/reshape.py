"""Reshaping layers."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Layer

__all__ = ["Flatten"]


class Flatten(Layer):
    """Flatten every axis but the batch axis, in C order (as ``torch.flatten(x, 1)``).

    Shapes: ``x`` (N, C, H, W) (or any (N, ...) with at least one axis after N) -> ``y`` (N, C·H·W).
    """

    def __init__(self) -> None:
        super().__init__()
        self.input_shape: tuple[int, ...] | None = None

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """No parameters and no buffers."""
        return {}

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-sample shape (C, H, W) -> (C·H·W,); ValueError for a shape without any axis."""
        if len(input_shape) < 1:
            raise ValueError(f"{self!r}: expected input of shape (N, ...) with at least 2 axes, got (N,)")
        return (int(np.prod(input_shape)),)

    def forward(self, x: Any, *, train: bool = False) -> Any:
        self._require_built()
        shape = tuple(getattr(x, "shape", ()))
        if len(shape) < 2:
            raise ValueError(f"{self!r}: expected input of shape (N, ...) with at least 2 axes, got {shape}")
        self.input_shape = shape
        return self.xp.reshape(x, (shape[0], int(np.prod(shape[1:]))))

    def backward(self, dy: Any) -> Any:
        return self.xp.reshape(dy, self.input_shape)
