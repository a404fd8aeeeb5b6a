"""The ``cifar10`` source: the "CIFAR-10 python version" batches (``data_batch_1`` .. ``_5``,
``test_batch``, optional ``batches.meta``), in ``path`` or in ``path/cifar-10-batches-py``.

The batches are pickles. Unpickling runs whatever callables a file names, so a doctored file
could execute code (e.g. ``os.system``); :class:`SafeUnpickler` resolves only the few numpy
globals an array needs and refuses everything else.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy._core import multiarray, numeric

from nnrun.data.splits import SourceData, TensorSplit, check_pair
from nnrun.errors import DataError

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
HINT = ("download and extract cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
        "and point data.path at the extracted folder")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles written by Python 3 use it for bytes (latin-1 only)."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


def _allowed() -> dict[tuple[str, str], Any]:
    """The globals a CIFAR batch may name, mapped to the real objects (no import by name)."""
    table = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
             ("_codecs", "encode"): _latin1_encode}
    for mod in ("numpy.core", "numpy._core"):
        table[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5 arrays
    return table


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only numpy's array-rebuilding globals."""

    def find_class(self, module: str, name: str) -> Any:
        found = _allowed().get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refused global `{module}.{name}`")
        return found


def read_batch(path: Path) -> dict:
    """Unpickle one batch safely; every failure becomes a DataError naming the file."""
    try:
        with path.open("rb") as fh:
            batch = SafeUnpickler(fh, encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"refused to load this batch: {exc}; a CIFAR-10 batch holds only dicts, "
                        "lists and numpy arrays", where=str(path),
                        hint="the file is corrupt or has been tampered with: " + HINT) from exc
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise DataError(f"cannot read this batch ({type(exc).__name__}: {exc})", where=str(path),
                        hint="the file is truncated or corrupt: " + HINT) from exc
    if not isinstance(batch, dict):
        raise DataError(f"expected a dict, found {type(batch).__name__}", where=str(path), hint=HINT)
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in batch.items()}


def batch_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The (data [n, 3072] uint8, labels [n]) of one batch, shapes checked."""
    batch = read_batch(path)
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"batch lacks `data`/`labels` (keys: {sorted(map(str, batch))})", where=str(path),
                        hint=HINT)
    data, labels = batch["data"], np.asarray(batch["labels"])
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        shape = getattr(data, "shape", type(data).__name__)
        raise DataError(f"`data` has shape {shape}, expected [n, 3072] (3x32x32 images)", where=str(path),
                        hint=HINT)
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or labels.dtype.kind not in "iu":
        raise DataError(f"`labels` has shape {labels.shape} / dtype {labels.dtype}; expected "
                        f"{data.shape[0]} integers", where=str(path), hint=HINT)
    return data, labels


def load_batches(folder: Path, names: tuple[str, ...]) -> TensorSplit:
    """Concatenate the named batches into one [N, 3, 32, 32] float32 split."""
    parts = [batch_arrays(folder / n) for n in names]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    x = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    check_pair(x, y, where=str(folder / names[0]), split="train" if len(names) > 1 else "test")
    return TensorSplit(x, y)


def batch_folder(path: Path, needed: tuple[str, ...]) -> Path:
    """``path`` or ``path/cifar-10-batches-py``, whichever holds the batches."""
    for folder in (path, path / "cifar-10-batches-py"):
        if all((folder / n).is_file() for n in needed):
            return folder
    folder = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
    missing = [n for n in needed if not (folder / n).is_file()]
    raise DataError(f"missing CIFAR-10 batch file(s) {', '.join(missing)}; expected "
                    f"{', '.join(needed)}", where=str(folder), hint=HINT)


def load_cifar10(cfg, path: Path | None, with_test: bool) -> SourceData:
    """Load CIFAR-10 from the python-pickle batches in ``path``.

    Args:
        cfg: the recipe's DataConfig.
        path: the resolved folder.
        with_test: also load ``test_batch``.

    Returns:
        SourceData with 10 known classes (names from ``batches.meta`` when present).
    """
    needed = TRAIN_BATCHES + ((TEST_BATCH,) if with_test else ())
    folder = batch_folder(path, needed)
    train = load_batches(folder, TRAIN_BATCHES)
    test = load_batches(folder, (TEST_BATCH,)) if with_test else None
    names = list(CLASS_NAMES)
    if (folder / "batches.meta").is_file():
        meta = read_batch(folder / "batches.meta").get("label_names")
        if isinstance(meta, list) and len(meta) == 10:
            names = [m.decode("utf-8", "replace") if isinstance(m, bytes) else str(m) for m in meta]
    return SourceData(train=train, test=test, name=f"cifar10 ({folder})", num_classes=10,
                      class_names=names, where=str(folder))
