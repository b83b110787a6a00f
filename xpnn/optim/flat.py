"""The in-place path: trained parameters and optimizer state as views of one flat buffer each."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["FlatLayout"]


class FlatLayout:
    """The trained parameters and the optimizer's state as views of one flat buffer each (in-place path).

    Attributes
    ----------
    slots : list of (str, Layer, str)
        ``(dotted name, layer, key)`` of each trained parameter, in buffer order.
    params : array, (P,)
        All trained parameters, concatenated; ``layer.params[key]`` is a reshaped view of its part.
    state : dict of str to array (P,)
        One flat buffer per kind of optimizer state (``"m"``, ``"v"``, ``"velocity"``), viewed likewise by
        ``optimizer.state["{kind}.{name}"]``.
    lr, lr64, step : 0-d arrays or None
        On a capturable optimizer: the learning rate (in the parameters' dtype and in float64) and the number
        of steps taken (float64), on the device, so that a replayed graph reads current values.
    """

    def __init__(self, optimizer: Any, slots: list[tuple[str, Any, str]], params: Any,
                 views: list[Any], state: dict[str, Any], state_views: dict[str, list[Any]]):
        self.optimizer, self.slots, self.params, self.views = optimizer, slots, params, views
        self.state, self.state_views = state, state_views
        self.backend = optimizer.model.backend
        self.lr = self.lr64 = self.step = None
        if optimizer.capturable:
            be = self.backend
            self.lr, self.lr64 = be.scalar(optimizer.lr), be.scalar(optimizer.lr, be.xp.float64)
            self.step = be.scalar(optimizer.steps - 1, be.xp.float64)  # built inside a step already counted

    @classmethod
    def build(cls, optimizer: Any, slots: list[tuple[str, Any, str]]) -> FlatLayout | None:
        """Copy the current parameters and state into fresh flat buffers and rebind their owners to views."""
        be = optimizer.model.backend
        xp = be.xp
        params = [layer.params[key] for _, layer, key in slots]
        if not params or any(p.dtype != be.dtype for p in params):
            return None
        flat = xp.concat([xp.reshape(p, (-1,)) for p in params])
        views = cls._views(xp, flat, params)
        for (_, layer, key), view in zip(slots, views, strict=True):
            layer.params[key] = view
        state, state_views = {}, {}
        for kind in optimizer.slots:
            parts = [optimizer.state.get(f"{kind}.{name}") for name, _, _ in slots]
            parts = [xp.zeros_like(p) if part is None else part for part, p in zip(parts, params, strict=True)]
            state[kind] = xp.concat([xp.reshape(part, (-1,)) for part in parts])
            state_views[kind] = cls._views(xp, state[kind], params)
            for (name, _, _), view in zip(slots, state_views[kind], strict=True):
                optimizer.state[f"{kind}.{name}"] = view
        return cls(optimizer, slots, flat, views, state, state_views)

    @staticmethod
    def _views(xp: Any, flat: Any, like: list[Any]) -> list[Any]:
        views, offset = [], 0
        for p in like:
            size = math.prod(p.shape)
            views.append(xp.reshape(flat[offset:offset + size], tuple(p.shape)))
            offset += size
        return views

    def matches(self, optimizer: Any, slots: list[tuple[str, Any, str]]) -> bool:
        """Whether every trained parameter and state array is still the view this layout made (nothing rebound)."""
        if self.backend is not optimizer.model.backend or len(slots) != len(self.slots):
            return False
        for i, ((name, layer, key), (old_name, old_layer, old_key)) in enumerate(zip(slots, self.slots, strict=True)):
            if name != old_name or layer is not old_layer or key != old_key or layer.params[key] is not self.views[i]:
                return False
            for kind, views in self.state_views.items():
                if optimizer.state.get(f"{kind}.{name}") is not views[i]:
                    return False
        return True

    def flatten(self, grads: list[Any]) -> Any:
        """The gradients, in buffer order, as one flat array (P,)."""
        xp = self.backend.xp
        return xp.concat([xp.reshape(g, (-1,)) for g in grads])

    def set_lr(self, value: float) -> None:
        self.backend.fill(self.lr, value)
        self.backend.fill(self.lr64, value)

    def current_lr(self) -> Any:
        """The learning rate as the update reads it: a 0-d device array when capturable, else a Python float."""
        return self.optimizer.lr if self.lr is None else self.lr

    def lr_times(self, factor: float) -> Any:
        """lr·factor rounded once to the parameters' dtype, as the generic path's Python product is."""
        if self.lr64 is None:
            return self.optimizer.lr * factor
        return self.backend.xp.astype(self.lr64 * factor, self.backend.dtype)

    def count_step(self) -> None:
        """Advance the device step count (capturable only), inside the update so that a graph replays it."""
        if self.step is not None:
            self.step += 1.0

    def bias_corrections(self, betas: tuple[float, float], steps: int) -> tuple[Any, Any]:
        """Adam's 1/(1-β₁ᵗ) and 1/(1-β₂ᵗ): Python floats, or computed on the device from ``step`` in float64
        and rounded once to the parameters' dtype (the same rounding as the Python floats get)."""
        if self.step is None:
            return 1 / (1 - betas[0]**steps), 1 / (1 - betas[1]**steps)
        xp, dtype = self.backend.xp, self.backend.dtype
        return tuple(xp.astype(1 / (1 - beta**self.step), dtype) for beta in betas)
