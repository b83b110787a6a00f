"""Benchmark set-up: the data, loaded once, and a description of the machine in the JSON output."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from implementations import load_data


@pytest.fixture(scope="session")
def mnist_shaped():
    """(x, y, source): 60,000 × 784 float32 rows and int64 labels."""
    return load_data()


def pytest_benchmark_update_machine_info(config, machine_info):
    import numpy

    info = {"numpy": numpy.__version__, "cores": os.cpu_count(), "processor": _cpu_name()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    try:
        import cupy

        info["cupy"] = cupy.__version__
    except ImportError:
        pass
    info["python"] = platform.python_version()
    machine_info["xpnn"] = info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
