"""The ``digits`` source: 1,797 8x8 handwritten digits (UCI optdigits, as in scikit-learn) shipped
inside nnrun as ``digits.npz``, so a recipe runs with no download.

The test split is fixed and independent of the seed: every fifth example (index ``i % 5 == 4``,
359 examples, about 20%) is held out as ``test``; the other 1,438 form the training set, from
which :func:`nnrun.data.load_data` carves the seeded validation split. Inputs are float32
[N, 1, 8, 8] with the raw 0..16 values (normalization happens later).
"""

from __future__ import annotations

import io
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from nnrun.data.splits import SourceData, TensorSplit, check_pair
from nnrun.errors import DataError

NUM_CLASSES = 10
TEST_EVERY = 5  # every 5th example (i % 5 == 4) is test


def load_digits(cfg, path: Path | None, with_test: bool) -> SourceData:
    """Load the built-in digits (``cfg.path`` is ignored).

    Args:
        cfg: the recipe's DataConfig (unused beyond the interface).
        path: ignored.
        with_test: also return the fixed test split.

    Returns:
        SourceData with train (and test) TensorSplits, 10 known classes.
    """
    where = "nnrun/data/digits.npz"
    try:
        blob = resources.files("nnrun.data").joinpath("digits.npz").read_bytes()
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            x, y = npz["x"], npz["y"]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"the built-in digits data cannot be read ({exc})", where=where,
                        hint="reinstall nnrun (pip install --force-reinstall nnrun)") from exc
    xt = torch.from_numpy(x.astype(np.float32)).unsqueeze(1)  # [N, 1, 8, 8]
    yt = torch.from_numpy(y.astype(np.int64))
    is_test = torch.arange(xt.shape[0]) % TEST_EVERY == TEST_EVERY - 1
    train = TensorSplit(xt[~is_test], yt[~is_test])
    check_pair(train.x, train.y, where=where, split="train")
    test = TensorSplit(xt[is_test], yt[is_test]) if with_test else None
    return SourceData(train=train, test=test, name="digits (built-in)", num_classes=NUM_CLASSES,
                      class_names=[str(i) for i in range(NUM_CLASSES)], where=where)
