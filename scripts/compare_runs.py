"""Compare two folders of training runs (scripts/short_runs.sh, scripts/fashion_runs.sh): every number of every
--metrics row, every printed line and every checkpoint's arrays and header, with times left out.

    python scripts/compare_runs.py RUNS_BEFORE RUNS_AFTER

Prints one line per file and exits 1 when any differs or is missing.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

TIMINGS = ("seconds", "samples_per_second")


def timeless_rows(rows: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if key not in TIMINGS} for row in rows]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def printed(path: Path) -> list[str]:
    """The log's lines without times, speeds and the folder the run wrote to."""
    return [re.sub(r"\s+[\d.]+ s\s+[\d,]+ samples/s|[\d.]+ s this run|(?<=[ '])/\S+/", "", line)
            for line in path.read_text().splitlines()]


def checkpoint(path: Path) -> tuple[dict, dict]:
    with np.load(path) as npz:
        header = json.loads(str(npz["__xpnn__"]))
        arrays = {name: npz[name] for name in npz.files if name != "__xpnn__"}
    header["history"] = timeless_rows(header.get("history", []))
    return header, arrays


def same(kind: str, a: Path, b: Path) -> bool:
    if kind == ".jsonl":
        return timeless_rows(jsonl(a)) == timeless_rows(jsonl(b))
    if kind == ".txt":
        return printed(a) == printed(b)
    (header_a, arrays_a), (header_b, arrays_b) = checkpoint(a), checkpoint(b)
    return (header_a == header_b and arrays_a.keys() == arrays_b.keys()
            and all(np.array_equal(arrays_a[name], arrays_b[name]) for name in arrays_a))


def main() -> int:
    before, after = Path(sys.argv[1]), Path(sys.argv[2])
    failures = 0
    for kind in (".jsonl", ".txt", ".npz"):
        for a in sorted(before.glob(f"*{kind}")):
            b = after / a.name
            verdict = "missing" if not b.exists() else "identical" if same(kind, a, b) else "DIFFERENT"
            failures += verdict != "identical"
            print(f"{a.name}: {verdict}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
