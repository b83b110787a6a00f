"""Where arrays live: the one place in xpnn that knows which array library is in use.

A :class:`Backend` is made once (from a device string such as ``"cpu"`` or ``"cuda:0"``, or from any
array-API namespace) and handed to everything that creates arrays. Layers, losses, optimizers and the
model only ever call ``backend.xp`` (an array-API namespace) and the few helpers below; they never
import numpy or cupy and never ask which library they have.
"""

from __future__ import annotations

import contextvars
import importlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import array_api_compat
import numpy as np

from .blas import gemm_add

__all__ = ["Backend", "BackendError", "get_backend"]

#: The fewest elements of ``c`` for which :meth:`Backend.matmul_add` calls the BLAS: from a 128x128 weight
#: at batch 128 up, the fused call is no slower than the product and a separate update even with both in cache.
MATMUL_ADD_MIN = 128 * 128

Seed = int | Sequence[int]


class BackendError(RuntimeError):
    """The requested backend cannot be used here (a missing library or device)."""


@dataclass(frozen=True, eq=False)
class Backend:
    """An array namespace, a device and a default float dtype, chosen once.

    Parameters
    ----------
    xp : module
        Array-API compatible namespace (as returned by ``array_api_compat.array_namespace``).
    device : object
        Device on which every array is created.
    dtype : str
        Default floating dtype name, ``"float32"`` or ``"float64"``.
    name : str
        Short human-readable name, e.g. ``"numpy"``, ``"cupy:0"``.

    Use :func:`get_backend` rather than calling the constructor.
    """

    xp: Any
    device: Any
    dtype_name: str = "float32"
    name: str = "numpy"
    _library: str = field(default="numpy", repr=False)
    _ones: dict[tuple[int, Any], Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_namespace(cls, namespace: Any, device: Any = None, dtype: Any = "float32") -> Backend:
        """Wrap any array-API library (array-api-strict, torch, numpy, cupy, ...).

        Parameters
        ----------
        namespace : module
            The library or its array-API namespace, e.g. ``array_api_strict`` or ``torch``.
        device : object, optional
            A device of that library; defaults to the library's default device.
        dtype : {"float32", "float64"} or a dtype
            Default floating dtype: a name, or the dtype itself (``numpy.float64``, ``numpy.dtype("float64")``,
            ``torch.float32``, ...).
        """
        dtype = _dtype_name(dtype)
        probe = _probe_array(namespace)
        xp = array_api_compat.array_namespace(probe)
        library = _library_name(probe)
        if library == "torch" and isinstance(device, str):
            device = namespace.device(device)
        # Canonical form, as arrays report it (torch's "cuda" becomes "cuda:0"), so comparisons hold.
        default = array_api_compat.device(probe)
        device = default if device is None else array_api_compat.device(xp.zeros(1, device=device))
        name = library if device == default or str(device) in ("cpu", "CPU_DEVICE") else f"{library}:{device}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # JAX warns as well; the error below says more
            made = xp.zeros(1, dtype=getattr(xp, dtype), device=device).dtype
        if made != getattr(xp, dtype):  # JAX makes float32 arrays when asked for float64, unless told otherwise
            hint = ('; enable it with jax.config.update("jax_enable_x64", True) before creating arrays'
                    if library == "jax" else "")
            raise BackendError(f"{name} made {made} arrays when asked for {dtype}{hint}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            integer = xp.zeros(1, dtype=xp.int64, device=device).dtype
        if integer != xp.int64:  # labels, counters and dropout's counter-based bits need 64-bit integers
            hint = ('; enable it with jax.config.update("jax_enable_x64", True) before creating arrays (float32 '
                    'models stay float32)' if library == "jax" else "")
            raise BackendError(f"{name} made {integer} arrays when asked for int64, which xpnn needs for labels "
                               f"and dropout's counters{hint}")
        return cls(xp=xp, device=device, dtype_name=dtype, name=name, _library=library)

    # ------------------------------------------------------------------ dtypes
    @property
    def dtype(self) -> Any:
        """The default floating dtype object of this namespace."""
        return getattr(self.xp, self.dtype_name)

    # ------------------------------------------------------------------ array creation
    def asarray(self, a: Any, dtype: Any = None) -> Any:
        """Copy ``a`` (NumPy array, list, scalar or array of any library) onto this backend.

        Floating inputs take the backend's default dtype unless ``dtype`` is given; integer and
        boolean inputs keep their kind.
        """
        if not isinstance(a, np.ndarray) and not np.isscalar(a) and not isinstance(a, list | tuple):
            a = to_numpy(a)
        a = np.asarray(a)
        if dtype is None:
            if a.dtype.kind == "f":
                dtype = self.dtype
            elif a.dtype.kind in "iu":
                dtype = self.xp.int64
            elif a.dtype.kind == "b":
                dtype = self.xp.bool
        if self._library == "cupy":
            with self.device:
                return self.xp.asarray(a, dtype=dtype)
        return self.xp.asarray(a, dtype=dtype, device=self.device)

    def zeros(self, shape: tuple[int, ...], dtype: Any = None) -> Any:
        """Zeros of ``shape`` on this backend (default float dtype)."""
        return self.xp.zeros(shape, dtype=self.dtype if dtype is None else dtype, device=self.device)

    def ones(self, shape: tuple[int, ...], dtype: Any = None) -> Any:
        """Ones of ``shape`` on this backend (default float dtype)."""
        return self.xp.ones(shape, dtype=self.dtype if dtype is None else dtype, device=self.device)

    def arange(self, n: int) -> Any:
        """``0, 1, ..., n-1`` as int64 on this backend."""
        return self.xp.arange(n, dtype=self.xp.int64, device=self.device)

    # ------------------------------------------------------------------ host side
    def to_numpy(self, a: Any) -> np.ndarray:
        """Copy an array of this backend back to a NumPy array on the host."""
        return to_numpy(a)

    def item(self, a: Any) -> float:
        """A 0-d array as a Python float (waits for the device)."""
        return float(to_numpy(a))

    def sync(self) -> None:
        """Wait until all queued work on the device has finished (no-op on the CPU)."""
        if self._library == "cupy":
            import cupy

            cupy.cuda.Device(self.device.id).synchronize()
        elif self._library == "torch" and self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------ fused fast paths
    @property
    def inplace(self) -> bool:
        """Whether arrays may be updated in place through views of one buffer (NumPy, CuPy, torch).

        The array API leaves writes through views implementation-defined, so other libraries (array-api-strict,
        JAX) keep the generic path: every new value is a new array, rebound by its owner.
        """
        return self._library in ("numpy", "cupy", "torch")

    @property
    def graphs(self) -> bool:
        """Whether a whole training step can be captured as a CUDA graph and replayed (torch on CUDA, CuPy).

        CuPy refuses its own cuBLAS calls under stream capture, so a captured CuPy step sends its matrix
        products (:meth:`matmul`) to a cuBLAS handle of xpnn's through nvmath-python (:mod:`xpnn.runtime.graphs`).
        """
        return self._library == "cupy" or (self._library == "torch" and getattr(self.device, "type", None) == "cuda")

    @property
    def single_threaded(self) -> bool:
        """Whether element-wise operations, copies and reductions run on one core (NumPy, array-api-strict):
        only there does splitting each batch over worker threads pay (:mod:`xpnn.runtime.parallel`); torch and CuPy
        already spread every operation over the whole CPU or GPU."""
        return self._library in ("numpy", "array_api_strict")

    @property
    def launch_bound(self) -> bool:
        """Whether every array operation is a kernel launch (CuPy, torch on CUDA): there few big operations
        win (one update of a flat buffer); on the CPU few passes over memory do (no copies into one buffer)."""
        return self._library == "cupy" or (self._library == "torch" and getattr(self.device, "type", None) == "cuda")

    def scalar(self, value: float, dtype: Any = None) -> Any:
        """A 0-d array holding ``value`` on the device (default float dtype), e.g. a learning rate that a
        captured graph reads and a schedule overwrites with :meth:`fill`."""
        return self.xp.full((), value, dtype=self.dtype if dtype is None else dtype, device=self.device)

    @staticmethod
    def fill(target: Any, value: Any) -> None:
        """Overwrite every element of ``target`` in place (backends with :attr:`inplace` only)."""
        target[...] = value

    def assign(self, store: dict[str, Any], key: str, value: Any) -> None:
        """``store[key] = value``, written into the array already there where the library updates in place
        (:attr:`inplace`), so that a captured graph, which reads that array's memory, sees the new value;
        elsewhere rebound. Either way the values are ``value``'s, bit for bit."""
        if self.inplace:
            store[key][...] = value
        else:
            store[key] = value

    @property
    def fused(self) -> FusedUpdates | None:
        """Single-kernel optimizer updates where the library offers them (CuPy), else None.

        They give bit-for-bit the results of the generic array-API formulas, which stay the
        reference (tests compare the two).
        """
        if self._library != "cupy" or self.dtype_name not in ("float32", "float64"):
            return None
        kernels = _FUSED.get(self.dtype_name)
        if kernels is None:
            kernels = _FUSED[self.dtype_name] = FusedUpdates(self.dtype_name)
        return kernels

    def matmul(self, a: Any, b: Any) -> Any:
        """``a @ b`` (2-d @ 2-d, or 1-d @ 2-d): every matrix product of a training step goes through here, so that
        a CuPy step being captured as a CUDA graph can route them to a cuBLAS handle bound to the capture stream
        (:class:`xpnn.runtime.graphs.CupyCapture`); CuPy's own handle refuses stream capture. Elsewhere exactly
        ``a @ b``."""
        route = _MATMUL_ROUTE.get()
        return a @ b if route is None else route(a, b)

    def matmul_add(self, c: Any, a: Any, b: Any, alpha: float) -> bool:
        """``c += alpha · (a @ b)`` in place in one GEMM (β = 1) where the library's BLAS can be reached
        (NumPy: :func:`xpnn.core.blas.gemm_add`); the product never exists as an array of its own.

        The result agrees with ``c + alpha * (a @ b)`` to float rounding, not bit for bit (see ``gemm_add``).

        Returns
        -------
        bool
            True when ``c`` was updated; False, with ``c`` untouched, elsewhere (other libraries, a step being
            captured as a CUDA graph, layouts the GEMM cannot take, and a ``c`` of fewer than
            ``MATMUL_ADD_MIN`` elements (16,384), where the call's fixed cost through ctypes, about 7 µs, is more
            than the pass over ``c`` it saves): the caller then computes the product.
        """
        if self._library != "numpy" or _MATMUL_ROUTE.get() is not None or math.prod(c.shape) < MATMUL_ADD_MIN:
            return False
        return gemm_add(c, a, b, alpha)

    def column_sums(self, a: Any) -> Any:
        """Σ over the rows of ``a`` (N, K) -> (K,), as the product ones(N) · ``a``.

        A matrix-vector product is several times faster than a sum over axis 0 on CuPy (a strided reduction)
        and on torch's CPU, and no slower on NumPy; the bias gradients of Affine and Conv2d are these sums.
        The ones vector is kept per length (up to 2**20 rows, so that a full-batch convolution leaves no large
        vector behind) where no step is captured as a CUDA graph; a captured graph would keep reading a kept
        array after a batch of another length had replaced (and freed) it, so there it is made anew each time.
        """
        n = a.shape[0]
        if self.graphs or n > _ONES_KEPT_MAX:
            return self.matmul(self.ones((n,), dtype=a.dtype), a)
        key = (n, a.dtype)
        ones = self._ones.get(key)
        if ones is None:
            if len(self._ones) >= 16:  # batch sizes come in few lengths; never let odd ones pile up
                self._ones.clear()
            ones = self._ones[key] = self.ones((n,), dtype=a.dtype)
        return self.matmul(ones, a)

    def relu(self, x: Any) -> Any:
        """max(``x``, 0) element-wise, in ``x``'s dtype.

        On NumPy the maximum is written into a zeroed array of ``x``'s shape and memory layout (a pooled CNN
        activation stays channels-last): NumPy's loop over two arrays is vectorized and the one over an array
        and a scalar is not, 2-3 times slower (NumPy 2.4); the bits are the same (-0.0 and NaN included).
        """
        if isinstance(x, np.ndarray):
            # zeros() is calloc's fresh zero pages; zeros_like() keeps a view's layout but fills its memory
            out = np.zeros(x.shape, x.dtype) if x.flags.c_contiguous else np.zeros_like(x, subok=False)
            return np.maximum(x, out, out=out)
        return self.xp.maximum(x, zero_like(x))

    def first_max_scatter(self, dx: Any, windows: list[tuple[tuple[slice, ...], Any]], y: Any, dy: Any) -> Any:
        """Max pooling's gradient for windows that do not overlap, written into ``dx`` where the library can.

        Each element of ``dy`` goes to the first block (in the order of ``windows``) equal to ``y`` there; the
        last block takes it when none is (a NaN in the window). On NumPy the winners are tracked as booleans and
        dy times each block's boolean is written straight into its place in ``dx``: no float mask, no running
        remainder and no copy into ``dx`` afterwards. For a finite ``dy`` the values are those of
        :class:`xpnn.layers.MaxPool2d`'s generic loop, except that a zero it writes as 0.0 may be -0.0 here; an
        infinite element of ``dy`` reaches its winner as itself, where the loop's remainder (inf - inf) gives NaN.

        Parameters
        ----------
        dx : array (N, H, W, C)
            The input's gradient, channels-last, written in place. Entries no window covers are left as they are.
        windows : list of (tuple of slice, array (N, oh, ow, C))
            For each kernel offset, in row-major order: its index into ``dx`` (basic slices) and the block of
            the input it reads. The indices must not overlap: each entry of ``dx`` is written once.
        y, dy : arrays (N, oh, ow, C)
            The pooled output and its gradient.

        Returns
        -------
        array or None
            ``dx``, or None on libraries other than NumPy and for a single window, which the caller then handles.
        """
        if self._library != "numpy" or not isinstance(dx, np.ndarray) or len(windows) < 2:
            return None
        taken = np.equal(windows[0][1], y)
        np.multiply(dy, taken, out=dx[windows[0][0]])
        won = np.empty_like(taken)
        for index, block in windows[1:-1]:
            np.equal(block, y, out=won)
            np.greater(won, taken, out=won)  # equal here and not taken by an earlier block
            np.multiply(dy, won, out=dx[index])
            np.logical_or(taken, won, out=taken)
        np.logical_not(taken, out=taken)
        np.multiply(dy, taken, out=dx[windows[-1][0]])
        return dx

    def unfold_fast(self, x: Any, kernel: tuple[int, int], stride: tuple[int, int], out: tuple[int, int]) -> Any:
        """im2col of a channels-last ``x`` (N, H, W, C) through strided views, where the library has them.

        Returns the (N·oh·ow, kh·kw·C) matrix of :func:`xpnn.layers.conv.unfold`, bit for bit (both only copy),
        in one strided copy instead of kh·kw slices and a concatenation: on CuPy one kernel launch instead of
        about a dozen, on NumPy one pass. None on other libraries, which then use that generic reference.
        (Conv2d unfolds a single input channel its own way, one contiguous row per kernel offset.)
        """
        if self._library == "numpy":
            library = np
        elif self._library == "cupy":
            import cupy as library
        else:
            return None
        n, c = x.shape[0], x.shape[3]
        windows = library.lib.stride_tricks.sliding_window_view(x, kernel, axis=(1, 2))  # (N, H', W', C, kh, kw)
        windows = windows[:, : (out[0] - 1) * stride[0] + 1 : stride[0], : (out[1] - 1) * stride[1] + 1 : stride[1]]
        return library.reshape(windows.transpose(0, 1, 2, 4, 5, 3), (n * out[0] * out[1], kernel[0] * kernel[1] * c))

    # ------------------------------------------------------------------ randomness
    def random(self, seed: Seed) -> DeviceRandom:
        """A random stream on the device, seeded from ``seed`` (an int or a sequence of ints)."""
        return DeviceRandom(self, seed)

    def dropout_mask(self, seed: Any, step: Any, shape: tuple[int, ...], first: int, p: float) -> Any:
        """Inverted-dropout mask: 0 with probability ``p``, else ``1/(1-p)``, in the default float dtype.

        A pure function of (``seed``, ``step``, each element's index), the same bits on every library
        (:func:`counter_bits`): element ``k`` of the mask (in C order) has index ``first + k``, so a shard
        of a batch given its offset draws exactly its part of the whole batch's mask.

        Parameters
        ----------
        seed, step : 0-d int64 arrays of this backend (or ints)
            The key and the step counter; only their low 32 bits count.
        shape : tuple of int
            Shape of the mask.
        first : int
            Index of the mask's first element in the global batch (row offset x elements per sample).
        p : float
            Drop probability, 0 < p < 1.
        """
        threshold, scale = dropout_threshold(p), 1.0 / (1.0 - p)
        if self._library == "numpy":
            return _numpy_dropout_mask(seed, step, shape, first, threshold, scale, self.dtype_name)
        if self._library == "cupy" and self.dtype_name in ("float32", "float64"):
            return _cupy_dropout_mask(seed, step, shape, first, threshold, scale, self)
        xp = self.xp
        keep = counter_bits(xp, seed, step, shape, first, self.device) >= threshold
        return xp.astype(keep, self.dtype) * scale

    # ------------------------------------------------------------------ checks
    def check_array(self, a: Any, what: str) -> None:
        """Raise ``TypeError`` if ``a`` is not an array of this backend on its device."""
        if _library_name(a) != self._library or not hasattr(a, "shape"):
            raise TypeError(
                f"{what}: expected an array of the {self.name} backend, got {type(a).__module__}."
                f"{type(a).__name__}; convert it with backend.asarray(...)"
            )
        if array_api_compat.device(a) != self.device:
            raise TypeError(
                f"{what}: array is on device {array_api_compat.device(a)}, the model is on "
                f"{self.device}; move it with backend.asarray(...)"
            )

    def __repr__(self) -> str:
        return f"Backend({self.name}, dtype={self.dtype_name})"


# ---------------------------------------------------------------------- counter-based random bits
# Random numbers as a pure function of (key, counter, index), as in Random123 and jax.random: nothing to carry
# from step to step but the counter, and the same bits on every library. Everything is 32-bit arithmetic
# written in int64 with each value kept below 2**32 and every multiplier below 2**31, so that no product
# overflows and the array API's integer operations suffice (NumPy and CuPy run the same function in uint32).
MASK32 = 0xFFFFFFFF
# Wellons' low-bias 32-bit integer hash [16 21f0aaad 15 735a2d97 15] (hash-prospector), chosen among the
# best found because both of its multipliers are below 2**31.
MIX_SHIFT1, MIX_MUL1, MIX_SHIFT2, MIX_MUL2, MIX_SHIFT3 = 16, 0x21F0AAAD, 15, 0x735A2D97, 15
STEP_SALT = 0x2545F491

# The same function in C (NVRTC and any C compiler): the fused CuPy kernel's preamble, compiled by the tests.
COUNTER_BITS_C = f"""
XPNN_FN unsigned int xpnn_mix32(unsigned int x) {{
    x ^= x >> {MIX_SHIFT1}; x *= {MIX_MUL1:#x}u; x ^= x >> {MIX_SHIFT2}; x *= {MIX_MUL2:#x}u; x ^= x >> {MIX_SHIFT3};
    return x;
}}
XPNN_FN unsigned int xpnn_counter_bits(long long seed, long long step, long long index) {{
    unsigned int offset = xpnn_mix32(xpnn_mix32((unsigned int)seed) + (unsigned int)step);
    unsigned int multiplier = (xpnn_mix32(offset ^ {STEP_SALT:#x}u) >> 1) | 1u;
    return xpnn_mix32((unsigned int)index * multiplier + offset);
}}
"""


def mix32(x: Any) -> Any:
    """The 32-bit integer hash, on a Python int or an int64 array of values below 2**32."""
    x = x ^ (x >> MIX_SHIFT1)
    x = (x * MIX_MUL1) & MASK32
    x = x ^ (x >> MIX_SHIFT2)
    x = (x * MIX_MUL2) & MASK32
    return x ^ (x >> MIX_SHIFT3)


def step_keys(seed: Any, step: Any) -> tuple[Any, Any]:
    """The offset and the odd multiplier (< 2**31) that spread a step's element indices: 0-d arrays or ints."""
    offset = mix32((mix32(seed & MASK32) + (step & MASK32)) & MASK32)
    return offset, (mix32(offset ^ STEP_SALT) >> 1) | 1


def counter_bits(xp: Any, seed: Any, step: Any, shape: tuple[int, ...], first: int, device: Any = None) -> Any:
    """Uniform 32-bit values (int64 array of ``shape``) for (``seed``, ``step``) at indices ``first``, ``first+1``, ...

    The reference, in array-API integer operations: element ``k`` is ``mix32((i·m + o) mod 2**32)`` with
    ``i = (first + k) mod 2**32`` and ``(o, m) = step_keys(seed, step)``. Multiplying by a step's own odd
    multiplier, rather than only adding its offset, keeps the index windows of different steps from sliding
    over each other.
    """
    count = math.prod(shape)
    index = xp.arange(first, first + count, dtype=xp.int64, device=device)
    if first + count > MASK32 + 1:
        index = index & MASK32
    offset, multiplier = step_keys(seed, step)
    return xp.reshape(mix32((index * multiplier + offset) & MASK32), shape)


def dropout_threshold(p: float) -> int:
    """The 32-bit value below which an element is dropped: P(drop) = threshold / 2**32, as near ``p`` as can be."""
    return min(round(p * 2.0**32), MASK32)


def seed_key(seed: Seed) -> int:
    """A 32-bit key from an int or a sequence of ints (numpy.random.SeedSequence), for :func:`counter_bits`."""
    return int(np.random.SeedSequence(seed).generate_state(1, np.uint32)[0])


def _numpy_dropout_mask(seed: Any, step: Any, shape: tuple[int, ...], first: int, threshold: int, scale: float,
                        dtype_name: str) -> np.ndarray:
    """:func:`counter_bits` in uint32 arithmetic (wrapping is the reference's ``& MASK32``), in place: a third
    of the passes over half the bytes. The tests compare the two bit for bit."""
    offset, multiplier = step_keys(int(seed), int(step))
    count = math.prod(shape)
    if first + count <= MASK32 + 1:
        x = np.arange(first, first + count, dtype=np.uint32)
    else:
        x = (np.arange(first, first + count, dtype=np.int64) & MASK32).astype(np.uint32)
    shifted = np.empty_like(x)
    x *= np.uint32(multiplier)
    x += np.uint32(offset)
    for shift, multiply in ((MIX_SHIFT1, MIX_MUL1), (MIX_SHIFT2, MIX_MUL2), (MIX_SHIFT3, None)):
        np.right_shift(x, shift, out=shifted)
        x ^= shifted
        if multiply is not None:
            x *= np.uint32(multiply)
    mask = np.greater_equal(x, np.uint32(threshold)).astype(dtype_name)
    mask *= mask.dtype.type(scale)  # as the reference's float mask times the Python float
    return mask.reshape(shape)


def _cupy_dropout_mask(seed: Any, step: Any, shape: tuple[int, ...], first: int, threshold: int, scale: float,
                       backend: Backend) -> Any:
    """The mask in one CuPy kernel (:data:`COUNTER_BITS_C`); ``seed`` and ``step`` stay on the device."""
    import cupy

    kernel = _KERNELS.get("dropout")
    if kernel is None:
        kernel = _KERNELS["dropout"] = cupy.ElementwiseKernel(
            "int64 seed, int64 step, int64 first, uint32 threshold, T scale", "T mask",
            "mask = xpnn_counter_bits(seed, step, first + i) >= threshold ? scale : (T)0;",
            "xpnn_dropout_mask", preamble="#define XPNN_FN __device__ __forceinline__\n" + COUNTER_BITS_C)
    with backend.device:
        mask = cupy.empty(shape, dtype=backend.dtype_name)
        return kernel(seed, step, np.int64(first), np.uint32(threshold), np.dtype(backend.dtype_name).type(scale),
                      mask)


_KERNELS: dict[str, Any] = {}
#: Where :meth:`Backend.matmul` sends its products while a CuPy step is being captured (None: ``a @ b``).
_MATMUL_ROUTE: contextvars.ContextVar[Any] = contextvars.ContextVar("xpnn_matmul_route", default=None)


class DeviceRandom:
    """Uniform random numbers drawn on the backend's device from a fixed seed.

    NumPy-compatible libraries without a generator of their own (array-api-strict) draw on the host
    and copy; CuPy and torch draw on the device so that nothing crosses the bus.
    """

    def __init__(self, backend: Backend, seed: Seed):
        self.backend, self.seed = backend, seed
        entropy = np.random.SeedSequence(seed).generate_state(2, np.uint64)
        lib = backend._library
        if lib == "cupy":
            import cupy

            with backend.device:
                self._gen = cupy.random.default_rng(int(entropy[0]))
        elif lib == "torch":
            import torch

            self._gen = torch.Generator(device=backend.device)
            self._gen.manual_seed(int(entropy[0] >> np.uint64(1)))
        else:
            self._gen = np.random.default_rng(entropy)

    def uniform(self, shape: tuple[int, ...]) -> Any:
        """Samples from U[0, 1) of the given shape, default float dtype, on the device."""
        be = self.backend
        if be._library == "cupy":
            with be.device:
                return self._gen.random(shape, dtype=be.dtype_name)
        if be._library == "torch":
            import torch

            return torch.rand(shape, generator=self._gen, device=be.device, dtype=be.dtype)
        return be.asarray(self._gen.random(shape, dtype=np.dtype(be.dtype_name)))


class FusedUpdates:
    """CuPy elementwise kernels for the optimizers' updates, one kernel per parameter.

    Every operation is written with a round-to-nearest intrinsic (``__fmul_rn`` and friends) so the
    compiler cannot contract a multiply and an add into an FMA: each step rounds exactly as the
    separate array operations of the generic path do, and the results are identical.
    """

    def __init__(self, dtype_name: str):
        import cupy

        p = "f" if dtype_name == "float32" else "d"
        ops = {"MUL": f"__{p}mul_rn", "ADD": f"__{p}add_rn", "SUB": f"__{p}sub_rn", "DIV": f"__{p}div_rn",
               "SQRT": f"__{p}sqrt_rn"}

        def kernel(params: str, outputs: str, body: str, name: str) -> Any:
            for key, intrinsic in ops.items():
                body = body.replace(key, intrinsic)
            return cupy.ElementwiseKernel(params, outputs, body, f"xpnn_{name}_{dtype_name}")

        self.dtype = np.dtype(dtype_name)
        # p - lr*g
        self._sgd = kernel("T p, T g, T lr", "T p_new", "p_new = SUB(p, MUL(lr, g));", "sgd")
        # v = mu*v + g; p - lr*v, or p - lr*(g + mu*v) with Nesterov
        self._momentum = kernel(
            "T p, T g, T v, T lr, T mu, bool nesterov", "T p_new, T v_new",
            "v_new = ADD(MUL(mu, v), g); T step = nesterov ? ADD(g, MUL(mu, v_new)) : v_new; "
            "p_new = SUB(p, MUL(lr, step));", "momentum")
        # m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g; p - lr*(m*mc) / (sqrt(v*vc) + eps)
        self._adam = kernel(
            "T p, T g, T m, T v, T lr, T b1, T c1, T b2, T c2, T mc, T vc, T eps", "T p_new, T m_new, T v_new",
            "m_new = ADD(MUL(b1, m), MUL(c1, g)); v_new = ADD(MUL(b2, v), MUL(c2, MUL(g, g))); "
            "p_new = SUB(p, DIV(MUL(lr, MUL(m_new, mc)), ADD(SQRT(MUL(v_new, vc)), eps)));", "adam")

    # With ``inplace=True`` the kernels write their outputs into their inputs (p, v, m): an element is read
    # before it is written by the same thread, so aliasing is safe, and a flat buffer of every parameter is
    # updated in one launch.
    def sgd(self, p: Any, g: Any, lr: float, inplace: bool = False) -> Any:
        return self._sgd(p, g, self.dtype.type(lr), *((p,) if inplace else ()))

    def momentum(self, p: Any, g: Any, v: Any, lr: float, mu: float, nesterov: bool,
                 inplace: bool = False) -> tuple[Any, Any]:
        t = self.dtype.type
        return self._momentum(p, g, v, t(lr), t(mu), nesterov, *((p, v) if inplace else ()))

    def adam(self, p: Any, g: Any, m: Any, v: Any, lr: float, betas: tuple[float, float], scales: tuple[float, float],
             eps: float, inplace: bool = False) -> tuple[Any, Any, Any]:
        t = self.dtype.type
        (b1, b2), (mc, vc) = betas, scales
        return self._adam(p, g, m, v, t(lr), t(b1), t(1 - b1), t(b2), t(1 - b2), t(mc), t(vc), t(eps),
                          *((p, m, v) if inplace else ()))


_FUSED: dict[str, FusedUpdates] = {}
_ONES_KEPT_MAX = 1 << 20  # rows up to which Backend.column_sums keeps its ones vector
_NAMESPACES: dict[type, Any] = {}
_FLOATING: dict[tuple[type, Any], bool] = {}
_ZEROS: dict[tuple[type, Any, Any], Any] = {}


def namespace_of(a: Any) -> Any:
    """``array_api_compat.array_namespace(a)``, remembered per array type (it is on the hot path)."""
    xp = _NAMESPACES.get(type(a))
    if xp is None:
        xp = _NAMESPACES[type(a)] = array_api_compat.array_namespace(a)
    return xp


def is_floating(a: Any) -> bool:
    """Whether ``a`` has a real floating dtype, remembered per dtype."""
    key = (type(a), a.dtype)  # the type first, so dtypes of different libraries are never compared
    answer = _FLOATING.get(key)
    if answer is None:
        answer = _FLOATING[key] = namespace_of(a).isdtype(a.dtype, "real floating")
    return answer


def zero_like(a: Any) -> Any:
    """A 0-d zero of ``a``'s dtype on ``a``'s device, made once and reused (treat it as read-only).

    ``xp.maximum(x, 0.0)`` on torch turns the Python 0.0 into a tensor at every call, a host-to-device copy
    that a CUDA graph capture refuses; ``xp.maximum(x, zero_like(x))`` does not copy after the first call.
    """
    device = array_api_compat.device(a)
    try:
        key = (type(a), a.dtype, device)
        zero = _ZEROS.get(key)
    except TypeError:  # an unhashable device (CuPy's): its repr names it
        key = (type(a), a.dtype, repr(device))
        zero = _ZEROS.get(key)
    if zero is None:
        zero = _ZEROS[key] = namespace_of(a).zeros((), dtype=a.dtype, device=device)
    return zero


def to_numpy(a: Any) -> np.ndarray:
    """Copy an array of any supported library to a NumPy array on the host.

    A copy on NumPy too: optimizers update parameters in place, and a "copy" that aliased them would change.
    """
    if isinstance(a, np.ndarray | np.generic):
        return np.array(a)
    lib = _library_name(a)
    if lib == "cupy":
        return a.get()
    if lib == "torch":
        a = a.detach()
        return a.numpy().copy() if a.device.type == "cpu" else a.cpu().numpy()  # numpy() alone shares memory
    try:
        # A copy: a DLPack view shares the library's memory (array-api-strict, marray, JAX), and NumPy
        # refuses to export a read-only view again (marray wrapping such a view could not be read back).
        return np.array(np.from_dlpack(a))
    except (BufferError, TypeError, AttributeError, RuntimeError, ValueError):
        pass  # a library without DLPack export (ndonnx, dask.array): ask it for NumPy data another way
    if hasattr(a, "__array__"):
        return np.array(a)
    unwrap = getattr(a, "unwrap_numpy", None) or getattr(a, "to_numpy", None)
    host = unwrap() if unwrap is not None else None
    if not isinstance(host, np.ndarray | np.generic):
        raise TypeError(f"cannot copy a {type(a).__module__}.{type(a).__name__} to NumPy: it exports neither "
                        "DLPack nor __array__; convert it to a NumPy array yourself")
    return np.array(host)


def _library_name(a: Any) -> str:
    module = type(a).__module__.split(".")[0]
    return {"jaxlib": "jax"}.get(module, module)  # JAX's arrays are defined in jaxlib


def _probe_array(namespace: Any) -> Any:
    creator = getattr(namespace, "asarray", None) or getattr(namespace, "tensor", None)
    if not callable(creator):
        raise TypeError(f"Backend.from_namespace: expected an array library (a module such as numpy, torch or "
                        f"array_api_strict), got {type(namespace).__name__} {namespace!r:.60}")
    return creator([0.0])


def _parse_cuda_index(spec: str) -> int:
    _, _, index = spec.partition(":")
    if not index:
        return 0
    if not index.isdigit():
        raise ValueError(f"device {spec!r}: the GPU index must be a number, e.g. 'cuda:0'")
    return int(index)


def _cupy_backend(spec: str, dtype: str) -> Backend:
    index = _parse_cuda_index(spec)
    try:
        cupy = importlib.import_module("cupy")
    except ImportError:
        raise BackendError(
            'device "gpu" needs CuPy, which is not installed; install it with pip install cupy-cuda12x'
            " (or the cupy-cudaXXx wheel that matches your CUDA), or use --device cpu"
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDA driver missing or broken
        raise BackendError(
            f"CuPy is installed but no usable CUDA device was found ({error.__class__.__name__}); "
            "check the NVIDIA driver with nvidia-smi, or use --device cpu"
        ) from None
    if index >= count:
        raise BackendError(
            f"CuPy is installed but there is no CUDA device {index} ({count} found); "
            "pick another index or use --device cpu"
        )
    with cupy.cuda.Device(index):
        probe = cupy.zeros(1)
    backend = Backend.from_namespace(cupy, device=probe.device, dtype=dtype)
    return Backend(backend.xp, backend.device, dtype, f"cupy:{index}", "cupy")


def _dtype_name(dtype: Any) -> str:
    """``"float32"`` or ``"float64"`` from a name or a dtype of any library, else ValueError."""
    if isinstance(dtype, str):
        name = dtype
    elif dtype is None:  # numpy.dtype(None) would silently mean float64
        name = ""
    else:
        try:
            name = np.dtype(dtype).name  # numpy.float64, numpy.dtype("float32"), "f4"-likes
        except TypeError:
            name = str(dtype).rsplit(".", 1)[-1]  # torch.float64, array_api_strict.float32, cupy dtypes
    if name not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64' (a name, or a dtype such as numpy.float64), "
                         f"got {dtype!r}")
    return name


def get_backend(spec: Any = "cpu", dtype: Any = "float32") -> Backend:
    """Make the backend for a device string, a namespace, or pass a backend through.

    Parameters
    ----------
    spec : str, module or Backend
        ``"cpu"`` / ``"numpy"`` for NumPy; ``"gpu"``, ``"cuda"`` or ``"cuda:N"`` for CuPy on GPU N;
        ``"torch"`` / ``"torch:cuda"`` for PyTorch tensors; ``"array_api_strict"`` for the strict
        checker; any array-API namespace module; or an existing :class:`Backend` (returned as is).
    dtype : {"float32", "float64"} or a dtype
        Default floating dtype, as a name or as a dtype (``numpy.float64``, ``numpy.dtype("float64")``).
        Ignored when ``spec`` is already a Backend.

    Returns
    -------
    Backend

    Raises
    ------
    BackendError
        When the library behind ``spec`` is not installed or has no usable device.
    """
    if isinstance(spec, Backend):
        return spec
    dtype = _dtype_name(dtype)
    if not isinstance(spec, str):
        return Backend.from_namespace(spec, dtype=dtype)
    key = spec.strip().lower()
    if key in ("cpu", "numpy"):
        return Backend.from_namespace(np, dtype=dtype)
    if key in ("gpu", "cuda", "cupy") or key.startswith(("cuda:", "gpu:", "cupy:")):
        return _cupy_backend(key, dtype)
    if key.startswith("torch"):
        torch = _import_optional("torch", "pip install torch")
        _, _, device = key.partition(":")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"device {spec!r}: this torch has no usable CUDA device (torch "
                               f"{torch.__version__}); install a CUDA build of torch, or use --device torch")
        return Backend.from_namespace(torch, device=device or "cpu", dtype=dtype)
    if key in ("array_api_strict", "array-api-strict", "strict"):
        strict = _import_optional("array_api_strict", "pip install array-api-strict")
        return Backend.from_namespace(strict, dtype=dtype)
    raise ValueError(
        f"unknown device {spec!r}; use 'cpu', 'gpu', 'cuda:N', 'torch', 'torch:cuda' or 'array_api_strict'"
    )


def _import_optional(module: str, hint: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise BackendError(f"backend {module!r} is not installed; install it with {hint}") from None
