"""The network (:class:`Sequential`) and everything about one: builders, files, summary, freezing, ONNX export
and gradient checks."""

from .builders import ACTIVATIONS, cnn, load, mlp, standardized
from .gradcheck import gradcheck
from .onnx import DEFAULT_OPSET, ExportError, OnnxGraph, export_onnx, register_onnx_rule
from .sequential import DROPOUT_STREAM, INIT_STREAM, SHUFFLE_STREAM, IncompatibleKeys, Sequential

__all__ = ["ACTIVATIONS", "DEFAULT_OPSET", "DROPOUT_STREAM", "ExportError", "INIT_STREAM", "IncompatibleKeys",
           "OnnxGraph", "SHUFFLE_STREAM", "Sequential", "cnn", "export_onnx", "gradcheck", "load", "mlp",
           "register_onnx_rule", "standardized"]
