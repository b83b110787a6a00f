"""Losses: each turns predictions and targets into a 0-d array and differentiates it.

A loss returns a 0-d array of the backend rather than a Python float, so nothing waits for the device
until someone asks for the number (``float(loss)``).
"""

from __future__ import annotations

from typing import Any, ClassVar

import array_api_compat

from ..core.backend import is_floating, namespace_of, zero_like
from .layers.activations import sigmoid

__all__ = ["BCEWithLogits", "Loss", "MeanSquaredError", "SoftmaxCrossEntropy", "softmax"]


class Loss:
    """``forward(y, t) -> 0-d loss`` and ``backward(dloss=1.0) -> dy``, the gradient for the predictions."""

    registry: ClassVar[dict[str, type[Loss]]] = {}
    #: Check target values (e.g. label range); reads a number back from the device when true.
    check_values: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Loss.registry[cls.__name__] = cls

    def __call__(self, y: Any, t: Any) -> Any:
        return self.forward(y, t)

    def forward(self, y: Any, t: Any) -> Any:
        """The loss of predictions ``y`` (N, ...) against targets ``t``, as a 0-d array."""
        raise NotImplementedError

    def backward(self, dloss: Any = 1.0) -> Any:
        """dL/dy for the last :meth:`forward`, scaled by ``dloss``; shaped like ``y``.

        Once per forward: it releases what the forward kept, and raises RuntimeError when called again.
        """
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def _check_same_shape(self, y: Any, t: Any) -> None:
        if tuple(y.shape) != tuple(t.shape):
            raise ValueError(f"{self!r}: predictions have shape {tuple(y.shape)}, targets {tuple(t.shape)}")

    def _take(self, *names: str) -> tuple[Any, ...]:
        """The arrays the last forward kept for backward, released (backward runs once per forward)."""
        values = tuple(getattr(self, name) for name in names)
        if any(value is None for value in values):
            raise RuntimeError(f"{self!r}.backward() needs a forward first (and runs once per forward); "
                               "compute the loss again before calling backward")
        for name in names:
            setattr(self, name, None)
        return values

    def _check_float(self, xp: Any, a: Any, what: str) -> None:
        if not is_floating(a):
            raise TypeError(f"{self!r}: {what} must be floating point, got {a.dtype}")


def softmax(xp: Any, y: Any) -> Any:
    """Softmax over the last axis of logits ``y`` (N, C), shifted by the row maximum so exp never overflows."""
    e = xp.exp(y - xp.max(y, axis=-1, keepdims=True))
    return e / xp.sum(e, axis=-1, keepdims=True)


def one_hot(xp: Any, labels: Any, n_classes: int, dtype: Any) -> Any:
    """Integer labels (N,) -> one-hot rows (N, n_classes) of ``dtype``, on the labels' device."""
    classes = xp.arange(n_classes, dtype=labels.dtype, device=array_api_compat.device(labels))
    return xp.astype(labels[:, None] == classes, dtype)


class SoftmaxCrossEntropy(Loss):
    """Softmax over classes followed by the mean cross-entropy.

    ``forward(logits, t)``: logits (N, C); ``t`` integer labels (N,) in [0, C) or one-hot / soft
    targets (N, C). Backward gives ``(softmax(logits) - t) / N``.
    Integer labels are checked to lie in [0, C) while ``check_values`` is true.
    """

    def __init__(self) -> None:
        self.probabilities: Any = None
        self.targets: Any = None

    def forward(self, y: Any, t: Any) -> Any:
        xp = namespace_of(y)
        self._check_float(xp, y, "logits")
        if y.ndim != 2:
            raise ValueError(f"{self!r}: expected logits of shape (N, C), got {tuple(y.shape)}")
        n, n_classes = y.shape
        if n_classes < 2:
            raise ValueError(f"{self!r}: needs logits for at least 2 classes, got shape {tuple(y.shape)}; for one "
                             "yes/no output use BCEWithLogits with (N, 1) targets of 0 and 1")
        if t.ndim == 1:
            if t.shape[0] != n:
                raise ValueError(f"{self!r}: {n} logits rows but {t.shape[0]} labels")
            if not xp.isdtype(t.dtype, "integral"):
                raise TypeError(f"{self!r}: 1-d labels must be integers, got {t.dtype}")
            if self.check_values and n and bool(xp.any((t < 0) | (t >= n_classes))):
                raise ValueError(
                    f"{self!r}: labels must lie in [0, {n_classes}), got values from "
                    f"{int(xp.min(t))} to {int(xp.max(t))}"
                )
            t = one_hot(xp, t, n_classes, y.dtype)
        else:
            self._check_same_shape(y, t)
            self._check_float(xp, t, "one-hot targets")
        # Shift by the row maximum so that exp never overflows; log-sum-exp is unchanged by the shift.
        z = y - xp.max(y, axis=1, keepdims=True)
        e = xp.exp(z)
        total = xp.sum(e, axis=1, keepdims=True)
        self.probabilities = e / total
        self.targets = t
        # -Σ t·log p with log p = z - log Σe: one reduction, exact for any targets (soft ones too).
        return xp.sum(t * (xp.log(total) - z)) / n

    def backward(self, dloss: Any = 1.0) -> Any:
        probabilities, targets = self._take("probabilities", "targets")
        return (probabilities - targets) * (dloss / probabilities.shape[0])


class MeanSquaredError(Loss):
    """Mean of (y - t)² over all elements (as ``torch.nn.MSELoss``), or half of it with ``half=True``.

    Shapes: ``y`` and ``t`` the same, e.g. (N, D).
    """

    def __init__(self, half: bool = False):
        self.half = half
        self.diff: Any = None

    def forward(self, y: Any, t: Any) -> Any:
        xp = namespace_of(y)
        self._check_float(xp, y, "predictions")
        self._check_same_shape(y, t)
        self.diff = y - t
        scale = (0.5 if self.half else 1.0) / _size(y)
        return xp.sum(self.diff * self.diff) * scale

    def backward(self, dloss: Any = 1.0) -> Any:
        (diff,) = self._take("diff")
        return diff * (dloss * (1.0 if self.half else 2.0) / _size(diff))

    def config(self) -> dict[str, Any]:
        return {"half": self.half} if self.half else {}


class BCEWithLogits(Loss):
    """Binary cross-entropy on logits: mean of ``-[t·log σ(y) + (1-t)·log(1-σ(y))]``.

    Written as ``max(y, 0) - y·t + log(1 + e^-|y|)``, which is finite for any logit.
    Shapes: ``y`` and ``t`` the same, e.g. (N, 1); targets in [0, 1].
    """

    def __init__(self) -> None:
        self.y: Any = None
        self.t: Any = None

    def forward(self, y: Any, t: Any) -> Any:
        xp = namespace_of(y)
        self._check_float(xp, y, "logits")
        self._check_same_shape(y, t)
        if not is_floating(t):
            t = xp.astype(t, y.dtype)
        if self.check_values and bool(xp.any((t < 0) | (t > 1))):
            raise ValueError(f"{self!r}: targets must lie in [0, 1] (probabilities of the positive class), got "
                             f"values from {float(xp.min(t))} to {float(xp.max(t))}")
        self.y, self.t = y, t
        losses = xp.maximum(y, zero_like(y)) - y * t + xp.log1p(xp.exp(-xp.abs(y)))
        return xp.sum(losses) / _size(y)

    def backward(self, dloss: Any = 1.0) -> Any:
        y, t = self._take("y", "t")
        return (sigmoid(namespace_of(y), y) - t) * (dloss / _size(y))


def _size(a: Any) -> int:
    size = 1
    for dim in a.shape:
        size *= dim
    return size
