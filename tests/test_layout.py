"""The package's architecture holds: subpackages import only those below them, no module imports itself back
through others, and the short import paths users know keep working."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "xpnn"
# Lower ranks are lower layers; a module may import its own subpackage and lower ranks only (equal ranks are
# independent of each other).
RANK = {"core": 0, "io": 1, "nn": 2, "runtime": 3, "model": 3, "optim": 4, "training": 5, "cli": 6}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> set[str]:
    """Every xpnn module ``name`` imports, at the top, inside functions or under TYPE_CHECKING."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "xpnn")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] == "xpnn":
                # "from . import saving" imports the module xpnn.model.saving, not just the package
                found.update(f"{source}.{a.name}" if f"{source}.{a.name}" in MODULES else source for a in node.names)
    return found - {name}


def subpackage(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in RANK) else None


def test_every_module_is_in_a_layer():
    loose = [name for name in MODULES if name.count(".") == 1 and name.split(".")[1] not in RANK]
    assert sorted(loose) == ["xpnn.export", "xpnn.train"], "only the two command shims sit beside the subpackages"


def test_imports_point_down_the_layers():
    wrong = []
    for name in MODULES:
        own = subpackage(name)
        if own is None:
            continue
        for target in imports(name):
            other = subpackage(target)
            if other is None or (other != own and RANK[other] >= RANK[own]):
                wrong.append(f"{name} imports {target}")
    assert not wrong, wrong


def test_no_import_cycle():
    graph = {name: {t for t in imports(name) if t in MODULES} for name in MODULES}
    cycles = []

    def visit(node: str, path: list[str], done: set[str]) -> None:
        for target in graph[node]:
            if target in path:
                cycles.append([*path[path.index(target):], target])
            elif target not in done:
                visit(target, [*path, target], done)
        done.add(node)

    done: set[str] = set()
    for name in sorted(MODULES):
        if name not in done:
            visit(name, [name], done)
    # a package's __init__ that re-exports its own modules is not a cycle
    cycles = [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]
    assert not cycles, cycles


def plant(tmp_path, monkeypatch, module: str, line: str) -> None:
    """Let the checks above read ``module`` with ``line`` appended (a copy; the package is untouched)."""
    copy = tmp_path / MODULES[module].name
    copy.write_text(MODULES[module].read_text() + f"\n{line}\n")
    monkeypatch.setattr(sys.modules[__name__], "MODULES", {**MODULES, module: copy})


def test_a_planted_upward_import_is_found(tmp_path, monkeypatch):
    plant(tmp_path, monkeypatch, "xpnn.nn.layers.base", "from ...training import trainer")
    with pytest.raises(AssertionError, match="xpnn.nn.layers.base imports xpnn.training.trainer"):
        test_imports_point_down_the_layers()


def test_a_planted_cycle_is_found(tmp_path, monkeypatch):
    plant(tmp_path, monkeypatch, "xpnn.training.callbacks", "from .trainer import Trainer")
    with pytest.raises(AssertionError, match="xpnn.training.callbacks"):
        test_no_import_cycle()


@pytest.mark.parametrize("statement", [
    "from xpnn.layers import Affine, Conv2d",
    "from xpnn.losses import SoftmaxCrossEntropy",
    "from xpnn.optim import SGD, Adam",
    "from xpnn.callbacks import Callback, EarlyStopping, History",
    "from xpnn.trainer import Trainer, fit",
    "from xpnn.backend import to_numpy, get_backend",
    "from xpnn.data import load_dataset",
    "from xpnn.initializers import get_initializer",
    "from xpnn.metrics import count_correct",
    "import xpnn.layers, xpnn.backend; xpnn.layers.Affine; xpnn.backend.to_numpy",
    "from xpnn.layers.base import Layer; import xpnn.nn.layers.base as b; assert Layer is b.Layer",
    "import xpnn.layers.conv, xpnn.nn.layers.conv; assert xpnn.layers.conv is xpnn.nn.layers.conv",
    "from xpnn.layers.dropout import Dropout; from xpnn.layers.standardize import Standardize",
])
def test_short_import_paths_work_in_a_fresh_interpreter(statement):
    result = subprocess.run([sys.executable, "-c", statement], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_import_xpnn_leaves_the_command_line_and_optional_libraries_out():
    code = ("import sys, xpnn; print(sorted(m for m in sys.modules if m.startswith(('xpnn.cli', 'torch', 'cupy', "
            "'mpi4py', 'onnx'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_console_scripts_name_functions_that_exist():
    import importlib

    import tomllib

    scripts = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"xpnn-train", "xpnn-export"}
    for target in scripts.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), target
