"""Model files: the configuration that rebuilds a network, written and read back without trusting the file.

A model file is an ``.npz`` archive (:mod:`xpnn.io.serialization`) whose JSON header holds ``config``: the layers
and the loss by class name with their constructor arguments, and optionally the input shape and class names.
Loading looks the names up in :attr:`Layer.registry` and :attr:`Loss.registry`, so a custom layer loads once its
class is defined. :func:`xpnn.load` (in :mod:`xpnn.model.builders`) builds the model from what
:func:`read_model_file` reads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..io.serialization import FormatError, open_npz, validate_header, write_npz
from ..nn import layers as _layers  # noqa: F401 (every built-in layer registered before a file is read)
from ..nn.layers import Affine, Layer
from ..nn.losses import Loss

__all__ = ["class_names_of", "input_shape_of", "layers_from_config", "model_config", "read_model_file",
           "save_model"]


def model_config(model: Any) -> dict[str, Any]:
    """The JSON-serializable description of :meth:`xpnn.Sequential.config`."""
    layers = []
    for layer in model.layers:
        layer._check_config_defined()
        spec = {"type": type(layer).__name__, **layer.config()}
        if not layer.trainable:
            spec["trainable"] = False  # only when frozen, so files of models without freezing do not change
        layers.append(spec)
    config: dict[str, Any] = {"layers": layers,
                              "loss": {"type": type(model.loss_fn).__name__, **model.loss_fn.config()}}
    if model.input_shape is not None and not (model.layers and isinstance(model.layers[0], Affine)):
        config["input_shape"] = list(model.input_shape)  # an Affine first layer says it itself (older files)
    if model.class_names is not None:
        config["class_names"] = [str(name) for name in model.class_names]
    return config


def save_model(model: Any, path: str | os.PathLike) -> Path:
    """Write ``model``'s configuration and arrays to ``path`` atomically (:meth:`xpnn.Sequential.save`)."""
    arrays = {name: model.backend.to_numpy(value) for name, value in model.state_dict().items()}
    return write_npz(path, arrays, {"kind": "model", "config": model_config(model), "seed": model.seed})


def read_model_file(path: str | os.PathLike) -> tuple[list[Layer], Loss, dict[str, Any], dict[str, Any]]:
    """The unbuilt layers, the loss, the arrays (NumPy, by state-dict name) and the header of a model file or of a
    checkpoint's model, checked before any array is read (see :func:`xpnn.load`).

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    FormatError
        Naming the file, for any other problem (corrupted, crafted, not a model).
    """
    source = str(path)
    with open_npz(path, ("model", "checkpoint")) as npz:
        layers, loss = layers_from_config(npz.header["config"], source)
        if npz.header["kind"] == "checkpoint":  # the model's arrays are "model.<name>"; "optim.*" stay unread
            foreign = sorted(name for name in npz.shapes if not name.startswith(("model.", "optim.")))
            if foreign:
                raise FormatError(f"{source}: unexpected arrays {foreign} in a checkpoint (crafted or corrupted)")
            names = {name: name[6:] for name in npz.shapes if name.startswith("model.")}
        else:
            names = {name: name for name in npz.shapes}
        check_declared_shapes(layers, {names[name]: npz.shapes[name] for name in names}, source)
        arrays = {names[name]: value for name, value in npz.read(names).items()}
    return layers, loss, arrays, npz.header


def class_names_of(config: dict[str, Any], source: str) -> list[str] | None:
    """The class names a configuration records, checked: distinct strings, at least two."""
    names = config.get("class_names")
    if names is None:
        return None
    if not (isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names)
            and len(set(names)) == len(names)):
        raise FormatError(f"{source}: class_names must be a list of at least 2 distinct strings, got "
                          f"{str(names)[:60]}")
    return names


def layers_from_config(config: Any, source: str) -> tuple[list[Layer], Loss]:
    """Unbuilt layers and the loss that ``config`` describes, checked against the configuration schema."""
    validate_header(config, "config", source)
    layers = [construct(Layer.registry, spec, f"layer {index}", source) for index, spec in enumerate(config["layers"])]
    return layers, construct(Loss.registry, config["loss"], "loss", source)


def input_shape_of(config: dict[str, Any], source: str) -> tuple[int, ...] | None:
    """The per-sample input shape a configuration records (models whose first layer does not imply it)."""
    shape = config.get("input_shape")
    if shape is None:
        return None
    if not (isinstance(shape, list) and 1 <= len(shape) <= 8
            and all(isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 2**31 for n in shape)):
        raise FormatError(f"{source}: input_shape must be a list of 1 to 8 positive integers, got {shape!r}")
    return tuple(shape)


def construct(registry: dict[str, type], spec: dict[str, Any], what: str, source: str = "config") -> Any:
    """The object that ``spec`` (``{"type": class name, **constructor arguments}``) names in ``registry``;
    FormatError naming ``source`` and ``what`` for an unknown type or arguments the constructor refuses."""
    spec = dict(spec)
    kind = spec.pop("type")
    if kind not in registry:
        known = ", ".join(sorted(name for name in registry if not name.startswith("_")))
        raise FormatError(f"{source}: unknown {what} type {kind!r} in the saved configuration; if it is a custom "
                          f"{what.split()[0]}, define or import its class before loading (known: {known})")
    try:
        return registry[kind](**spec)
    except (TypeError, ValueError, OverflowError) as error:
        raise FormatError(f"{source}: {what} {kind} cannot be made from {spec} ({error})") from None


def check_declared_shapes(layers: list[Layer], found: dict[str, tuple[int, ...]], source: str) -> None:
    """Compare the arrays a file declares with what its layers will create, before building anything."""
    declared: dict[str, tuple[int, ...]] = {}
    undeclared = set()
    for index, layer in enumerate(layers):
        if type(layer).param_shapes is Layer.param_shapes:
            undeclared.add(str(index))
        else:
            declared.update({f"{index}.{key}": tuple(shape) for key, shape in layer.param_shapes().items()})
    missing = sorted(set(declared) - set(found))
    unexpected = sorted(name for name in found if name not in declared and name.partition(".")[0] not in undeclared)
    if missing or unexpected:
        raise FormatError(f"{source}: the arrays do not match the configuration (missing {missing}, "
                          f"unexpected {unexpected})")
    for name, shape in declared.items():
        if found[name] != shape:
            raise FormatError(f"{source}: array {name!r} has shape {found[name]}, its layer "
                              f"{type(layers[int(name.partition('.')[0])]).__name__} needs {shape}")
