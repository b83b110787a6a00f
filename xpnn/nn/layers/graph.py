"""Computational-graph nodes with two inputs (chapter 5's apple example)."""

from __future__ import annotations

from typing import Any

__all__ = ["Add", "Mul"]


class Mul:
    """``z = x · y``; backward returns ``(dz · y, dz · x)``. Works on arrays or Python numbers."""

    def __init__(self) -> None:
        self.x: Any = None
        self.y: Any = None

    def forward(self, x: Any, y: Any) -> Any:
        self.x, self.y = x, y
        return x * y

    def backward(self, dz: Any) -> tuple[Any, Any]:
        return dz * self.y, dz * self.x


class Add:
    """``z = x + y``; backward passes ``dz`` to both inputs."""

    def forward(self, x: Any, y: Any) -> Any:
        return x + y

    def backward(self, dz: Any) -> tuple[Any, Any]:
        return dz, dz
