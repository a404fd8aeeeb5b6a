"""The `cifar10` source (nnrun/data/cifar.py) on tiny pickled batches: layout, missing files, the
safe unpickler."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from nnrun.data import load_data
from nnrun.errors import DataError


def test_cifar_loads_from_nested_folder(tmp_path, cfg, make_cifar):
    make_cifar(tmp_path / "cifar-10-batches-py")
    bundle = load_data(cfg(source="cifar10", path=str(tmp_path), val_fraction=0.2), seed=0, with_test=True)
    assert bundle.input_shape == (3, 32, 32) and bundle.train.num_examples == 16
    assert bundle.val.num_examples == 4 and bundle.test.num_examples == 4 and bundle.num_classes == 10
    assert bundle.class_names[0] == "airplane"


def test_cifar_missing_batch_lists_expected(tmp_path, cfg, make_cifar):
    folder = make_cifar(tmp_path / "c")
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing CIFAR-10 batch file.*data_batch_3") as err:
        load_data(cfg(source="cifar10", path=str(folder)), seed=0)
    assert "data_batch_1, data_batch_2" in str(err.value)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_refuses_pickle_with_forbidden_global(tmp_path, cfg, make_cifar):
    folder = make_cifar(tmp_path / "c")
    marker = tmp_path / "pwned"
    with open(folder / "data_batch_2", "wb") as fh:
        pickle.dump({b"data": _Evil(marker), b"labels": [0]}, fh, protocol=2)
    with pytest.raises(DataError, match="refused global `(posix|os)[.]system`") as err:
        load_data(cfg(source="cifar10", path=str(folder)), seed=0)
    assert not marker.exists()
    assert err.value.where.endswith("data_batch_2")


def test_cifar_accepts_modern_pickle_protocols(tmp_path, cfg, make_cifar):
    folder = make_cifar(tmp_path / "c")
    for protocol in (4, 5):
        data = np.full((2, 3072), protocol, dtype=np.uint8)
        with open(folder / "test_batch", "wb") as fh:
            pickle.dump({"data": data, "labels": [1, 2]}, fh, protocol=protocol)
        bundle = load_data(cfg(source="cifar10", path=str(folder)), seed=0, with_test=True)
        assert bundle.test.num_examples == 2 and float(bundle.test.x.mean()) == protocol
