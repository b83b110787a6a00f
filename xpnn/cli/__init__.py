"""The command lines: python -m xpnn.train (xpnn.cli.train) and python -m xpnn.export (xpnn.cli.export).

Not imported by ``import xpnn``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


def one_line_warnings(prog: str, drop: str = "") -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints the library's warnings (a step that could not be captured, an
    export onnxruntime cannot run) as one line, like the command's own: ``PROG: warning: MESSAGE``, with the
    prefix ``drop`` taken off the message."""
    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        print(f"{prog}: warning: {str(message).replace(drop, '', 1) if drop else message}", file=sys.stderr)

    return show
