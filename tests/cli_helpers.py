"""Running ``python -m xpnn.train`` as a user does: in a subprocess, reading its exit code and output."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
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


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Children started inside get SIGINT at its default, whatever this process inherited, so a test can Ctrl-C them.

    A shell starts background jobs (``cmd &``, ``nohup``) with SIGINT ignored, and an ignored signal stays ignored
    across fork and exec: Python in the child then installs no KeyboardInterrupt handler and the run would rightly
    ignore the test's Ctrl-C. A handler, unlike an ignored signal, is reset to the default by exec. (A
    ``preexec_fn`` would do the same in the child but forks a process that may hold other threads' locks.)"""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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
