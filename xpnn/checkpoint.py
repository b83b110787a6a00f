"""Checkpoints: model, optimizer state, completed epochs, history and the run's settings in one ``.npz``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .model import Sequential
from .optim import Optimizer
from .serialization import FormatError, read_npz, write_npz

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(path: str | os.PathLike, model: Sequential, optimizer: Optimizer, epoch: int,
                    history: list[dict[str, Any]], settings: dict[str, Any]) -> Path:
    """Write model, optimizer state, completed epoch count and history to one ``.npz``, atomically.

    The random state needs no arrays: shuffles and dropout masks are derived from (seed, epoch).
    """
    be = model.backend
    arrays = {f"model.{k}": be.to_numpy(v) for k, v in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    arrays.update({f"optim.{k}": be.to_numpy(v) for k, v in optimizer_state.items() if hasattr(v, "shape")})
    scalars = {k: v for k, v in optimizer_state.items() if not hasattr(v, "shape")}
    header = {
        "kind": "checkpoint", "config": model.config(), "epoch": epoch, "seed": model.seed,
        "optimizer": {"type": type(optimizer).__name__, **scalars}, "history": history, "settings": settings,
    }
    return write_npz(path, arrays, header)


def load_checkpoint(path: str | os.PathLike, model: Sequential, optimizer: Optimizer) -> dict[str, Any]:
    """Restore a checkpoint into ``model`` and ``optimizer``; returns its header (epoch, history, settings).

    Raises
    ------
    FormatError
        When the checkpoint was written for another architecture or optimizer.
    """
    arrays, header = read_npz(path, "checkpoint")
    if header["config"] != model.config():
        raise FormatError(
            f"{path}: checkpoint of a different architecture ({_describe(header['config'])}), "
            f"this run builds {_describe(model.config())}"
        )
    saved_optimizer = header["optimizer"]["type"]
    if saved_optimizer != type(optimizer).__name__:
        raise FormatError(f"{path}: checkpoint was trained with {saved_optimizer}, this run uses "
                          f"{type(optimizer).__name__}; pass the same --optimizer")
    model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model.")}, source=str(path))
    state = {k[6:]: v for k, v in arrays.items() if k.startswith("optim.")}
    state.update({k: v for k, v in header["optimizer"].items() if k != "type"})
    optimizer.load_state_dict(state)
    return header


def _describe(config: dict[str, Any]) -> str:
    parts = []
    for layer in config["layers"]:
        if layer["type"] == "Affine":
            parts.append(f"{layer['n_in']}-{layer['n_out']}")
        else:
            parts.append(layer["type"])
    return " ".join(parts)
