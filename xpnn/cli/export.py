"""Command line: write a trained model (a model file or a training checkpoint) as an ONNX file.

::

    python -m xpnn.export model.npz model.onnx                   # class probabilities for a classifier
    python -m xpnn.export checkpoint.npz logits.onnx --output logits

The export itself is :func:`xpnn.export_onnx` (module :mod:`xpnn.model.onnx`); this module is not imported by
``import xpnn``, so that ``python -m xpnn.export`` runs it fresh.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from ..io.files import OutputError, check_outputs
from ..io.serialization import FormatError
from ..model import load
from ..model.onnx import DEFAULT_OPSET, OUTPUTS, ExportError, _output_kind, _shapes, export_onnx
from . import one_line_warnings

PROG = "python -m xpnn.export"

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write a trained xpnn model as an ONNX file (dynamic batch axis), e.g. for onnxruntime.")
    parser.add_argument("model", help="a model file (model.save) or a training checkpoint (xpnn-train --save)")
    parser.add_argument("output_file", metavar="OUT.onnx", help="the ONNX file to write (replaced atomically)")
    parser.add_argument("--output", choices=OUTPUTS, default=None,
                        help="what the graph returns: class probabilities (softmax, or sigmoid for a binary head) "
                             "or the raw outputs (default: probabilities for a classifier, outputs for a "
                             "regression)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset version, >= 13 (default: {DEFAULT_OPSET})")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="floating type of the input, weights and output (default: float32)")
    parser.add_argument("--input-shape", type=_shape_argument, default=None, metavar="C,H,W",
                        help="shape of one input sample when the file does not record it, e.g. 1,28,28")
    return parser


def _newest_opset() -> int | None:
    """The newest opset the installed onnx can write; None without onnx (the export then says how to install it)."""
    try:
        import onnx
    except ImportError:
        return None
    return int(onnx.defs.onnx_opset_version())


def _shape_argument(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return shape


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns 0, 2 for bad usage (flags, a missing input, an output that cannot be
    written) and 1 for a file that is not a usable model or a model that cannot be exported."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.opset < 13:
        parser.error(f"argument --opset: must be 13 or later, got {args.opset}")
    newest = _newest_opset()
    if newest is not None and args.opset > newest:
        parser.error(f"argument --opset: this onnx knows opsets up to {newest}, got {args.opset}")

    def fail(message: str, code: int) -> int:
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return code

    if args.model == "":
        return fail("MODEL: empty path; give a model file (model.save) or a checkpoint (xpnn-train --save)", 2)
    source = Path(args.model)
    if not source.is_file():
        reason = "is a directory" if source.is_dir() else "no such file" if not source.exists() else "not a file"
        return fail(f"{source}: {reason}; give a model file (model.save) or a checkpoint (xpnn-train --save)", 2)
    try:
        check_outputs({"OUT.onnx": args.output_file}, {"MODEL": args.model})
    except OutputError as error:
        return fail(str(error), 2)
    try:
        model = load(source)
    except (FileNotFoundError, FormatError, OSError) as error:
        return fail(str(error), 1)
    try:  # the flags against this model: usage errors
        _output_kind(model, args.output)
        _shapes(model, args.input_shape)
    except ExportError as error:
        return fail(str(error).replace("export_onnx: ", "", 1).replace("output=", "--output ")
                    .replace("pass input_shape, e.g. input_shape=(1, 28, 28)", "pass --input-shape, e.g. 1,28,28"), 2)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warnings(PROG, drop="export_onnx: ")  # as one line, like the errors
            written = export_onnx(model, args.output_file, output=args.output, opset=args.opset,
                                  input_shape=args.input_shape, dtype=args.dtype)
    except OutputError as error:
        return fail(str(error), 2)
    except (ExportError, ImportError, OSError) as error:
        return fail(str(error), 1)
    print(f"wrote {written}: input (N, {', '.join(map(str, args.input_shape or model.input_shape))}), "
          f"output {args.output or _output_kind(model, None)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
