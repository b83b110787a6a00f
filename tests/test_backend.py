"""The backend: chosen once from a string or a namespace, with clear errors when it cannot be had."""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest

import xpnn
from xpnn.core.backend import BackendError, get_backend


def test_import_pulls_in_neither_cupy_nor_torch():
    code = "import sys, xpnn; print(sorted(m for m in ('cupy', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_gpu_without_cupy_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes "import cupy" raise ImportError
    with pytest.raises(BackendError, match=r'needs CuPy, which is not installed.*pip install cupy-cuda12x'):
        get_backend("gpu")


def test_gpu_with_cupy_but_no_device_says_so(monkeypatch):
    def no_driver():
        raise RuntimeError("cudaErrorNoDevice")

    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_driver)))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(BackendError, match="CuPy is installed but no usable CUDA device was found"):
        get_backend("cuda:0")


def test_gpu_index_beyond_the_devices_present(monkeypatch):
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1)))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(BackendError, match=r"no CUDA device 3 \(1 found\)"):
        get_backend("cuda:3")


@pytest.mark.parametrize(
    ("spec", "message"), [("tpu", "unknown device 'tpu'"), ("cuda:x", "GPU index must be a number")]
)
def test_bad_device_strings(spec, message):
    with pytest.raises(ValueError, match=message):
        get_backend(spec)


def test_backend_made_from_a_namespace_module(backend):
    again = get_backend(backend)
    assert again is backend
    assert backend.dtype == backend.xp.float32
    x = backend.asarray(np.arange(3.0))
    assert x.dtype == backend.dtype
    assert backend.asarray(np.arange(3)).dtype == backend.xp.int64
    assert backend.asarray(np.array([True])).dtype == backend.xp.bool
    np.testing.assert_array_equal(backend.to_numpy(x), [0, 1, 2])


def test_float64_backend(backend64):
    assert backend64.asarray(np.ones(2, np.float32)).dtype == backend64.xp.float64
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64'"):
        get_backend("cpu", "float16")


def test_random_streams_repeat_from_a_seed_and_differ_between_seeds(backend):
    a = backend.to_numpy(backend.random(1).uniform((1000,)))
    b = backend.to_numpy(backend.random(1).uniform((1000,)))
    c = backend.to_numpy(backend.random(2).uniform((1000,)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() < 1 and abs(a.mean() - 0.5) < 0.05


def test_sync_and_item(backend):
    backend.sync()
    assert backend.item(backend.xp.sum(backend.ones((4,)))) == 4.0


def test_public_api_names():
    for name in ("Affine", "Linear", "ReLU", "Sequential", "mlp", "load", "gradcheck", "get_backend"):
        assert hasattr(xpnn, name)
    assert xpnn.Linear is xpnn.Affine


def test_zero_like_is_made_once_per_library_dtype_and_device(backend):
    from xpnn.core.backend import zero_like

    x = backend.ones((3,))
    zero = zero_like(x)
    assert zero.shape == () and zero.dtype == x.dtype and backend.item(zero) == 0.0
    assert backend.xp.__name__ == xpnn.backend.namespace_of(zero).__name__
    assert zero_like(backend.zeros((2, 2))) is zero  # reused: no new array (no host-to-device copy) per call


def test_zero_like_accepts_an_unhashable_device(monkeypatch):
    """CuPy's Device objects cannot be dictionary keys; their repr is used instead."""
    from xpnn import backend as backend_module

    class Unhashable:
        __hash__ = None

        def __repr__(self):
            return "<Device 7>"

    monkeypatch.setattr(backend_module.array_api_compat, "device", lambda a: Unhashable())
    monkeypatch.setattr(backend_module, "_ZEROS", {})
    numpy_zeros = np.zeros
    namespace = types.SimpleNamespace(zeros=lambda shape, dtype, device: numpy_zeros(shape, dtype))
    monkeypatch.setattr(backend_module, "namespace_of", lambda a: namespace)
    x = np.ones(3, np.float16)
    zero = backend_module.zero_like(x)
    assert backend_module.zero_like(x) is zero and zero.dtype == np.float16
    assert list(backend_module._ZEROS) == [(np.ndarray, np.dtype(np.float16), "<Device 7>")]


def test_relu_gives_the_bits_of_maximum_with_zero(backend):
    """The fast path (NumPy: the maximum written into a zeroed array) gives the bits of the array-API formula
    maximum(x, 0) on the same library, signed zeros, infinities and NaN included, for contiguous inputs and for
    strided views."""
    from xpnn.core.backend import zero_like

    values = np.array([-0.0, 0.0, np.nan, -np.inf, np.inf, -1.5, 2.5, 1e-45, -1e-45, -3e38, 3e38], np.float32)
    host = np.tile(values, 40).reshape(20, 22)
    x = backend.asarray(host)
    for a in (x, x[:, ::2], backend.xp.permute_dims(x, (1, 0))):
        expected = backend.to_numpy(backend.xp.maximum(a, zero_like(a)))
        got = backend.to_numpy(backend.relu(a))
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))
    assert backend.to_numpy(x)[0, 0] == 0 and np.signbit(backend.to_numpy(x)[0, 0])  # the input is left alone


def test_relu_keeps_float64(backend64):
    x = backend64.asarray(np.array([-1.0, 0.5]))
    y = backend64.relu(x)
    assert y.dtype == backend64.xp.float64 and backend64.to_numpy(y).tolist() == [0.0, 0.5]


def test_column_sums_are_the_product_with_ones_and_keep_few_vectors(backend):
    rng = np.random.default_rng(0)
    for rows in (5, 7, 5):
        host = rng.standard_normal((rows, 3)).astype(np.float32)
        got = backend.to_numpy(backend.column_sums(backend.asarray(host)))
        assert got.shape == (3,)
        assert np.array_equal(got, backend.to_numpy(backend.matmul(backend.ones((rows,)), backend.asarray(host))))
        np.testing.assert_allclose(got, host.sum(axis=0), rtol=1e-5, atol=1e-6)
    wide = backend.asarray(rng.standard_normal((5, 3)), dtype=backend.xp.float64)
    got = backend.column_sums(wide)
    assert got.dtype == backend.xp.float64
    np.testing.assert_allclose(backend.to_numpy(got), backend.to_numpy(wide).sum(axis=0), rtol=1e-12)
    if backend.graphs:  # steps may be captured as CUDA graphs there: nothing is kept
        assert not backend._ones
        return
    # one kept vector per length and dtype
    xp = backend.xp
    expected = [(5, xp.float32), (5, xp.float64), (7, xp.float32)]
    assert len(backend._ones) == 3
    assert all(any(n == m and dtype == kept for m, kept in backend._ones) for n, dtype in expected)
    for rows in range(8, 40):
        backend.column_sums(backend.zeros((rows, 2)))
    assert len(backend._ones) <= 16  # odd lengths never pile up


def test_column_sums_keep_no_long_ones_vector(monkeypatch):
    """A full-batch convolution sums millions of rows: that vector is made for the call and freed after it."""
    from xpnn.core import backend as backend_module

    monkeypatch.setattr(backend_module, "_ONES_KEPT_MAX", 8)
    backend = get_backend("cpu")
    got = backend.column_sums(backend.asarray(np.ones((9, 2))))
    assert backend.to_numpy(got).tolist() == [9.0, 9.0] and not backend._ones
    backend.column_sums(backend.asarray(np.ones((8, 2))))
    assert len(backend._ones) == 1


def test_relu_keeps_a_views_memory_layout_on_numpy():
    """A pooled CNN activation is an NCHW view of channels-last memory; ReLU's output keeps that layout, so the
    next convolution's permutation back to channels-last costs nothing."""
    backend = get_backend("cpu")
    x = np.random.default_rng(0).standard_normal((2, 5, 6, 3)).astype(np.float32).transpose(0, 3, 1, 2)
    y = backend.relu(x)
    assert y.shape == x.shape and np.array_equal(y, np.maximum(x, 0))
    assert np.argsort(y.strides).tolist() == np.argsort(x.strides).tolist()
    assert np.transpose(y, (0, 2, 3, 1)).flags.c_contiguous


def test_column_sums_make_the_ones_anew_where_steps_are_captured(monkeypatch):
    """A captured CUDA graph would keep reading a kept vector after it was replaced and freed."""
    backend = get_backend("cpu")
    monkeypatch.setattr(type(backend), "graphs", property(lambda self: True))
    made = []
    real_ones = type(backend).ones
    monkeypatch.setattr(type(backend), "ones", lambda self, *a, **k: made.append(a) or real_ones(self, *a, **k))
    for _ in range(3):
        backend.column_sums(backend.zeros((4, 2)))
    assert len(made) == 3 and not backend._ones
