"""Inverted dropout, its masks a pure function of (key, step, element) that every library draws alike."""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator
from typing import Any

from ...core.backend import Seed, seed_key
from ...core.validation import check_real
from .base import Layer

__all__ = ["Dropout", "first_row", "global_rows"]

#: Index, in the whole (global) batch, of the first sample that training forwards in this context receive.
_FIRST_ROW: contextvars.ContextVar[int] = contextvars.ContextVar("xpnn_first_row", default=0)


def first_row() -> int:
    """Index in the global batch of the first sample of the batch being trained in this thread (0 by default)."""
    return _FIRST_ROW.get()


@contextlib.contextmanager
def global_rows(first: int) -> Iterator[None]:
    """Inside, training forwards see a slice of a larger batch that starts at sample ``first``.

    Data parallelism sets it (a worker thread's shard, an MPI rank's slice), so that each slice draws its part
    of the mask the whole batch would draw in one process: the masks do not depend on how a batch is split.
    """
    token = _FIRST_ROW.set(int(first))
    try:
        yield
    finally:
        _FIRST_ROW.reset(token)


class Dropout(Layer):
    """Zero each input with probability ``p`` in training and scale the rest by 1/(1-p).

    In evaluation (``train=False``) it is the identity, so nothing changes at test time.

    The mask of a training forward is a hash of (``seed``, ``step``, the element's index in the global batch)
    (:meth:`xpnn.Backend.dropout_mask`): NumPy, CuPy, torch and array-api-strict draw the same bits, and a
    worker thread or MPI rank that trains a slice of a batch draws that slice of the one-process mask. Both
    live in :attr:`buffers` as 0-d int64 arrays saved with the model and checkpoints: ``seed`` (a 32-bit key
    from the model's seed and this layer's index) and ``step`` (training forwards so far, advanced in place
    where the library allows it, so that a replayed CUDA graph draws a new mask each time).

    Parameters
    ----------
    p : float
        Drop probability, 0 <= p < 1.

    Shapes: any -> same.
    """

    #: Buffers that files written before they existed lack; loading such a file keeps the built values.
    optional_buffers = ("seed", "step")

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = check_real("Dropout", "p", p, low=0.0, high=1.0, high_open=True)
        self.keep: Any = None

    def initialize(self, rng: Any) -> None:
        be = self.backend
        self.buffers = {"seed": be.zeros((), dtype=be.xp.int64), "step": be.zeros((), dtype=be.xp.int64)}

    def reseed(self, seed: Seed) -> None:
        """Restart the masks: the key from ``seed`` (an int or a sequence of ints), the step count at 0."""
        be = self.backend
        be.assign(self.buffers, "seed", be.asarray(seed_key(seed), dtype=be.xp.int64))
        be.assign(self.buffers, "step", be.zeros((), dtype=be.xp.int64))

    def advance(self) -> None:
        """Count a training step that did not reach this layer (an MPI rank left without samples)."""
        self.backend.assign(self.buffers, "step", self.buffers["step"] + 1)

    def forward(self, x: Any, *, train: bool = False) -> Any:
        self._require_built()
        if not train or self.p == 0.0:
            self.keep = None
            return x
        shape = tuple(x.shape)
        first = first_row() * math.prod(shape[1:])
        # The mask holds 0 or 1/(1-p), so forward and backward are one multiply each.
        self.keep = self.backend.dropout_mask(self.buffers["seed"], self.buffers["step"], shape, first, self.p)
        self.advance()
        return x * self.keep

    def backward(self, dy: Any) -> Any:
        keep, self.keep = self.keep, None
        return dy if keep is None else dy * keep

    def config(self) -> dict[str, Any]:
        return {"p": self.p}
