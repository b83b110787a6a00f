"""Running ``python -m xpnn.train`` as a user does: in a subprocess, reading its exit code and output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

import xpnn

ROOT = Path(__file__).resolve().parents[1]


def pythonpath(*first: object) -> str:
    """PYTHONPATH for a child interpreter: ``first``, this checkout, then the caller's own PYTHONPATH (where
    dependencies may live, as on a machine that installs them into a folder instead of site-packages)."""
    return os.pathsep.join(str(p) for p in (*first, ROOT, os.environ.get("PYTHONPATH")) if p)


def cli(*args: str, timeout: float = 120, warnings_as_errors: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter; NumPy RuntimeWarnings become errors so that none can slip out."""
    env = {**os.environ, "PYTHONPATH": pythonpath()}
    flags = ["-W", "error::RuntimeWarning"] if warnings_as_errors else []
    return subprocess.run([sys.executable, *flags, "-m", "xpnn.train", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, **kwargs)


def interruptible() -> None:
    """``preexec_fn`` for a child the test will Ctrl-C: SIGINT back to its default, whatever this process inherited.

    A shell starts background jobs (``cmd &``, ``nohup``) with SIGINT ignored and children inherit that; Python
    then installs no KeyboardInterrupt handler, and the child would rightly ignore the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The single stderr line of a failed run (no traceback, no warnings before it)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def checkpoint_state(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    return xpnn.io.serialization.read_npz(path, "checkpoint")
