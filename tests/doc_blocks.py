"""Running the code of a Markdown page as a reader would: its blocks in order, in the current folder.

Every ```python block runs in one namespace, unless its first line is ``# not run: <reason>`` (it is then
only compiled). A block that starts with ``# needs: onnx, onnxruntime (pip install ...)`` ends the page's
run there, as a skip naming what is missing, where one of those modules cannot be imported (an extra).
A block whose first line names a script (``# make_data.py: ...``) is also written to that file, so that a
later command can run it. A ```bash block runs only when the line before it is
``<!-- the tests run this block's commands ... -->``: each command (``\\`` continues a line) runs in a
fresh interpreter, ``python`` being this one, and must exit with status 0.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_RUN = "# not run:"
RUN_MARK = "<!-- the tests run this block's commands"
BLOCK = re.compile(r"(?P<mark><!--[^\n]*-->\n)?```(?P<language>python|bash)\n(?P<code>.*?)```", re.S)


def blocks(text: str, language: str) -> list[str]:
    """The code of every ```language block of ``text``, in order."""
    return [match["code"] for match in BLOCK.finditer(text) if match["language"] == language]


def commands(code: str) -> list[str]:
    """The command lines of a bash block: ``\\`` continuations joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def run_page(text: str, source: str, namespace: dict) -> int:
    """Run the code of one page in the current folder; returns how many blocks ran."""
    ran = 0
    for match in BLOCK.finditer(text):
        code = match["code"]
        needs = re.match(r"# needs: ([\w, ]+)(.*)", code)
        if match["language"] == "python" and needs:
            missing = [name.strip() for name in needs[1].split(",") if importlib.util.find_spec(name.strip()) is None]
            if missing:
                pytest.skip(f"{source}: the rest of the page needs {', '.join(missing)}{needs[2]}")
        if match["language"] == "python":
            compiled = compile(code, source, "exec")
            if code.startswith(NOT_RUN):
                assert len(code.splitlines()[0]) > len(NOT_RUN) + 5, f"{source}: say why a block is not run"
                continue
            script = re.match(r"# ([\w-]+\.py)\b", code)
            if script:
                Path(script[1]).write_text(code)
            exec(compiled, namespace)
            ran += 1
        elif match["mark"] and match["mark"].startswith(RUN_MARK):
            for command in commands(code):
                run_command(command, source)
            ran += 1
    return ran


def run_command(command: str, source: str) -> None:
    argv = shlex.split(command)
    assert argv[0] == "python", f"{source}: only python commands run here, not {command!r}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, f"{source}: {command} exited with {done.returncode}:\n{done.stderr}"
