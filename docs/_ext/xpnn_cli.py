"""The ``xpnn-cli`` directive: the command-line reference, generated from ``xpnn.cli.train.build_parser``.

Each option becomes an ``option`` entry with its flags, metavar, choices and help text (which ends with its
default), so the page cannot drift from ``python -m xpnn.train --help``. The directive is meant for MyST
Markdown pages: its content is parsed as Markdown.
"""

from __future__ import annotations

import argparse
import importlib
import re
from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective


def parser_markdown(parser: argparse.ArgumentParser) -> list[str]:
    """Render ``parser`` as MyST Markdown lines: usage, description, then one ``{option}`` entry per option."""
    first, *rest = parser.format_usage().strip().splitlines()
    usage = [first.removeprefix("usage: "), *(line.removeprefix(" " * len("usage: ")) for line in rest)]
    lines = ["Usage:", "", "```text", *usage, "```", "", parser.description or "", ""]
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
        help_text = re.sub(r"(?<![\w`])(--[a-z][a-z-]*(?: [a-z0-9:]+(?=[;,:)]| \())?)", r"`\1`", help_text)
        lines += [f"```{{option}} {signature}", help_text]
        if action.choices and action.metavar:
            lines += ["", "Choices: " + ", ".join(f"`{choice}`" for choice in action.choices) + "."]
        lines += ["```", ""]
    return lines


class CliDirective(SphinxDirective):
    """```` ```{xpnn-cli} module:function ```` renders the parser that ``function()`` returns."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        module_name, _, function = self.arguments[0].partition(":")
        parser = getattr(importlib.import_module(module_name), function)()
        container = nodes.container()
        lines = StringList(parser_markdown(parser), source="<xpnn-cli>")
        self.state.nested_parse(lines, self.content_offset, container)
        return container.children


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("xpnn-cli", CliDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
