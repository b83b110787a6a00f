"""Freezing: which layers an optimizer may change (``Sequential.freeze`` and ``unfreeze``)."""

from __future__ import annotations

import numbers
from typing import Any

from ..nn.layers import Layer

__all__ = ["select_layers", "set_trainable"]


def set_trainable(model: Any, which: tuple[Any, ...], trainable: bool, what: str) -> None:
    """Set ``layer.trainable`` for the layers of ``model`` that ``which`` names (all when empty)."""
    for layer in select_layers(model, which, what):
        layer.trainable = trainable


def select_layers(model: Any, which: tuple[Any, ...], what: str) -> list[Layer]:
    """The layers of ``model`` named by indices, slices or the layer objects themselves; all when ``which`` is empty.

    ``what`` (``"freeze"``) starts the message of the IndexError, ValueError or TypeError for a bad item.
    """
    if not which:
        return list(model.layers)
    chosen: list[Layer] = []
    for item in which:
        if isinstance(item, Layer):
            if not any(item is layer for layer in model.layers):
                raise ValueError(f"{what}: {item!r} is not a layer of this model")
            chosen.append(item)
        elif isinstance(item, slice):
            chosen.extend(model.layers[item])
        elif isinstance(item, numbers.Integral) and not isinstance(item, bool):
            if not -len(model.layers) <= item < len(model.layers):
                raise IndexError(f"{what}: layer index {item} out of range for {len(model.layers)} layers")
            chosen.append(model.layers[item])
        else:
            raise TypeError(f"{what}: expected layer indices, slices or layers, got {item!r}")
    return chosen
