"""``C += alpha · (A @ B)`` in one call of the BLAS that NumPy itself uses (a GEMM with β = 1).

NumPy's ``@`` always writes a new array, so a product that only updates another array (a weight moved by its
gradient, ``W -= lr · (xᵀ · dy)``) costs a second pass over memory: the product is written, read back,
scaled and subtracted. The GEMM of the BLAS can add the scaled product into ``C`` as it finishes each block,
while the block is still in the cache of the core that computed it. :func:`gemm_add` calls that GEMM through
ctypes, in NumPy's own BLAS library (found through NumPy's extension module, so its threads are the ones
NumPy's products use and threadpoolctl limits them alike). A second BLAS (SciPy's, say) would bring its own
thread pool, whose idle threads spin against NumPy's.

Where no such BLAS can be reached (NumPy built against a library whose GEMM is not exported under a
known name, or a platform where ctypes cannot see it), :func:`gemm_add` returns False and callers compute
the product the usual way.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
from typing import Any

import numpy as np

__all__ = ["gemm_add"]

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


@functools.cache
def _gemm(dtype: np.dtype) -> Any:
    """NumPy's ``cblas_?gemm`` for ``dtype`` (float32 or float64) as a ctypes function, or None."""
    prefix = {np.dtype(np.float32): "s", np.dtype(np.float64): "d"}.get(dtype)
    if prefix is None:
        return None
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            library = ctypes.CDLL(importlib.import_module(module).__file__)
            break
        except (ImportError, OSError, AttributeError, TypeError):
            continue
    else:
        return None
    # dlsym on NumPy's extension module also searches the libraries it links against, NumPy's BLAS among them.
    # The "64_" symbols of NumPy's wheels take 64-bit integers (ILP64); the plain CBLAS name takes C ints.
    for name, integer in ((f"scipy_cblas_{prefix}gemm64_", ctypes.c_int64), (f"cblas_{prefix}gemm64_", ctypes.c_int64),
                          (f"cblas_{prefix}gemm", _plain_cblas_int())):
        function = getattr(library, name, None)
        if function is not None:
            real = ctypes.c_float if prefix == "s" else ctypes.c_double
            pointer = ctypes.c_void_p
            function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, integer, integer, integer, real,
                                 pointer, integer, pointer, integer, real, pointer, integer]
            function.restype = None
            return function if _agrees(function, dtype) else None
    return None


def _plain_cblas_int() -> Any:
    """The integer type of an unsuffixed ``cblas_?gemm``: 64 bits where NumPy's build says its BLAS is ILP64."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except (TypeError, KeyError, AttributeError):  # NumPy < 2 prints its configuration and returns nothing
        return ctypes.c_int
    text = " ".join(str(value) for value in blas.values()).lower()
    return ctypes.c_int64 if "use64bitint" in text or "ilp64" in text else ctypes.c_int


def _agrees(function: Any, dtype: np.dtype) -> bool:
    """Whether ``function`` gives NumPy's answer on a small product (a wrong binding is never used)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 5)).astype(dtype), rng.standard_normal((5, 4)).astype(dtype)
    c = rng.standard_normal((3, 4)).astype(dtype)
    expected = c - 0.5 * (a @ b)
    _call(function, c, a, b, -0.5)
    return bool(np.allclose(c, expected, rtol=1e-5, atol=1e-5))


def _operand(a: np.ndarray) -> tuple[int, int] | None:
    """(transpose flag, leading dimension) of a 2-d array for a row-major GEMM, or None for other layouts."""
    rows, cols = a.strides[0] // a.itemsize, a.strides[1] // a.itemsize
    if a.strides[1] == a.itemsize and a.strides[0] % a.itemsize == 0 and rows >= max(a.shape[1], 1):
        return _NO_TRANS, rows
    if a.strides[0] == a.itemsize and a.strides[1] % a.itemsize == 0 and cols >= max(a.shape[0], 1):
        return _TRANS, cols
    return None


def _call(function: Any, c: np.ndarray, a: np.ndarray, b: np.ndarray, alpha: float) -> None:
    (trans_a, lda), (trans_b, ldb) = _operand(a), _operand(b)
    m, k = a.shape
    n = b.shape[1]
    function(_ROW_MAJOR, trans_a, trans_b, m, n, k, alpha, a.ctypes.data, lda, b.ctypes.data, ldb, 1.0,
             c.ctypes.data, c.strides[0] // c.itemsize)


def gemm_add(c: Any, a: Any, b: Any, alpha: float) -> bool:
    """``c += alpha · (a @ b)`` in place, in one GEMM of NumPy's BLAS, if it can be done.

    The BLAS adds the scaled product into ``c`` one panel of K at a time (a few hundred, depending on the
    CPU), each panel's partial sum scaled and added with a fused multiply-add on most CPUs, where
    ``c + alpha * (a @ b)`` rounds the whole product, its scaled value and the sum. The two agree to float
    rounding: within a unit in the last place while K fits one panel (a batch of 128 rows), further apart
    for a larger K (a full batch), with about the same error against exact arithmetic.

    Parameters
    ----------
    c : numpy.ndarray (M, N)
        Written in place; rows contiguous (C order, or rows of a C-ordered buffer), float32 or float64.
    a : numpy.ndarray (M, K)
    b : numpy.ndarray (K, N)
        Of ``c``'s dtype, each either C- or Fortran-ordered (a transposed C-ordered array is Fortran-ordered).
    alpha : float
        The scale of the product.

    Returns
    -------
    bool
        True when ``c`` was updated; False, with ``c`` untouched, for anything else: other array types,
        dtypes or layouts, empty products, operands that may overlap ``c``, or no reachable BLAS.
    """
    if not (type(c) is np.ndarray and type(a) is np.ndarray and type(b) is np.ndarray):
        return False
    if c.ndim != 2 or a.ndim != 2 or b.ndim != 2 or not (c.dtype == a.dtype == b.dtype):
        return False
    if a.shape[1] != b.shape[0] or c.shape != (a.shape[0], b.shape[1]) or 0 in a.shape or 0 in b.shape:
        return False
    if not (c.flags.writeable and c.flags.aligned and a.flags.aligned and b.flags.aligned):
        return False
    if c.strides[1] != c.itemsize or c.strides[0] % c.itemsize or c.strides[0] < c.shape[1] * c.itemsize:
        return False
    if _operand(a) is None or _operand(b) is None or np.may_share_memory(c, a) or np.may_share_memory(c, b):
        return False
    function = _gemm(c.dtype)
    if function is None:
        return False
    _call(function, c, a, b, alpha)
    return True
