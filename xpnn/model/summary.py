"""What a model looks like: each layer's output shape and the table ``Sequential.summary`` prints."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["format_shape", "output_shapes", "print_summary", "size_of"]


def output_shapes(model: Any, input_shape: Sequence[int] | None = None) -> list[tuple[int, ...]]:
    """Per-sample output shape of every layer of ``model`` for inputs of ``input_shape`` (its own by default).

    Raises
    ------
    ValueError
        Naming the first layer that cannot take what the previous one gives.
    """
    shape = model.input_shape if input_shape is None else tuple(input_shape)
    if shape is None:
        raise ValueError("output_shapes: the model does not know its input shape; pass input_shape, e.g. (784,)")
    shapes = []
    for index, layer in enumerate(model.layers):
        try:
            shape = tuple(layer.output_shape(shape))
        except ValueError as error:
            raise ValueError(f"layer {index}: {error}") from None
        shapes.append(shape)
    return shapes


def print_summary(model: Any, input_shape: Sequence[int] | None = None, print_fn: Callable[[str], Any] = print) -> None:
    """Print the table of :meth:`xpnn.Sequential.summary` line by line through ``print_fn``."""
    shape = model.input_shape if input_shape is None else tuple(input_shape)
    shapes = output_shapes(model, shape) if shape is not None else None
    header = ["#", "Layer", *(["Output shape"] if shapes else []), "Params", "Trainable"]
    rows = []
    for index, layer in enumerate(model.layers):
        count = sum(size_of(value.shape) for value in layer.params.values())
        trainable = ("yes" if layer.trainable else "no") if layer.params else "-"
        shown = [format_shape(shapes[index])] if shapes else []
        rows.append([str(index), repr(layer), *shown, f"{count:,}", trainable])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    numeric = {0, len(header) - 2}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    rule = "-" * len(line(header))
    total, trainable_count = model.n_parameters, model.n_trainable
    text = [f"Sequential on {model.backend.name} ({model.backend.dtype_name})"
            + (f", input {format_shape(shape)}" if shape is not None else ""), rule, line(header), rule,
            *(line(row) for row in rows), rule,
            f"Loss: {model.loss_fn!r}",
            f"Total params: {total:,}", f"Trainable params: {trainable_count:,}",
            f"Non-trainable params: {total - trainable_count:,}"]
    for text_line in text:
        print_fn(text_line)


def size_of(shape: Sequence[int]) -> int:
    """Number of elements of an array of ``shape``."""
    return int(np.prod(tuple(shape), dtype=np.int64))


def format_shape(shape: Sequence[int]) -> str:
    """A per-sample shape as printed, with the batch axis: ``(N, 1, 28, 28)``."""
    return "(" + ", ".join(["N", *(str(n) for n in shape)]) + ")"
