"""The built-in `digits` source (nnrun/data/digits.py): counts, shapes and its fixed test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nnrun.data import load_data


def test_digits_counts_shapes_and_fixed_test_split(cfg):
    bundle = load_data(cfg(source="digits"), seed=0, with_test=True)
    assert bundle.train.num_examples + bundle.val.num_examples + bundle.test.num_examples == 1797
    assert bundle.test.num_examples == 359 and bundle.val.num_examples == round(0.1 * 1438)
    assert bundle.input_shape == (1, 8, 8) and bundle.train.x.dtype == torch.float32
    assert bundle.task == "classification" and bundle.num_classes == bundle.num_outputs == 10
    assert "1294 train / 144 val / 359 test" in bundle.description
    raw = np.load(Path(__file__).parents[2] / "nnrun" / "data" / "digits.npz")
    assert torch.equal(bundle.test.x[:, 0], torch.from_numpy(raw["x"][4::5].astype(np.float32)))
    other = load_data(cfg(source="digits"), seed=7, with_test=True)
    assert torch.equal(other.test.x, bundle.test.x)  # the test split does not depend on the seed
    assert load_data(cfg(source="digits"), seed=0).test is None
