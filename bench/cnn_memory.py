"""Peak memory of one CNN training epoch (of SAMPLES images), measured in a fresh process.

    python bench/cnn_memory.py IMPLEMENTATION BACKEND BATCH SAMPLES

Prints one JSON object: on the CPU, the peak resident set size over a warm-up and a measured epoch above
what the data and the model held before them (bench/memory.py, ``from_start``); on a GPU, the peak of the
library's allocator during the measured epoch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from implementations import load_data, make_cnn_epoch
from memory import peak_bytes


def measure(implementation: str, backend: str, batch: int, samples: int) -> dict:
    x, y, source = load_data(samples)
    epoch = make_cnn_epoch(implementation, backend, x, y, batch)
    return {"implementation": implementation, "backend": backend, "batch": batch, "samples": samples,
            "peak_mb": peak_bytes(epoch, backend, from_start=True) / 1e6,
            "kind": "device" if backend in ("cupy", "torch-cuda") else "host", "data": source}


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
