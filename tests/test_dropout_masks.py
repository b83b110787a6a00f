"""Dropout's counter-based masks: the same bits on every library, in every split of a batch, across resumes."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import pytest

import xpnn
from tests.conftest import make_backend
from xpnn.core.backend import (
    COUNTER_BITS_C,
    MASK32,
    _numpy_dropout_mask,
    counter_bits,
    dropout_threshold,
    mix32,
    seed_key,
)
from xpnn.nn.layers import Dropout
from xpnn.nn.layers.dropout import global_rows
from xpnn.training.checkpoint import load_checkpoint, save_checkpoint
from xpnn.training.trainer import Trainer

LIBRARIES = ["numpy", "torch", "strict"]


def mask_of(backend, seed, step, shape, first=0, p=0.3):
    return backend.to_numpy(backend.dropout_mask(backend.asarray(seed), backend.asarray(step), shape, first, p))


def test_mix32_is_the_published_hash_on_known_values():
    """Wellons' [16 21f0aaad 15 735a2d97 15], computed here with uint32 wrap-around as an independent check."""
    for x in (0, 1, 2, 0xDEADBEEF, MASK32):
        y = np.uint32(x)
        with np.errstate(over="ignore"):
            y ^= y >> np.uint32(16)
            y *= np.uint32(0x21F0AAAD)
            y ^= y >> np.uint32(15)
            y *= np.uint32(0x735A2D97)
            y ^= y >> np.uint32(15)
        assert mix32(x) == int(y)
    assert mix32(1) != mix32(2) and mix32(0) == 0


@pytest.mark.parametrize("first", [0, 37, MASK32 - 100])  # the last one wraps around 2**32 inside the mask
@pytest.mark.parametrize("shape", [(7, 5), (3, 2, 4, 4), (1,)])
def test_masks_are_bit_identical_on_every_library(shape, first):
    masks = {name: mask_of(make_backend(name), 123456789, 41, shape, first) for name in LIBRARIES}
    for name, mask in masks.items():
        assert mask.dtype == np.float32 and mask.shape == shape
        np.testing.assert_array_equal(mask, masks["numpy"], err_msg=name, strict=True)
    generic = counter_bits(np, np.int64(123456789), np.int64(41), shape, first) >= dropout_threshold(0.3)
    np.testing.assert_array_equal(masks["numpy"], generic.astype(np.float32) * (1 / 0.7))


def test_the_numpy_fast_path_is_the_reference_bit_for_bit():
    rng = np.random.default_rng(0)
    for _ in range(20):
        seed, step, first = (int(v) for v in rng.integers(0, 2**32, 3))
        p = float(rng.uniform(0.01, 0.99))
        dtype = str(rng.choice(["float32", "float64"]))
        fast = _numpy_dropout_mask(np.int64(seed), np.int64(step), (33, 17), first, dropout_threshold(p), 1 / (1 - p),
                                   dtype)
        keep = counter_bits(np, np.int64(seed), np.int64(step), (33, 17), first) >= dropout_threshold(p)
        np.testing.assert_array_equal(fast, keep.astype(dtype) * (1 / (1 - p)), strict=True)


def test_the_cuda_kernel_source_computes_the_reference_bits(tmp_path):
    """The fused CuPy kernel's C code, compiled here by the host's C compiler, against the array-API reference."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler here")
    source = tmp_path / "bits.c"
    source.write_text("#define XPNN_FN static inline\n" + COUNTER_BITS_C + """
void fill(long long seed, long long step, long long first, long long n, unsigned int *out) {
    for (long long i = 0; i < n; ++i) out[i] = xpnn_counter_bits(seed, step, first + i);
}
""")
    library = tmp_path / "bits.so"
    subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    fill = ctypes.CDLL(str(library)).fill
    fill.argtypes = [ctypes.c_longlong] * 4 + [ctypes.c_void_p]
    for seed, step, first in ((0, 0, 0), (3141592653, 2**32 + 5, MASK32 - 20), (-7, -1, 12345)):
        out = np.empty(64, dtype=np.uint32)
        fill(seed, step, first, out.size, out.ctypes.data)
        expected = counter_bits(np, np.int64(seed), np.int64(step), (64,), first)
        np.testing.assert_array_equal(out.astype(np.int64), expected, err_msg=str((seed, step, first)))


def test_masks_look_random():
    """Drop rate, no correlation between neighbours, between consecutive steps, or between two layers' keys."""
    shape = (256, 256)
    a = mask_of(make_backend("numpy"), seed_key([1, 2, 0]), 0, shape, p=0.1) == 0
    b = mask_of(make_backend("numpy"), seed_key([1, 2, 0]), 1, shape, p=0.1) == 0
    c = mask_of(make_backend("numpy"), seed_key([1, 2, 1]), 0, shape, p=0.1) == 0
    assert abs(a.mean() - 0.1) < 0.004 and abs(b.mean() - 0.1) < 0.004
    for other in (b, c, np.roll(a, 1), a.T):
        both = (a & other).mean()
        assert abs(both - 0.01) < 0.0015  # independent: P(both dropped) = 0.1 x 0.1
    counts = [(mask_of(make_backend("numpy"), 5, step, (128, 32), p=0.5) == 0).sum() for step in range(50)]
    assert len(set(counts)) > 20  # the number dropped varies from step to step, as it should


def test_each_training_forward_draws_the_next_mask_and_evaluation_draws_none(backend):
    layer = Dropout(0.5).build(backend)
    x = backend.asarray(np.ones((6, 8)))
    masks = [backend.to_numpy(layer.forward(x, train=True)) for _ in range(3)]
    assert int(backend.to_numpy(layer.buffers["step"])) == 3
    layer.forward(x)  # evaluation: identity, the count stays
    assert int(backend.to_numpy(layer.buffers["step"])) == 3
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])


def test_a_batch_split_into_slices_draws_the_slices_of_its_mask(backend):
    """What worker threads and MPI ranks do: each slice, given its first row, draws its part of the mask."""
    whole, part = Dropout(0.4).build(backend), Dropout(0.4).build(backend)
    x = backend.asarray(np.ones((10, 3, 2)))
    expected = backend.to_numpy(whole.forward(x, train=True))
    pieces = []
    for lo, hi in ((0, 4), (4, 7), (7, 10)):
        part.buffers["step"] = backend.asarray(0)  # every slice draws at the same step
        with global_rows(lo):
            pieces.append(backend.to_numpy(part.forward(x[lo:hi, ...], train=True)))
    np.testing.assert_array_equal(np.concatenate(pieces), expected)


def test_reseed_restarts_the_masks_and_different_layers_draw_differently():
    model = xpnn.mlp([4, 32, 32, 2], dropout=0.5, seed=3)
    first, second = model[2], model[5]
    assert isinstance(first, Dropout) and isinstance(second, Dropout)
    assert int(first.buffers["seed"]) != int(second.buffers["seed"])
    x = np.ones((5, 4), dtype=np.float32)
    model.loss(x, np.zeros(5, dtype=np.int64))
    assert int(first.buffers["step"]) == 1
    model.reseed()
    assert int(first.buffers["step"]) == 0
    assert int(first.buffers["seed"]) == int(xpnn.mlp([4, 32, 32, 2], dropout=0.5, seed=3)[2].buffers["seed"])


def _data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 6)).astype(np.float32), rng.integers(0, 3, n)


def _trainer(backend, workers=1):
    model = xpnn.mlp([6, 24, 16, 3], dropout=0.4, backend=backend, seed=2)
    return Trainer(model, xpnn.optim.Adam(model, lr=0.01), batch_size=20, seed=0, cuda_graphs="off", workers=workers)


def _params(trainer):
    return {k: trainer.model.backend.to_numpy(v) for k, v in trainer.model.named_parameters().items()}


def test_two_workers_train_with_the_masks_of_one():
    pytest.importorskip("threadpoolctl")
    if xpnn.runtime.parallel.usable_cores() < 2:
        pytest.skip("one core: workers=2 is refused")
    x, y = _data()
    runs = []
    for workers in (1, 2):
        trainer = _trainer(xpnn.get_backend("cpu", "float64"), workers)
        trainer.fit(x, y, epochs=2, verbose=False, progress=False)
        runs.append(_params(trainer))
        assert int(trainer.model[2].buffers["step"]) == 12  # 2 epochs x 6 steps, on the replicas' model too
    for key, value in runs[0].items():  # the same up to the order of the gradient's sum
        np.testing.assert_allclose(runs[1][key], value, rtol=1e-10, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("device", ["torch", "strict"])
def test_a_numpy_checkpoint_resumes_on_another_library_with_the_same_masks(device, tmp_path):
    x, y = _data()
    straight = _trainer(make_backend("numpy", "float64"))
    straight.fit(x, y, epochs=3, verbose=False, progress=False)
    first = _trainer(make_backend("numpy", "float64"))
    first.fit(x, y, epochs=2, verbose=False, progress=False)
    save_checkpoint(tmp_path / "c.npz", first.model, first.optimizer, 2, [], {})
    resumed = _trainer(make_backend(device, "float64"))
    load_checkpoint(tmp_path / "c.npz", resumed.model, resumed.optimizer)
    assert int(resumed.model.backend.to_numpy(resumed.model[2].buffers["step"])) == 12
    resumed.fit(x, y, epochs=3, initial_epoch=2, verbose=False, progress=False)
    for key, value in _params(straight).items():
        np.testing.assert_allclose(_params(resumed)[key], value, rtol=1e-9, atol=1e-12, err_msg=key)


def test_models_and_checkpoints_saved_before_dropout_counted_steps_still_load(tmp_path):
    trainer = _trainer(xpnn.get_backend("cpu"))
    state = {k: v for k, v in trainer.model.state_dict().items() if not k.endswith((".seed", ".step"))}
    assert trainer.model.load_state_dict(state) == ([], [])
    save_checkpoint(tmp_path / "new.npz", trainer.model, trainer.optimizer, 1, [], {})
    from xpnn.io.serialization import open_npz, write_npz

    with open_npz(tmp_path / "new.npz", "checkpoint") as npz:
        header, arrays = npz.header, npz.read(npz.shapes)
    old = {k: v for k, v in arrays.items() if not k.endswith((".seed", ".step"))}
    write_npz(tmp_path / "old.npz", old, {k: v for k, v in header.items() if k != "kind"} | {"kind": "checkpoint"})
    fresh = _trainer(xpnn.get_backend("cpu"))
    load_checkpoint(tmp_path / "old.npz", fresh.model, fresh.optimizer)
    assert int(fresh.model[2].buffers["step"]) == 0


def test_a_counter_must_be_an_integer_and_a_weight_a_float():
    model = xpnn.mlp([4, 8, 2], dropout=0.5)
    state = model.state_dict()
    with pytest.raises(xpnn.FormatError, match=r"'2.step' has dtype float64, expected integers"):
        model.load_state_dict({**state, "2.step": np.zeros((), dtype=np.float64)})
    model.load_state_dict({**state, "2.step": np.full((), 9, dtype=np.int32)})
    assert int(model[2].buffers["step"]) == 9 and model[2].buffers["step"].dtype == np.int64


def test_moving_a_model_keeps_its_dropout_counters():
    torch_backend = make_backend("torch")
    model = xpnn.mlp([4, 8, 2], dropout=0.5, seed=1)
    model.loss(np.ones((3, 4), dtype=np.float32), np.zeros(3, dtype=np.int64))
    seed = int(model[2].buffers["seed"])
    model.to(torch_backend)
    assert int(model[2].buffers["step"]) == 1 and int(model[2].buffers["seed"]) == seed
