"""Max and average pooling over NCHW images, windows taken as strided slices."""

from __future__ import annotations

from typing import Any

import array_api_extra as xpx

from .base import Layer
from .conv import output_size, pair, window

__all__ = ["AvgPool2d", "MaxPool2d"]


class _Pool2d(Layer):
    """Shared shape logic: windows of ``kernel_size`` every ``stride``; windows past the edge are dropped."""

    def __init__(self, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = pair(kernel_size, "kernel_size", name)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", name)
        self.x: Any = None
        self.y: Any = None
        self.input_shape: tuple[int, ...] | None = None
        self.out: tuple[int, int] | None = None

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """No parameters and no buffers."""
        return {}

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Per-sample shape (C, H, W) -> (C, oh, ow); ValueError for a wrong shape."""
        return self._output_shape(tuple(input_shape), batched=False)

    def _output_shape(self, shape: tuple[int, ...], batched: bool) -> tuple[int, int, int]:
        if len(shape) != (4 if batched else 3):
            raise ValueError(f"{self!r}: expected input of shape {'(N, C, H, W)' if batched else '(C, H, W)'}, "
                             f"got {shape}")
        sample = shape[1:] if batched else shape
        out = output_size(sample[1:], self.kernel_size, self.stride)
        if out is None:
            raise ValueError(f"{self!r}: kernel {self.kernel_size} is larger than the input {sample[1:]} "
                             f"of input shape {shape}; use a smaller kernel or larger images")
        return sample[0], out[0], out[1]

    def _windows(self, x: Any, out: tuple[int, int]) -> list[tuple[tuple[slice, ...], Any]]:
        """(index, x[index]) for every offset (i, j) of the kernel, row by row, of a channels-last ``x``
        (N, H, W, C): one (N, oh, ow, C) block each."""
        blocks = []
        for i in range(self.kernel_size[0]):
            for j in range(self.kernel_size[1]):
                index = (slice(None), window(i, out[0], self.stride[0]), window(j, out[1], self.stride[1]), slice(None))
                blocks.append((index, x[index]))
        return blocks

    def _channels_last(self, a: Any, contiguous: bool = False) -> Any:
        """(N, C, H, W) viewed as (N, H, W, C). Pooling works in this frame: Conv2d's outputs are channels-last in
        memory, so every window block then reads and writes whole runs of C values (about 2x faster on NumPy).

        ``contiguous=True`` copies an ``a`` that is not channels-last in memory (a gradient from Flatten is
        NCHW), through a reshape that copies only when it must: one copy instead of strided reads per block.
        """
        xp = self.xp
        a = xp.permute_dims(a, (0, 2, 3, 1))
        if contiguous:
            n, h, w, c = a.shape
            a = xp.reshape(xp.reshape(a, (n, h * w * c)), (n, h, w, c))
        return a

    @property
    def _overlapping(self) -> bool:
        return any(k > s for k, s in zip(self.kernel_size, self.stride, strict=True))

    def _gradient_buffer(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """dx to be filled window by window: zeros unless the windows tile the input exactly (kernel = stride,
        no dropped edge), when every entry is written once and an uninitialized array saves a pass."""
        covered = [o * s for o, s in zip(self.out, self.stride, strict=True)]
        if self.kernel_size != self.stride or covered != [shape[1], shape[2]]:
            return self.backend.zeros(shape, dtype=dtype)
        return self.xp.empty(shape, dtype=dtype, device=self.backend.device)

    def _put(self, dx: Any, index: tuple[slice, ...], share: Any) -> Any:
        """dx with one kernel offset's share: added where windows overlap, else written (each entry once).
        In place where the library allows it (NumPy, CuPy, torch), a new array otherwise (JAX)."""
        if self._overlapping:
            return xpx.at(dx, index).add(share, xp=self.xp)
        return xpx.at(dx, index).set(share, xp=self.xp)

    def _channels_first(self, a: Any) -> Any:
        return self.xp.permute_dims(a, (0, 3, 1, 2))

    def _check(self, x: Any) -> tuple[int, int]:
        self._require_built()
        _, oh, ow = self._output_shape(tuple(getattr(x, "shape", ())), batched=True)
        return oh, ow

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"kernel_size": list(self.kernel_size)}
        if self.stride != self.kernel_size:
            config["stride"] = list(self.stride)
        return config


class MaxPool2d(_Pool2d):
    """The largest value of each window; its gradient goes to the first largest input of the window.

    Parameters
    ----------
    kernel_size : int or (int, int)
        Window height and width.
    stride : int or (int, int), optional
        Step between windows; defaults to ``kernel_size``. Windows may overlap.

    Shapes: ``x`` (N, C, H, W) -> ``y`` (N, C, oh, ow), ``oh = (H - kh) // stride + 1`` (likewise ``ow``).
    """

    def forward(self, x: Any, *, train: bool = False) -> Any:
        out = self._check(x)
        xp = self.xp
        x = self._channels_last(x)
        windows = self._windows(x, out)
        y = windows[0][1]
        for _, block in windows[1:]:
            y = xp.maximum(y, block)
        self.x, self.y, self.out = x, y, out
        return self._channels_first(y)

    def backward(self, dy: Any) -> Any:
        xp = self.xp
        x, y, self.x, self.y = self.x, self.y, None, None
        dy = self._channels_last(dy, contiguous=True)
        dx = self._gradient_buffer(tuple(x.shape), dy.dtype)
        windows = self._windows(x, self.out)
        if not self._overlapping:
            scattered = self.backend.first_max_scatter(dx, windows, y, dy)
            if scattered is not None:
                return self._channels_first(scattered)
        # The first block (in row-major kernel order) that attains the max takes the whole gradient, as in
        # PyTorch, so tied inputs never share it: ``remaining`` is dy where no earlier block has won yet, else 0
        # (exact: each entry of ``share`` is either that of ``remaining`` or 0). The last block takes what is
        # left without comparing. A 0/1 mask times dy is several times faster than where() on NumPy.
        remaining = dy
        for k, (index, block) in enumerate(windows):
            if k == len(windows) - 1:
                share = remaining
            else:
                share = xp.astype(block == y, dy.dtype)
                share *= remaining
                remaining = remaining - share
            dx = self._put(dx, index, share)
        return self._channels_first(dx)


class AvgPool2d(_Pool2d):
    """The mean of each window (every window is whole, so it is always the mean of kh·kw values).

    Parameters
    ----------
    kernel_size : int or (int, int)
        Window height and width.
    stride : int or (int, int), optional
        Step between windows; defaults to ``kernel_size``. Windows may overlap.

    Shapes: ``x`` (N, C, H, W) -> ``y`` (N, C, oh, ow), ``oh = (H - kh) // stride + 1`` (likewise ``ow``).
    """

    def forward(self, x: Any, *, train: bool = False) -> Any:
        out = self._check(x)
        x = self._channels_last(x)
        windows = self._windows(x, out)
        total = windows[0][1]
        for _, block in windows[1:]:
            total = total + block
        self.input_shape, self.out = tuple(x.shape), out
        return self._channels_first(total * (1.0 / (self.kernel_size[0] * self.kernel_size[1])))

    def backward(self, dy: Any) -> Any:
        share = self._channels_last(dy) * (1.0 / (self.kernel_size[0] * self.kernel_size[1]))
        dx = self._gradient_buffer(self.input_shape, dy.dtype)
        for i in range(self.kernel_size[0]):
            for j in range(self.kernel_size[1]):
                index = (slice(None), window(i, self.out[0], self.stride[0]), window(j, self.out[1], self.stride[1]),
                         slice(None))
                dx = self._put(dx, index, share)
        return self._channels_first(dx)
