"""Checkpoint files: atomic writes, safe loading, RNG round trip, top-k retention."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from nnrun import checkpoint
from nnrun.errors import CheckpointError, OutputError


def payload(**extra):
    """The smallest payload `checkpoint.load` accepts for prediction."""
    return {"format": checkpoint.FORMAT, "format_version": checkpoint.FORMAT_VERSION, "w": torch.arange(4.0),
            "model": {"w": torch.arange(4.0)}, "recipe": {}, "normalization": {}, "epoch": 0, "step": 0,
            "data": {"task": "classification", "num_outputs": 2, "input_shape": [4]}, **extra}


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "last.pt"
    checkpoint.save_atomic(payload(step=1), target)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        checkpoint.save_atomic(payload(bad=Boom()), target)
    assert checkpoint.load(target)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left behind


def test_unwritable_folder_is_an_output_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError):
        checkpoint.save_atomic(payload(), tmp_path / "file" / "sub" / "last.pt")


def test_truncated_checkpoint_is_reported_as_corrupt(tmp_path):
    path = tmp_path / "c.pt"
    checkpoint.save_atomic(payload(big=torch.zeros(10000)), path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        checkpoint.load(path)


def test_foreign_file_is_not_an_nnrun_checkpoint(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="not an nnrun checkpoint"):
        checkpoint.load(path)


def test_run_folder_resolves_to_last(tmp_path):
    checkpoint.save_atomic(payload(step=7), tmp_path / "checkpoints" / "last.pt")
    assert checkpoint.load(tmp_path)["step"] == 7


def test_rng_round_trip_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    checkpoint.save_atomic(payload(rng=checkpoint.capture_rng()), tmp_path / "c.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    checkpoint.restore_rng(checkpoint.load(tmp_path / "c.pt")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_top_k_keeps_the_best_by_mode_and_indexes_them(tmp_path):
    saver = checkpoint.CheckpointSaver(tmp_path, monitor="val_loss", mode="min", top_k=2)
    for epoch, value in enumerate([0.9, 0.5, 0.7, 0.3, float("nan")], start=1):
        saver.save_ranked(payload(), epoch=epoch, step=epoch * 10, value=value)
    files = sorted(p.name for p in tmp_path.glob("epoch*.pt"))
    assert files == ["epoch002-val_loss=0.5000.pt", "epoch004-val_loss=0.3000.pt"]
    index = json.loads((tmp_path / "index.json").read_text())
    assert [e["value"] for e in index["top_k"]] == [0.3, 0.5]
    again = checkpoint.CheckpointSaver(tmp_path, monitor="val_loss", mode="min", top_k=2)
    again.reconcile(upto_step=40)
    assert again.best()["file"] == "epoch004-val_loss=0.3000.pt"  # survives a resume
