"""Keep freed memory in the process, so that a training loop on the CPU does not page its arrays in anew.

A CNN step on NumPy allocates and frees arrays of tens of megabytes (the unfolded patches, the
activations). glibc's allocator returns the top of its heap to the system whenever more than its trim
threshold lies free there, and serves large arrays from fresh ``mmap`` regions; either way the next step's
arrays are paged in again, and the kernel zeroes every page first. How often that happens depends on the
heap's history (its thresholds adapt as the process runs): ``python -m xpnn.train --model cnn --workers 2``
once spent a sixth of its epoch that way, two million page faults, while the same steps in the benchmark
spent none. Fixing both thresholds ends it. The cost: up to ``trim`` bytes of freed memory stay with the
process, as they do under jemalloc or tcmalloc, the allocators often preloaded for PyTorch on the CPU.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["retain_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>


def retain_freed_memory(trim: int = 256 << 20, mmap: int = 32 << 20) -> bool:
    """Ask glibc to keep up to ``trim`` bytes of freed heap and to ``mmap`` only blocks above ``mmap`` bytes.

    The command line calls this once; a program that trains on NumPy may do the same. It changes the whole
    process and cannot be undone, so the library itself never calls it.

    Parameters
    ----------
    trim : int
        Free bytes at the top of the heap before any is given back to the system.
    mmap : int
        Blocks larger than this get their own mapping (glibc accepts at most 32 MiB on 64-bit systems).

    Returns
    -------
    bool
        True if glibc took both settings; False elsewhere (macOS, Windows, musl), where nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # The mmap threshold first: setting either one stops glibc from adapting both.
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))
