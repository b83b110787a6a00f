"""The diagnostic scripts refuse wrong arguments with one argparse line, before they load data or time anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

CASES = [
    ("mlp_floor.py", ["--rounds", "0"], "argument --rounds: must be a whole number >= 1"),
    ("mlp_floor.py", ["--rounds", "two"], "argument --rounds: must be a whole number >= 1"),
    ("step_overhead.py", ["--repeats", "-5"], "argument --repeats: must be a whole number >= 1"),
    ("gemm_add_sizes.py", ["--batch", "0"], "argument --batch: must be a whole number >= 1"),
    ("gemm_add_sizes.py", ["--repeats", "many"], "argument --repeats: must be a whole number >= 1"),
    ("mlp_phases.py", ["--epochs", "0"], "argument --epochs: must be a whole number >= 1"),
    ("mlp_phases.py", ["--optimizer", "rmsprop"], "argument --optimizer: invalid choice: 'rmsprop'"),
    ("blas_threads.py", ["--epochs", "1e3"], "argument --epochs: must be a whole number >= 1"),
    ("fast_path_ab.py", ["first_max_scatter", "--batches", "0"], "argument --batches: must be a whole number >= 1"),
    ("machine_states.py", ["--minutes", "0"], "--minutes must be a finite number above 0"),
    ("machine_states.py", ["--minutes", "nan"], "--minutes must be a finite number above 0"),
    ("machine_states.py", ["--minutes", "inf"], "--minutes must be a finite number above 0"),
    ("machine_states.py", ["--pingpong", "/nonexistent/core_pingpong"], "not an executable file"),
    ("machine_states.py", ["--pingpong", str(SCRIPTS)], "not an executable file"),  # a folder
    ("machine_states.py", ["--pingpong", str(SCRIPTS / "core_pingpong.c")], "not an executable file"),
]


@pytest.mark.parametrize("script, args, message", CASES, ids=[f"{s}-{' '.join(a)}" for s, a, _ in CASES])
def test_wrong_arguments_get_one_line_and_exit_2(script, args, message):
    pytest.importorskip("threadpoolctl")  # mlp_phases and blas_threads import it at the top
    result = subprocess.run([sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
