"""Peak memory of one training epoch, measured in a fresh process.

    python bench/memory.py IMPLEMENTATION BACKEND BATCH     (BATCH 0 = full batch)

Prints one JSON object: the memory an epoch needs beyond what was resident before it (the data and
the model), in MB. On the CPU that is the rise of the peak resident set size (VmHWM, reset just before
the epoch through /proc/self/clear_refs); on a GPU, the peak of the library's device allocator.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from implementations import load_data, make_epoch


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def peak_bytes(epoch: object, backend: str, from_start: bool = False) -> int:
    """What one ``epoch.run()`` needs beyond what is resident before it, after a warm-up epoch.

    ``from_start`` (CPU only): the peak over the warm-up and the measured epoch, above what was resident
    before the warm-up. Needed where each array is small (a CNN at batch 128): the C heap keeps the memory
    an epoch freed, so after a warm-up the rise of the peak alone reads as nearly nothing.
    """
    if from_start and backend not in ("cupy", "torch-cuda"):
        before = _status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        epoch.run()
        epoch.run()
        return _status("VmHWM") - before
    epoch.run()  # warm-up: caches, allocator pools, lazy initialization
    if backend == "cupy":
        import cupy

        pool = cupy.get_default_memory_pool()
        pool.free_all_blocks()
        before = pool.used_bytes()
        # CuPy keeps no peak counter: sample the pool's total, which only grows without free_all_blocks.
        epoch.run()
        return pool.total_bytes() - before
    if backend == "torch-cuda":
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        epoch.run()
        return torch.cuda.max_memory_allocated() - before
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    epoch.run()
    return _status("VmHWM") - before


def measure(implementation: str, backend: str, batch: int) -> dict:
    x, y, source = load_data()
    epoch = make_epoch(implementation, backend, x, y, batch or x.shape[0])
    gpu = backend in ("cupy", "torch-cuda")
    return {"implementation": implementation, "backend": backend, "batch": batch,
            "peak_mb": peak_bytes(epoch, backend) / 1e6, "kind": "device" if gpu else "host", "data": source}


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
