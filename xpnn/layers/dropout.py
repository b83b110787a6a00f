"""Inverted dropout."""

from __future__ import annotations

from typing import Any

from ..backend import Seed
from ..validation import check_real
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
        self.p = check_real("Dropout", "p", p, low=0.0, high=1.0, high_open=True)
        self.keep: Any = None
        self.random: Any = None

    def reseed(self, seed: Seed) -> None:
        self.random = self.backend.random(seed)

    def forward(self, x: Any, *, train: bool = False) -> Any:
        self._require_built()
        if not train or self.p == 0.0:
            self.keep = None
            return x
        # The mask holds 0 or 1/(1-p), so forward and backward are one multiply each.
        keep = self.random.uniform(tuple(x.shape)) >= self.p
        self.keep = self.xp.astype(keep, x.dtype) * (1.0 / (1.0 - self.p))
        return x * self.keep

    def backward(self, dy: Any) -> Any:
        keep, self.keep = self.keep, None
        return dy if keep is None else dy * keep

    def config(self) -> dict[str, Any]:
        return {"p": self.p}
