"""Every Python snippet in the README runs as written, in order, in one namespace (as a reader would paste them)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_the_library_examples():
    text = "\n".join(python_blocks())
    for needle in ("xpnn.fit(", "EarlyStopping", "MeanSquaredError", ".freeze(", "class Scale(xpnn.Layer)",
                   "xpnn.gradcheck", "xpnn.cnn("):
        assert needle in text, f"the README lost its {needle} example"


def test_every_readme_snippet_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in python_blocks():
        exec(compile(block, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert float(lines[0].split()[1]) == 1.0  # the first example overfits its 64 samples
    assert (tmp_path / "model.npz").is_file()
    assert "input" in lines[1]  # gradcheck reports the input gradient too
    epochs, best = map(int, re.search(r"stopped after (\d+) epochs, best val loss at epoch (\d+)", out).groups())
    assert best < epochs < 200  # early stopping stopped it
    assert float(re.search(r"mse ([\d.]+)", out).group(1)) < 0.01
    assert "Trainable params" in out
    assert int(re.search(r"cnn train accuracy (\d+)%", out).group(1)) > 80
