"""Two-dimensional convolution as one matrix product over unfolded patches (im2col)."""

from __future__ import annotations

from typing import Any

import array_api_extra as xpx
import numpy as np

from ..initializers import get_initializer
from .base import Layer

__all__ = ["Conv2d", "output_size", "pair", "unfold"]

#: Bytes of patches unfolded at a time on the CPU (:meth:`Conv2d._chunks`): a few images, so that each block of
#: patches is multiplied while it is still in the cache.
CHUNK_BYTES = 4 << 20


def pair(value: Any, name: str, owner: str, minimum: int = 1) -> tuple[int, int]:
    """``value`` (an int or an (h, w) pair) as a pair of ints >= ``minimum``, or a ValueError naming ``owner``."""
    values = tuple(value) if isinstance(value, tuple | list) else (value, value)
    if len(values) != 2 or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{owner}: {name} must be an int or a pair of ints (h, w), got {value!r}")
    if min(values) < minimum:
        kind = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{owner}: {name} must be {kind}, got {value!r}")
    return int(values[0]), int(values[1])


def output_size(size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
                padding: tuple[int, int] = (0, 0)) -> tuple[int, int] | None:
    """PyTorch's floor rule ``(size + 2·padding - kernel) // stride + 1`` per axis; None if the kernel does not fit."""
    padded = (size[0] + 2 * padding[0], size[1] + 2 * padding[1])
    if padded[0] < kernel[0] or padded[1] < kernel[1]:
        return None
    return (padded[0] - kernel[0]) // stride[0] + 1, (padded[1] - kernel[1]) // stride[1] + 1


def window(offset: int, count: int, step: int) -> slice:
    """The ``count`` positions ``offset, offset + step, ...`` as a slice whose stop stays inside the array."""
    return slice(offset, offset + (count - 1) * step + 1, step)


def unfold(xp: Any, x: Any, kernel: tuple[int, int], stride: tuple[int, int], out: tuple[int, int]) -> Any:
    """im2col on a channels-last input: one row per output position, one column per (i, j, channel).

    Parameters
    ----------
    x : array (N, H, W, C)
        Already padded.
    kernel, stride, out : pairs of int
        Kernel size, stride and output size (oh, ow).

    Returns
    -------
    array (N·oh·ow, kh·kw·C)
        Row ``(n, p, q)`` holds ``x[n, p·sh + i, q·sw + j, c]`` at column ``(i·kw + j)·C + c``.
    """
    n, c = x.shape[0], x.shape[3]
    # kh·kw strided slices, each a whole (N, oh, ow, C) block: a few large copies instead of a gather.
    patches = [x[:, window(i, out[0], stride[0]), window(j, out[1], stride[1]), :]
               for i in range(kernel[0]) for j in range(kernel[1])]
    return xp.reshape(xp.stack(patches, axis=3), (n * out[0] * out[1], kernel[0] * kernel[1] * c))


def _reach(offset: int, padding: int, stride: int, out: int, size: int) -> tuple[int, int, int] | None:
    """Along one axis, the outputs ``p0 <= p < p1`` whose kernel offset ``offset`` reads a real input row (not
    padding), and the first such row ``p0·stride + offset - padding``; None if every read lands in the padding."""
    p0 = max(0, -((offset - padding) // stride))  # smallest p with p·stride + offset - padding >= 0
    p1 = min(out, (size - 1 - offset + padding) // stride + 1)  # past the largest p with a row < size
    if p1 <= p0:
        return None
    return p0, p1, p0 * stride + offset - padding


class Conv2d(Layer):
    """2-D convolution (cross-correlation, as in PyTorch) over NCHW images.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the input and of the output.
    kernel_size : int or (int, int)
        Kernel height and width.
    stride : int or (int, int)
        Step between neighbouring windows.
    padding : int or (int, int)
        Zeros added on both sides of each spatial axis.
    bias : bool
        Whether to learn a bias per output channel.
    init : str
        Weight initializer (see :mod:`xpnn.initializers`), drawn with fan-in ``in_channels·kh·kw``.

    ``params["W"]`` has shape (out_channels, in_channels, kh, kw) and ``params["b"]`` (out_channels,),
    as in PyTorch. Shapes: ``x`` (N, in_channels, H, W) -> ``y`` (N, out_channels, oh, ow) with
    ``oh = (H + 2·padding - kh) // stride + 1`` (likewise ``ow``).

    Internally the patches are unfolded channels-last, so that the forward pass and both gradients are
    each one large matrix product; the returned ``y`` is a channels-last array viewed as NCHW. A single
    input channel is unfolded one row per kernel offset instead, with the bias inside the products.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0, bias: bool = True,
                 init: str = "he"):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Conv2d: {name} must be a positive integer, got {value!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = pair(kernel_size, "kernel_size", "Conv2d")
        self.stride = pair(stride, "stride", "Conv2d")
        self.padding = pair(padding, "padding", "Conv2d", minimum=0)
        self.bias, self.init = bool(bias), init
        self._initializer = get_initializer(init)
        self.cols: Any = None
        self.W_matrix: Any = None
        self.padded: Any = None
        self.out_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None

    # ------------------------------------------------------------------ shapes
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of ``W`` and ``b``, from the constructor arguments alone."""
        shapes = {"W": (self.out_channels, self.in_channels, *self.kernel_size)}
        if self.bias:
            shapes["b"] = (self.out_channels,)
        return shapes

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-sample shape (in_channels, H, W) -> (out_channels, oh, ow); ValueError for a wrong shape."""
        return self._output_shape(tuple(input_shape), batched=False)

    def _output_shape(self, shape: tuple[int, ...], batched: bool) -> tuple[int, int, int]:
        sample = shape[1:] if batched else shape
        expected = f"({'N, ' if batched else ''}{self.in_channels}, H, W)"
        if len(shape) != (4 if batched else 3) or sample[0] != self.in_channels:
            raise ValueError(f"{self!r}: expected input of shape {expected}, got {shape}")
        out = output_size(sample[1:], self.kernel_size, self.stride, self.padding)
        if out is None:
            ph, pw = self.padding
            raise ValueError(
                f"{self!r}: kernel {self.kernel_size} is larger than the padded input "
                f"({sample[1]}+{2 * ph}, {sample[2]}+{2 * pw}) of input shape {shape}; "
                "use a smaller kernel, more padding or larger images"
            )
        return self.out_channels, out[0], out[1]

    # ------------------------------------------------------------------ set-up
    def initialize(self, rng: np.random.Generator) -> None:
        be = self.backend
        kh, kw = self.kernel_size
        fan_in = self.in_channels * kh * kw
        # Drawn as a (fan_in, out) matrix like Affine's, so "he" and "xavier" see the right fan-in.
        W = self._initializer(rng, (fan_in, self.out_channels))
        self.params["W"] = be.asarray(np.reshape(W.T, self.param_shapes()["W"]))
        if self.bias:
            self.params["b"] = be.zeros((self.out_channels,))
        self.grads = {key: be.zeros(value.shape) for key, value in self.params.items()}

    # ------------------------------------------------------------------ computation
    def forward(self, x: Any, *, train: bool = False) -> Any:
        self._require_built()
        xp = self.xp
        W = self.params["W"]
        _, oh, ow = self._output_shape(tuple(getattr(x, "shape", ())), batched=True)
        if x.dtype != W.dtype:
            raise TypeError(f"{self!r}: expected {W.dtype} input, got {x.dtype}; convert it with backend.asarray(x)")
        n, c, h, w = x.shape
        ph, pw = self.padding
        self.cols = self.padded = None  # free the last batch's patches before unfolding this one
        x = xp.permute_dims(x, (0, 2, 3, 1))  # channels-last: each patch row is contiguous runs of C
        if ph or pw:
            padded = self.backend.zeros((n, h + 2 * ph, w + 2 * pw, c), dtype=x.dtype)
            padded = xpx.at(padded)[:, ph : ph + h, pw : pw + w, :].set(x, xp=xp)  # in place where arrays allow
            x = padded
        kh, kw = self.kernel_size
        self.W_matrix = xp.reshape(xp.permute_dims(W, (2, 3, 1, 0)), (kh * kw * c, self.out_channels))
        self.input_size, self.out_size = (h, w), (oh, ow)
        if self._planar:
            cols = self._patches(x, (oh, ow))
            # Training keeps the patches for backward; evaluation keeps only the (padded) input, from which a
            # backward after it (a gradient check in evaluation mode) unfolds them again, so that evaluating
            # large batches does not leave the largest array of the network behind.
            self.cols, self.padded = (cols, None) if train else (None, x)
            W_rows = self.W_matrix
            if self.bias:  # the row of ones in cols picks up b
                W_rows = xp.concat([W_rows, xp.reshape(self.params["b"], (1, self.out_channels))], axis=0)
            y = self.backend.matmul(xp.matrix_transpose(cols), W_rows)
        else:
            # The patches of a few images at a time, each block used while it is still in the cache, and never
            # kept: backward unfolds them again from the padded input, which costs less than reading them
            # back from memory and leaves the largest array of the network unmade.
            self.padded = x
            parts = [self.backend.matmul(self._patches(x[lo:hi, ...], (oh, ow)), self.W_matrix)
                     for lo, hi in self._chunks(n)]
            y = parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)
            if self.bias:
                y += self.params["b"]  # y is ours alone, so adding in place saves a temporary
        return xp.permute_dims(xp.reshape(y, (n, oh, ow, self.out_channels)), (0, 3, 1, 2))

    def _chunks(self, n: int) -> list[tuple[int, int]]:
        """Ranges of images whose patches fill about :data:`CHUNK_BYTES` (one range where every operation is a
        kernel launch, :attr:`xpnn.Backend.launch_bound`: there few large products win)."""
        if self.backend.launch_bound:
            return [(0, n)]
        oh, ow = self.out_size
        row_bytes = oh * ow * self.kernel_size[0] * self.kernel_size[1] * self.in_channels * 4
        step = max(1, CHUNK_BYTES // row_bytes)
        return [(lo, min(lo + step, n)) for lo in range(0, n, step)]

    @property
    def _planar(self) -> bool:
        """One input channel (grey images, a first layer): the patches are unfolded as kh·kw rows, one per
        kernel offset, each a contiguous copy of one shifted view of the image, plus a row of ones when there
        is a bias. Rows of kh·kw single values (the other layout) copy one value at a time, and the ones row
        folds the bias into the forward product and its gradient into the weight gradient's, which saves two
        passes over the layer's largest array: together 1.5-1.8x faster on NumPy."""
        return self.in_channels == 1

    def _patches(self, x: Any, out: tuple[int, int]) -> Any:
        """The patches of a padded channels-last ``x`` (N, H, W, C): (N·oh·ow, kh·kw·C) from :func:`unfold`,
        or for one channel (:attr:`_planar`) (kh·kw [+ 1], N·oh·ow)."""
        if not self._planar:
            cols = self.backend.unfold_fast(x, self.kernel_size, self.stride, out)
            return unfold(self.xp, x, self.kernel_size, self.stride, out) if cols is None else cols
        n = x.shape[0]
        planes = [x[:, window(i, out[0], self.stride[0]), window(j, out[1], self.stride[1]), 0]
                  for i in range(self.kernel_size[0]) for j in range(self.kernel_size[1])]
        if self.bias:
            planes.append(self.backend.ones((n, *out), dtype=x.dtype))
        return self.xp.reshape(self.xp.stack(planes, axis=0), (len(planes), n * out[0] * out[1]))

    def backward(self, dy: Any) -> Any:
        xp = self.xp
        dy_rows, W_matrix = self._dy_rows(dy), self.W_matrix
        n, _, oh, ow = dy.shape
        chunks = [(0, n)] if self._planar else self._chunks(n)
        self._grads(dy_rows)
        parts = [self._input_gradient(dy_rows[lo * oh * ow : hi * oh * ow, ...], W_matrix, hi - lo)
                 for lo, hi in chunks]
        dx = parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)
        return xp.permute_dims(dx, (0, 3, 1, 2))

    def _input_gradient(self, dy_rows: Any, W_matrix: Any, n: int) -> Any:
        """dx (n, H, W, C), channels-last, of ``n`` images from their rows of dy (n·oh·ow, out)."""
        xp = self.xp
        oh, ow = self.out_size
        (h, w), c, (kh, kw) = self.input_size, self.in_channels, self.kernel_size
        # col2im, the adjoint of unfold: the columns of kernel offset (i, j) are the gradient of the
        # (n, oh, ow, C) block that offset read, added back where it was read, straight into the unpadded dx.
        blocks = xp.reshape(self.backend.matmul(dy_rows, xp.matrix_transpose(W_matrix)), (n, oh, ow, kh * kw, c))
        pieces = []
        for i in range(kh):
            rows = _reach(i, self.padding[0], self.stride[0], oh, h)
            for j in range(kw):
                cols = _reach(j, self.padding[1], self.stride[1], ow, w)
                if rows is not None and cols is not None:
                    pieces.append((i * kw + j, rows, cols))
        # An offset whose block covers dx exactly (stride 1, "same" padding: the centre) starts it as a copy,
        # which saves filling zeros and one pass of additions.
        whole = [p for p in pieces if p[1] == (0, oh, 0) and p[2] == (0, ow, 0) and (oh, ow) == (h, w)]
        if whole and self.stride == (1, 1):
            pieces.remove(whole[0])
            dx = xp.asarray(blocks[:, :, :, whole[0][0], :], copy=True)
        else:
            dx = self.backend.zeros((n, h, w, c), dtype=dy_rows.dtype)
        for k, (p0, p1, r0), (q0, q1, s0) in pieces:
            target = (slice(None), window(r0, p1 - p0, self.stride[0]), window(s0, q1 - q0, self.stride[1]),
                      slice(None))
            dx = xpx.at(dx, target).add(blocks[:, p0:p1, q0:q1, k, :], xp=xp)
        return dx

    def backward_params(self, dy: Any) -> None:
        self._grads(self._dy_rows(dy))

    def _dy_rows(self, dy: Any) -> Any:
        """dy (N, out, oh, ow) as the (N·oh·ow, out) matrix that matches the rows of ``cols``."""
        n, o, oh, ow = dy.shape
        return self.xp.reshape(self.xp.permute_dims(dy, (0, 2, 3, 1)), (n * oh * ow, o))

    def _grads(self, dy_rows: Any) -> None:
        xp = self.xp
        kh, kw = self.kernel_size
        if self._planar:
            cols = self.cols if self.cols is not None else self._patches(self.padded, self.out_size)
            dW = self.backend.matmul(cols, dy_rows)  # (kh·kw [+ 1], out): Σ over rows, the last row (of ones) gives db
            if self.bias:
                self.grads["b"] = dW[kh * kw, :]
                dW = dW[: kh * kw, :]
        else:
            oh, ow = self.out_size
            dW = None
            for lo, hi in self._chunks(self.padded.shape[0]):  # Σ over rows: (kh·kw·C, out), rows ordered (i, j, c)
                part = self.backend.matmul(xp.matrix_transpose(self._patches(self.padded[lo:hi, ...], self.out_size)),
                                           dy_rows[lo * oh * ow : hi * oh * ow, ...])
                dW = part if dW is None else dW + part
            if self.bias:
                self.grads["b"] = self.backend.column_sums(dy_rows)
        self.cols = self.padded = self.W_matrix = None  # backward runs once per forward
        self.grads["W"] = xp.permute_dims(xp.reshape(dW, (kh, kw, self.in_channels, self.out_channels)),
                                          (3, 2, 0, 1))

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "in_channels": self.in_channels, "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": list(self.padding),
        }
        if not self.bias:
            config["bias"] = False
        if self.init != "he":
            config["init"] = self.init
        return config
