"""scripts/compare_runs.py: runs that differ only in their times compare equal; any other difference is found."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_runs.py"


def write_run(folder: Path, loss: float, seconds: float, weight: float) -> None:
    folder.mkdir()
    row = {"epoch": 1, "train_loss": loss, "seconds": seconds, "samples_per_second": 60000 / seconds}
    (folder / "m.jsonl").write_text(json.dumps(row) + "\n")
    speed = f"{seconds:.1f} s  {60000 / seconds:,.0f} samples/s"
    (folder / "m.txt").write_text(f"epoch 1/1  train loss {loss:.4f}   {speed}\n"
                                  f"done: 1 epochs, {seconds:.1f} s this run; checkpoint {folder}/m.npz\n")
    header = json.dumps({"kind": "checkpoint", "history": [row]})
    np.savez(folder / "m.npz", __xpnn__=np.array(header), w=np.array([weight], dtype=np.float32))


def compare(a: Path, b: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(a), str(b)], capture_output=True, text=True)


def test_runs_that_differ_only_in_time_and_folder_are_identical(tmp_path):
    write_run(tmp_path / "a", 0.5, 2.0, 1.0)
    write_run(tmp_path / "b", 0.5, 7.5, 1.0)
    result = compare(tmp_path / "a", tmp_path / "b")
    assert result.returncode == 0, result.stdout
    assert result.stdout.count("identical") == 3


@pytest.mark.parametrize(("loss", "weight", "different"), [(0.50001, 1.0, {"m.jsonl", "m.npz"}),
                                                           (0.5, 1.0000001, {"m.npz"})])
def test_a_changed_number_is_found(tmp_path, loss, weight, different):
    write_run(tmp_path / "a", 0.5, 2.0, 1.0)
    write_run(tmp_path / "b", loss, 2.0, weight)
    result = compare(tmp_path / "a", tmp_path / "b")
    assert result.returncode == 1
    assert {line.split(":")[0] for line in result.stdout.splitlines() if "DIFFERENT" in line} == different


def test_a_missing_file_is_a_difference(tmp_path):
    write_run(tmp_path / "a", 0.5, 2.0, 1.0)
    write_run(tmp_path / "b", 0.5, 2.0, 1.0)
    (tmp_path / "b" / "m.txt").unlink()
    result = compare(tmp_path / "a", tmp_path / "b")
    assert result.returncode == 1 and "m.txt: missing" in result.stdout
