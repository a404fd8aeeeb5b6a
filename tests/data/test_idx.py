"""The `mnist` and `fashion-mnist` sources (nnrun/data/idx.py) on tiny IDX fixture files, plain and
gzipped, and on the real MNIST when it is present."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from nnrun.data import load_data
from nnrun.data.idx import IMAGES_MAGIC
from nnrun.errors import DataError

MNIST_DIR = Path("/work/shared/data/mnist")


@pytest.mark.parametrize("gz", [False, True])
def test_idx_mnist_loads(tmp_path, gz, cfg, make_mnist):
    folder = make_mnist(tmp_path / "m", gz=gz)
    bundle = load_data(cfg(source="fashion-mnist", path=str(folder), val_fraction=0.1), seed=0, with_test=True)
    assert bundle.input_shape == (1, 28, 28) and bundle.num_classes == 10
    assert bundle.train.num_examples == 27 and bundle.val.num_examples == 3 and bundle.test.num_examples == 10
    assert bundle.class_names[9] == "Ankle boot" and bundle.train.x.max() > 200


def test_idx_missing_folder_and_file(tmp_path, cfg, make_mnist):
    with pytest.raises(DataError, match="not found") as err:
        load_data(cfg(source="mnist", path=str(tmp_path / "nope")), seed=0)
    assert "nope" in str(err.value)
    folder = make_mnist(tmp_path / "m")
    (folder / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="train-labels-idx1-ubyte") as err:
        load_data(cfg(source="mnist", path=str(folder)), seed=0)
    assert "t10k-images-idx3-ubyte" in str(err.value) and err.value.hint


def test_idx_truncated_bad_magic_and_count_mismatch(tmp_path, cfg, write_idx, make_mnist):
    folder = make_mnist(tmp_path / "m")
    images = folder / "train-images-idx3-ubyte"
    full = images.read_bytes()
    images.write_bytes(full[:-100])
    with pytest.raises(DataError, match=f"truncated.*{len(full)} bytes, found {len(full) - 100}") as err:
        load_data(cfg(source="mnist", path=str(folder)), seed=0)
    assert err.value.where == str(images)
    images.write_bytes(gzip.compress(full)[:-50])  # a truncated .gz is no better
    images.rename(folder / "train-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match="cannot read"):
        load_data(cfg(source="mnist", path=str(folder)), seed=0)
    (folder / "train-images-idx3-ubyte.gz").unlink()
    images.write_bytes(full[:3] + b"\x01" + full[4:])
    with pytest.raises(DataError, match="magic number 2049"):
        load_data(cfg(source="mnist", path=str(folder)), seed=0)
    write_idx(images, np.zeros((29, 28, 28)), IMAGES_MAGIC)
    with pytest.raises(DataError, match="29 images but .* 30 labels"):
        load_data(cfg(source="mnist", path=str(folder)), seed=0)


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="real MNIST not present")
def test_real_mnist(cfg):
    bundle = load_data(cfg(source="mnist", path=str(MNIST_DIR)), seed=0, with_test=True)
    assert bundle.train.num_examples + bundle.val.num_examples == 60000
    assert bundle.test.num_examples == 10000 and bundle.input_shape == (1, 28, 28)
    assert bundle.num_classes == 10 and 250 <= float(bundle.train.x.max()) <= 255
    assert bundle.train.y.bincount().tolist().__len__() == 10
