"""Learning-rate schedules: a factor of the learning rate per epoch."""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["get_schedule"]


def get_schedule(name: str, epochs: int, step_size: int = 10, gamma: float = 0.1) -> Callable[[int], float]:
    """A learning-rate factor per (0-based) epoch.

    Parameters
    ----------
    name : {"constant", "step", "cosine"}
        ``step`` multiplies by ``gamma`` every ``step_size`` epochs; ``cosine`` falls from 1 to 0 over
        ``epochs`` along half a cosine.
    epochs : int
        Total number of epochs (for ``cosine``).
    """
    if name == "constant":
        return lambda epoch: 1.0
    if name == "step":
        return lambda epoch: gamma ** (epoch // step_size)
    if name == "cosine":
        return lambda epoch: 0.5 * (1 + math.cos(math.pi * epoch / max(epochs, 1)))
    raise ValueError(f"unknown schedule {name!r}; choose 'constant', 'step' or 'cosine'")
