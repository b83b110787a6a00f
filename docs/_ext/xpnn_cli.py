"""The ``xpnn-cli`` directive: the command-line reference, generated from ``xpnn.train.build_parser``.

Each option becomes a section with its flags, metavar, choices and help text (which ends with its default),
so the page cannot drift from ``python -m xpnn.train --help``.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective


def parser_rst(parser: argparse.ArgumentParser) -> list[str]:
    """Render ``parser`` as reStructuredText lines: usage, description, then one entry per option."""
    usage = parser.format_usage().strip().removeprefix("usage: ")
    lines = ["Usage:", "", ".. code-block:: text", ""]
    lines += ["   " + line for line in usage.splitlines()]
    lines += ["", parser.description or "", ""]
    for action in parser._actions:  # argparse has no public accessor for its options
        if isinstance(action, argparse._HelpAction):
            continue
        flags = ", ".join(action.option_strings) or action.dest
        if action.nargs == 0:
            signature = flags
        else:
            metavar = action.metavar or (
                "{" + ",".join(map(str, action.choices)) + "}" if action.choices else action.dest.upper()
            )
            signature = f"{flags} {metavar}"
        help_text = (action.help or "").replace("%%", "%").replace("*", r"\*")
        lines += [f".. option:: {signature}", "", f"   {help_text}", ""]
        if action.choices and action.metavar:
            lines += ["   Choices: " + ", ".join(f"``{c}``" for c in action.choices) + ".", ""]
    return lines


class CliDirective(SphinxDirective):
    """``.. xpnn-cli:: module:function`` renders the parser that ``function()`` returns."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        module_name, _, function = self.arguments[0].partition(":")
        parser = getattr(importlib.import_module(module_name), function)()
        container = nodes.container()
        self.state.nested_parse(StringList(parser_rst(parser), source="<xpnn-cli>"), self.content_offset, container)
        return container.children


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("xpnn-cli", CliDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
