"""The ``python`` source: ``data.factory: "module:function"`` returns the splits.

The function is called with no arguments and returns ``(train, val_or_None, test_or_None)``;
each split is either an ``(x, y)`` tuple of tensors/arrays (kept in memory) or a map-style
``torch.utils.data.Dataset`` of ``(x, y)`` pairs (streamed). A val split given here replaces the
seeded carve-out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from nnrun.data.splits import SourceData, Split, StreamSplit, as_inputs, as_targets, tensor_split
from nnrun.errors import DataError, import_callable

HINT = "data.factory must be `module:function` importable from the recipe's folder or PYTHONPATH"




class PairDataset(Dataset):
    """Wraps a user Dataset so items come out as (float32 tensor, int64/float32 tensor)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        if hasattr(dataset, "targets"):
            self.targets = dataset.targets

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.dataset[i]
        return torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=torch.float32), \
            as_targets(y, where="data.factory")


def _stream(dataset: Any, spec: str, split: str) -> StreamSplit:
    """Validate a user Dataset's size and first example, and wrap it."""
    try:
        n = len(dataset)
        first = dataset[0] if n else None
    except Exception as exc:
        raise DataError(f"data.factory {spec!r}: the {split} dataset fails on len()/[0] "
                        f"({type(exc).__name__}: {exc})", hint="datasets must be map-style "
                        "(__len__ and __getitem__ returning (x, y))") from exc
    if n == 0:
        raise DataError(f"data.factory {spec!r}: the {split} dataset is empty", hint="return examples")
    if not isinstance(first, (tuple, list)) or len(first) != 2:
        raise DataError(f"data.factory {spec!r}: {split}[0] is a {type(first).__name__}, expected an "
                        "(x, y) pair", hint="make __getitem__ return (input, label)")
    x = as_inputs(first[0], where=f"data.factory {spec}", what=f"{split}[0] input")
    as_targets(first[1], where=f"data.factory {spec}")
    if x.dim() == 0:
        raise DataError(f"data.factory {spec!r}: {split}[0] input is a scalar", hint="return a 1-D or "
                        "larger input per example")
    return StreamSplit(PairDataset(dataset))


def _split(value: Any, spec: str, split: str) -> Split | None:
    """Turn one returned item into a TensorSplit, a StreamSplit or None."""
    if value is None:
        return None
    if isinstance(value, (tuple, list)) and len(value) == 2 and not isinstance(value, Dataset):
        return tensor_split(value[0], value[1], where=f"data.factory {spec} ({split})", split=split)
    if hasattr(value, "__getitem__") and hasattr(value, "__len__"):
        return _stream(value, spec, split)
    raise DataError(f"data.factory {spec!r}: the {split} split is a {type(value).__name__}",
                    hint="return an (x, y) tuple of tensors/arrays or a torch Dataset of (x, y) pairs")


def load_python(cfg, path: Path | None, with_test: bool) -> SourceData:
    """Call the factory and convert what it returns.

    Args:
        cfg: the recipe's DataConfig (``factory``).
        path: ignored.
        with_test: keep the test split when the factory returns one.

    Returns:
        SourceData; its val is the factory's own validation split when given.
    """
    func = import_callable(cfg.factory, key="data.factory", error=DataError)
    try:
        result = func()
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"data.factory {cfg.factory!r} raised {type(exc).__name__}: {exc}",
                        hint="fix the factory (run with --debug for the traceback)") from exc
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        raise DataError(f"data.factory {cfg.factory!r} returned a {type(result).__name__}, expected "
                        "(train, val or None, test or None)", hint="return a 3-tuple")
    train = _split(result[0], cfg.factory, "train")
    if train is None:
        raise DataError(f"data.factory {cfg.factory!r} returned no training split", hint="return train first")
    val = _split(result[1], cfg.factory, "val")
    test = _split(result[2], cfg.factory, "test") if with_test else None
    return SourceData(train=train, val=val, test=test, name=f"python ({cfg.factory})",
                      where=f"data.factory {cfg.factory}",
                      test_note=None if result[2] is not None else f"data.factory {cfg.factory} returned no test split")
