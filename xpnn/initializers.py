"""Weight initializers.

Each initializer draws on the host from a NumPy generator and returns a float64 NumPy array; the layer
copies it to its backend. Drawing on the host makes a CPU run and a GPU run with the same seed start
from exactly the same weights.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

__all__ = ["get_initializer", "he", "normal", "uniform", "xavier", "zeros"]

Initializer = Callable[[np.random.Generator, tuple[int, int]], np.ndarray]


def normal(rng: np.random.Generator, shape: tuple[int, ...], std: float = 0.01) -> np.ndarray:
    """N(0, std²), the seeds' ``0.01 * randn``."""
    return std * rng.standard_normal(shape)


def uniform(
    rng: np.random.Generator, shape: tuple[int, ...], low: float = -1.0, high: float = 1.0
) -> np.ndarray:
    """U[low, high); the 11-line network uses [-1, 1)."""
    return rng.uniform(low, high, shape)


def xavier(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Glorot uniform: U[-a, a] with a = sqrt(6 / (fan_in + fan_out)); for tanh and sigmoid."""
    fan_in, fan_out = shape
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape)


def he(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """He / Kaiming normal: N(0, 2 / fan_in); for ReLU-like activations."""
    fan_in = shape[0]
    return np.sqrt(2.0 / fan_in) * rng.standard_normal(shape)


def zeros(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """All zeros (biases)."""
    return np.zeros(shape)


_BY_NAME: dict[str, Initializer] = {
    "normal": normal,
    "uniform": uniform,
    "xavier": xavier,
    "glorot": xavier,
    "he": he,
    "kaiming": he,
    "zeros": zeros,
}


def get_initializer(spec: str | Initializer, **kwargs: float) -> Initializer:
    """Look an initializer up by name (``normal``, ``uniform``, ``xavier``/``glorot``, ``he``/``kaiming``).

    Parameters
    ----------
    spec : str or callable
        Name, or a callable ``f(rng, shape) -> numpy.ndarray`` returned unchanged.
    **kwargs
        Bound to the initializer, e.g. ``std=0.01`` for ``normal``.
    """
    if callable(spec):
        return partial(spec, **kwargs) if kwargs else spec
    try:
        function = _BY_NAME[spec]
    except KeyError:
        raise ValueError(f"unknown initializer {spec!r}; choose one of {sorted(_BY_NAME)}") from None
    return partial(function, **kwargs) if kwargs else function
