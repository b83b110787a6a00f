"""What changes between the machine's two states: core-to-core round trips and the MLP step's phases, by state.

    gcc -O2 -pthread scripts/core_pingpong.c -o /tmp/core_pingpong
    python scripts/machine_states.py [--minutes 6] [--pingpong /tmp/core_pingpong]

Loops for ``--minutes``: probes the machine (bench/cli_epoch.py's probe: "near" when the two cores trade data
quickly, "far" when slowly), runs the ping-pong program if given, times the MLP step's phases by the clock
(``python scripts/mlp_phases.py --wall --epochs 2``), probes again. A block whose two probes read the same
state counts for that state; at the end it prints, per state, the probe readings, the round trip and each
core's serial time, and the median of each phase in µs per step. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "bench"))

from cli_epoch import machine_probe  # noqa: E402

PHASE = re.compile(r"^\s+(\w[\w ]*?)\s+([\d.]+) us per step$", re.MULTILINE)


def pingpong(program: str | None) -> dict[str, float]:
    """The ping-pong program's mean round trip (µs) and serial times (ms), or nothing without a program."""
    if program is None:
        return {}
    out = subprocess.run([program], capture_output=True, text=True, check=True, timeout=120).stdout
    trip = re.search(r"mean ([\d.]+) us", out)
    serial = re.search(r"core 0 ([\d.]+) ms, core 1 ([\d.]+) ms", out)
    if trip is None or serial is None:
        raise RuntimeError(f"{program} printed something else:\n{out}")
    return {"round trip us": float(trip.group(1)), "core 0 serial ms": float(serial.group(1)),
            "core 1 serial ms": float(serial.group(2))}


def phases() -> dict[str, float]:
    """µs per step of each phase of two clock-timed MLP epochs."""
    out = subprocess.run([sys.executable, str(HERE / "mlp_phases.py"), "--wall", "--epochs", "2"],
                         capture_output=True, text=True, check=True).stdout
    return {name: float(value) for name, value in PHASE.findall(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=6.0, help="how long to loop (default: 6)")
    parser.add_argument("--pingpong", default=None, help="the compiled scripts/core_pingpong.c (default: none)")
    args = parser.parse_args()
    if not 0 < args.minutes < math.inf:
        parser.error(f"--minutes must be a finite number above 0, got {args.minutes}")
    if args.pingpong is not None and not (Path(args.pingpong).is_file() and os.access(args.pingpong, os.X_OK)):
        parser.error(f"--pingpong {args.pingpong}: not an executable file; build it with "
                     "gcc -O2 -pthread scripts/core_pingpong.c -o /tmp/core_pingpong")
    blocks: dict[str, list[dict[str, Any]]] = defaultdict(list)
    end = time.monotonic() + 60 * args.minutes
    while time.monotonic() < end:
        before = machine_probe()
        try:
            block = {**pingpong(args.pingpong), **phases()}
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            sys.exit(f"machine_states.py: {error}")
        after = machine_probe()
        same = before["state"] if before["state"] == after["state"] else None
        print(f"{time.strftime('%H:%M:%S')} {before['state']} -> {after['state']}: whole step "
              f"{block.get('whole step', float('nan')):.0f} us", flush=True)
        if same is not None:
            block["probe small ratio"] = (before["small_ratio"] + after["small_ratio"]) / 2
            block["probe 1024^3 two threads ms"] = before["two_threads_ms"]
            blocks[same].append(block)
    for state in ("near", "far"):
        if not blocks[state]:
            print(f"{state}: no block")
            continue
        print(f"{state}: {len(blocks[state])} blocks; median (range)")
        for key in blocks[state][0]:
            values = [block[key] for block in blocks[state] if key in block]
            print(f"  {key:28s} {statistics.median(values):9.2f}  ({min(values):.2f}-{max(values):.2f})")


if __name__ == "__main__":
    main()
