"""Inverted dropout."""

from __future__ import annotations

from typing import Any

from ..backend import Seed
from .base import Layer

__all__ = ["Dropout"]


class Dropout(Layer):
    """Zero each input with probability ``p`` in training and scale the rest by 1/(1-p).

    In evaluation (``train=False``) it is the identity, so nothing changes at test time.

    Parameters
    ----------
    p : float
        Drop probability, 0 <= p < 1.

    Shapes: any -> same.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p
        self.keep: Any = None
        self.random: Any = None

    def reseed(self, seed: Seed) -> None:
        self.random = self.backend.random(seed)

    def forward(self, x: Any, *, train: bool = False) -> Any:
        self._require_built()
        if not train or self.p == 0.0:
            self.keep = None
            return x
        self.keep = self.random.uniform(tuple(x.shape)) >= self.p
        return self.xp.where(self.keep, x * (1.0 / (1.0 - self.p)), 0.0)

    def backward(self, dy: Any) -> Any:
        if self.keep is None:
            return dy
        return self.xp.where(self.keep, dy * (1.0 / (1.0 - self.p)), 0.0)

    def config(self) -> dict[str, Any]:
        return {"p": self.p}
