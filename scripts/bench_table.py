"""Turn pytest-benchmark JSON from bench/ into a Markdown table.

    python scripts/bench_table.py bench/results/latest.json [--out TABLE.md]

Columns: implementation, backend, batch, minimum and median seconds per epoch, samples per second, ratio
to the plain-PyTorch epoch on the same device and batch, ratio to the matrix-product bound (the fastest
library's products alone on that device), and the peak memory of a full-batch epoch. Samples per second
and the ratios use the minimum: on a shared machine, slow spells inflate medians but not minimums.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load_rows(path: Path) -> tuple[list[dict], dict]:
    report = json.loads(path.read_text())
    rows = []
    for bench in report["benchmarks"]:
        info = bench.get("extra_info", {})
        if "implementation" not in info:
            continue
        rows.append({**info, "median": bench["stats"]["median"], "min": bench["stats"]["min"],
                     "rounds": bench["stats"]["rounds"]})
    return rows, report.get("machine_info", {})


def _ratio(value: float, reference: float | None) -> str:
    return f"{value / reference:.2f}×" if reference else "–"


def table(rows: list[dict]) -> str:
    rows = [r for r in rows if r.get("model") != "cnn"]  # the CNN has its own table (and its own PyTorch)

    def lookup(implementation: str, device: str, batch: int) -> float | None:
        found = [r["min"] for r in rows
                 if r["implementation"] == implementation and r["device"] == device and r["batch"] == batch]
        return min(found) if found else None

    lines = [
        "| implementation | backend | batch | s/epoch min | median | samples/s | vs PyTorch | vs bound | peak memory |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = {"xpnn": 0, "xpnn-1worker": 1, "xpnn-eager": 2, "pytorch": 3, "pytorch-compiled": 4, "numpy-by-hand": 5,
             "matmul-bound": 6}
    epoch_rows = [r for r in rows if r["implementation"] in order]
    epoch_rows.sort(key=lambda r: (r["samples"] != 60_000, r["device"], r["batch"], order[r["implementation"]],
                                   r["backend"]))
    for r in epoch_rows:
        batch = "full" if r["batch"] == r["samples"] else str(r["batch"])
        pytorch = lookup("pytorch", r["device"], r["batch"]) if r["samples"] == 60_000 else None
        bound = lookup("matmul-bound", r["device"], r["batch"]) if r["samples"] == 60_000 else None
        memory = r.get("peak_mb")
        kind = " (GPU)" if r["device"] == "gpu" else ""
        lines.append(
            f"| {r['implementation']} | {r['backend']} | {batch} | {r['min']:.3f} | {r['median']:.3f} | "
            f"{r['samples'] / r['min']:,.0f} | {_ratio(r['min'], pytorch)} | {_ratio(r['min'], bound)} | "
            + (f"{memory:,.0f} MB{kind}" if memory is not None else "–") + " |"
        )
    for r in rows:
        if r["implementation"] == "import xpnn":
            inside = r.get("import_seconds")
            alone = f"{inside * 1e3:.0f} ms for the import itself, " if inside is not None else ""
            lines.append(f"\n`import xpnn`: {alone}{r['median'] * 1e3:.0f} ms for a whole fresh interpreter "
                         "(medians); neither cupy nor torch is imported.")
    return "\n".join(lines)


def describe(machine: dict) -> str:
    info = machine.get("xpnn", {})
    parts = [info.get("processor", machine.get("processor", "?")), f"{info.get('cores', '?')} cores"]
    if info.get("gpu"):
        parts.append(info["gpu"])
    versions = ", ".join(f"{k} {info[k]}" for k in ("python", "numpy", "torch", "cupy") if k in info)
    return f"Machine: {'; '.join(parts)}. Versions: {versions}."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="pytest-benchmark JSON file")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this file (default: none)")
    args = parser.parse_args(argv)
    try:
        rows, machine = load_rows(args.json)
    except (OSError, ValueError, KeyError) as error:
        print(f"bench_table: error: {args.json}: not a pytest-benchmark JSON file ({error})", file=sys.stderr)
        return 1
    text = f"{describe(machine)}\n\n{table(rows)}\n"
    if any(r.get("model") == "cnn" for r in rows):
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
        from test_cnn import table as cnn_table

        text += f"\n{cnn_table(json.loads(args.json.read_text()))}\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
