"""Splits and the bundle (nnrun/data/splits.py): the shared NaN/Inf and length checks, the plain
DataBundle, and the unknown-source message (nnrun/data/sources.py)."""

from __future__ import annotations

import numpy as np
import pytest

from nnrun.data import DataBundle, load_data
from nnrun.errors import DataError


def test_nan_inputs_and_length_mismatch(tmp_path, cfg, write_npz):
    x = np.zeros((10, 3), dtype=np.float32)
    x[4, 1], x[6, 0] = np.nan, np.inf
    path = write_npz(tmp_path / "d.npz", x=x, y=np.arange(10) % 2)
    with pytest.raises(DataError, match="2 NaN/Inf value.*example 4") as err:
        load_data(cfg(source="npz", path=str(path)), seed=0)
    assert err.value.where == str(path)
    path = write_npz(tmp_path / "e.npz", x=np.zeros((10, 3)), y=np.zeros(9, dtype=np.int64))
    with pytest.raises(DataError, match="10 inputs but 9 labels"):
        load_data(cfg(source="npz", path=str(path)), seed=0)


def test_bundle_is_plain_dataclass(cfg):
    bundle = load_data(cfg(source="digits", val_fraction=0.0), seed=0)
    assert isinstance(bundle, DataBundle) and bundle.val is None
    with pytest.raises(DataError, match="unknown data source `mnst`.*did you mean `mnist`"):
        load_data(cfg(source="mnst"), seed=0)
