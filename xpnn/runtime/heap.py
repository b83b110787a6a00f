"""Keep freed memory in the process, so that a training loop on the CPU does not page its arrays in anew.

A CNN step on NumPy allocates and frees arrays of tens of megabytes (the unfolded patches, the
activations). glibc's allocator returns the top of its heap to the system whenever more than its trim
threshold lies free there, and serves large arrays from fresh ``mmap`` regions; either way the next step's
arrays are paged in again, and the kernel zeroes every page first. How often that happens depends on the
heap's history (its thresholds adapt as the process runs): ``python -m xpnn.train --model cnn --workers 2``
once spent a sixth of its epoch that way, two million page faults, while the same steps in the benchmark
spent none. Fixing both thresholds ends it. The cost: memory the process freed stays with it (up to
``trim`` bytes of it at the top of the heap; below a block still in use it stays anyway), as it does under
jemalloc or tcmalloc, the allocators often preloaded for PyTorch on the CPU. Blocks above ``mmap`` bytes
still get their own mapping and go back to the system when freed.
"""

from __future__ import annotations

import ctypes
import sys

from ..core.validation import check_positive_int

__all__ = ["retain_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
_INT_MAX = 2**31 - 1


def retain_freed_memory(trim: int = 256 << 20, mmap: int = 32 << 20) -> bool:
    """Ask glibc to keep up to ``trim`` bytes of freed heap and to ``mmap`` only blocks above ``mmap`` bytes.

    The command line calls this once; a program that trains on NumPy may do the same. It changes the whole
    process and cannot be undone, so the library itself never calls it.

    Parameters
    ----------
    trim : int
        Free bytes at the top of the heap before any is given back to the system.
    mmap : int
        Blocks larger than this get their own mapping. 32 MiB is the most that glibc's adaptive threshold
        would ever reach on its own on a 64-bit system.

    Returns
    -------
    bool
        True if glibc took both settings; False elsewhere (macOS, Windows, musl), where nothing changes.

    Raises
    ------
    ValueError
        For a size that is not an integer in [1, 2**31 - 1] bytes (mallopt takes a C int).
    """
    for name, value in (("trim", trim), ("mmap", mmap)):
        if check_positive_int("retain_freed_memory", name, value) > _INT_MAX:
            raise ValueError(f"retain_freed_memory: {name} must be at most {_INT_MAX} bytes (a C int), got {value}")
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # The mmap threshold first: setting either one stops glibc from adapting both.
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))
