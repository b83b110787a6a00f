"""Data-parallel training: the one module that knows about MPI (imported only when asked for).

The trainer talks to a communicator object, never to mpi4py. :class:`Local` is the communicator of a
single process; the MPI communicator has the same methods.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Local"]


class Local:
    """The communicator of one process: every rank-aware step is the identity.

    Attributes
    ----------
    rank, size, local_rank : int
        0, 1 and 0.
    """

    rank = 0
    size = 1
    local_rank = 0

    @property
    def is_root(self) -> bool:
        """Whether this rank prints and writes files (rank 0)."""
        return self.rank == 0

    def shard(self, start: int, stop: int) -> tuple[int, int]:
        """This rank's contiguous part ``[lo, hi)`` of the global batch ``[start, stop)``."""
        return start, stop

    def broadcast_parameters(self, model: Any) -> None:
        """Make every rank's parameters and buffers equal to rank 0's."""

    def allreduce_gradients(self, model: Any, local_count: int, global_count: int) -> None:
        """Turn each rank's mean gradient over ``local_count`` samples into the mean over ``global_count``."""

    def sum(self, values: Any) -> np.ndarray:
        """Element-wise sum over ranks of a small host vector (metrics), as float64."""
        return np.asarray(values, dtype=np.float64)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (a decision all ranks must share)."""
        return bool(flag)
