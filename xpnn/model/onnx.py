"""ONNX export: a trained model as one ``.onnx`` file that runs without xpnn (onnxruntime, browsers, C++).

The graph is built from the layer list: each layer type has a rule that turns the layer into ONNX nodes
and initializers (its weights), looked up by type in a small registry, as skl2onnx does for estimators.
A custom layer gets a rule with :func:`register_onnx_rule`. The ``onnx`` package is imported only when
a model is exported (``pip install onnx onnxruntime``), never by ``import xpnn``.

The command line is :mod:`xpnn.export` (``python -m xpnn.export MODEL OUT.onnx``).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.backend import to_numpy
from ..io.files import write_file
from ..nn.layers import (
    ELU,
    Affine,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Layer,
    LeakyReLU,
    MaxPool2d,
    ReLU,
    Sigmoid,
    Standardize,
    Tanh,
)
from ..nn.metrics import task_of

__all__ = ["DEFAULT_OPSET", "ExportError", "OnnxGraph", "export_onnx", "onnx_bytes", "register_onnx_rule"]

#: The ONNX opset written by default (onnxruntime 1.14 and later run it).
DEFAULT_OPSET = 17
OUTPUTS = ("probabilities", "logits")
INSTALL_HINT = "pip install onnx onnxruntime"

OnnxRule = Callable[[Any, "OnnxGraph", str], str]
_RULES: dict[type, OnnxRule] = {}


class ExportError(ValueError):
    """A model that cannot be written as ONNX (a layer without a rule, an unknown input shape, ...)."""


class OnnxGraph:
    """What an export rule builds with: it adds nodes and weights and names the tensors between them.

    A rule is called as ``rule(layer, graph, x)`` with the name of the layer's input tensor ``x`` (N, ...)
    and returns the name of its output tensor. Names are made unique by the graph; weights added with
    :meth:`constant` are stored under the layer's index and the given name (``"3.W"``), as in
    :meth:`Sequential.state_dict`.

    Attributes
    ----------
    input_shape : tuple of int
        Shape of one input sample of the current layer (no batch axis), e.g. ``(32, 14, 14)``.
    dtype : numpy.dtype
        The floating dtype of the exported model; :meth:`constant` casts floating arrays to it.
    """

    def __init__(self, dtype: np.dtype, helper: Any, numpy_helper: Any):
        self.dtype = dtype
        self.input_shape: tuple[int, ...] = ()
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._helper, self._numpy_helper = helper, numpy_helper
        self._prefix = ""
        self._names: set[str] = set()

    def _unique(self, name: str) -> str:
        candidate, suffix = name, 1
        while candidate in self._names:
            candidate, suffix = f"{name}_{suffix}", suffix + 1
        self._names.add(candidate)
        return candidate

    def constant(self, name: str, value: Any) -> str:
        """Add ``value`` (an array of any library, or a NumPy array) as a weight; returns its tensor name.

        Floating arrays are cast to :attr:`dtype`; integer arrays (shapes for Reshape) become int64.
        """
        host = np.asarray(to_numpy(value) if not isinstance(value, np.ndarray | np.generic | list) else value)
        host = host.astype(self.dtype if host.dtype.kind == "f" else np.int64)
        tensor_name = self._unique(f"{self._prefix}{name}")
        self.initializers.append(self._numpy_helper.from_array(np.ascontiguousarray(host), tensor_name))
        return tensor_name

    def node(self, op_type: str, inputs: Sequence[str], **attributes: Any) -> str:
        """Add an ONNX operator (``"Gemm"``, ``"Relu"``, ...) with ``attributes``; returns its output's name."""
        output = self._unique(f"{self._prefix}{op_type.lower()}")
        self.nodes.append(self._helper.make_node(op_type, list(inputs), [output], name=output, **attributes))
        return output


def register_onnx_rule(layer_type: type[Layer], rule: OnnxRule | None = None) -> Any:
    """Teach :func:`export_onnx` a layer type: ``rule(layer, graph, x) -> output name``.

    Parameters
    ----------
    layer_type : type
        A :class:`~xpnn.Layer` subclass. Rules are looked up by exact type, so a subclass of a built-in
        layer that changes its computation needs a rule of its own.
    rule : callable, optional
        Called with the (built) layer, the :class:`OnnxGraph` being built and the name of the input tensor;
        returns the name of the output tensor. Without it, ``register_onnx_rule`` is a decorator.

    Returns
    -------
    callable
        ``rule`` (or the decorator).

    Examples
    --------
    A Swish layer ``y = x·sigmoid(x)``:

    >>> import xpnn
    >>> class Swish(xpnn.Layer):
    ...     def forward(self, x, *, train=False):
    ...         self.x = x
    ...         return x * xpnn.layers.activations.sigmoid(self.xp, x)
    >>> @xpnn.register_onnx_rule(Swish)
    ... def swish_to_onnx(layer, graph, x):
    ...     return graph.node("Mul", [x, graph.node("Sigmoid", [x])])

    A layer with weights adds them with ``graph.constant("W", layer.params["W"])``, which returns the
    name to use as a node input.
    """
    if not (isinstance(layer_type, type) and issubclass(layer_type, Layer)):
        raise TypeError(f"register_onnx_rule: expected a Layer subclass, got {layer_type!r}")
    if rule is None:
        def decorator(function: OnnxRule) -> OnnxRule:
            return register_onnx_rule(layer_type, function)
        return decorator
    if not callable(rule):
        raise TypeError(f"register_onnx_rule: the rule for {layer_type.__name__} must be callable, got {rule!r}")
    _RULES[layer_type] = rule
    return rule


# ---------------------------------------------------------------------- built-in rules
def _affine(layer: Affine, graph: OnnxGraph, x: str) -> str:
    W = graph.constant("W", layer.params["W"])
    if layer.bias:
        return graph.node("Gemm", [x, W, graph.constant("b", layer.params["b"])])
    return graph.node("MatMul", [x, W])


def _batchnorm(layer: BatchNorm1d, graph: OnnxGraph, x: str) -> str:
    """Evaluation mode: the running statistics. ONNX's BatchNormalization takes (N, C) and (N, C, H, W)."""
    inputs = [graph.constant(name, store[name]) for store, name in
              ((layer.params, "gamma"), (layer.params, "beta"), (layer.buffers, "running_mean"),
               (layer.buffers, "running_var"))]
    return graph.node("BatchNormalization", [x, *inputs], epsilon=float(layer.eps))


def _conv(layer: Conv2d, graph: OnnxGraph, x: str) -> str:
    (ph, pw), inputs = layer.padding, [x, graph.constant("W", layer.params["W"])]
    if layer.bias:
        inputs.append(graph.constant("b", layer.params["b"]))
    return graph.node("Conv", inputs, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                      pads=[ph, pw, ph, pw])


def _pool(op_type: str) -> OnnxRule:
    def rule(layer: MaxPool2d | AvgPool2d, graph: OnnxGraph, x: str) -> str:
        # No padding and floor rounding: windows past the edge are dropped, as in forward.
        return graph.node(op_type, [x], kernel_shape=list(layer.kernel_size), strides=list(layer.stride))
    return rule


for _type, _rule in {
    Affine: _affine,
    ReLU: lambda layer, graph, x: graph.node("Relu", [x]),
    LeakyReLU: lambda layer, graph, x: graph.node("LeakyRelu", [x], alpha=float(layer.slope)),
    Sigmoid: lambda layer, graph, x: graph.node("Sigmoid", [x]),
    Tanh: lambda layer, graph, x: graph.node("Tanh", [x]),
    ELU: lambda layer, graph, x: graph.node("Elu", [x], alpha=float(layer.alpha)),
    Dropout: lambda layer, graph, x: x,  # the identity in evaluation mode
    BatchNorm1d: _batchnorm,
    BatchNorm2d: _batchnorm,
    Conv2d: _conv,
    MaxPool2d: _pool("MaxPool"),
    AvgPool2d: _pool("AveragePool"),
    Flatten: lambda layer, graph, x: graph.node("Flatten", [x], axis=1),
    Standardize: lambda layer, graph, x: graph.node(
        "Div", [graph.node("Sub", [x, graph.constant("mean", layer.buffers["mean"])]),
                graph.constant("std", layer.buffers["std"])]),
}.items():
    register_onnx_rule(_type, _rule)


# ---------------------------------------------------------------------- export
def export_onnx(model: Any, path: str | os.PathLike, *, output: str | None = None,
                opset: int = DEFAULT_OPSET, input_shape: Sequence[int] | None = None,
                dtype: str = "float32") -> Path:
    """Write ``model`` (in evaluation mode) as an ONNX file with a dynamic batch axis, atomically.

    Parameters
    ----------
    model : Sequential
        Any backend; its weights are copied to the host, the model is not changed or moved.
    path : path-like
        The ``.onnx`` file to write (replaced atomically, see :func:`xpnn.io.files.write_file`).
    output : {"probabilities", "logits"}, optional
        What the graph returns. Default: ``"probabilities"`` for a classifier (what
        :meth:`Sequential.predict_proba` gives: softmax for SoftmaxCrossEntropy, the sigmoid of each output for
        BCEWithLogits) and the raw outputs for a regression (what :meth:`Sequential.predict` gives).
        ``"logits"`` always returns the raw outputs of the last layer.
    opset : int
        ONNX opset version, 13 or later (default 17).
    input_shape : tuple of int, optional
        Shape of one input sample, e.g. ``(1, 28, 28)``; defaults to the model's own.
    dtype : {"float32", "float64"}
        Floating type of the input, the weights and the output.

    Returns
    -------
    Path
        The file written. Its graph has one input ``"input"`` ``(N, *input_shape)`` and one output,
        ``"probabilities"`` or ``"logits"`` (N, n_out), where N is any batch size.

    Raises
    ------
    ExportError
        For a layer without an export rule (naming it and :func:`register_onnx_rule`), a model without a known
        input shape, or ``output="probabilities"`` for a regression.
    ImportError
        When the ``onnx`` package is not installed.
    """
    data = onnx_bytes(model, output=output, opset=opset, input_shape=input_shape, dtype=dtype)
    if dtype == "float64" and (problem := _onnxruntime_refuses(data)):
        warnings.warn(f"export_onnx: onnxruntime cannot run this float64 graph ({problem}); runtimes with "
                      "float64 kernels for every operator can, or export with dtype='float32'", stacklevel=2)
    return write_file(path, lambda file: file.write(data))


def _onnxruntime_refuses(data: bytes) -> str | None:
    """Why the installed onnxruntime cannot load ``data`` (its CPU kernels lack float64 Conv, AveragePool, Elu,
    ...), or None when it can or is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    try:
        onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's own exception types are not importable by a stable name
        text = str(error)
        return text.split(" : ")[-1].strip() if "NOT_IMPLEMENTED" in text else text.splitlines()[0][:200]
    return None


def onnx_bytes(model: Any, *, output: str | None = None, opset: int = DEFAULT_OPSET,
               input_shape: Sequence[int] | None = None, dtype: str = "float32") -> bytes:
    """The serialized ONNX model that :func:`export_onnx` writes (arguments as there)."""
    if not all(hasattr(model, name) for name in ("layers", "loss_fn", "state_dict")):
        raise TypeError(f"export_onnx: expected an xpnn Sequential, got {type(model).__name__}")
    output = _output_kind(model, output)
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 13:
        raise ExportError(f"export_onnx: opset must be an integer >= 13, got {opset!r}")
    if dtype not in ("float32", "float64"):
        raise ExportError(f"export_onnx: dtype must be 'float32' or 'float64', got {dtype!r}")
    shapes, input_shape = _shapes(model, input_shape)
    for index, layer in enumerate(model.layers):  # every rule known before anything is built
        if type(layer) not in _RULES:
            name = type(layer).__name__
            raise ExportError(f"export_onnx: layer {index} ({name}) has no ONNX export rule; register one with "
                              f"xpnn.register_onnx_rule({name}, rule) (see help(xpnn.register_onnx_rule))")
    onnx = _import_onnx()
    from onnx import helper, numpy_helper

    newest = onnx.defs.onnx_opset_version()
    if opset > newest:  # else onnx's own "Unsupported opset-version." from deep inside
        raise ExportError(f"export_onnx: opset {opset} is newer than this onnx {onnx.__version__} knows (up to "
                          f"{newest}); pass an opset from 13 to {newest}")

    graph = OnnxGraph(np.dtype(dtype), helper, numpy_helper)
    x = graph._unique("input")
    for index, layer in enumerate(model.layers):
        graph._prefix, graph.input_shape = f"{index}.", ([input_shape, *shapes])[index]
        x = _RULES[type(layer)](layer, graph, x)
    graph._prefix = ""
    task = task_of(model.loss_fn)
    if output == "probabilities":
        x = graph.node("Softmax", [x], axis=-1) if task == "multiclass" else graph.node("Sigmoid", [x])
    name = output
    last = graph.nodes[-1] if graph.nodes else None
    if last is not None and list(last.output) == [x] and not any(x in node.input for node in graph.nodes):
        last.output[0] = name  # the last node writes the graph's output directly
    else:  # the input itself, a weight, or a tensor that other nodes read as well
        graph.nodes.append(helper.make_node("Identity", [x], [name], name=graph._unique("identity")))
    element = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inputs = [helper.make_tensor_value_info("input", element, ["N", *input_shape])]
    outputs = [helper.make_tensor_value_info(name, element, ["N", *shapes[-1]])]
    onnx_graph = helper.make_graph(graph.nodes, "xpnn", inputs, outputs, graph.initializers)
    proto = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="xpnn",
                              doc_string=f"xpnn Sequential; output: {name}")
    # The oldest IR version that has this opset: the newest onnx writes versions older runtimes refuse.
    proto.ir_version = helper.find_min_ir_version_for(list(proto.opset_import))
    onnx.checker.check_model(proto, full_check=True)
    buffer = io.BytesIO()
    onnx.save_model(proto, buffer)
    return buffer.getvalue()


def _output_kind(model: Any, output: str | None) -> str:
    if output is None:
        return "probabilities" if task_of(model.loss_fn) != "regression" else "logits"
    if output not in OUTPUTS:
        raise ExportError(f"export_onnx: output must be 'probabilities' or 'logits', got {output!r}")
    if output == "probabilities" and task_of(model.loss_fn) == "regression":
        raise ExportError(f"export_onnx: {model.loss_fn!r} is a regression loss, its outputs are not "
                          "probabilities; use output='logits' (the raw outputs)")
    return output


def _shapes(model: Any, input_shape: Sequence[int] | None) -> tuple[list[tuple[int, ...]], tuple[int, ...]]:
    if isinstance(input_shape, int | np.integer) and not isinstance(input_shape, bool):
        input_shape = (int(input_shape),)  # one feature count, as Standardize((4,)) takes 4
    shape = model.input_shape if input_shape is None else tuple(input_shape)
    if shape is None:
        raise ExportError("export_onnx: the model does not know its input shape; pass input_shape, "
                          "e.g. input_shape=(1, 28, 28)")
    try:
        return model.output_shapes(shape), tuple(int(n) for n in shape)
    except ValueError as error:
        raise ExportError(f"export_onnx: input_shape {shape} does not fit the model ({error})") from None


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ImportError(f"ONNX export needs the onnx package, which is not installed; {INSTALL_HINT}") from None
    return onnx
