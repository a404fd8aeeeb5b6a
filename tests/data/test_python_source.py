"""The `python` source (nnrun/data/python_source.py): a factory returning tensors or Datasets, and
its error messages."""

from __future__ import annotations

import pytest

from nnrun.data import StreamSplit, TensorSplit, load_data
from nnrun.errors import DataError


def test_python_source_tensors_and_dataset(factory_module, cfg):
    bundle = load_data(cfg(source="python", factory=f"{factory_module}:tensors"), seed=0)
    assert isinstance(bundle.train, TensorSplit) and bundle.val.num_examples == 10  # its own val
    assert bundle.train.num_examples == 40 and bundle.input_shape == (3,)
    bundle = load_data(cfg(source="python", factory=f"{factory_module}:streamed", val_fraction=0.25),
                       seed=0, with_test=True)
    assert isinstance(bundle.train, StreamSplit) and bundle.num_classes == 4 and bundle.input_shape == (2,)
    assert bundle.train.num_examples == 9 and bundle.test.num_examples == 12


def test_python_source_errors(factory_module, cfg):
    with pytest.raises(DataError, match="cannot import module `no_such_mod_xyz`"):
        load_data(cfg(source="python", factory="no_such_mod_xyz:f"), seed=0)
    with pytest.raises(DataError, match="has no callable `nope`"):
        load_data(cfg(source="python", factory=f"{factory_module}:nope"), seed=0)
    with pytest.raises(DataError, match="returned a int"):
        load_data(cfg(source="python", factory=f"{factory_module}:broken"), seed=0)
    with pytest.raises(DataError, match="module:function"):
        load_data(cfg(source="python", factory="just_a_name"), seed=0)
