"""The README's code runs as written, its commands are the ones CI runs, and its numbers are the committed logs'."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.doc_blocks import commands, run_page

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S)


def test_every_readme_snippet_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    run_page(README.read_text(), str(README), namespace)
    out = capsys.readouterr().out
    assert float(re.search(r"validation accuracy ([\d.]+)%", out).group(1)) > 80
    assert (tmp_path / "model.npz").is_file()
    rows = namespace["xpnn"].backend.to_numpy(namespace["proba"])
    assert rows.shape == (5, 3) and abs(rows.sum(axis=1) - 1).max() < 1e-5


def test_the_readme_test_command_is_the_one_ci_runs():
    commands = [line for block in blocks("bash") for line in block.splitlines() if "pytest" in line]
    assert commands == ['pip install -e ".[dev]" && python -m pytest']
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "python -m pytest" in ci


def test_the_readme_train_command_uses_real_flags():
    from xpnn.cli.train import build_parser

    train = [line for block in blocks("bash") for line in commands(block) if "xpnn.train" in line]
    assert train
    for line in train:
        argv = shlex.split(line.split("python -m xpnn.train", 1)[1])
        build_parser().parse_args(argv)  # exits (fails the test) on an unknown flag


def test_the_quickstart_output_is_the_committed_log():
    shown = [line for line in blocks("text")[0].splitlines() if line != "..."]
    log = (ROOT / "docs" / "runs" / "fashion-mnist-default.txt").read_text().splitlines()
    assert shown[0] == log[0] and shown[-1] == log[-1]
    assert all(line in log for line in shown)


def test_results_table_matches_its_logs():
    rows = [line for line in README.read_text().splitlines() if line.startswith("|") and "[txt](" in line]
    assert len(rows) >= 3
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        log = (ROOT / re.search(r"\[txt\]\(([^)]+)\)", row).group(1)).read_text()
        epochs, total, accuracy = re.search(r"done: (\d+) epochs, ([\d.]+) s this run; test accuracy ([\d.]+)%",
                                            log).groups()
        assert cells[3] == f"{accuracy} %", row
        assert float(cells[4]) == pytest.approx(float(total) / int(epochs), abs=0.05), row


def test_readme_links_resolve():
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text()):
        if not re.match(r"[a-z]+://", target):
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"
