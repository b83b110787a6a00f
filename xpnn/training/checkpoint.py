"""Checkpoints: model, optimizer state, completed epochs, history and settings in one ``.npz``.

Writing goes through :func:`xpnn.io.files.write_file` (atomic, safe for any path); reading trusts nothing in
the file: the header is checked against the checkpoint schema and the configuration against the model
before any array is read, and only the arrays this model and optimizer can have are read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..io.serialization import FormatError, open_npz, validate_header, write_npz
from ..model import Sequential
from ..optim import Optimizer

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(path: str | os.PathLike, model: Sequential, optimizer: Optimizer, epoch: int,
                    history: list[dict[str, Any]], settings: dict[str, Any]) -> Path:
    """Write model, optimizer state, completed epoch count and history to one ``.npz``, atomically.

    The random state is the model's: shuffles follow from (seed, epoch), dropout masks from each Dropout
    layer's ``seed`` and ``step`` buffers, saved with the model's arrays.

    Parameters
    ----------
    path : path-like
        Where to write (see :func:`xpnn.io.files.write_file` for symlinks and special files).
    model, optimizer
        What to save; arrays are copied to the host, the model stays on its device.
    epoch : int
        Completed epochs.
    history : list of dict
        One row of numbers per completed epoch.
    settings : dict
        The run's settings (JSON scalars), compared on resume.
    """
    if getattr(optimizer, "model", None) is not model:
        raise ValueError(f"save_checkpoint: the {type(optimizer).__name__} was made for another model, so its state "
                         "would be restored into the wrong one; pass the optimizer that trains this model")
    be = model.backend
    arrays = {f"model.{k}": be.to_numpy(v) for k, v in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    arrays.update({f"optim.{k}": be.to_numpy(v) for k, v in optimizer_state.items() if hasattr(v, "shape")})
    scalars = {k: v for k, v in optimizer_state.items() if not hasattr(v, "shape")}
    header = {
        "kind": "checkpoint", "config": model.config(), "epoch": epoch, "seed": model.seed,
        "optimizer": {"type": type(optimizer).__name__, **scalars}, "history": history, "settings": settings,
    }
    try:  # what load_checkpoint would refuse is never written: the file would look like a good checkpoint
        text = json.dumps(header)
    except (TypeError, ValueError) as error:
        raise TypeError(f"save_checkpoint: history and settings must hold JSON values (numbers, strings, lists, "
                        f"dicts): {error}") from None
    validate_header(json.loads(text), "checkpoint", "save_checkpoint")
    return write_npz(path, arrays, header)


def load_checkpoint(path: str | os.PathLike, model: Sequential, optimizer: Optimizer) -> dict[str, Any]:
    """Restore a checkpoint into ``model`` and ``optimizer``; returns its header (epoch, history, settings).

    Everything is checked before anything is restored: the header's schema, the architecture, the
    optimizer type, then every array's name and declared shape (model arrays must match the model; the
    optimizer's ``optim.<slot>.<parameter>`` arrays must have their parameter's shape). Arrays of any
    other name are refused unread. If restoring the optimizer fails, the model is put back as it was.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    FormatError
        Naming the file: corrupted or crafted, or written for another architecture or optimizer.
    ValueError
        When ``optimizer`` was made for another model (checked before the file is read).
    """
    if getattr(optimizer, "model", None) is not model:
        raise ValueError(f"load_checkpoint: the {type(optimizer).__name__} was made for another model, so this "
                         "model would get the weights and that one the optimizer state; pass this model's optimizer")
    with open_npz(path, "checkpoint") as npz:
        header = npz.header
        if _pooled_first(header["config"]) != _pooled_first(model.config()):
            raise FormatError(
                f"{path}: checkpoint of a different architecture ({_describe(header['config'])}), "
                f"this run builds {_describe(model.config())}"
            )
        saved_optimizer = header["optimizer"]["type"]
        if saved_optimizer != type(optimizer).__name__:
            raise FormatError(f"{path}: checkpoint was trained with {saved_optimizer}, this run uses "
                              f"{type(optimizer).__name__}; pass the same --optimizer")
        _check_arrays(path, npz.shapes, model)
        arrays = npz.read(npz.shapes)
    before = model.state_dict()
    model.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model.")}, source=str(path))
    state = {k[6:]: v for k, v in arrays.items() if k.startswith("optim.")}
    state.update({k: v for k, v in header["optimizer"].items() if k != "type"})
    try:
        optimizer.load_state_dict(state)
    except (ValueError, TypeError, KeyError) as error:
        model.load_state_dict(before)
        message = str(error).strip("'\"")
        raise FormatError(f"{path}: the optimizer state does not fit this {type(optimizer).__name__} "
                          f"({message})") from None
    return header


def _check_arrays(path: str | os.PathLike, found: dict[str, tuple[int, ...]], model: Sequential) -> None:
    shapes = {name: tuple(value.shape) for name, value in model.state_dict().items()}
    parameters = {name: tuple(value.shape) for name, value in model.named_parameters().items()}
    optional = model._optional_keys()  # Dropout's seed and step: absent from checkpoints written before them
    missing = sorted(f"model.{name}" for name in shapes if f"model.{name}" not in found and name not in optional)
    if missing:
        raise FormatError(f"{path}: checkpoint lacks the model arrays {missing}")
    for name, shape in found.items():
        group, _, rest = name.partition(".")
        if group == "model":
            expected = shapes.get(rest)
        elif group == "optim":
            expected = parameters.get(rest.partition(".")[2])
        else:
            expected = None
        if expected is None:
            raise FormatError(f"{path}: unexpected array {name!r}; this model and optimizer have no such state")
        if shape != expected:
            raise FormatError(f"{path}: array {name!r} has shape {shape}, this model needs {expected}")


def _pooled_first(config: Any) -> Any:
    """``config`` with every ReLU that directly precedes a MaxPool2d moved after it.

    The two orders compute the same function and gradients (for finite inputs), and :func:`xpnn.cnn` built
    ReLU-then-pool blocks before it pooled first, so checkpoints of either order resume in both: the
    parameter names and shapes are the same.
    """
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        return config
    layers = list(config["layers"])
    for i in range(len(layers) - 1):
        following = layers[i + 1]
        if layers[i] == {"type": "ReLU"} and isinstance(following, dict) and following.get("type") == "MaxPool2d":
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    return {**config, "layers": layers}


def _describe(config: dict[str, Any]) -> str:
    parts = []
    for layer in config["layers"]:
        if layer["type"] == "Affine" and {"n_in", "n_out"} <= layer.keys():
            parts.append(f"{layer['n_in']}-{layer['n_out']}")
        else:
            parts.append(str(layer["type"]))
    return " ".join(parts)
