"""The README's library example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_library_example_runs(tmp_path, monkeypatch, capsys):
    block = re.search(r"## As a library\n\n```python\n(.*?)```", README.read_text(), re.S)
    assert block, "the README lost its library example"
    monkeypatch.chdir(tmp_path)
    exec(compile(block.group(1), str(README), "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert float(out[0].split()[1]) == 1.0  # the example overfits its 64 samples
    assert (tmp_path / "model.npz").is_file()
    assert "input" in out[1]
