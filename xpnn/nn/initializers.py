"""Weight initializers.

Each initializer draws on the host from a NumPy generator and returns a float64 NumPy array; the layer
copies it to its backend. Drawing on the host makes a CPU run and a GPU run with the same seed start
from exactly the same weights. Shapes are xpnn's ``(fan_in, fan_out)``.

The initializers of five classic tutorials on hand-written backpropagation are all available by name, so
each tutorial's setting can be run as published:

==============================  =====================================  ===========================
tutorial                        its initializer                        xpnn name
==============================  =====================================  ===========================
Deep Learning from Scratch ch.5 ``0.01 * randn``                       ``"normal"`` (std 0.01)
11-line network                 ``2 * random - 1``, U[-1, 1)           ``"uniform"``
fcn-base-numpy, "xavier"        ``randn / sqrt(n_out / 2)``            ``"fcn_xavier"``
fcn-base-numpy, "normal"        ``0.01 * randn``                       ``"normal"``
fcn-base-numpy, "uniform"       ``0.01 * rand``, U[0, 0.01)            ``"fcn_uniform"``
==============================  =====================================  ===========================
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

__all__ = ["INITIALIZERS", "fcn_uniform", "fcn_xavier", "get_initializer", "he", "normal", "uniform", "xavier", "zeros"]

Initializer = Callable[[np.random.Generator, tuple[int, int]], np.ndarray]


def normal(rng: np.random.Generator, shape: tuple[int, ...], std: float = 0.01) -> np.ndarray:
    """N(0, std²), the classic tutorials' ``0.01 * randn``."""
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


def fcn_xavier(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """fcn-base-numpy's "xavier": N(0, 2 / fan_out), its ``randn(n_out, n_in) / sqrt(n_out / 2)``.

    Not Glorot (it scales by the layer's output width only); with plain SGD at lr 0.01 it learns faster
    than He on MNIST-like data because the last layer starts with larger weights.
    """
    fan_out = shape[1]
    return np.sqrt(2.0 / fan_out) * rng.standard_normal(shape)


def fcn_uniform(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """fcn-base-numpy's "uniform": U[0, 0.01), its ``rand(n_out, n_in) * 0.01`` (all weights positive)."""
    return 0.01 * rng.random(shape)


def zeros(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """All zeros (biases)."""
    return np.zeros(shape)


INITIALIZERS: dict[str, Initializer] = {
    "normal": normal,
    "uniform": uniform,
    "xavier": xavier,
    "glorot": xavier,
    "he": he,
    "kaiming": he,
    "fcn_xavier": fcn_xavier,
    "fcn_uniform": fcn_uniform,
    "zeros": zeros,
}


def get_initializer(spec: str | Initializer, **kwargs: float) -> Initializer:
    """Look an initializer up by name (``normal``, ``uniform``, ``xavier``/``glorot``, ``he``/``kaiming``,
    and the tutorials' ``fcn_xavier``, ``fcn_uniform``).

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
        function = INITIALIZERS[spec]
    except KeyError:
        raise ValueError(f"unknown initializer {spec!r}; choose one of {sorted(INITIALIZERS)}") from None
    return partial(function, **kwargs) if kwargs else function
