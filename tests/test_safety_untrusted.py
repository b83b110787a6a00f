"""Untrusted files cannot crash or exhaust the machine.

Every crafted or corrupted model, checkpoint or IDX file ends in FileNotFoundError or FormatError (DataError)
naming the file, in the library, and in one line with exit status 1 on the command line, before anything
large is allocated.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
import struct
import subprocess
import sys
import threading
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import xpnn
from tests.cli_helpers import pythonpath
from tests.idx import idx_bytes, make_dataset
from xpnn.cli import train as cli
from xpnn.io.data import DataError, read_idx
from xpnn.io.serialization import FormatError, read_npz
from xpnn.training.checkpoint import load_checkpoint, save_checkpoint

SIZES = [4, 3, 2]


def model_file(tmp_path, name="model.npz"):
    return xpnn.mlp(SIZES, seed=0).save(tmp_path / name)


def checkpoint_file(tmp_path, name="ck.npz"):
    model = xpnn.mlp(SIZES, seed=0)
    optimizer = xpnn.optim.Adam(model, lr=0.01)
    x, t = model.backend.asarray(np.ones((5, 4), np.float32)), model.backend.asarray(np.array([0, 1, 0, 1, 1]))
    model.loss(x, t)
    model.backward()
    optimizer.step()  # so that the moments exist
    history = [{"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.5, "test_loss": 0.6, "test_accuracy": 0.4}]
    return save_checkpoint(tmp_path / name, model, optimizer, 1, history, {"seed": 0, "lr": 0.01})


def fresh():
    model = xpnn.mlp(SIZES, seed=0)
    return model, xpnn.optim.Adam(model, lr=0.01)


def craft(path, header, arrays, header_array=None):
    """Write an .npz the way write_npz does, but with any header and arrays (np.savez pickles objects)."""
    payload = dict(arrays)
    payload["__xpnn__"] = np.asarray(json.dumps(header)) if header_array is None else header_array
    np.savez(path, **payload)
    return path


def parts(path, kind):
    arrays, header = read_npz(path, kind)
    return arrays, header


def load_any(path, kind):
    """Load ``path`` the way a user would: xpnn.load for a model, load_checkpoint for a checkpoint."""
    if kind == "model":
        return xpnn.load(path)
    model, optimizer = fresh()
    return load_checkpoint(path, model, optimizer)


def expect_format_error(path, kind):
    with pytest.raises(FormatError) as info:
        load_any(path, kind)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------- malformed headers
def _set(header, dotted, value):
    *parents, last = dotted.split("/")
    node = header
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return header


DELETE = object()

CHECKPOINT_HEADERS = [
    ("epoch", "3"), ("epoch", -1), ("epoch", 1.5), ("epoch", True), ("epoch", None), ("epoch", [1]),
    ("epoch", 2**70), ("history", {"epoch": 1}), ("history", "none"), ("history/0", [1, 2]),
    ("history/0", "row"), ("history/0/epoch", 0), ("history/0/epoch", "1"),
    ("history/0/train_loss", {"a": {"b": 1}}), ("settings", []), ("settings", "x"),
    ("settings/seed", {"a": {"b": {"c": {"d": 1}}}}), ("seed", "0"), ("seed", -3), ("seed", 0.5),
    ("optimizer", []), ("optimizer", "Adam"), ("optimizer/type", 3), ("optimizer/steps", -1),
    ("optimizer/steps", "10"), ("optimizer/steps", 1.0), ("optimizer/lr", 0), ("optimizer/lr", -0.1),
    ("optimizer/lr", float("nan")), ("optimizer/lr", float("inf")), ("optimizer/lr", "0.1"),
    ("config", []), ("config", None), ("config/layers", {}), ("config/layers", []), ("config/layers/0", "Affine"),
    ("config/layers/0/type", None), ("config/loss", "SoftmaxCrossEntropy"), ("config/loss/type", 7),
    ("epoch", DELETE), ("history", DELETE), ("settings", DELETE), ("seed", DELETE), ("optimizer", DELETE),
    ("config", DELETE), ("optimizer/type", DELETE), ("optimizer/steps", DELETE), ("optimizer/lr", DELETE),
    ("config/layers", DELETE), ("config/loss", DELETE), ("config/layers/0/type", DELETE), ("kind", DELETE),
    ("kind", "model"), ("kind", 1),
]


@pytest.mark.parametrize(("field", "value"), CHECKPOINT_HEADERS,
                         ids=[f"{f}={'missing' if v is DELETE else json.dumps(v)[:20]}" for f, v in CHECKPOINT_HEADERS])
def test_malformed_checkpoint_header_is_a_format_error(tmp_path, field, value):
    arrays, header = parts(checkpoint_file(tmp_path), "checkpoint")
    header = copy.deepcopy(header)
    if value is DELETE:
        *parents, last = field.split("/")
        node = header
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[int(last) if isinstance(node, list) else last]
    else:
        _set(header, field, value)
    message = expect_format_error(craft(tmp_path / "bad.npz", header, arrays), "checkpoint")
    if field != "kind":
        assert field.split("/")[-1] in message or "present" in message or "architecture" in message, message


MODEL_HEADERS = [
    ("seed", "0"), ("seed", -1), ("seed", [0]), ("config", "mlp"), ("config/layers", None),
    ("config/layers/0/type", "NoSuchLayer"), ("config/layers/0/type", "Layer"), ("config/layers/0/n_in", "4"),
    ("config/layers/0/n_in", -4), ("config/layers/0/n_in", 0), ("config/layers/0/n_in", 4.5),
    ("config/layers/0/n_in", None), ("config/layers/0/bogus", 1), ("config/layers/0/init", "nope"),
    ("config/layers/1", {"type": "ReLU", "alpha": 2}), ("config/layers/1", {"type": "Dropout", "p": "x"}),
    ("config/loss/type", "NoSuchLoss"), ("config/loss", {"type": "SoftmaxCrossEntropy", "x": 1}),
    ("config/layers/0/n_in", [[[[[1]]]]]), ("config/layers/0", {"type": "Affine"}),
    ("config/layers", [{"type": "ReLU"}] * 10_001),
]


@pytest.mark.parametrize(("field", "value"), MODEL_HEADERS, ids=[f"{f}={json.dumps(v)[:20]}" for f, v in MODEL_HEADERS])
def test_malformed_model_header_is_a_format_error(tmp_path, field, value):
    arrays, header = parts(model_file(tmp_path), "model")
    expect_format_error(craft(tmp_path / "bad.npz", _set(copy.deepcopy(header), field, value), arrays), "model")


@pytest.mark.parametrize("kind", ["model", "checkpoint"])
@pytest.mark.parametrize(
    "text",
    ["", "not json", "{", '{"kind": ', "[1, 2, 3]", '"a string"', "42", "null", "[" * 100_000 + "]" * 100_000,
     '{"kind": "checkpoint", "x": ' + "[" * 50_000 + "]" * 50_000 + "}", "1" * 5000, "{\"kind\": NaN}"],
    ids=["empty", "garbage", "open-brace", "cut", "list", "string", "number", "null", "deep-100k", "deep-in-object",
         "huge-int", "nan-kind"],
)
def test_header_that_is_not_a_json_object_names_the_file(tmp_path, kind, text):
    path = model_file(tmp_path) if kind == "model" else checkpoint_file(tmp_path)
    arrays, _ = parts(path, kind)
    expect_format_error(craft(tmp_path / "bad.npz", {}, arrays, header_array=np.asarray(text)), kind)


@pytest.mark.parametrize("kind", ["model", "checkpoint"])
@pytest.mark.parametrize(
    "header_array",
    [np.arange(3), np.asarray(["{}", "{}"]), np.asarray(b"{}"), np.asarray([["{}"]]), np.asarray(1.5),
     np.array({"kind": "model"}, dtype=object)],
    ids=["ints", "two-strings", "bytes", "2d", "float", "pickled-dict"],
)
def test_header_of_the_wrong_type_is_a_format_error(tmp_path, kind, header_array):
    path = model_file(tmp_path) if kind == "model" else checkpoint_file(tmp_path)
    arrays, _ = parts(path, kind)
    expect_format_error(craft(tmp_path / "bad.npz", {}, arrays, header_array=header_array), kind)


def test_oversized_header_is_refused_before_it_is_read(tmp_path, monkeypatch):
    arrays, header = parts(model_file(tmp_path), "model")
    header["padding"] = "x" * 4000
    path = craft(tmp_path / "big.npz", header, arrays)
    monkeypatch.setattr(xpnn.io.serialization, "MAX_HEADER_BYTES", 1000)
    assert "header must be one string of at most 1000 bytes" in expect_format_error(path, "model")


# ---------------------------------------------------------------------- odd arrays
@pytest.mark.parametrize("kind", ["model", "checkpoint"])
@pytest.mark.parametrize(
    "dtype", ["complex64", "int32", "uint8", "bool", "object", "U3", "S3", "datetime64[s]", "V4",
              [("a", "f4"), ("b", "f4")]],
    ids=str,
)
def test_arrays_of_odd_dtypes_are_refused(tmp_path, kind, dtype):
    path = model_file(tmp_path) if kind == "model" else checkpoint_file(tmp_path)
    arrays, header = parts(path, kind)
    name = "0.W" if kind == "model" else "model.0.W"
    if dtype == "object":
        arrays[name] = np.empty(arrays[name].shape, dtype=object)
        arrays[name][...] = 1.0
    else:
        arrays[name] = np.zeros(arrays[name].shape, dtype=dtype)
    assert "dtype" in expect_format_error(craft(tmp_path / "odd.npz", header, arrays), kind)


@pytest.mark.parametrize("dtype", [">f4", "<f8", "float16"])
def test_other_float_layouts_still_load(tmp_path, dtype):
    arrays, header = parts(model_file(tmp_path), "model")
    arrays = {k: v.astype(dtype) for k, v in arrays.items()}
    model = xpnn.load(craft(tmp_path / "ok.npz", header, arrays))
    np.testing.assert_allclose(model.backend.to_numpy(model.state_dict()["0.W"]), arrays["0.W"].astype(np.float32))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update({"9.W": np.zeros((2, 2), np.float32)}), "unexpected ['9.W']"),
        (lambda a: a.update({"0.W_extra": np.zeros(1, np.float32)}), "unexpected"),
        (lambda a: a.pop("0.b"), "missing ['0.b']"),
        (lambda a: a.update({"0.W": np.zeros((4, 4), np.float32)}),
         "'0.W' has shape (4, 4), its layer Affine needs (4, 3)"),
        (lambda a: a.update({"0.b": np.zeros((), np.float32)}), "'0.b' has shape ()"),
        (lambda a: a.update({"2.W": np.zeros((3, 2, 1), np.float32)}), "'2.W' has shape (3, 2, 1)"),
    ],
    ids=["extra-layer-key", "extra-key", "missing-key", "wrong-shape", "scalar-bias", "3d-weight"],
)
def test_model_arrays_that_do_not_match_the_config(tmp_path, change, message):
    arrays, header = parts(model_file(tmp_path), "model")
    change(arrays)
    assert message in expect_format_error(craft(tmp_path / "bad.npz", header, arrays), "model")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update({"optim.m.0.W": np.zeros((2, 2), np.float32)}), "'optim.m.0.W' has shape (2, 2)"),
        (lambda a: a.update({"optim.m.9.W": np.zeros((2, 2), np.float32)}), "unexpected array 'optim.m.9.W'"),
        (lambda a: a.update({"optim.steps": np.zeros((), np.float32)}), "unexpected array 'optim.steps'"),
        (lambda a: a.update({"extra": np.zeros(3, np.float32)}), "unexpected array 'extra'"),
        (lambda a: a.update({"model.0.W": np.zeros((4, 2), np.float32)}), "'model.0.W' has shape (4, 2)"),
        (lambda a: a.pop("model.2.b"), "lacks the model arrays ['model.2.b']"),
        (lambda a: a.update({"optim.m.0.W": np.zeros((), np.float32)}), "has shape ()"),
    ],
    ids=["moment-shape", "moment-of-unknown-param", "scalar-state", "extra", "model-shape", "missing", "scalar-moment"],
)
def test_checkpoint_arrays_that_do_not_match_the_model(tmp_path, change, message):
    arrays, header = parts(checkpoint_file(tmp_path), "checkpoint")
    change(arrays)
    assert message in expect_format_error(craft(tmp_path / "bad.npz", header, arrays), "checkpoint")


def test_a_failed_optimizer_restore_leaves_the_model_as_it_was(tmp_path, monkeypatch):
    path = checkpoint_file(tmp_path)
    model, optimizer = fresh()
    before = {k: model.backend.to_numpy(v).copy() for k, v in model.state_dict().items()}

    def refuse(state):
        raise KeyError("m.0.W")

    monkeypatch.setattr(optimizer, "load_state_dict", refuse)
    with pytest.raises(FormatError, match="optimizer state does not fit this Adam"):
        load_checkpoint(path, model, optimizer)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(model.backend.to_numpy(value), before[name])


# ---------------------------------------------------------------------- sizes claimed against sizes held
def _peak(function):
    tracemalloc.start()
    try:
        function()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_small_file_claiming_a_huge_layer_fails_before_allocating(tmp_path):
    arrays, header = parts(model_file(tmp_path), "model")
    header["config"]["layers"][0].update(n_in=16000, n_out=16000)
    path = craft(tmp_path / "huge.npz", header, arrays)
    assert path.stat().st_size < 4000
    peak = _peak(lambda: expect_format_error(path, "model"))
    assert peak < 20 << 20, f"allocated {peak} bytes"


def _patch_member_size(path: Path, member: str, new_size: int) -> None:
    """Make the zip's local and central headers of ``member`` claim ``new_size`` uncompressed bytes."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (start := data.find(signature, start)) != -1:
            name_at = start + (30 if signature == b"PK\x03\x04" else 46)
            if data[name_at:name_at + len(name)] == name:
                data[start + offset:start + offset + 4] = struct.pack("<I", new_size)
            start += 4
    path.write_bytes(bytes(data))


def _npy_claiming(shape) -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + b"\0" * 48


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"])
def test_members_claiming_more_than_the_file_holds(tmp_path, method):
    arrays, header = parts(model_file(tmp_path), "model")
    header["config"]["layers"][0].update(n_in=16000, n_out=16000)
    path = tmp_path / "claims.npz"
    with zipfile.ZipFile(path, "w", method) as archive:
        archive.writestr("__xpnn__.npy", _npy_header_member(json.dumps(header)))
        archive.writestr("0.W.npy", _npy_claiming((16000, 16000)))
        for name in ("0.b", "2.W", "2.b"):
            archive.writestr(f"{name}.npy", _npy_bytes(arrays[name]))
    _patch_member_size(path, "0.W.npy", 16000 * 16000 * 4 + 128)
    peak = _peak(lambda: expect_format_error(path, "model"))
    assert peak < 20 << 20, f"allocated {peak} bytes"


def _npy_bytes(array) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _npy_header_member(text: str) -> bytes:
    return _npy_bytes(np.asarray(text))


def test_npy_header_claiming_a_huge_shape_in_a_small_member(tmp_path):
    arrays, header = parts(model_file(tmp_path), "model")
    path = tmp_path / "claims.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("__xpnn__.npy", _npy_header_member(json.dumps(header)))
        archive.writestr("0.W.npy", _npy_claiming((4, 3000000)))
        for name in ("0.b", "2.W", "2.b"):
            archive.writestr(f"{name}.npy", _npy_bytes(arrays[name]))
    message = expect_format_error(path, "model")
    assert "0.W" in message


def test_an_extra_huge_member_is_refused_unread(tmp_path):
    path = checkpoint_file(tmp_path)
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as archive, \
            archive.open("extra.npy", "w", force_zip64=True) as member:
        member.write(_npy_claiming((1 << 24,))[:-48])
        block = b"\0" * (1 << 20)
        for _ in range(64):  # 64 MiB of zeros, as the header declares, deflated to about 64 KiB
            member.write(block)
    assert path.stat().st_size < 1 << 20
    messages = []
    peak = _peak(lambda: messages.append(expect_format_error(path, "checkpoint")))
    assert peak < 20 << 20, f"allocated {peak} bytes"
    assert "unexpected array 'extra'" in messages[0]


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA], ids=["bzip2", "lzma"])
def test_other_compression_methods_are_refused(tmp_path, method):
    arrays, header = parts(model_file(tmp_path), "model")
    path = tmp_path / "other.npz"
    with zipfile.ZipFile(path, "w", method) as archive:
        archive.writestr("__xpnn__.npy", _npy_header_member(json.dumps(header)))
        for name, value in arrays.items():
            archive.writestr(f"{name}.npy", _npy_bytes(value))
    assert "compression method" in expect_format_error(path, "model")


def test_duplicate_and_foreign_members_are_refused(tmp_path):
    arrays, header = parts(model_file(tmp_path), "model")
    path = tmp_path / "dup.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("__xpnn__.npy", _npy_header_member(json.dumps(header)))
        for name, value in arrays.items():
            archive.writestr(f"{name}.npy", _npy_bytes(value))
        with pytest.warns(UserWarning, match="Duplicate name"):
            archive.writestr("0.W.npy", _npy_bytes(arrays["0.W"]))
    assert "duplicate members" in expect_format_error(path, "model")
    with zipfile.ZipFile(path := tmp_path / "foreign.npz", "w") as archive:
        archive.writestr("__xpnn__.npy", _npy_header_member(json.dumps(header)))
        archive.writestr("readme.txt", b"hello")
    assert "unexpected member 'readme.txt'" in expect_format_error(path, "model")


def test_gzip_idx_that_inflates_past_its_declared_size_is_not_read_whole(tmp_path):
    path = tmp_path / "bomb-idx3-ubyte.gz"
    with gzip.open(path, "wb") as file:
        file.write(idx_bytes(np.zeros((10, 4, 4)))[:16])
        file.write(bytes(10 * 16))
        block = bytes(1 << 20)
        for _ in range(256):  # 256 MiB more than declared
            file.write(block)
    assert path.stat().st_size < 1 << 20
    messages = []
    peak = _peak(lambda: messages.append(_raises_data_error(path)))
    assert peak < 20 << 20, f"allocated {peak} bytes"
    assert "inflates past the 160 bytes its header declares (10, 4, 4)" in messages[0]


def _raises_data_error(path):
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(info.value).startswith(str(path))
    return str(info.value)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("shape", [(10**9, 28, 28), (2**32 - 1, 2**32 - 1, 2**32 - 1), (60000, 28, 28)])
def test_idx_header_claiming_more_than_the_file_can_hold(tmp_path, gz, shape):
    raw = bytes([0, 0, 8, 3]) + struct.pack(">3I", *shape) + bytes(100)
    path = tmp_path / "claims"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    peak = _peak(lambda: _raises_data_error(path))
    assert peak < 20 << 20, f"allocated {peak} bytes"


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x00", b"\x00\x00\x08", b"\x00\x00\x08\x03\x00\x00", b"\x00\x00\x07\x01" + bytes(8),
     b"\x00\x00\x08\xff" + bytes(16), b"\x1f\x8b", b"\x1f\x8b\x08\x00garbage", b"PK\x03\x04"],
    ids=["empty", "one-byte", "three-bytes", "cut-dims", "bad-type", "255-dims", "gzip-magic-only", "gzip-garbage",
         "zip"],
)
def test_broken_idx_files_are_data_errors(tmp_path, raw):
    path = tmp_path / "broken"
    path.write_bytes(raw)
    _raises_data_error(path)


def test_idx_with_trailing_bytes_is_refused(tmp_path):
    path = tmp_path / "long"
    path.write_bytes(idx_bytes(np.zeros((2, 2, 2))) + b"\x00")
    assert "holds more than the 8 bytes" in _raises_data_error(path)


# ---------------------------------------------------------------------- not files
@pytest.mark.parametrize("kind", ["model", "checkpoint"])
def test_paths_that_are_not_regular_files(tmp_path, kind):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    for name in ("missing.npz", "dir", "fifo"):
        result: dict = {}
        worker = threading.Thread(target=_store_error, args=(result, tmp_path / name, kind), daemon=True)
        worker.start()
        worker.join(10)
        assert not worker.is_alive(), f"loading {name} blocked"
        assert isinstance(result["error"], FileNotFoundError), result


def _store_error(result, path, kind):
    try:
        load_any(path, kind)
    except Exception as error:
        result["error"] = error


def test_idx_fifo_does_not_block(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    result = {}
    worker = threading.Thread(target=lambda: result.update(message=_raises_data_error(tmp_path / "fifo")), daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive()
    assert "not a regular file" in result["message"]


# ---------------------------------------------------------------------- corruption fuzz
@pytest.mark.parametrize("kind", ["model", "checkpoint"])
def test_truncated_files_raise_only_format_errors(tmp_path, kind):
    path = model_file(tmp_path) if kind == "model" else checkpoint_file(tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.npz"
    for size in sorted({0, 1, 4, 22, 30, 100, *range(0, len(data), max(1, len(data) // 40)), len(data) - 1}):
        cut.write_bytes(data[:size])
        expect_format_error(cut, kind)


@pytest.mark.parametrize("kind", ["model", "checkpoint"])
@pytest.mark.parametrize("seed", range(6))
def test_random_byte_flips_raise_only_format_errors(tmp_path, kind, seed):
    path = model_file(tmp_path) if kind == "model" else checkpoint_file(tmp_path)
    data = path.read_bytes()
    rng = np.random.default_rng(seed)
    flipped = tmp_path / "flipped.npz"
    for _ in range(25):
        corrupted = bytearray(data)
        for position in rng.integers(0, len(data), rng.integers(1, 4)):
            corrupted[position] ^= int(rng.integers(1, 256))
        flipped.write_bytes(bytes(corrupted))
        try:
            load_any(flipped, kind)
        except FormatError as error:
            assert str(error).startswith(str(flipped))
        # a flip inside padding or a stored weight can leave a valid file: loading it is fine


def test_idx_corruption_fuzz_raises_only_data_errors(tmp_path):
    for gz in (True, False):
        data = idx_bytes(np.arange(60).reshape(5, 3, 4))
        data = gzip.compress(data) if gz else data
        rng = np.random.default_rng(int(gz))
        path = tmp_path / "fuzz"
        for _ in range(60):
            corrupted = bytearray(data)
            for position in rng.integers(0, len(data), rng.integers(1, 4)):
                corrupted[position] ^= int(rng.integers(1, 256))
            path.write_bytes(bytes(corrupted[: rng.integers(0, len(data) + 1)] if rng.random() < 0.3 else corrupted))
            try:
                read_idx(path)
            except DataError as error:
                assert str(error).startswith(str(path))


# ---------------------------------------------------------------------- the library's other doors
@pytest.mark.parametrize(
    "config",
    [None, [], {"layers": []}, {"layers": [{"type": "Affine", "n_in": 2, "n_out": 2}]},
     {"layers": [{"type": "Affine", "n_in": 2, "n_out": "2"}], "loss": {"type": "SoftmaxCrossEntropy"}},
     {"layers": [{"n_in": 2}], "loss": {"type": "SoftmaxCrossEntropy"}}],
    ids=["none", "list", "no-layers", "no-loss", "string-size", "no-type"],
)
def test_from_config_refuses_bad_configs_with_format_error(config):
    with pytest.raises(FormatError, match="^config"):
        xpnn.Sequential.from_config(config)


def test_layer_without_param_shapes_falls_back_to_building(tmp_path):
    class Scale(xpnn.Layer):
        def __init__(self, n: int = 2):
            super().__init__()
            self.n = n

        def initialize(self, rng):
            self.params = {"s": self.backend.ones((self.n,))}
            self.grads = {"s": self.backend.zeros((self.n,))}

        def forward(self, x, *, train=False):
            return x * self.params["s"]

        def config(self):
            return {"n": self.n}

    try:
        model = xpnn.Sequential([xpnn.Affine(3, 2), Scale(2)])
        path = model.save(tmp_path / "custom.npz")
        assert xpnn.load(path).config() == model.config()
        arrays, header = parts(path, "model")
        arrays["1.s"] = np.ones(5, np.float32)
        assert "'1.s' has shape (5,), the model expects (2,)" in expect_format_error(
            craft(tmp_path / "bad.npz", header, arrays), "model")
    finally:
        xpnn.Layer.registry.pop("Scale", None)


# ---------------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), n_train=60, n_test=20)


FAST = ["--epochs", "1", "--batch-size", "30", "--hidden", "3", "--quiet"]


def cli_checkpoint(dataset, tmp_path):
    path = tmp_path / "ck.npz"
    assert cli.main(["--data-dir", str(dataset), *FAST, "--save", str(path)]) == 0
    return path


@pytest.mark.parametrize(
    ("field", "value"),
    [("epoch", "1"), ("epoch", -5), ("history", {"a": 1}), ("history/0", []), ("optimizer/steps", -2),
     ("settings", [1]), ("config", []), ("optimizer", DELETE), ("seed", "x")],
    ids=lambda v: "missing" if v is DELETE else str(v)[:15],
)
def test_resume_from_a_crafted_checkpoint_is_one_line_and_exit_1(dataset, tmp_path, capsys, field, value):
    arrays, header = parts(cli_checkpoint(dataset, tmp_path), "checkpoint")
    if value is DELETE:
        del header[field]
    else:
        _set(header, field, value)
    bad = craft(tmp_path / "bad.npz", header, arrays)
    capsys.readouterr()
    assert cli.main(["--data-dir", str(dataset), *FAST, "--epochs", "2", "--resume", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"python -m xpnn.train: error: {bad}:"), err


@pytest.mark.parametrize("content", [b"", b"garbage", b"PK\x05\x06" + bytes(18), None], ids=["empty", "garbage",
                                                                                             "empty-zip", "deep-json"])
def test_resume_through_a_subprocess_prints_no_traceback(dataset, tmp_path, content):
    bad = tmp_path / "bad.npz"
    if content is None:
        arrays, _ = parts(cli_checkpoint(dataset, tmp_path), "checkpoint")
        craft(bad, {}, arrays, header_array=np.asarray("[" * 200_000))
    else:
        bad.write_bytes(content)
    result = subprocess.run([sys.executable, "-m", "xpnn.train", "--data-dir", str(dataset), *FAST, "--resume",
                             str(bad)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": pythonpath()},
                            timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith(f"python -m xpnn.train: error: {bad}:")
