"""``gemm_add``: c += alpha·(a @ b) in NumPy's own BLAS, and every layout it must refuse."""

from __future__ import annotations

import numpy as np
import pytest

import xpnn
from tests.conftest import make_backend
from xpnn.core.blas import gemm_add


def operands(rng, m=37, k=29, n=23, dtype=np.float32):
    a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    return rng.standard_normal((m, n)).astype(dtype), a, b


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["C", "F"])
def test_adds_the_scaled_product_in_place(rng, dtype, layout):
    c, a, b = operands(rng, dtype=dtype)
    if layout == "F":  # a transposed C-ordered array, as Affine's xᵀ is
        a, b = np.ascontiguousarray(a.T).T, np.ascontiguousarray(b.T).T
    expected = c.astype(np.float64) - 0.25 * (a.astype(np.float64) @ b.astype(np.float64))
    target = c
    assert gemm_add(target, a, b, -0.25)
    assert target is c
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(c, expected, rtol=tolerance, atol=tolerance)


def test_the_product_is_numpys_up_to_one_rounding_of_the_update(rng):
    """The same GEMM as ``a @ b``: only the rounding of the scaled sum differs from ``c - lr * (a @ b)``, which
    rounds the scaled product (half a unit in its last place) and then the sum (half a unit in the result's)."""
    c, a, b = operands(rng, m=256, k=128, n=200)
    scaled = np.float32(0.01) * (a @ b)
    separate = c - scaled
    assert gemm_add(c, a, b, -0.01)
    assert np.all(np.abs(c - separate) <= np.spacing(np.abs(separate)) + np.spacing(np.abs(scaled)))


def test_writes_into_a_row_block_of_a_larger_buffer(rng):
    """An optimizer's parameter is a view of one flat buffer: rows contiguous, the rest left alone."""
    flat = rng.standard_normal(1000).astype(np.float32)
    before = flat.copy()
    c = flat[100:100 + 37 * 23].reshape(37, 23)
    _, a, b = operands(rng)
    expected = c + 2.0 * (a @ b)
    assert gemm_add(c, a, b, 2.0)
    np.testing.assert_allclose(c, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(flat[:100], before[:100])
    np.testing.assert_array_equal(flat[100 + 37 * 23:], before[100 + 37 * 23:])


def refused(rng):
    c, a, b = operands(rng)
    yield "a strided operand", c, a[:, ::2], b[::2]
    yield "a strided target", np.zeros((37, 46), np.float32)[:, ::2], a, b
    yield "a Fortran-ordered target", np.asfortranarray(c), a, b
    yield "mixed dtypes", c, a.astype(np.float64), b
    yield "float16", c.astype(np.float16), a.astype(np.float16), b.astype(np.float16)
    yield "integers", c.astype(np.int64), a.astype(np.int64), b.astype(np.int64)
    yield "mismatched shapes", c, a, b[:-1]
    yield "a target of the wrong shape", c[:-1], a, b
    yield "an empty product", np.zeros((37, 23), np.float32), a[:, :0], b[:0]
    yield "1-d operands", c[0], a[0], b
    yield "a masked array", np.ma.masked_array(c), a, b
    yield "nested lists", c.tolist(), a, b
    yield "a target overlapping an operand", a[:, :23], a, b[:, :23].copy()
    yield "a non-native byte order", c.astype(">f4"), a.astype(">f4"), b.astype(">f4")
    readonly = c.copy()
    readonly.flags.writeable = False
    yield "a read-only target", readonly, a, b


@pytest.mark.parametrize("case", range(15))
def test_refuses_what_the_gemm_cannot_take_and_leaves_the_target_alone(rng, case):
    cases = list(refused(rng))
    assert len(cases) == 15
    what, c, a, b = cases[case]
    before = np.array(c, copy=True)
    assert gemm_add(c, a, b, -0.5) is False, what
    np.testing.assert_array_equal(np.asarray(c), before)


def test_backend_matmul_add_is_numpy_only_and_for_large_enough_targets(rng):
    c, a, b = operands(rng, m=128, k=64, n=128)
    expected = c + a @ b
    assert xpnn.get_backend("cpu").matmul_add(c, a, b, 1.0)
    np.testing.assert_allclose(c, expected, rtol=1e-5, atol=1e-4)
    small, a, b = operands(rng, m=127, k=64, n=128)  # one row short of MATMUL_ADD_MIN elements
    before = small.copy()
    assert xpnn.get_backend("cpu").matmul_add(small, a, b, 1.0) is False
    np.testing.assert_array_equal(small, before)
    strict = make_backend("strict")
    xp = strict.xp
    sc, sa, sb = (xp.asarray(v) for v in operands(rng, m=128, k=64, n=128))
    before = np.asarray(sc).copy()
    assert strict.matmul_add(sc, sa, sb, 1.0) is False
    np.testing.assert_array_equal(np.asarray(sc), before)
