"""`load_data` (nnrun/data/loading.py): the seeded validation carve-out, `limit`, path resolution,
the task and label checks every source goes through."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnrun.data import load_data
from nnrun.errors import DataError


def test_val_split_seeded_and_disjoint(tmp_path, cfg, write_npz):
    path = write_npz(tmp_path / "d.npz", x=np.arange(100, dtype=np.float32)[:, None], y=np.arange(100) % 3)
    a = load_data(cfg(source="npz", path=str(path), val_fraction=0.25), seed=1)
    b = load_data(cfg(source="npz", path=str(path), val_fraction=0.25), seed=1)
    c = load_data(cfg(source="npz", path=str(path), val_fraction=0.25), seed=2)
    assert a.val.num_examples == 25 and a.train.num_examples == 75
    assert torch.equal(a.val.x, b.val.x) and not torch.equal(a.val.x, c.val.x)
    ids = torch.cat([a.train.x, a.val.x]).flatten().sort().values
    assert torch.equal(ids, torch.arange(100, dtype=torch.float32))
    assert load_data(cfg(source="npz", path=str(path), val_fraction=0.0), seed=0).val is None
    assert load_data(cfg(source="npz", path=str(path), val_fraction=0.001), seed=0).val.num_examples == 1


def test_limit_keeps_first_examples_before_split(tmp_path, cfg, write_npz):
    path = write_npz(tmp_path / "d.npz", x=np.arange(100, dtype=np.float32)[:, None], y=np.arange(100) % 3)
    bundle = load_data(cfg(source="npz", path=str(path), limit=30, val_fraction=0.2), seed=0)
    ids = torch.cat([bundle.train.x, bundle.val.x]).flatten().sort().values
    assert torch.equal(ids, torch.arange(30, dtype=torch.float32)) and bundle.val.num_examples == 6


def test_relative_path_resolves_against_base_dir(tmp_path, monkeypatch, cfg, write_npz):
    write_npz(tmp_path / "d.npz", x=np.ones((10, 2)), y=np.arange(10) % 2)
    monkeypatch.chdir(tmp_path.parent)
    bundle = load_data(cfg(source="npz", path="d.npz"), seed=0, base_dir=tmp_path)
    assert bundle.input_shape == (2,)
    with pytest.raises(DataError, match="not found"):
        load_data(cfg(source="npz", path="d.npz"), seed=0, base_dir=tmp_path / "elsewhere")


def test_labels_out_of_range(tmp_path, cfg, write_npz):
    path = write_npz(tmp_path / "d.npz", x=np.zeros((8, 3)), y=np.arange(8) % 3,
                     x_test=np.zeros((2, 3)), y_test=np.array([0, 5]))
    with pytest.raises(DataError, match="test label 5 .* outside 0..2"):
        load_data(cfg(source="npz", path=str(path)), seed=0, with_test=True)
    neg = write_npz(tmp_path / "n.npz", x=np.zeros((8, 3)), y=np.array([0, 1, -1, 0, 1, 0, 1, 0]))
    with pytest.raises(DataError, match="label -1"):
        load_data(cfg(source="npz", path=str(neg), val_fraction=0.0), seed=0)


def test_task_override_regression_on_integer_labels(tmp_path, cfg, write_npz):
    path = write_npz(tmp_path / "d.npz", x=np.zeros((10, 2)), y=np.arange(20).reshape(10, 2))
    bundle = load_data(cfg(source="npz", path=str(path), task="regression"), seed=0)
    assert bundle.task == "regression" and bundle.num_outputs == 2 and bundle.train.y.dtype == torch.float32


def test_classification_task_on_float_labels(tmp_path, cfg, write_npz):
    path = write_npz(tmp_path / "d.npz", x=np.zeros((6, 2)), y=np.array([0.0, 1, 2, 1, 0, 2]))
    bundle = load_data(cfg(source="npz", path=str(path), task="classification", val_fraction=0.0), seed=0)
    assert bundle.train.y.dtype == torch.int64 and bundle.num_classes == 3
    path = write_npz(tmp_path / "e.npz", x=np.zeros((6, 2)), y=np.array([0.5, 1, 2, 1, 0, 2]))
    with pytest.raises(DataError, match="not integers"):
        load_data(cfg(source="npz", path=str(path), task="classification"), seed=0)
