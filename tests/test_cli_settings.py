"""The one settings object of python -m xpnn.train: a field for every flag, and the checkpoint settings that
files written before must still match key for key."""

from __future__ import annotations

import dataclasses
import json

import pytest

from xpnn.cli.settings import EXACT_SETTINGS, TrainSettings, build_parser

# The order of the settings in every checkpoint header written so far: their JSON bytes depend on it.
HEADER_KEYS = ["epochs", "workers", "model", "dataset", "batch_size", "full_batch", "lr", "optimizer", "momentum",
               "weight_decay", "schedule", "seed", "val", "hidden", "activation", "init", "dropout", "target",
               "test_size", "standardize", "data", "data_file", "device", "processes"]


def test_every_flag_has_a_field_with_the_parser_default():
    parser = build_parser()
    dests = {action.dest: action.default for action in parser._actions if action.dest != "help"}
    fields = {field.name: field for field in dataclasses.fields(TrainSettings)}
    assert set(dests) == set(fields) - {"workers_from_checkpoint"}
    assert dataclasses.asdict(TrainSettings()) == {**dests, "workers_from_checkpoint": False}


def test_from_args_keeps_what_the_flags_say():
    args = build_parser().parse_args(["--lr", "0.05", "--hidden", "32,16", "--full-batch", "--data", "x.csv"])
    settings = TrainSettings.from_args(args)
    assert (settings.lr, settings.hidden, settings.full_batch, settings.data_file) == (0.05, [32, 16], True, "x.csv")
    assert settings.epochs is None and not settings.workers_from_checkpoint  # filled later by apply_defaults


def test_checkpoint_settings_keep_their_keys_and_order(tmp_path):
    settings = TrainSettings(epochs=3, lr=0.1, optimizer="sgd", schedule="constant", dropout=0.0, init="he",
                             data_file=str(tmp_path / "x.csv"), workers=2)
    header = settings.checkpoint_settings(data="abc", device="numpy", processes=1)
    assert list(header) == HEADER_KEYS
    assert list(header)[2:-4] == list(EXACT_SETTINGS)
    assert header["data_file"] == str(tmp_path / "x.csv") and header["workers"] == 2
    assert json.dumps(header).startswith('{"epochs": 3, "workers": 2, "model": "mlp", "dataset": "mnist"')


def test_a_namespace_with_a_flag_the_settings_lack_is_refused():
    args = build_parser().parse_args([])
    args.unknown = 1
    with pytest.raises(TypeError, match="unknown"):
        TrainSettings.from_args(args)
