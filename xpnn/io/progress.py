"""A small progress bar for terminals; silent when output goes to a file or a log."""

from __future__ import annotations

import sys
import time
from typing import IO


class ProgressBar:
    """``[#####.....] 45% 212/469 batches 3.1 s`` on one line, redrawn at most ten times a second.

    It draws only when ``stream`` is a terminal, so logs and pipes stay clean.

    Parameters
    ----------
    total : int
        Expected count (0 if unknown).
    description : str
        Text in front of the bar.
    unit : str
        ``"B"`` shows sizes in MB; anything else is shown after the counts.
    enabled : bool
        Switch it off entirely (``--quiet``).
    """

    def __init__(self, total: int, description: str, unit: str = "it", enabled: bool = True,
                 stream: IO[str] | None = None):
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.total, self.description, self.unit = total, description, unit
        self.count = 0
        self.start = self.last_draw = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.count += n
        if self.enabled and time.perf_counter() - self.last_draw > 0.1:
            self.draw()

    def draw(self) -> None:
        self.last_draw = now = time.perf_counter()
        fraction = min(self.count / self.total, 1.0) if self.total else 0.0
        bar = "#" * int(20 * fraction) + "." * (20 - int(20 * fraction))
        if self.unit == "B":
            counts = f"{self.count / 1e6:.1f}/{self.total / 1e6:.1f} MB"
        else:
            counts = f"{self.count}/{self.total} {self.unit}"
        self.stream.write(f"\r{self.description} [{bar}] {fraction:4.0%} {counts} {now - self.start:.1f} s")
        self.stream.flush()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")  # erase the bar, leaving the line for the caller's summary
            self.stream.flush()
