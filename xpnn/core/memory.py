"""What the machine has: physical memory, for the size checks of layers and files."""

from __future__ import annotations

import os

__all__ = ["physical_memory"]


def physical_memory() -> int | None:
    """Bytes of physical memory of this machine, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None
