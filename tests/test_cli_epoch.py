"""bench/cli_epoch.py: its argument checks and the per-state summary of paired rounds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import cli_epoch  # noqa: E402


def probe(state: str | None) -> dict:
    return {"state": state, "small_ratio": None if state is None else {"near": 0.65, "far": 1.1}[state]}


def test_medians_by_state_counts_only_rounds_whose_probes_all_agree():
    runs = {"xpnn": [[9.0, 1.0, 1.2], [9.0, 2.0, 2.0], [9.0, 0.5, 0.7], [9.0, 3.0, 3.0]],
            "pytorch": [[9.0, 2.0, 2.0], [9.0, 2.0, 2.0], [9.0, 1.0, 1.0], [9.0, 4.0, 4.0]]}
    probes = [[probe("near")] * 3, [probe("near"), probe("far"), probe("near")],
              [probe("near")] * 3, [probe("far")] * 3]
    by_state = cli_epoch.medians_by_state(runs, probes)
    # near: rounds 1 and 3, first epochs left out -> xpnn median of 1.0, 1.2, 0.5, 0.7; PyTorch of 2, 2, 1, 1
    assert by_state["near"] == (2, pytest.approx(0.85), pytest.approx(1.5))
    assert by_state["far"] == (1, 3.0, 4.0)


def test_medians_by_state_leaves_out_a_state_no_round_stayed_in_and_rounds_without_probes():
    runs = {"xpnn": [[1.0], [2.0]], "pytorch": [[1.0], [2.0]]}
    by_state = cli_epoch.medians_by_state(runs, [[probe(None)] * 3, [probe("far"), probe("near"), probe("far")]])
    assert by_state == {}
    # a round of one epoch keeps that epoch
    assert cli_epoch.medians_by_state(runs, [[probe("far")] * 3, [probe(None)] * 3]) == {"far": (1, 1.0, 1.0)}


@pytest.mark.parametrize("flag, value", [("--rounds", "0"), ("--epochs", "-1"), ("--batch", "x"), ("--rounds", "1.5")])
def test_counts_must_be_whole_numbers_of_at_least_one(flag, value):
    result = subprocess.run([sys.executable, str(BENCH / "cli_epoch.py"), flag, value], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert f"argument {flag}: must be a whole number >= 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_machine_probe_names_the_state_its_small_product_reads():
    pytest.importorskip("threadpoolctl")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("the probe compares two threads with one: this process may use one core")
    out = cli_epoch.machine_probe()
    assert out["small_ratio"] > 0 and out["one_thread_ms"] > 0 and out["two_threads_ms"] > 0
    assert out["state"] == ("near" if out["small_ratio"] < cli_epoch.NEAR_BELOW else "far")


NOTHING = {"one_thread_ms": None, "two_threads_ms": None, "small_ratio": None, "state": None}


def test_machine_probe_names_no_state_when_its_process_fails(monkeypatch):
    def fail(*args, **kwargs):
        raise subprocess.CalledProcessError(3, args[0])

    monkeypatch.setattr(cli_epoch.subprocess, "run", fail)
    assert cli_epoch.machine_probe() == NOTHING


def test_machine_probe_names_no_state_on_one_core(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("no probe process on one core")

    monkeypatch.setattr(cli_epoch.os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.setattr(cli_epoch.subprocess, "run", refuse)
    assert cli_epoch.machine_probe() == NOTHING
