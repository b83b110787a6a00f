"""Every script in examples/ runs to the end on tiny data (``--tiny``) and prints the result it promises."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))

# What each example must print: the number a reader runs it for.
EXPECTED = {
    "mlp_fashion_mnist.py": "reloaded from mlp.npz: test accuracy",
    "cnn_fashion_mnist.py": "epoch 1: test accuracy",
    "own_csv.py": "test accuracy",
    "regression.py": "test mse",
    "custom_layer.py": "reloaded: train accuracy",
    "export_onnx.py": "onnxruntime test accuracy",
}
# Examples that need an optional extra: the modules, and how to install them.
NEEDS = {"export_onnx.py": (("onnx", "onnxruntime"), "pip install onnx onnxruntime")}


def test_every_example_is_known():
    assert {path.name for path in EXAMPLES} == set(EXPECTED)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_example_runs_on_tiny_data(path, tmp_path):
    modules, install = NEEDS.get(path.name, ((), ""))
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"{path.name} needs {', '.join(missing)} ({install})")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, str(path), "--tiny"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert EXPECTED[path.name] in done.stdout, done.stdout
    assert list(tmp_path.iterdir()) == []  # examples clean up what they write


def test_own_csv_refuses_labels_that_are_not_whole_numbers(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\n0.1,0.2,0.5\n0.3,0.4,1\n")
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "own_csv.py"), str(bad)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode != 0
    assert "line 2, column 'label': label 0.5 is not a whole number" in done.stderr
    assert "Traceback" not in done.stderr
