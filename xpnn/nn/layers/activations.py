"""Element-wise activations. Each keeps its output ``y`` and differentiates from it."""

from __future__ import annotations

from typing import Any

from ...core.backend import is_floating, zero_like
from ...core.validation import check_real
from .base import Layer

__all__ = ["ELU", "LeakyReLU", "ReLU", "Sigmoid", "Tanh", "sigmoid"]


def sigmoid(xp: Any, x: Any) -> Any:
    """Logistic function written as 0.5·(tanh(x/2) + 1): equal to 1/(1+e⁻ˣ) but never overflows."""
    return 0.5 * (xp.tanh(0.5 * x) + 1.0)


class _Elementwise(Layer):
    def __init__(self) -> None:
        super().__init__()
        self.y: Any = None

    def forward(self, x: Any, *, train: bool = False) -> Any:
        self._require_built()
        if not is_floating(x):
            raise TypeError(f"{self!r}: expected a floating-point input, got {x.dtype}")
        self.y = self._forward(x)
        return self.y

    def _take_output(self) -> Any:
        """The cached output, released: backward runs once per forward."""
        y, self.y = self.y, None
        return y


class ReLU(_Elementwise):
    """max(x, 0). Shapes: any -> same."""

    def _forward(self, x: Any) -> Any:
        return self.backend.relu(x)

    def backward(self, dy: Any) -> Any:
        # Multiplying by the 0/1 mask is faster than where(); the mask is ours, so it takes the product.
        mask = self.xp.astype(self._take_output() > 0, dy.dtype)
        mask *= dy
        return mask


class LeakyReLU(_Elementwise):
    """x for x > 0, ``slope``·x otherwise (slope >= 0). Shapes: any -> same."""

    def __init__(self, slope: float = 0.01):
        super().__init__()
        # slope >= 0 keeps the sign of x in y, which backward relies on.
        self.slope = check_real("LeakyReLU", "slope", slope, low=0.0)

    def _forward(self, x: Any) -> Any:
        return self.xp.where(x > 0, x, self.slope * x)

    def backward(self, dy: Any) -> Any:
        # y > 0 exactly where x > 0, because slope >= 0.
        return self.xp.where(self._take_output() > 0, dy, self.slope * dy)

    def config(self) -> dict[str, Any]:
        return {"slope": self.slope}


class Sigmoid(_Elementwise):
    """1 / (1 + e⁻ˣ); backward from the output: dy·y·(1 - y). Shapes: any -> same."""

    def _forward(self, x: Any) -> Any:
        return sigmoid(self.xp, x)

    def backward(self, dy: Any) -> Any:
        y = self._take_output()
        return dy * y * (1.0 - y)


class Tanh(_Elementwise):
    """tanh(x); backward dy·(1 - y²). Shapes: any -> same."""

    def _forward(self, x: Any) -> Any:
        return self.xp.tanh(x)

    def backward(self, dy: Any) -> Any:
        y = self._take_output()
        return dy * (1.0 - y * y)


class ELU(_Elementwise):
    """x for x > 0, alpha·(eˣ - 1) otherwise (alpha > 0). Shapes: any -> same."""

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = check_real("ELU", "alpha", alpha, low=0.0, low_open=True)

    def _forward(self, x: Any) -> Any:
        xp = self.xp
        # expm1 only sees x <= 0, so large positive inputs cannot overflow.
        return xp.where(x > 0, x, self.alpha * xp.expm1(xp.minimum(x, zero_like(x))))

    def backward(self, dy: Any) -> Any:
        # For x <= 0, d/dx alpha·(eˣ - 1) = alpha·eˣ = y + alpha.
        y = self._take_output()
        return self.xp.where(y > 0, dy, dy * (y + self.alpha))

    def config(self) -> dict[str, Any]:
        return {"alpha": self.alpha}
