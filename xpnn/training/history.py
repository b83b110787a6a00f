"""The record of a training run: one row of numbers per epoch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["History"]


class History:
    """One dict per epoch, as ``fit()`` measured it (the rows ``--metrics`` writes).

    Each row holds ``epoch`` (1-based), ``train_loss``, ``train_accuracy`` (classifiers only), then
    ``<name>_loss`` and ``<name>_accuracy`` for every evaluation set (``val`` for validation data),
    ``seconds``, ``samples_per_second`` and ``lr``.

    Examples
    --------
    >>> history = History([{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": 0.4}])
    >>> history["val_loss"]
    [0.5, 0.4]
    >>> history[-1]["epoch"]
    2
    """

    def __init__(self, rows: list[dict[str, Any]] | None = None):
        self.rows: list[dict[str, Any]] = [] if rows is None else rows

    def __getitem__(self, key: int | str) -> Any:
        """A row by position, or a column (one value per epoch, None where missing) by name."""
        if isinstance(key, str):
            if not any(key in row for row in self.rows):
                names = sorted({name for row in self.rows for name in row})
                raise KeyError(f"history has no {key!r}; it has {names}")
            return [row.get(key) for row in self.rows]
        return self.rows[key]

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)

    @property
    def history(self) -> dict[str, list[Any]]:
        """Columns by name, as Keras' ``History.history``."""
        names = dict.fromkeys(name for row in self.rows for name in row)
        return {name: self[name] for name in names}

    def __repr__(self) -> str:
        if not self.rows:
            return "History(0 epochs)"
        last = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.rows[-1].items())
        return f"History({len(self.rows)} epochs; last: {last})"
