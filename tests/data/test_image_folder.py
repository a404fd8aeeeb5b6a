"""The `image-folder` source (nnrun/data/image_folder.py): .npy and .png layouts, shape checks, and
a bad example reported cleanly even from a DataLoader worker."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nnrun.data import StreamSplit, fit_normalizer, load_data, make_batches
from nnrun.errors import DataError


def test_image_folder_npy_layout(tmp_path, cfg, make_image_folder):
    root = make_image_folder(tmp_path / "img")
    bundle = load_data(cfg(source="image-folder", path=str(root), cache="none"), seed=0, with_test=True)
    assert isinstance(bundle.train, StreamSplit) and bundle.class_names == ["cat", "dog"]
    assert bundle.input_shape == (3, 5, 6) and bundle.num_classes == 2
    assert bundle.val.num_examples == 6 and bundle.test.num_examples == 6  # its own val/ folder
    x, y = bundle.train.dataset[3]
    assert x.dtype == torch.float32 and float(x[0, 0, 0]) == 10.0 and int(y) == 1
    assert bundle.train.targets().tolist() == [0, 0, 0, 1, 1, 1]


def test_image_folder_shape_mismatch_and_png(tmp_path, cfg, make_image_folder):
    root = make_image_folder(tmp_path / "img", splits=("train",))
    bad = root / "train" / "dog" / "9.npy"
    np.save(bad, np.zeros((7, 7)))
    with pytest.raises(DataError, match="differs") as err:
        load_data(cfg(source="image-folder", path=str(root)), seed=0)
    assert err.value.where == str(bad)
    Image = pytest.importorskip("PIL.Image")
    flat = tmp_path / "flat"
    for c, cls in enumerate(("a", "b", "c")):
        (flat / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((4, 5), 50 * c + i, dtype=np.uint8)).save(flat / cls / f"{i}.png")
    bundle = load_data(cfg(source="image-folder", path=str(flat), val_fraction=0.0, cache="none"), seed=0)
    assert bundle.input_shape == (1, 4, 5) and bundle.num_classes == 3
    assert float(bundle.train.dataset[5][0].max()) == 101.0


def test_streamed_bad_example_error_is_clean_even_from_a_worker(tmp_path, cfg, make_image_folder):
    root = make_image_folder(tmp_path / "img", splits=("train",))
    bad = root / "train" / "cat" / "1.npy"
    np.save(bad, np.full((5, 6, 3), np.nan, dtype=np.float32))
    bundle = load_data(cfg(source="image-folder", path=str(root), val_fraction=0.0, cache="none"), seed=0)
    with pytest.raises(DataError, match="NaN/Inf") as err:
        fit_normalizer(bundle.train, "standardize", None)
    assert err.value.where == str(bad)
    batches = make_batches(bundle.train, batch_size=2, shuffle=False, seed=0, num_workers=1)
    with pytest.raises(DataError) as err:
        list(batches.epoch(0))
    assert str(err.value).startswith(f"{bad}: the example contains NaN/Inf") and "Traceback" not in str(err.value)
