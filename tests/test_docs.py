"""The documentation pages keep working: their Python runs, their links resolve, the CLI page lists every flag.

Each page's ```python blocks run in order in one namespace, in a temporary folder, as a reader would paste
them. A block that needs what a test machine lacks (a GPU, mpirun, real data) starts with ``# not run:``
and the reason; it is still compiled, so it cannot rot into a syntax error.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.doc_blocks import RUN_MARK, commands, run_page

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(path for path in DOCS.rglob("*.md") if "_build" not in path.parts)


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


def test_the_pages_have_code_to_run():
    assert sum(bool(python_blocks(page)) for page in PAGES) >= 8


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: str(p.relative_to(DOCS)))
def test_page_code_runs(page, tmp_path, monkeypatch, capsys):
    import xpnn
    from xpnn.model import onnx as onnx_export

    monkeypatch.chdir(tmp_path)
    # Layers a page defines (found by class name when a model loads) and its ONNX rules stay on the page, so that
    # a page's Swish cannot stand in for another test's.
    monkeypatch.setattr(xpnn.Layer, "registry", dict(xpnn.Layer.registry))
    monkeypatch.setattr(onnx_export, "_RULES", dict(onnx_export._RULES))
    run_page(page.read_text(), str(page), {"__name__": "__docs__"})
    capsys.readouterr()


def test_marked_commands_run_and_fail_loudly(tmp_path, monkeypatch):
    """The page runner runs a marked bash block (and only a marked one), and a failing command fails it."""
    monkeypatch.chdir(tmp_path)
    script = "```python\n# make.py: writes a file\nfrom pathlib import Path\nPath('a.txt').write_text('1')\n```\n"
    failing = "```bash\npython -c \"raise SystemExit(3)\"\n```\n"
    marked = f"{RUN_MARK} -->\n```bash\npython make.py \\\n  --ignored\n```\n"
    assert run_page(script + failing + marked, "page.md", {}) == 2
    assert (tmp_path / "make.py").read_text().startswith("# make.py")
    with pytest.raises(AssertionError, match="exited with 3"):
        run_page(script + f"{RUN_MARK} -->\n" + failing, "page.md", {})
    needs = "```python\n# needs: no_such_module_xyz (pip install xyz)\nran = True\n```\n"
    with pytest.raises(pytest.skip.Exception, match="needs no_such_module_xyz"):
        run_page(script + needs, "page.md", {})
    namespace: dict = {}
    assert run_page(script + needs.replace("no_such_module_xyz", "json"), "page.md", namespace) == 2
    assert namespace["ran"]


def markdown_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # code is not links
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("path", [*PAGES, ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_internal_links_resolve(path):
    for link in markdown_links(path):
        if re.match(r"[a-z]+:", link):
            continue
        target = link.split("#")[0]
        if target:
            assert (path.parent / target).exists(), f"{path.relative_to(ROOT)} links to {link}, which does not exist"


@pytest.mark.parametrize("path", [*PAGES, ROOT / "README.md", ROOT / "CONTRIBUTING.md"],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_speak_to_users(path):
    text = path.read_text()
    for pattern in (r"\bissue #?\d+", r"\bour (build )?machines?\b", r"\bhonestly\b", r"target [\d.]+x",
                    r"\(target\b"):
        assert not re.search(pattern, text, re.I), f"{path.relative_to(ROOT)}: {pattern!r}"


def test_the_cli_page_lists_every_flag():
    pytest.importorskip("sphinx", reason="the CLI page's generator is a Sphinx extension: pip install -e '.[docs]'")
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        from xpnn_cli import parser_markdown
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    from xpnn.cli.export import _parser as export_parser
    from xpnn.cli.train import build_parser

    for parser, least in ((build_parser(), 20), (export_parser(), 4)):
        text = "\n".join(parser_markdown(parser))
        flags = [flag for action in parser._actions for flag in action.option_strings if flag.startswith("--")]
        assert len(flags) > least
        for flag in flags:
            if flag != "--help":
                assert f"```{{option}} {flag}" in text, flag
    assert "(default: 128)" in "\n".join(parser_markdown(build_parser()))
    page = (DOCS / "cli.md").read_text()
    assert "```{xpnn-cli} xpnn.cli.train:build_parser" in page and "```{xpnn-cli} xpnn.cli.export:_parser" in page


def test_the_link_checker_finds_broken_links(tmp_path):
    sys.path.insert(0, str(DOCS))
    try:
        from check_links import broken_links
    finally:
        sys.path.remove(str(DOCS))
    (tmp_path / "a.html").write_text('<h1 id="top">A</h1><a href="b.html#part">b</a><a href="https://x.org">x</a>'
                                     '<a href="#top">top</a>')
    (tmp_path / "b.html").write_text('<h2 id="part">B</h2><a href="c.html">c</a><a href="a.html#nowhere">a</a>'
                                     '<img src="runs/curve.png">')
    assert broken_links(tmp_path) == ["b.html: c.html (no such file)", "b.html: a.html#nowhere (no anchor #nowhere)",
                                      "b.html: runs/curve.png (no such file)"]


def test_cross_references_name_documented_objects():
    """A {class}`...` or {func}`...` on a page must name an object the API reference documents (Sphinx would
    otherwise render it as plain text, silently)."""
    import importlib

    api = {line.strip() for line in (DOCS / "api" / "index.md").read_text().splitlines()}
    for page in PAGES:
        for role, target in re.findall(r"\{(class|func|meth|mod)\}`~?([\w.]+)`", page.read_text()):
            parts = target.split(".")
            assert parts[0] == "xpnn", f"{page.name}: {target}"
            obj = importlib.import_module("xpnn")
            for name in parts[1:]:
                obj = getattr(obj, name) if hasattr(obj, name) else importlib.import_module(f"{obj.__name__}.{name}")
            if role in ("class", "func"):
                assert ".".join(parts[1:]) in api, f"{page.name}: {target} is not in the API reference"


def test_benchmark_accuracy_table_matches_its_logs():
    page = DOCS / "benchmarks" / "index.md"
    rows = [line for line in page.read_text().splitlines() if line.startswith("|") and "[txt](" in line]
    assert len(rows) == 5
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        log = (page.parent / re.search(r"\[txt\]\(([^)]+)\)", row).group(1)).read_text()
        epochs, total, accuracy, best, at = re.search(
            r"done: (\d+) epochs, ([\d.]+) s this run; test accuracy ([\d.]+)% \(best ([\d.]+)% at epoch (\d+)\)",
            log).groups()
        assert cells[1:3] == [f"{accuracy} %", f"{best} % ({at})"], row
        assert float(cells[3]) == pytest.approx(float(total) / int(epochs), abs=0.05), row


def test_every_documented_command_line_parses():
    """Each ``python -m xpnn.train ...`` in a bash block of the pages uses flags the parser accepts."""
    import shlex

    from xpnn.cli.train import build_parser

    found = 0
    for page in [*PAGES, ROOT / "CONTRIBUTING.md"]:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), re.S):
            for line in commands(block):
                if "python -m xpnn.train" not in line:
                    continue
                argv = [arg for arg in shlex.split(line.split("python -m xpnn.train", 1)[1], comments=True)
                        if arg != "..."]
                build_parser().parse_args(argv)  # exits, failing the test, on an unknown flag or value
                found += 1
    assert found >= 15
