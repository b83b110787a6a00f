"""Every message that tells a user what to install must work where xpnn came from a source checkout.

xpnn is not on the package index, so ``pip install "xpnn[plot]"`` fails; the hints name the packages
themselves (``pip install matplotlib``), which works whichever way xpnn was installed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from xpnn.cli import train as cli
from xpnn.core.backend import BackendError, get_backend

PACKAGE = Path(__file__).resolve().parents[1] / "xpnn"


def test_no_hint_names_an_extra_of_the_unpublished_package():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"pip install\W+xpnn\[|xpnn\[\w+\]", line):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_plot_without_matplotlib_names_the_package(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes "import matplotlib" raise ImportError
    assert cli.main(["--plot", str(tmp_path / "c.png"), "--data-dir", str(tmp_path), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "python -m xpnn.train: error: --plot needs matplotlib; install it with pip install matplotlib"


@pytest.mark.parametrize(("device", "package"), [("torch", "torch"), ("gpu", "cupy-cuda12x")])
def test_backend_hints_name_the_package(monkeypatch, device, package):
    monkeypatch.setitem(sys.modules, "torch" if device == "torch" else "cupy", None)
    with pytest.raises(BackendError, match=f"pip install {package}"):
        get_backend(device)
