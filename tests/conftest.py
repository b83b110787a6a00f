"""One backend fixture runs each test on every array library that is available here.

numpy always; array-api-strict on its default device and on a second device (which catches arrays
created on the wrong device); torch on the CPU when installed; CuPy and torch on CUDA when a GPU is
usable. What is missing is skipped with the reason.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import xpnn
from xpnn.core.backend import Backend, BackendError

BACKENDS = ["numpy", "strict", "strict-device1", "torch", "cupy", "torch-cuda"]
# Further conforming libraries, tested by tests/test_array_libraries.py (a train step and float64 gradient
# checks of whole models) rather than by every test; the backends extra of pyproject.toml brings them.
MORE_BACKENDS = ["jax", "dask", "ndonnx", "marray"]


def make_backend(name: str, dtype: str = "float32") -> Backend:
    """The backend called ``name`` in BACKENDS, or skip the test saying why it is missing."""
    if name == "numpy":
        return xpnn.get_backend("cpu", dtype)
    if name.startswith("strict"):
        if importlib.util.find_spec("array_api_strict") is None:
            pytest.skip("array-api-strict is not installed (pip install array-api-strict)")
        import array_api_strict

        device = array_api_strict.Device("device1") if name == "strict-device1" else None
        return Backend.from_namespace(array_api_strict, device=device, dtype=dtype)
    if name == "torch":
        if importlib.util.find_spec("torch") is None:
            pytest.skip("torch is not installed (pip install torch)")
        return xpnn.get_backend("torch", dtype)
    if name == "torch-cuda":
        if importlib.util.find_spec("torch") is None:
            pytest.skip("torch is not installed (pip install torch)")
        import torch

        if not torch.cuda.is_available():
            pytest.skip("torch has no CUDA device here")
        return xpnn.get_backend("torch:cuda", dtype)
    if name == "cupy":
        try:
            return xpnn.get_backend("gpu", dtype)
        except BackendError as error:
            pytest.skip(str(error))
    if name in MORE_BACKENDS:
        module = {"jax": "jax.numpy", "dask": "dask.array"}.get(name, name)
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (pip install {name})")
        namespace = importlib.import_module(module)
        if name == "marray":
            namespace = namespace.masked_namespace(np)  # masked arrays over NumPy
        if name == "jax" and dtype == "float64":
            import jax

            if not jax.config.jax_enable_x64:
                pytest.skip("JAX computes in float32 unless jax_enable_x64 is set (the test must enable it)")
        return Backend.from_namespace(namespace, dtype=dtype)
    raise ValueError(name)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    """float32 backend of each library."""
    return make_backend(request.param)


@pytest.fixture(params=BACKENDS)
def backend64(request: pytest.FixtureRequest) -> Backend:
    """float64 backend of each library (gradient checks and exact references)."""
    return make_backend(request.param, "float64")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _leave_this_process_heap_alone(monkeypatch):
    """Tests that call the command line in this process must not change pytest's own malloc settings
    (xpnn.runtime.heap); tests/test_heap.py checks the real thing in fresh processes."""
    import xpnn.cli.train

    monkeypatch.setattr(xpnn.cli.train, "retain_freed_memory", lambda: False)
