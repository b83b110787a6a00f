"""Numerical gradient checking: central differences in float64 against the hand-written backward."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import array_api_compat
import numpy as np

from ..core.backend import Backend
from ..nn.layers.base import Layer
from ..nn.losses import Loss
from .sequential import Sequential

__all__ = ["gradcheck", "numerical_gradient", "relative_error"]


def numerical_gradient(f: Callable[[], float], value: np.ndarray, assign: Callable[[np.ndarray], None],
                       eps: float = 1e-6) -> np.ndarray:
    """Central-difference gradient (f(v + h) - f(v - h)) / 2h of ``f`` with respect to ``value``.

    ``assign(array)`` installs a perturbed copy of ``value`` before each call of ``f``; the original is
    installed again at the end.
    """
    grad = np.zeros_like(value)
    for index in np.ndindex(value.shape):
        shifted = value.copy()
        shifted[index] = value[index] + eps
        assign(shifted)
        upper = f()
        shifted[index] = value[index] - eps
        assign(shifted)
        lower = f()
        grad[index] = (upper - lower) / (2 * eps)
    assign(value)
    return grad


def relative_error(analytic: np.ndarray, numeric: np.ndarray, floor: float = 1e-3) -> float:
    """max |analytic - numeric| divided by the largest magnitude of either gradient.

    A gradient that is truly zero (a bias in front of batch normalization) has only rounding noise
    on both sides, so the divisor is at least ``floor``: below it the error is absolute.
    """
    scale = max(np.max(np.abs(analytic), initial=0.0), np.max(np.abs(numeric), initial=0.0), floor)
    return float(np.max(np.abs(analytic - numeric), initial=0.0) / scale)


def gradcheck(
    target: Layer | Loss | Sequential,
    x: Any,
    t: Any = None,
    *,
    eps: float = 1e-6,
    train: bool = True,
    before: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Compare backprop with numerical gradients for every parameter and for the input.

    Parameters
    ----------
    target : Layer, Loss or Sequential
        What to check. A layer is checked through the scalar ``sum(y * r)`` with a fixed random
        ``r``, so every output contributes; a loss takes ``(x, t)``; a model uses its own loss.
    x : array
        Input (N, ...), on the target's backend; the backend should use float64.
    t : array, optional
        Targets for a loss or a model.
    eps : float
        Step of the central difference.
    train : bool
        Mode of the forward pass (dropout and batch normalization behave as in training when true).
    before : callable, optional
        Called before every forward pass, e.g. to reseed dropout so that its mask stays fixed.

    Returns
    -------
    dict
        Maximum relative error (see :func:`relative_error`) per parameter name and for ``"input"``.
    """
    backend: Backend
    if isinstance(target, Sequential):
        backend = target.backend
        params = target.named_parameters()

        def forward(x_: Any) -> Any:
            return target.loss(x_, t, train=train)

        def backward() -> tuple[Any, dict[str, Any]]:
            return target.backward(input_grad=True), target.named_gradients()

        def assign_param(name: str, value: Any) -> None:
            index, key = name.split(".", 1)
            target.layers[int(index)].params[key] = value

    elif isinstance(target, Loss):
        backend = _backend_of(x)
        params = {}

        def forward(x_: Any) -> Any:
            return target.forward(x_, t)

        def backward() -> tuple[Any, dict[str, Any]]:
            return target.backward(), {}

        assign_param = None  # type: ignore[assignment]
    else:
        if not isinstance(target, Layer):
            raise TypeError(f"gradcheck: expected a Layer, Loss or Sequential, got {type(target).__name__}")
        if target.backend is None:
            raise ValueError(f"gradcheck: {target!r} has no parameters yet; build it first, e.g. "
                             "layer.build(get_backend('cpu', dtype='float64'))")
        backend = target.backend
        params = dict(target.params)
        y = target.forward(x, train=train)
        weights = backend.asarray(np.random.default_rng(1234).standard_normal(tuple(y.shape)))

        def forward(x_: Any) -> Any:
            return backend.xp.sum(target.forward(x_, train=train) * weights)

        def backward() -> tuple[Any, dict[str, Any]]:
            return target.backward(weights), dict(target.grads)

        def assign_param(name: str, value: Any) -> None:
            target.params[name] = value

    if backend.dtype_name != "float64":
        raise ValueError(f"gradcheck needs a float64 backend, got {backend!r}; use get_backend(..., dtype='float64')")

    def run(x_: Any) -> Any:
        if before is not None:
            before()
        return forward(x_)

    run(x)
    dx, grads = backward()
    analytic = {name: backend.to_numpy(g) for name, g in grads.items()}
    analytic["input"] = backend.to_numpy(dx)

    errors: dict[str, float] = {}
    for name, value in params.items():
        host = backend.to_numpy(value).astype(np.float64)
        numeric = numerical_gradient(
            lambda: float(backend.to_numpy(run(x))),
            host,
            lambda a, name=name: assign_param(name, backend.asarray(a)),
            eps,
        )
        errors[name] = relative_error(analytic[name], numeric)

    current = {"x": x}
    numeric_x = numerical_gradient(
        lambda: float(backend.to_numpy(run(current["x"]))),
        backend.to_numpy(x).astype(np.float64),
        lambda a: current.__setitem__("x", backend.asarray(a)),
        eps,
    )
    errors["input"] = relative_error(analytic["input"], numeric_x)
    return errors


def _backend_of(x: Any) -> Backend:
    dtype = str(x.dtype).split(".")[-1]
    return Backend.from_namespace(array_api_compat.array_namespace(x), array_api_compat.device(x), dtype)
