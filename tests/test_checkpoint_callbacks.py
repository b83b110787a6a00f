"""ModelCheckpoint and JsonLinesLogger through xpnn.fit: the files a run leaves after each epoch, when it is
interrupted, when it diverges, and the run they resume."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

import xpnn
from xpnn.io.files import OutputError
from xpnn.optim import get_schedule
from xpnn.training import load_checkpoint

EPOCHS = 4


def blobs(n=240, classes=3, features=6, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = rng.standard_normal((n, features)) + 3.0 * np.eye(classes, features)[labels]
    return x.astype(np.float32), labels


def network(seed=0):
    model = xpnn.mlp([6, 16, 3], dropout=0.3, seed=seed)  # dropout: its masks must continue too
    return model, xpnn.optim.Adam(model, lr=0.01)


def timeless(rows):
    return [{k: v for k, v in row.items() if k not in ("seconds", "samples_per_second")} for row in rows]


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


def test_every_epoch_leaves_a_checkpoint_and_the_metrics_of_the_run(tmp_path):
    x, y = blobs()
    model, optimizer = network()
    checkpoint = xpnn.ModelCheckpoint(tmp_path / "run.npz", settings={"lr": 0.01, "hidden": [16]})
    logger = xpnn.JsonLinesLogger(tmp_path / "metrics.jsonl")
    seen = []

    def look(trainer, row):  # after both callbacks of this epoch: the files hold this epoch
        header = load_checkpoint(tmp_path / "run.npz", *network(seed=9))
        seen.append((header["epoch"], len(jsonl(tmp_path / "metrics.jsonl"))))

    history = xpnn.fit(model, optimizer, x, y, epochs=3, batch_size=32, verbose=False, validation_split=0.25,
                       callbacks=[checkpoint, logger, xpnn.callbacks.LambdaCallback(look)])
    assert seen == [(1, 1), (2, 2), (3, 3)]
    assert checkpoint.saved_epoch == 3 and logger.written
    fresh, fresh_optimizer = network(seed=9)
    header = load_checkpoint(tmp_path / "run.npz", fresh, fresh_optimizer)
    assert header["epoch"] == 3 and header["settings"] == {"lr": 0.01, "hidden": [16]}
    assert header["history"] == history.rows
    assert_same_state(fresh.state_dict(), model.state_dict())
    assert jsonl(tmp_path / "metrics.jsonl") == history.rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "run.npz"]  # no .part left behind


def test_a_run_interrupted_in_epoch_3_resumes_from_epoch_2_to_the_uninterrupted_run(tmp_path):
    x, y = blobs()
    val = blobs(60, seed=1)
    cosine = get_schedule("cosine", EPOCHS)
    straight_model, optimizer = network()
    straight = xpnn.fit(straight_model, optimizer, x, y, epochs=EPOCHS, batch_size=32, schedule=cosine,
                        validation_data=val, verbose=False)

    def interrupted_in_epoch_3(epoch):  # as a Ctrl-C within the third epoch
        if epoch == 2:
            raise KeyboardInterrupt
        return cosine(epoch)

    path, metrics = tmp_path / "run.npz", tmp_path / "metrics.jsonl"
    model, optimizer = network()
    with pytest.raises(KeyboardInterrupt):
        xpnn.fit(model, optimizer, x, y, epochs=EPOCHS, batch_size=32, schedule=interrupted_in_epoch_3,
                 validation_data=val, verbose=False,
                 callbacks=[xpnn.ModelCheckpoint(path), xpnn.JsonLinesLogger(metrics)])
    assert [row["epoch"] for row in jsonl(metrics)] == [1, 2]

    # A new process: other initial weights, all replaced by the checkpoint's. The Trainer is made first: it takes
    # the optimizer's lr as the base of the schedule, and the checkpoint holds the lr its schedule had reached.
    model, optimizer = network(seed=7)
    trainer = xpnn.Trainer(model, optimizer, batch_size=32, schedule=cosine, seed=0)
    header = load_checkpoint(path, model, optimizer)
    assert header["epoch"] == 2
    trainer.history.rows[:] = header["history"]
    checkpoint = xpnn.ModelCheckpoint(path, overwrite=True)
    logger = xpnn.JsonLinesLogger(metrics, overwrite=True)
    resumed = trainer.fit(x, y, epochs=EPOCHS, initial_epoch=header["epoch"], validation_data=val, verbose=False,
                          callbacks=[checkpoint, logger])
    assert timeless(resumed.rows) == timeless(straight.rows)
    assert timeless(jsonl(metrics)) == timeless(straight.rows)
    assert_same_state(model.state_dict(), straight_model.state_dict())
    assert checkpoint.saved_epoch == EPOCHS and load_checkpoint(path, *network())["epoch"] == EPOCHS


def test_a_diverged_run_keeps_the_checkpoint_of_its_last_good_epoch(tmp_path):
    x, y = blobs()
    model = xpnn.mlp([6, 16, 3], seed=0)
    optimizer = xpnn.optim.SGD(model, lr=0.1)
    path, metrics = tmp_path / "run.npz", tmp_path / "metrics.jsonl"
    checkpoint, logger = xpnn.ModelCheckpoint(path), xpnn.JsonLinesLogger(metrics)
    files = {}
    keep = xpnn.callbacks.LambdaCallback(lambda trainer, row: files.update(npz=path.read_bytes(),
                                                                          jsonl=metrics.read_bytes()))
    with pytest.raises(xpnn.DivergenceError):
        xpnn.fit(model, optimizer, x, y, epochs=3, batch_size=32, verbose=False,
                 schedule=lambda epoch: 1.0 if epoch == 0 else 1e12, callbacks=[checkpoint, logger, keep])
    assert checkpoint.saved_epoch == 1
    assert path.read_bytes() == files["npz"] and metrics.read_bytes() == files["jsonl"]  # nothing written after
    fresh = xpnn.mlp([6, 16, 3], seed=5)
    fresh_optimizer = xpnn.optim.SGD(fresh, lr=0.1)
    assert load_checkpoint(path, fresh, fresh_optimizer)["epoch"] == 1
    assert_same_state(fresh.state_dict(), model.state_dict())  # fit put the model back to epoch 1 too


def test_only_rank_0_writes_but_every_rank_knows_the_saved_epoch(tmp_path):
    model, optimizer = network()
    rank_1 = types.SimpleNamespace(model=model, optimizer=optimizer, history=xpnn.History([{"epoch": 1}]),
                                   comm=types.SimpleNamespace(is_root=False))
    checkpoint, logger = xpnn.ModelCheckpoint(tmp_path / "run.npz"), xpnn.JsonLinesLogger(tmp_path / "m.jsonl")
    checkpoint.on_epoch_end(rank_1, {"epoch": 1})
    logger.on_epoch_end(rank_1, {"epoch": 1})
    assert list(tmp_path.iterdir()) == []
    assert checkpoint.saved_epoch == 1 and logger.written


@pytest.mark.parametrize("make", [xpnn.ModelCheckpoint, xpnn.JsonLinesLogger])
def test_a_path_that_cannot_be_written_is_refused_before_training(tmp_path, make):
    with pytest.raises(OutputError, match="is a directory|folder"):
        make(tmp_path)
    with pytest.raises(OutputError, match="ends with '/'"):
        make(str(tmp_path / "new") + "/")
    with pytest.raises(TypeError, match="must be a file path"):
        make(3)
    with pytest.raises(TypeError, match="must be a file path"):
        make(None)


def test_settings_that_a_checkpoint_cannot_hold_are_refused_when_the_callback_is_made(tmp_path):
    with pytest.raises(TypeError, match="must hold JSON values"):
        xpnn.ModelCheckpoint(tmp_path / "run.npz", settings={"backend": object()})
    with pytest.raises(TypeError, match="must be a dict"):
        xpnn.ModelCheckpoint(tmp_path / "run.npz", settings=[("lr", 0.1)])
    assert not (tmp_path / "run.npz").exists()


def test_the_callbacks_are_xpnn_callbacks_exported_at_the_top():
    assert issubclass(xpnn.ModelCheckpoint, xpnn.Callback) and issubclass(xpnn.JsonLinesLogger, xpnn.Callback)
    assert {"ModelCheckpoint", "JsonLinesLogger"} <= set(xpnn.__all__) <= set(dir(xpnn))
    assert xpnn.training.ModelCheckpoint is xpnn.callbacks.ModelCheckpoint is xpnn.ModelCheckpoint


@pytest.mark.parametrize("make", [
    lambda path: xpnn.ModelCheckpoint(path),
    lambda path: xpnn.JsonLinesLogger(path),
], ids=["ModelCheckpoint", "JsonLinesLogger"])
def test_a_file_with_something_in_it_is_refused_unless_overwrite(tmp_path, make):
    x, y = blobs()
    model, optimizer = network()
    path = tmp_path / "run.out"
    xpnn.fit(model, optimizer, x, y, epochs=1, batch_size=32, verbose=False, callbacks=[make(path)])
    finished = path.read_bytes()
    with pytest.raises(FileExistsError, match=r"^\w+: .*run.out already exists; pass overwrite=True"):
        make(path)
    (tmp_path / "link.out").symlink_to(path)  # a link to a finished run is that run
    with pytest.raises(FileExistsError):
        make(tmp_path / "link.out")
    assert path.read_bytes() == finished
    (tmp_path / "empty.out").touch()  # nothing to lose: an empty file, a link to nowhere yet, /dev/null
    (tmp_path / "dangling.out").symlink_to(tmp_path / "nowhere")
    for target in (tmp_path / "empty.out", tmp_path / "dangling.out", "/dev/null"):
        make(target)


def test_overwrite_replaces_and_paths_stay_absolute(tmp_path, monkeypatch):
    x, y = blobs()
    model, optimizer = network()
    monkeypatch.chdir(tmp_path)
    xpnn.fit(model, optimizer, x, y, epochs=1, batch_size=32, verbose=False,
             callbacks=[xpnn.ModelCheckpoint("run.npz"), xpnn.JsonLinesLogger("m.jsonl")])
    finished = (tmp_path / "run.npz").read_bytes()
    again, log = xpnn.ModelCheckpoint("run.npz", overwrite=True), xpnn.JsonLinesLogger("m.jsonl", overwrite=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the callbacks still write where they were pointed
    xpnn.fit(model, optimizer, x, y, epochs=2, batch_size=32, verbose=False, callbacks=[again, log])
    assert again.saved_epoch == 2 and (tmp_path / "run.npz").read_bytes() != finished
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 2
    assert not list((tmp_path / "elsewhere").iterdir())
    for make in (xpnn.ModelCheckpoint, xpnn.JsonLinesLogger):
        with pytest.raises(ValueError, match="overwrite must be True or False"):
            make(tmp_path / "new.out", overwrite="yes")
