"""Helpers that write small IDX datasets for the data and command-line tests."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialize an unsigned-byte array in the IDX format."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool | None = None) -> Path:
    data = idx_bytes(array)
    gz = path.suffix == ".gz" if gz is None else gz
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_dataset(directory: Path, n_train: int = 600, n_test: int = 200, side: int = 8, classes: int = 3,
                 gz: bool = True, seed: int = 0) -> Path:
    """A learnable MNIST-layout dataset: each class brightens its own band of rows, plus noise."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, classes, n)
        images = rng.integers(0, 100, (n, side, side))
        band = side // classes
        for c in range(classes):
            images[labels == c, c * band : (c + 1) * band, :] += 120
        write_idx(directory / f"{split}-images-idx3-ubyte{suffix}", images)
        write_idx(directory / f"{split}-labels-idx1-ubyte{suffix}", labels)
    return directory
