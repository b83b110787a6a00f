"""``--plot``: the loss and accuracy curves of a run as a PNG."""

from __future__ import annotations

import textwrap
from typing import Any

from ..io import files  # files.write_file, looked up at each call (one writer for every file)


def plot_history(path: str, history: list[dict[str, Any]], title: str) -> None:
    """Loss and accuracy per epoch, train against test (and validation), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val", "test"):
        rows = [row for row in history if has_numbers(row, "epoch", f"{split}_loss", f"{split}_accuracy")]
        if rows:  # a resumed checkpoint's rows may lack columns that later rows have
            epochs = [row["epoch"] for row in rows]
            left.plot(epochs, [row[f"{split}_loss"] for row in rows], marker="o", label=split)
            right.plot(epochs, [100 * row[f"{split}_accuracy"] for row in rows], marker="o", label=split)
    left.set(xlabel="epoch", ylabel="loss", title="Loss")
    right.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(textwrap.fill(title, 120), fontsize=9)
    fig.tight_layout()
    try:
        files.write_file(path, lambda file: fig.savefig(file, format="png", dpi=100))
    finally:
        plt.close(fig)


def has_numbers(row: dict[str, Any], *keys: str) -> bool:
    """Whether ``row`` holds a number (not a bool) under each of ``keys``."""
    return all(isinstance(row.get(k), int | float) and not isinstance(row.get(k), bool) for k in keys)

