"""The `csv` and `npz` sources (nnrun/data/tabular.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnrun.data import load_data
from nnrun.errors import DataError


def test_csv_classification_regression_and_text_labels(tmp_path, cfg):
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\n1,2,0\n3,4.5,1\n\n5,6,2\n7,8,1\n")
    bundle = load_data(cfg(source="csv", path=str(path), val_fraction=0.0), seed=0)
    assert bundle.task == "classification" and bundle.num_classes == 3 and bundle.input_shape == (2,)
    assert torch.equal(bundle.train.x[1], torch.tensor([3.0, 4.5]))
    path.write_text("a,b,target\n1,2,0.5\n3,4,1.5\n5,6,2\n")
    bundle = load_data(cfg(source="csv", path=str(path), label_column="target", val_fraction=0.0), seed=0)
    assert bundle.task == "regression" and bundle.num_classes is None and bundle.num_outputs == 1
    assert bundle.train.y.dtype == torch.float32
    path.write_text("a,kind\n1,dog\n2,cat\n3,dog\n")
    bundle = load_data(cfg(source="csv", path=str(path), label_column="kind", val_fraction=0.0), seed=0)
    assert bundle.class_names == ["cat", "dog"] and bundle.train.y.tolist() == [1, 0, 1]
    with pytest.raises(DataError, match="no test split") as err:
        load_data(cfg(source="csv", path=str(path), label_column="kind"), seed=0, with_test=True).require_test()
    assert err.value.hint


def test_csv_missing_label_column_did_you_mean(tmp_path, cfg):
    path = tmp_path / "t.csv"
    path.write_text("x1,x2,labels\n1,2,0\n")
    with pytest.raises(DataError, match="did you mean `labels`") as err:
        load_data(cfg(source="csv", path=str(path)), seed=0)
    assert "x1, x2, labels" in str(err.value)


def test_csv_non_numeric_cell_names_line_and_column(tmp_path, cfg):
    path = tmp_path / "t.csv"
    path.write_text("x1,x2,label\n1,2,0\n3,oops,1\n")
    with pytest.raises(DataError, match="line 3, column `x2`: 'oops' is not a number") as err:
        load_data(cfg(source="csv", path=str(path)), seed=0)
    assert err.value.where == str(path)


def test_npz_test_split_and_missing_key(tmp_path, cfg, write_npz):
    path = write_npz(tmp_path / "d.npz", x=np.zeros((8, 3)), y=np.arange(8) % 2,
                     x_test=np.ones((4, 3)), y_test=np.array([0, 1, 1, 0]))
    bundle = load_data(cfg(source="npz", path=str(path)), seed=0, with_test=True)
    assert bundle.require_test().num_examples == 4 and bundle.num_classes == 2
    with pytest.raises(DataError, match="not requested"):
        load_data(cfg(source="npz", path=str(path)), seed=0).require_test()
    bad = write_npz(tmp_path / "bad.npz", inputs=np.zeros((3, 2)), y=np.zeros(3))
    with pytest.raises(DataError, match="missing array.* x; the file holds: inputs, y"):
        load_data(cfg(source="npz", path=str(bad)), seed=0)


def test_npz_corrupt_file(tmp_path, cfg):
    path = tmp_path / "c.npz"
    path.write_bytes(b"PK\x03\x04 this is not really a zip file")
    with pytest.raises(DataError, match="cannot read the npz"):
        load_data(cfg(source="npz", path=str(path)), seed=0)


def test_npz_source_given_a_plain_npy_or_object_arrays(tmp_path, cfg):
    np.save(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(DataError, match="not an npz archive"):
        load_data(cfg(source="npz", path=str(tmp_path / "a.npy")), seed=0)
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    with pytest.raises(DataError, match="cannot read the npz"):
        load_data(cfg(source="npz", path=str(tmp_path / "o.npz")), seed=0)
