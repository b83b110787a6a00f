"""IDX parsing, dataset discovery and the downloader (against a local HTTP server on 127.0.0.1)."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.idx import idx_bytes, make_dataset, write_idx
from xpnn import data
from xpnn.io.data import DataError, download, load_dataset, read_idx


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_read_idx_round_trip(tmp_path, gz):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "images", array, gz=gz)
    np.testing.assert_array_equal(read_idx(path), array)


def test_read_idx_rejects_bad_magic(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match=r"bad: not an IDX file \(bad magic number 12340801\)"):
        read_idx(path)


def test_read_idx_rejects_truncated_file(tmp_path):
    path = tmp_path / "short.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((10, 4, 4)))[:-5]))
    with pytest.raises(DataError, match=r"short.gz: truncated or corrupted: header says \(10, 4, 4\)"):
        read_idx(path)


def test_read_idx_rejects_broken_gzip(tmp_path):
    path = tmp_path / "broken.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((10, 4, 4))))[:-8])
    with pytest.raises(DataError, match="broken.gz: cannot read"):
        read_idx(path)


def test_load_dataset_scales_pixels_and_flattens(tmp_path):
    make_dataset(tmp_path, n_train=50, n_test=20, side=6, gz=False)
    ds = load_dataset("mine", tmp_path)
    assert ds.x_train.shape == (50, 36) and ds.x_train.dtype == np.float32
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0
    assert ds.y_test.shape == (20,) and ds.y_test.dtype == np.int64
    raw = read_idx(tmp_path / "train-images-idx3-ubyte")
    np.testing.assert_allclose(ds.x_train[0], raw[0].ravel() / 255, rtol=1e-6)


def test_counts_that_disagree_are_reported(tmp_path):
    make_dataset(tmp_path, n_train=50, n_test=20)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(49))
    with pytest.raises(DataError, match="holds 50 images but .*train-labels-idx1-ubyte.gz holds 49 labels"):
        load_dataset("mine", tmp_path)


def test_validation_split(tmp_path):
    make_dataset(tmp_path, n_train=50, n_test=20)
    ds = load_dataset("mine", tmp_path, val=10)
    assert ds.x_train.shape[0] == 40 and ds.x_val.shape[0] == 10
    with pytest.raises(DataError, match="--val 50: must be between 1 and 49"):
        load_dataset("mine", tmp_path, val=50)


def test_missing_files_and_directory_are_named(tmp_path):
    with pytest.raises(DataError, match="nowhere: data directory does not exist"):
        load_dataset("mnist", tmp_path / "nowhere")
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(DataError, match="missing MNIST-layout files .*train-labels-idx1-ubyte"):
        load_dataset("mnist", tmp_path)


# ---------------------------------------------------------------------- downloader
class Mirror:
    """A local HTTP server on 127.0.0.1 serving a folder; records the paths it was asked for."""

    def __init__(self, root: Path):
        requests = self.requests = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):
                requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_dataset(tmp_path, monkeypatch):
    """A dataset named 'tiny' with known checksums, served by a good and a corrupt mirror."""
    good = make_dataset(tmp_path / "good", n_train=40, n_test=10)
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in good.iterdir()}
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in md5:
        (bad / name).write_bytes(b"corrupted")
    mirrors = {"good": Mirror(good), "bad": Mirror(bad)}
    monkeypatch.setitem(data.DATASETS, "tiny", {"mirrors": [mirrors["bad"].url, mirrors["good"].url], "md5": md5})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("XPNN_DATA", raising=False)
    monkeypatch.setattr(data, "SYSTEM_DIRS", ())
    yield mirrors
    for mirror in mirrors.values():
        mirror.close()


def test_download_falls_back_to_second_mirror_on_checksum_mismatch(fake_dataset, tmp_path):
    ds = load_dataset("tiny", quiet=True)
    assert ds.x_train.shape == (40, 64)
    assert ds.directory == tmp_path / "cache" / "xpnn" / "tiny"
    assert len(fake_dataset["bad"].requests) == 4 and len(fake_dataset["good"].requests) == 4
    assert sorted(p.name for p in ds.directory.iterdir()) == sorted(data.DATASETS["tiny"]["md5"])  # no leftovers


def test_cache_is_reused_without_downloading(fake_dataset):
    load_dataset("tiny", quiet=True)
    before = len(fake_dataset["good"].requests)
    load_dataset("tiny", quiet=True)
    assert len(fake_dataset["good"].requests) == before


def test_corrupted_cache_file_is_reported_not_used(fake_dataset, tmp_path):
    ds = load_dataset("tiny", quiet=True)
    victim = ds.directory / "t10k-labels-idx1-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:-3])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: checksum mismatch"):
        load_dataset("tiny", quiet=True)


def test_all_mirrors_failing_says_where_it_looked_and_what_it_tried(fake_dataset, monkeypatch):
    monkeypatch.setitem(data.DATASETS["tiny"], "mirrors", [fake_dataset["bad"].url, "http://127.0.0.1:9/"])
    with pytest.raises(DataError) as info:
        load_dataset("tiny", quiet=True)
    message = str(info.value)
    assert "tiny not found in" in message and "cache/xpnn/tiny" in message
    assert "checksum mismatch" in message and "127.0.0.1:9" in message and "--data-dir" in message


def test_interrupted_download_leaves_no_complete_looking_file(fake_dataset, tmp_path, monkeypatch):
    def fail_midway(url, target, md5, quiet, timeout):
        def write(file):
            file.write(b"partial")
            raise ConnectionResetError("connection dropped")

        data.write_file(target, write)

    monkeypatch.setattr(data, "_fetch", fail_midway)
    target = tmp_path / "dl"
    with pytest.raises(DataError, match="connection dropped"):
        download("tiny", target, quiet=True)
    assert list(target.iterdir()) == []


@pytest.mark.slow
def test_real_fashion_mnist_when_installed():
    root = Path("/usr/share/datasets/fashion-mnist")
    if data.find_files(root) is None:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    ds = load_dataset("fashion-mnist", root)
    assert ds.x_train.shape == (60000, 784) and ds.x_test.shape == (10000, 784)
    assert ds.n_classes == 10 and np.bincount(ds.y_test).tolist() == [1000] * 10
