"""xpnn.runtime.heap: the command line keeps freed memory in the process instead of paging it in at every step."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

import xpnn.runtime.heap
from tests.cli_helpers import pythonpath
from xpnn.cli import train as cli

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# A fresh process frees 10 MB of 100 kB arrays, ten times over, and counts the pages it faults in again.
CYCLES = """
import resource, sys
import numpy as np
from xpnn.runtime.heap import retain_freed_memory
if sys.argv[1] == "on":
    assert retain_freed_memory()
def cycle():
    blocks = [np.ones(25_000, np.float32) for _ in range(100)]
    del blocks
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    cycle()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 10)
"""


def faults_per_cycle(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", CYCLES, mode], capture_output=True, text=True, timeout=60,
                            env={"PYTHONPATH": pythonpath()}, check=True)
    return int(result.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's allocator only")
def test_freed_arrays_are_not_paged_in_again():
    default = faults_per_cycle("off")
    if default < 100:
        pytest.skip(f"this system's allocator kept the memory by itself ({default} faults per cycle)")
    assert faults_per_cycle("on") < default / 10


def test_elsewhere_nothing_changes(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert xpnn.runtime.heap.retain_freed_memory() is False


def test_the_command_line_keeps_freed_memory(monkeypatch):
    calls = []
    monkeypatch.setattr(cli, "retain_freed_memory", lambda: calls.append(True))
    with pytest.raises(SystemExit):
        cli.main(["--epochs", "0"])
    assert calls == [True]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"trim": 4 << 30}, "trim must be at most 2147483647 bytes"),  # a C int would wrap it to 0: trim always
    ({"mmap": 0}, "mmap must be a positive integer"),
    ({"trim": 2.5e8}, "trim must be a positive integer"),
])
def test_sizes_a_c_int_cannot_hold_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        xpnn.runtime.heap.retain_freed_memory(**kwargs)
